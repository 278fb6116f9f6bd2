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
.venv/bin/python -m pip install --quiet -e ".[torch,export,cpu,openvino,plots,train,batch,serve,demo,dev]"
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
# The test suite runs the INT8 checks of the other x86 ISA family (AVX2) under Debian's
# qemu-user on AVX512 machines (tests/test_isa_emulated.py); users do not need it.
if ! command -v qemu-x86_64 >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user >/dev/null 2>&1 \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user >/dev/null; } \
    || echo "install: qemu-user not installed; tests/test_isa_emulated.py will skip"
fi
# The demo page's test drives Debian's Chromium headless (tests/test_demo.py); users of
# `dit-deploy demo` only need a browser of their own.
if ! command -v chromedriver >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
    || echo "install: chromium not installed; tests/test_demo.py will skip"
fi
# curl: the README's plain-HTTP recipe is run against a server (tests/test_serving.py).
if ! command -v curl >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null 2>&1 \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null; } \
    || echo "install: curl not installed; the README's curl test will skip"
fi
# NVIDIA's perf_analyzer, the load generator the serving tests and docs/benchmarks.md run
# against `dit-deploy serve` (on glibc < 2.38 with Debian 13's runtime beside it; see there).
bash scripts/install_perf_analyzer.sh \
  || echo "install: perf_analyzer not installed; its serving test will skip"
# dit-deploy serve: tritonserver's python-backend stub links libpython3.X.so.1.0, which Debian
# ships in libpython3.X (python3 itself does not pull it in).
if ! .venv/bin/python -c 'import pathlib, sys, sysconfig as s; d, n = s.get_config_var("LIBDIR"), s.get_config_var("INSTSONAME"); sys.exit(not (d and n and (pathlib.Path(d) / n).exists()))'; then
  PYVER="$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "libpython${PYVER}" >/dev/null 2>&1 \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "libpython${PYVER}" >/dev/null; } \
      || echo "install: libpython${PYVER} not installed; dit-deploy serve needs it"
  else
    echo "install: dit-deploy serve needs libpython${PYVER}.so (Debian: apt-get install libpython${PYVER})"
  fi
fi
.venv/bin/python -c "import torch, onnxruntime, openvino, ray, dit_deploy; print('dit-deploy', dit_deploy.__version__, '| torch', torch.__version__, '| onnxruntime', onnxruntime.__version__, '| openvino', openvino.__version__, '| ray', ray.__version__)"
