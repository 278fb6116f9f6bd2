#!/usr/bin/env bash
# Create .venv with everything dit-deploy needs on a CPU machine (idempotent).
# torch first, pinned to the CPU build (an unpinned torch pulls a multi-GB CUDA build);
# GPU users install their own CUDA torch and then `pip install -e ".[torch,export,gpu]"`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[torch,export,cpu,openvino,plots,train,batch,dev]"
# System packages (Debian 12/13): the C++ runtime's build deps (exits 0 with a message where
# apt-get is not possible).
bash scripts/install_cpp_deps.sh
# The C++ runtime (dit_infer, dit_tokenize) into build/, where the README and tests use it.
if command -v cmake >/dev/null 2>&1 && command -v c++ >/dev/null 2>&1; then
  if cmake -S cpp -B build -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build build -j2 >/dev/null; then
    echo "install: C++ runtime built: build/dit_infer"
  else
    echo "install: the C++ runtime did not build (see: cmake --build build); Python is unaffected"
  fi
else
  echo "install: cmake/c++ not found; the C++ runtime is not built (apt-get install cmake g++)"
fi
.venv/bin/python -c "import torch, onnxruntime, openvino, ray, dit_deploy; print('dit-deploy', dit_deploy.__version__, '| torch', torch.__version__, '| onnxruntime', onnxruntime.__version__, '| openvino', openvino.__version__, '| ray', ray.__version__)"
