#!/usr/bin/env bash
# The GPU acceptance run, one command, from a fresh clone on a machine with an NVIDIA GPU:
#
#   bash scripts/gpu_check.sh                 # everything; report in runs/gpu_check/report.md
#   bash scripts/gpu_check.sh --dry-run       # the plan and the prerequisites; runs nothing
#   bash scripts/gpu_check.sh --extra gpu     # TensorRT 11 (no onnxruntime-gpu cells)
#
# Steps: install the GPU extra into .venv-gpu; export the bundled model (both layouts) and a
# random-weight ViT-B, with FP16/INT8 graphs; build fp32/fp16/int8 TensorRT engines; compare
# every engine with ONNX Runtime (FP32, CPU) through Polygraphy's comparator; the PyTorch CUDA
# reference (fp32/fp16/bf16) and the cuda-python buffer/stream/graph code; the gpu-marked
# tests; dit-bench --all (PyTorch on the same GPU vs TensorRT vs ONNX Runtime); the C++
# runtime built with TensorRT and its ctest. Every step gets a verdict in the report: pass,
# FAIL, or "not run" with the missing piece named (no TensorRT, no onnxruntime-gpu, no
# TensorRT SDK headers for C++, ...): never a silent pass.
#
# Options:
#   --dry-run          print the plan and check the prerequisites; write nothing. Where PyPI
#                      answers, it also resolves what the install step would install (pip
#                      install --dry-run, metadata only) and prints every version, or exits 1
#                      naming why it does not resolve
#   --no-resolve       with --dry-run: skip that resolution (offline planning)
#   --extra NAME       gpu-trt10 (default: TensorRT 10 + onnxruntime-gpu, CUDA 13), gpu
#                      (TensorRT 11, CUDA 13) or gpu-cu12 (TensorRT 11, CUDA 12 drivers)
#   --out DIR          working directory (default: runs/gpu_check)
#   --venv DIR         virtual environment (default: .venv-gpu; reused when present)
#   --skip-install     use the venv as it is
#   --no-vit-b         only the bundled model (faster)
# Exit: 0 every step passed; 1 a step failed; 3 nothing failed but a step could not run.
# Budget: meant to fit in 10 minutes on one H200-class GPU (not yet measured on one).
# Precision debugging on TensorRT (not run here; see README "Polygraphy"):
#   polygraphy debug precision OUT/tiny/dit_fused.fp16.onnx --mode bisect --precision float32 \
#       --check polygraphy run polygraphy_debug.engine --trt --load-inputs inputs.json \
#       --load-outputs golden.json
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0 EXTRA=gpu-trt10 OUT=runs/gpu_check VENV=.venv-gpu SKIP_INSTALL=0 VIT_B=1 RESOLVE=1
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --extra) EXTRA="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --venv) VENV="$2"; shift ;;
    --skip-install) SKIP_INSTALL=1 ;;
    --no-vit-b) VIT_B=0 ;;
    --no-resolve) RESOLVE=0 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$EXTRA" in
  gpu|gpu-cu12) CUDA_MAJOR=$([ "$EXTRA" = gpu ] && echo 13 || echo 12); ORT_GPU=0 ;;
  gpu-trt10) CUDA_MAJOR=13; ORT_GPU=1 ;;
  *) echo "gpu_check: --extra must be gpu-trt10, gpu or gpu-cu12" >&2; exit 2 ;;
esac
PY="$VENV/bin/python"

# ------------------------------------------------------------------ prerequisites
declare -A WHY  # step -> why it cannot run here ("" = it can)
GPU_NAME="" DRIVER=""
if ! command -v nvidia-smi >/dev/null 2>&1; then
  NO_GPU="no NVIDIA GPU: nvidia-smi not found"
elif ! GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1) \
    || [ -z "$GPU_NAME" ]; then
  NO_GPU="no NVIDIA GPU: nvidia-smi lists none"
else
  NO_GPU=""
  DRIVER=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)
  need=$([ "$CUDA_MAJOR" = 13 ] && echo 580 || echo 525)
  if [ "${DRIVER%%.*}" -lt "$need" ] 2>/dev/null; then
    NO_GPU="driver $DRIVER is older than $need, which CUDA $CUDA_MAJOR needs (--extra gpu-cu12 for CUDA 12 drivers, or update the driver)"
  fi
fi
PYTHON3=$(command -v python3 || true)
if [ -z "$PYTHON3" ] || ! "$PYTHON3" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  NO_PY="python3 >= 3.10 not found"
else
  NO_PY=""
fi
if [ -x "$PY" ] && [ "$SKIP_INSTALL" = 1 ]; then
  NO_INSTALL=""
elif [ -n "$NO_PY" ]; then
  NO_INSTALL="$NO_PY"
elif ! "$PYTHON3" -c 'import socket; socket.create_connection(("pypi.org", 443), 5)' 2>/dev/null; then
  NO_INSTALL="PyPI is unreachable, so the $EXTRA extra cannot be installed"
