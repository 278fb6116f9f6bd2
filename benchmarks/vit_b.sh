#!/usr/bin/env bash
# The ViT-B-size numbers in docs/benchmarks.md: a random-weight ViT-B DIT (the authors'
# released size), exported and benchmarked against PyTorch in one dit-bench run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
OUT="${OUT:-runs/vit_b}"
[ -f "$OUT/export/manifest.json" ] || "$PY" benchmarks/make_random_model.py --config layer_wise_vit_b --out "$OUT"
"$PY" -m dit_deploy.bench.cli "$OUT/export" --all --limit 8 --batch 1,2 --budget 20 \
    --report-dir "$OUT/report" "$@"
