#!/usr/bin/env bash
# The ViT-B-size numbers in docs/benchmarks.md: a random-weight ViT-B DIT (the authors'
# released size) exported, quantized (FP16, INT8) and benchmarked against PyTorch in ONE
# dit-bench run. About 25 minutes on 2 cores; the INT8 step peaks at about 4 GB of RAM.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
OUT="${OUT:-runs/vit_b}"
DATA="$OUT/data"
[ -f "$OUT/export/manifest.json" ] || "$PY" benchmarks/make_random_model.py --config layer_wise_vit_b --out "$OUT"
[ -f "$DATA/synthetic/instances.json" ] || "$PY" -m dit_deploy.data.synthetic --out "$DATA" --train 16 --val 8 --size 512 --seed 7
# random weights have no trained accuracy to protect: the floors are opened, the errors reported
for p in fp16 int8 bf16; do
  # bf16 (OpenVINO) is refused on a CPU without BF16 units: the bench then lists why
  "$PY" export/quantize.py "$OUT/export" --precision "$p" --calib-data "$DATA" --calib-size 16 \
      --eval-data "$DATA" --eval-split val --eval-size 8 --eval-batch 1 --min-mask-iou 0 --max-miou-drop 100 \
      --json "$OUT/quantize_$p.json" --quiet || [ "$p" = bf16 ]
done
uptime  # the load the numbers were taken under (dit-bench records it too)
"$PY" -m dit_deploy bench "$OUT/export" --all --data "$DATA" --split val --limit 8 --batch 1,2 \
    --budget 15 --rounds 10 --report-dir "$OUT/report" "$@"
