#!/usr/bin/env bash
# Every ViT-B-size number in docs/benchmarks.md, from a fresh clone after scripts/install.sh:
# a random-weight ViT-B DIT (the authors' released size) exported; INT8 --auto on a copy of the
# FP32 export (its cost); FP16, INT8 plain and BF16 quantized, each with its wall time and peak
# memory (OUT/costs.txt); OpenVINO's per-node profile of the INT8 fused graph; NNCF's INT8 next
# to ours; then ONE dit-bench run of every cell against PyTorch (compute floors per ISA in its
# header). About 60 minutes on 2 cores; the --auto step peaks at about 5-6 GB of RAM.
#   SKIP="auto nncf" bash benchmarks/vit_b.sh     # leave steps out (auto, profile, nncf, bench)
#   OUT=/tmp/vit_b PY=python bash benchmarks/vit_b.sh --budget 30   # extra args go to dit-bench
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
OUT="${OUT:-runs/vit_b}"
SKIP="${SKIP:-}"
DATA="$OUT/data"
skip() { [[ " $SKIP " == *" $1 "* ]]; }
timed() {  # timed NAME CMD...: appends "NAME: wall, peak RSS" to OUT/costs.txt
  local name=$1
  shift
  /usr/bin/time -f "$name: %e s wall, %M KB peak RSS" -a -o "$OUT/costs.txt" "$@"
}
[ -f "$OUT/export/manifest.json" ] || "$PY" benchmarks/make_random_model.py --config layer_wise_vit_b --out "$OUT"
[ -f "$DATA/synthetic/instances.json" ] || "$PY" -m dit_deploy.data.synthetic --out "$DATA" --train 16 --val 8 --size 512 --seed 7
mkdir -p "$OUT"
echo "$(date -u +%FT%TZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) load $(cut -d' ' -f1 /proc/loadavg)" >> "$OUT/costs.txt"
rm -rf "$OUT/cache"  # each quantization's cost is measured cold: no calibration ranges reused
PAIRS=(--calib-data "$DATA" --calib-size 16 --eval-data "$DATA" --eval-split val --eval-size 8 --eval-batch 1)
if ! skip auto; then
  # a fresh FP32 export of the same model: --auto's cost from scratch
  "$PY" -m dit_deploy export --pretrained "$OUT/model" --out "$OUT/export_auto" --layout both --overwrite
  # random weights: masks are the whole image, so the relative logit gate is the one that sees
  timed "int8 --auto" "$PY" -m dit_deploy quantize "$OUT/export_auto" --precision int8 --auto \
      --calib-data "$DATA" --calib-size 8 --eval-data "$DATA" --eval-split val --eval-size 8 \
      --search-size 4 --cache-dir "$OUT/cache/auto" \
      --eval-batch 1 --threads 2 --max-logit-error 0.01 --min-mask-iou 0.99 --max-miou-drop 0.2 \
      --json "$OUT/quantize_int8_auto.json" --quiet
fi
# random weights have no trained accuracy to protect: the floors are opened, the errors reported
for p in fp16 int8 bf16; do
  # bf16 (OpenVINO) is refused on a CPU without BF16 units: the bench then lists why
  timed "$p plain" "$PY" -m dit_deploy quantize "$OUT/export" --precision "$p" "${PAIRS[@]}" \
      --cache-dir "$OUT/cache/$p" \
      --min-mask-iou 0 --max-miou-drop 100 --json "$OUT/quantize_$p.json" --quiet || [ "$p" = bf16 ]
done
skip profile || "$PY" benchmarks/ov_profile.py "$OUT/export" --precision int8 --json "$OUT/ov_profile.json"
if ! skip nncf; then
  "$PY" -c "import nncf" 2>/dev/null || "$PY" -m pip install -q "nncf==3.4.0"
  "$PY" benchmarks/nncf_compare.py --export "$OUT/export" --data "$DATA" --out "$OUT/nncf" \
      --calib 16 --pairs 8 --rounds 3 --calls 2
fi
cat "$OUT/costs.txt"
skip bench && exit 0
uptime  # the load the numbers were taken under (dit-bench records it too)
"$PY" -m dit_deploy bench "$OUT/export" --all --data "$DATA" --split val --limit 8 --batch 1,2 \
    --budget 15 --rounds 10 --report-dir "$OUT/report" "$@"
