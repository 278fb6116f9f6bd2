#!/usr/bin/env bash
# Install what the C++ runtime (cpp/) builds with, from Debian's packages. Idempotent and quick
# on a second run; works on Debian 12 (bookworm) and 13 (trixie).
#
#   compiler + CMake, nlohmann-json3-dev (manifest), libpng-dev + libjpeg-dev (images),
#   libicu-dev (Unicode for the tokenizer)                      -> apt-get install
#   ONNX Runtime C/C++ headers:
#     Debian 13+  -> apt-get install libonnxruntime-dev (headers + library, ONNX Runtime 1.21)
#     Debian 12   -> the same Debian package (libonnxruntime-dev from trixie) is downloaded with
#                    apt-get into a private apt state (the system's sources are not changed) and
#                    only its headers are unpacked into .deps/onnxruntime/include; the library
#                    is the onnxruntime wheel's libonnxruntime.so (pip), linked from
#                    .deps/onnxruntime/lib. The C API is ABI-stable: headers 1.21 work with any
#                    newer library (ORT_API_VERSION).
#
# Never fails a caller's install: without root or apt-get it prints what to do and exits 0
# (CMake then says what is missing). DIT_DEPS_DIR overrides .deps.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
DEPS="${DIT_DEPS_DIR:-$ROOT/.deps}"
ORT_HEADERS_SUITE="trixie"   # the Debian release whose libonnxruntime-dev gives the headers
PACKAGES=(cmake g++ make pkg-config nlohmann-json3-dev libpng-dev libjpeg-dev libicu-dev)

say() { echo "install_cpp_deps: $*"; }

if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-query >/dev/null 2>&1; then
  say "not a Debian-like system (no apt-get); install by hand: CMake >= 3.18, a C++17 compiler,"
  say "nlohmann-json, libpng, libjpeg, ICU and the ONNX Runtime C/C++ API; see README (C++ runtime)."
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    CAN_APT=0
  fi
fi
CAN_APT="${CAN_APT:-1}"

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
for p in "${PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$CAN_APT" -ne 1 ]; then
    say "not root and no password-less sudo: cannot apt-get install ${missing[*]}."
    say "Ask an administrator to run: apt-get install ${missing[*]}  (then re-run this script)."
    exit 0
  fi
  say "apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

# ---------------------------------------------------------------- ONNX Runtime
if [ -f /usr/include/onnxruntime/onnxruntime_cxx_api.h ]; then
  say "ONNX Runtime: system headers and library (libonnxruntime-dev) already installed"
  exit 0
fi
if apt-cache show libonnxruntime-dev >/dev/null 2>&1; then
  if [ "$CAN_APT" -ne 1 ]; then
    say "not root: cannot apt-get install libonnxruntime-dev; ask an administrator to."
    exit 0
  fi
  say "apt-get install libonnxruntime-dev"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    libonnxruntime-dev >/dev/null
  exit 0
fi

# Debian 12: headers from Debian's libonnxruntime-dev (trixie), library from the wheel.
ORT="$DEPS/onnxruntime"
if ! { mkdir -p "$DEPS" && printf '*\n' >"$DEPS/.gitignore"; } 2>/dev/null; then
  say "cannot write $DEPS; set DIT_DEPS_DIR to a writable directory and re-run."
  exit 0
fi
# (.deps/.gitignore holds '*': never committed, whatever the repository's .gitignore says)
if [ ! -f "$ORT/include/onnxruntime/onnxruntime_cxx_api.h" ]; then
  codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
  mirror="$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null |
    awk -v c="$codename" '$2 == c {print $1; exit}')"
  if [ -z "$mirror" ]; then
    say "cannot find this system's Debian mirror (no '$codename' source in apt); install the"
    say "ONNX Runtime headers by hand and pass -DDIT_ORT_ROOT=<prefix> to CMake."
    exit 0
  fi
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/etc" "$tmp/lists/partial" "$tmp/cache/archives/partial"
  cat >"$tmp/etc/ort.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $ORT_HEADERS_SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  apt_opts=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$tmp/etc"
    -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache" -o "Debug::NoLocking=1"
    -o "APT::Sandbox::User=$(id -un)")
  say "fetching the ONNX Runtime headers (Debian $ORT_HEADERS_SUITE package libonnxruntime-dev)"
  if ! apt-get "${apt_opts[@]}" update -qq >/dev/null 2>"$tmp/err" ||
    ! (cd "$tmp" && apt-get "${apt_opts[@]}" download libonnxruntime-dev >/dev/null 2>>"$tmp/err"); then
    cat "$tmp/err" >&2
    say "could not download libonnxruntime-dev from Debian $ORT_HEADERS_SUITE (see above)."
    exit 0
  fi
  dpkg-deb -x "$tmp"/libonnxruntime-dev_*.deb "$tmp/x"
  mkdir -p "$ORT/include"
  rm -rf "$ORT/include/onnxruntime"
  cp -r "$tmp/x/usr/include/onnxruntime" "$ORT/include/onnxruntime"
  dpkg-deb -f "$tmp"/libonnxruntime-dev_*.deb Version >"$ORT/HEADERS_VERSION"
  say "ONNX Runtime headers $(cat "$ORT/HEADERS_VERSION") -> $ORT/include"
fi

# the library: the onnxruntime wheel of the project's Python (refreshed on every run)
PY=""
for cand in "$ROOT/.venv/bin/python" python3 python; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c "import onnxruntime" 2>/dev/null; then
    PY="$cand"
    break
  fi
done
if [ -z "$PY" ]; then
  say "no Python with onnxruntime found: run scripts/install.sh (or pip install onnxruntime),"
  say "then re-run this script so CMake can link the wheel's libonnxruntime.so."
  exit 0
fi
if ! lib="$(bash "$ROOT/scripts/link_onnxruntime.sh" "$PY" "$ORT/lib" 2>&1)"; then
  say "cannot link the onnxruntime wheel's library into $ORT/lib ($lib); reinstall onnxruntime,"
  say "or set DIT_DEPS_DIR to a writable directory, and re-run."
  exit 0
fi
say "ONNX Runtime library -> $lib ($("$PY" -c 'import onnxruntime; print(onnxruntime.__version__)'))"