else
  NO_INSTALL=""
fi
first() { for r in "$@"; do [ -n "$r" ] && { echo "$r"; return; }; done; echo ""; }
TRT_HDR=""
for d in "${TENSORRT_ROOT:-/nonexistent}/include" /usr/include/x86_64-linux-gnu /usr/include; do
  [ -f "$d/NvInfer.h" ] && TRT_HDR="$d" && break
done
NO_CPP=""
command -v cmake >/dev/null 2>&1 || NO_CPP="cmake not found (bash scripts/install_cpp_deps.sh)"
command -v c++ >/dev/null 2>&1 || NO_CPP="${NO_CPP:-a C++ compiler not found}"
if [ -z "$NO_CPP" ] && [ -z "$TRT_HDR" ]; then
  NO_CPP="no TensorRT SDK headers (NvInfer.h; the pip wheels have none): install the TensorRT SDK and set TENSORRT_ROOT"
fi
if [ -z "$NO_CPP" ] && ! command -v nvcc >/dev/null 2>&1 && [ ! -f /usr/local/cuda/include/cuda_runtime_api.h ]; then
  NO_CPP="no CUDA toolkit (nvcc / cuda_runtime_api.h) for the C++ build"
fi

WHY[install]=$(first "$NO_GPU" "$NO_INSTALL")
WHY[versions]=${WHY[install]}
WHY[export]=${WHY[install]}
WHY[export-vit-b]=$([ "$VIT_B" = 1 ] && echo "${WHY[install]}" || echo "--no-vit-b")
WHY[torch-cuda]=${WHY[install]}
WHY[cuda-python]=${WHY[install]}
WHY[engines]=${WHY[install]}
WHY[compare]=${WHY[install]}
WHY[gpu-tests]=${WHY[install]}
WHY[bench]=${WHY[install]}
WHY[onnxruntime-gpu]=$(first "${WHY[install]}" "$([ "$ORT_GPU" = 0 ] && echo "the $EXTRA extra has no onnxruntime-gpu (its TensorRT provider needs TensorRT 10): use --extra gpu-trt10")")
WHY[cpp-tensorrt]=$(first "$NO_GPU" "$NO_CPP")

# export directory and its PyTorch reference, per model
EXPORTS="$OUT/tiny"
[ "$VIT_B" = 1 ] && EXPORTS="$OUT/tiny $OUT/vit_b/export"
declare -A CMD
CMD[install]="$PYTHON3 -m venv $VENV && $PY -m pip install torch && $PY -m pip install -e '.[torch,export,dev,$EXTRA]'$([ "$ORT_GPU" = 1 ] && echo " && $PY -m pip uninstall -y onnxruntime && $PY -m pip install --force-reinstall --no-deps 'onnxruntime-gpu==1.31.*'")"
CMD[versions]="$PY -m dit_deploy.runtime.devices && $PY -c 'import torch; print(\"torch cuda      \", torch.version.cuda, torch.cuda.is_available())'"
CMD[export]="$PY export/to_onnx.py --pretrained dit-tiny-synthetic --out $OUT/tiny --layout both && for p in fp16 int8; do $PY export/quantize.py $OUT/tiny --precision \$p --eval-size 16 --calib-size 16 --quiet; done"
CMD[export-vit-b]="$PY benchmarks/make_random_model.py --config layer_wise_vit_b --out $OUT/vit_b && for p in fp16 int8; do $PY export/quantize.py $OUT/vit_b/export --precision \$p --eval-size 4 --calib-size 8 --eval-batch 1 --min-mask-iou 0 --max-miou-drop 100 --quiet; done"
CMD[torch-cuda]="DIT_REQUIRE_GPU=1 $PY -m pytest -q -m cuda tests/test_gpu_reference.py"
CMD[cuda-python]="DIT_REQUIRE_GPU=1 $PY -m pytest -q -m cuda tests/test_tensorrt_backend.py"
CMD[engines]="for e in $EXPORTS; do $PY export/to_trt.py \$e --precision fp32 fp16 int8 --max-batch 8 --timing-cache $OUT/timing.cache || exit 1; done"
CMD[compare]="for e in $EXPORTS; do for p in fp32 fp16 int8; do for l in fused split; do $PY -m dit_deploy.engines.compare \$e --precision \$p --layout \$l || exit 1; done; done; done"
CMD[gpu-tests]="DIT_REQUIRE_GPU=1 $PY -m pytest -q -m 'gpu or cuda'"
CMD[bench]="$PY -m dit_deploy bench $OUT/tiny --all --batch 1,8 --budget 3 --limit 16 --pretrained dit-tiny-synthetic --report-dir $OUT/bench/tiny$([ "$VIT_B" = 1 ] && echo " && $PY -m dit_deploy bench $OUT/vit_b/export --all --batch 1,8 --budget 3 --limit 8 --pretrained $OUT/vit_b/model --report-dir $OUT/bench/vit_b")"
CMD[onnxruntime-gpu]="DIT_REQUIRE_GPU=1 $PY -m pytest -q -m gpu tests/test_onnxruntime_backend.py"
CMD[cpp-tensorrt]="cmake -S cpp -B $OUT/build-trt -DCMAKE_BUILD_TYPE=Release -DDIT_WITH_TENSORRT=ON -DTENSORRT_ROOT=${TRT_HDR%/include} && cmake --build $OUT/build-trt -j && ctest --test-dir $OUT/build-trt --output-on-failure && DIT_CPP_TRT_BUILD=$OUT/build-trt DIT_REQUIRE_GPU=1 $PY -m pytest -q -m gpu tests/test_cpp_runtime.py"
STEPS=(install versions export export-vit-b torch-cuda cuda-python engines compare gpu-tests onnxruntime-gpu bench cpp-tensorrt)

