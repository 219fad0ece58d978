#!/usr/bin/env bash
# Where a clean `pip wheel --no-build-isolation .` (what `pip install` compiles) spends its CPU:
# builds a fresh clone of this checkout's HEAD with ccache off, every compile wrapped in
# /usr/bin/time, then prints user+sys seconds per translation unit and the whole build's.
# Usage: scripts/build-times.sh [python]   (default: $PYTHON or python3)
set -euo pipefail
PYTHON=${1:-${PYTHON:-python3}}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/src"
cat >"$work/time-compile" <<'EOF'
#!/bin/sh
# CMake's compiler launcher: one line per compile, "user sys object"
exec /usr/bin/time -a -o "$MM_TIMES" -f "%U %S $(printf '%s\n' "$@" | grep -A1 -x -- -o | tail -1)" "$@"
EOF
chmod +x "$work/time-compile"
cd "$work/src"
MM_TIMES="$work/times" CCACHE_DISABLE=1 CMAKE_CXX_COMPILER_LAUNCHER="$work/time-compile" \
  /usr/bin/time -o "$work/total" -f "%U %S" \
  "$PYTHON" -m pip wheel -q --disable-pip-version-check --no-build-isolation --no-deps -w "$work/wheel" . >/dev/null
grep -v cmTC "$work/times" | awk '{printf "%7.1f s  %s\n", $1 + $2, $3}' | sort -rn
awk '{printf "%7.1f s  the whole pip wheel (user+sys)\n", $1 + $2}' "$work/total"
