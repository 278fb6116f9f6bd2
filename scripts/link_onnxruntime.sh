#!/usr/bin/env bash
# Link a pip onnxruntime wheel's libraries into LIBDIR for the C++ runtime to build and run
# with (scripts/install_cpp_deps.sh runs it; tests/test_gpu_loading.py checks the result):
#
#   bash scripts/link_onnxruntime.sh PYTHON LIBDIR
#
# libonnxruntime.so(.1) -> the wheel's libonnxruntime.so.1.X.Y, and every provider library
# beside it (libonnxruntime_providers_{shared,cuda,tensorrt}.so of onnxruntime-gpu): ONNX
# Runtime opens its providers from the directory of the libonnxruntime it was loaded from,
# which is LIBDIR, not the wheel's capi/. Prints the library linked; exit 1 if none.
set -euo pipefail
PY="$1" LIBDIR="$2"
capi="$("$PY" -c 'import os, onnxruntime; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))')"
lib="$(ls "$capi"/libonnxruntime.so* 2>/dev/null | sort | tail -1)"
if [ -z "$lib" ]; then
  echo "the onnxruntime wheel of $PY has no libonnxruntime.so; reinstall onnxruntime" >&2
  exit 1
fi
mkdir -p "$LIBDIR"
rm -f "$LIBDIR"/libonnxruntime_providers_*.so  # another wheel's, from an earlier run
ln -sfn "$lib" "$LIBDIR/libonnxruntime.so.1"
ln -sfn "$lib" "$LIBDIR/libonnxruntime.so"
for provider in "$capi"/libonnxruntime_providers_*.so; do
  [ -e "$provider" ] && ln -sfn "$provider" "$LIBDIR/$(basename "$provider")"
done
echo "$lib"