echo "gpu_check: extra $EXTRA (CUDA $CUDA_MAJOR), out $OUT, venv $VENV"
echo "GPU: ${GPU_NAME:-none}${DRIVER:+ (driver $DRIVER)}"
if [ "$DRY" = 1 ]; then
  echo "plan (dry run: nothing is run or written):"
  i=0
  for s in "${STEPS[@]}"; do
    i=$((i + 1))
    if [ -n "${WHY[$s]}" ]; then
      echo "  $i. not run: $s (${WHY[$s]})"
    else
      echo "  $i. ready:   $s"
    fi
    echo "       $ ${CMD[$s]}"
  done
  echo "report: $OUT/report.md"
  # the install step's requirement set, resolved as pip would install it (nothing written
  # but pip's own cache): an extra that cannot resolve fails here, not on the GPU machine
  [ "$RESOLVE" = 1 ] || exit 0
  if [ -n "$NO_PY" ] || ! "$PYTHON3" -c 'import socket; socket.create_connection(("pypi.org", 443), 5)' 2>/dev/null; then
    echo "resolves: not checked (${NO_PY:-PyPI is unreachable})"
    exit 0
  fi
  "$PYTHON3" - ".[torch,export,dev,$EXTRA]" <<'PY'
import json, subprocess, sys

r = subprocess.run(
    [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
     "--report", "-", sys.argv[1]], capture_output=True, text=True,
)
if r.returncode != 0:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING")]
    print(f"resolves: FAIL ({' '.join(lines[-3:])[:600]})")
    sys.exit(1)
found = sorted(
    (i["metadata"]["name"].lower().replace("_", "-"), i["metadata"]["version"])
    for i in json.loads(r.stdout)["install"]
)
print(f"resolves ({len(found)} packages): " + " ".join(f"{n}=={v}" for n, v in found))
PY
  exit $?
fi

# ----------------------------------------------------------------------------- run
mkdir -p "$OUT/logs"
declare -A VERDICT SECONDS_OF
for s in "${STEPS[@]}"; do
  if [ -n "${WHY[$s]}" ]; then
    VERDICT[$s]="not run: ${WHY[$s]}"
    echo "== $s: not run (${WHY[$s]})"
    continue
  fi
  echo "== $s"
  start=$(date +%s)
  if bash -c "${CMD[$s]}" >"$OUT/logs/$s.log" 2>&1; then
    VERDICT[$s]="pass"
  else
    VERDICT[$s]="FAIL (see logs/$s.log)"
    case "$s" in install|export) for t in "${STEPS[@]}"; do
      [ -z "${WHY[$t]}" ] && [ "$t" != "$s" ] && [ "$t" != cpp-tensorrt ] && WHY[$t]="$s failed"
    done ;; esac
  fi
  SECONDS_OF[$s]=$(( $(date +%s) - start ))
  echo "   ${VERDICT[$s]} (${SECONDS_OF[$s]} s)"
done

failed=0 notrun=0
{
  echo "# GPU acceptance run"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), extra \`$EXTRA\`, GPU: ${GPU_NAME:-none}${DRIVER:+, driver $DRIVER}"
  echo
  [ -f "$OUT/logs/versions.log" ] && { echo '```'; cat "$OUT/logs/versions.log"; echo '```'; echo; }
  echo "| step | verdict | seconds |"
  echo "| --- | --- | ---: |"
  for s in "${STEPS[@]}"; do
    echo "| $s | ${VERDICT[$s]} | ${SECONDS_OF[$s]:-} |"
  done
  for f in "$OUT"/bench/*/*.md; do
    [ -f "$f" ] && { echo; echo "## dit-bench: $f"; echo; cat "$f"; }
  done
} >"$OUT/report.md"
for s in "${STEPS[@]}"; do
  case "${VERDICT[$s]}" in FAIL*) failed=$((failed + 1)) ;; not\ run*) notrun=$((notrun + 1)) ;; esac
done
echo "gpu_check: $(( ${#STEPS[@]} - failed - notrun )) passed, $failed failed, $notrun not run; report: $OUT/report.md"
[ "$failed" -gt 0 ] && exit 1
[ "$notrun" -gt 0 ] && exit 3
exit 0
