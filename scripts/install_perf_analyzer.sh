#!/usr/bin/env bash
# NVIDIA's perf_analyzer (Triton's load generator) as .venv/bin/perf_analyzer (idempotent).
#
# The binary is the one in NVIDIA's PyPI wheel (perf-analyzer, pinned with its hash). That
# wheel is tagged manylinux_2_38: on glibc 2.36 (Debian 12) pip skips it and installs a 0.1.0
# placeholder without a binary. There the same binary runs on Debian 13's dynamic loader,
# libc and libstdc++, unpacked (not installed: nothing system-wide changes) into
# .venv/opt/perf_analyzer/lib; apt downloads them and checks the archive's signatures.
# On glibc >= 2.38 the binary runs as it is. Either way the wrapper execs the binary, so its
# exit status is perf_analyzer's own (the wheel's console script always exits 0).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=2.60.0
WHEEL_SHA256=23ef56b107ae9233e5cf09fbdf508dd9b936a52f1bae2f63f53c8117087b3f25
DEST=.venv/opt/perf_analyzer
WRAPPER=.venv/bin/perf_analyzer
[ -x .venv/bin/python ] || { echo "install_perf_analyzer: run scripts/install.sh first"; exit 1; }
if [ "$(uname -m)" != x86_64 ]; then
  echo "install_perf_analyzer: NVIDIA's wheel is x86_64 only; skipped on $(uname -m)"
  exit 0
fi
if [ -x "$WRAPPER" ] && [ -f "$DEST/VERSION" ] && [ "$(cat "$DEST/VERSION")" = "$VERSION" ] \
  && "$WRAPPER" --version >/dev/null 2>&1; then
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
rm -rf "$DEST.new"
mkdir -p "$DEST.new/bin" "$DEST.new/lib"
echo "perf-analyzer==$VERSION --hash=sha256:$WHEEL_SHA256" > "$tmp/req.txt"
.venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
  --platform manylinux_2_38_x86_64 --python-version 3 --implementation py \
  -r "$tmp/req.txt" -d "$tmp/wheel" 2> >(grep -v "^WARNING: Location" >&2)
.venv/bin/python - "$tmp"/wheel/*.whl "$DEST.new/bin/perf_analyzer" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("perf_analyzer/bin/perf_analyzer") as src:
    with open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
EOF
chmod 755 "$DEST.new/bin/perf_analyzer"
GLIBC="$(.venv/bin/python -c 'import os; print(os.confstr("CS_GNU_LIBC_VERSION").split()[1])')"
if .venv/bin/python -c "import sys; sys.exit(tuple(map(int, '$GLIBC'.split('.'))) >= (2, 38))"; then
  command -v apt-get >/dev/null 2>&1 \
    || { echo "install_perf_analyzer: glibc $GLIBC < 2.38 and no apt-get; not installed"; exit 1; }
  # Debian 13's runtime, from the archive, verified by apt against Debian's keyring.
  mkdir -p "$tmp/apt/lists/partial" "$tmp/apt/cache/archives/partial" "$tmp/debs"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
    > "$tmp/apt/sources.list"
  APT=(-qq -o "Dir::Etc::SourceList=$tmp/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$tmp/apt/lists" -o "Dir::Cache=$tmp/apt/cache"
    -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
  apt-get "${APT[@]}" update >/dev/null
  (cd "$tmp/debs" && apt-get "${APT[@]}" download libc6 libstdc++6 libgcc-s1 >/dev/null)
  for deb in "$tmp"/debs/*.deb; do dpkg-deb -x "$deb" "$tmp/root"; done
  cp -a "$tmp"/root/usr/lib/x86_64-linux-gnu/. "$DEST.new/lib/"
  cat > "$DEST.new/run" <<'EOF'
#!/bin/sh
# perf_analyzer on Debian 13's loader and libraries (this machine's glibc is older than 2.38)
D="$(dirname "$(readlink -f "$0")")"
exec "$D/lib/ld-linux-x86-64.so.2" --library-path "$D/lib:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu" "$D/bin/perf_analyzer" "$@"
EOF
else
  cat > "$DEST.new/run" <<'EOF'
#!/bin/sh
D="$(dirname "$(readlink -f "$0")")"
exec "$D/bin/perf_analyzer" "$@"
EOF
fi
chmod 755 "$DEST.new/run"
echo "$VERSION" > "$DEST.new/VERSION"
"$DEST.new/run" --version >/dev/null 2>&1
rm -rf "$DEST" && mv "$DEST.new" "$DEST"
ln -sfn ../opt/perf_analyzer/run "$WRAPPER"
echo "install_perf_analyzer: perf_analyzer $VERSION (PyPI wheel; this glibc: $GLIBC): $WRAPPER"
