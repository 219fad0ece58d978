#!/usr/bin/env bash
# Builds this checkout against each torch it can get, as a user would (`pip install
# --no-build-isolation .`, and once from the sdist), then runs the Python op, mixer and callback
# tests and tests/python/test_build.py against the installed package (pytest --installed), and
# prints a Markdown table. Not part of `make test`: the CUDA wheels are several GB each.
#
#     scripts/torch-matrix.sh                  # every row below
#     scripts/torch-matrix.sh 2.13-cpu 2.14.1-notk
#
# Rows (name: torch, CUDA toolkit visible or hidden by scripts/without-cuda-toolkit.sh, source):
#   2.13-cpu            torch 2.13.0, the CPU wheel                        clone
#   2.14.1-toolkit      torch 2.14.1 (CUDA 13.0), nvcc visible             clone
#   2.14.1-notk         torch 2.14.1, no toolkit                           clone
#   2.14.1-notk-sdist   torch 2.14.1, no toolkit                           sdist
#   latest-toolkit      the newest torch on the registry (CUDA), nvcc visible   clone
#   latest-notk         the newest torch on the registry, no toolkit       clone
#
# Environment: MM_MATRIX_VENVS, the folder of the venvs (one per torch, made when missing and
# reused; default ~/.cache/manifold-mixup/torch-matrix); MM_MATRIX_OUT, where the logs and the
# table go (default build/torch-matrix); PYTHON, the Python that makes the venvs (python3);
# MAX_JOBS. "latest" installs plain `torch` with PIP_CONSTRAINT=/dev/null, so that a pip
# constraint capping torch does not hold it back.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
VENVS=${MM_MATRIX_VENVS:-${XDG_CACHE_HOME:-$HOME/.cache}/manifold-mixup/torch-matrix}
OUT=${MM_MATRIX_OUT:-$ROOT/build/torch-matrix}
TESTS=(tests/python/test_build.py tests/python/test_ops.py tests/python/test_mixers.py
       tests/python/test_callbacks.py)
ALL_ROWS=(2.13-cpu 2.14.1-toolkit 2.14.1-notk 2.14.1-notk-sdist latest-toolkit latest-notk)
rows=("$@")
[ ${#rows[@]} -gt 0 ] || rows=("${ALL_ROWS[@]}")
mkdir -p "$VENVS" "$OUT"
TABLE="$OUT/table.md"

pip_in() { local venv=$1; shift; "$venv/bin/python" -m pip install --disable-pip-version-check \
           --root-user-action=ignore -q "$@"; }

# The venv of one torch ("2.13.0", "2.14.1", "latest"), made and filled on first use.
venv_for() {
  local spec=$1 venv="$VENVS/torch-$1"
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    echo "torch-matrix: making $venv" >&2
    rm -rf "$venv" && "$PYTHON" -m venv "$venv" || return 1
    if [ "$spec" = latest ]; then
      PIP_CONSTRAINT=/dev/null pip_in "$venv" torch || return 1
    else
      pip_in "$venv" "torch==$spec" || return 1
    fi
  elif [ "$spec" = latest ]; then
    PIP_CONSTRAINT=/dev/null pip_in "$venv" --upgrade torch || return 1
  fi
  # What the tests need beside torch (pytest, fastai with --no-deps, ...), as `make test` installs it.
  # (For "latest", without the pip constraint that may cap torch here, as its install was.)
  if [ "$spec" = latest ]; then
    PIP_CONSTRAINT=/dev/null PYTHON="$venv/bin/python" ./scripts/install-deps.sh >&2 || return 1
  else
    PYTHON="$venv/bin/python" ./scripts/install-deps.sh >&2 || return 1
  fi
  echo "$venv"
}

sdist() {
  local venv=$1 dist="$OUT/sdist"
  rm -rf "$dist" && mkdir -p "$dist"
  # The PEP 517 hook `python -m build --sdist` calls, without its isolated environment.
  "$venv/bin/python" -c "import setuptools.build_meta as b; print(b.build_sdist('$dist'))" | tail -n1
}

echo "| torch | CUDA | toolkit | from | build | CUDA kernel | CUDA kernel registered (mix, _mix_backward) | tests (passed / failed / skipped) |" > "$TABLE"
echo "|---|---|---|---|---|---|---|---|" >> "$TABLE"

for row in "${rows[@]}"; do
  case $row in
    2.13-cpu) spec=2.13.0; toolkit=visible; from=clone ;;
    2.14.1-toolkit) spec=2.14.1; toolkit=visible; from=clone ;;
    2.14.1-notk) spec=2.14.1; toolkit=hidden; from=clone ;;
    2.14.1-notk-sdist) spec=2.14.1; toolkit=hidden; from=sdist ;;
    latest-toolkit) spec=latest; toolkit=visible; from=clone ;;
    latest-notk) spec=latest; toolkit=hidden; from=clone ;;
    *) echo "torch-matrix: unknown row $row (rows: ${ALL_ROWS[*]})" >&2; exit 2 ;;
  esac
  log="$OUT/$row.log"
  : > "$log"
  echo "torch-matrix: $row (log: $log)" >&2
  if ! venv=$(venv_for "$spec" 2>>"$log"); then
    echo "| $spec | | $toolkit | $from | venv failed (see $row.log) | | | |" >> "$TABLE"; continue
  fi
  py="$venv/bin/python"
  version=$("$py" -c "import torch; print(torch.__version__)" 2>/dev/null)
  cuda=$("$py" -c "import torch; print(torch.version.cuda or '-')" 2>/dev/null)
  shown_toolkit=$toolkit
  [ "$cuda" = - ] && shown_toolkit="- (CPU torch)"
  hide=()
  [ "$toolkit" = hidden ] && hide=(./scripts/without-cuda-toolkit.sh)
  target=.
  if [ "$from" = sdist ]; then
    target="$OUT/sdist/$(sdist "$venv" 2>>"$log")" || { echo "| $version | $cuda | $toolkit | sdist | sdist failed | | | |" >> "$TABLE"; continue; }
  fi
  start=$(date +%s)
  "${hide[@]}" "$py" -m pip install --disable-pip-version-check --root-user-action=ignore -v \
    --no-build-isolation --no-deps --force-reinstall "$target" >> "$log" 2>&1
  built=$?
  seconds=$(( $(date +%s) - start ))
  if [ $built -ne 0 ]; then
    reason=$(grep -E -m1 "CMake Error|error:|fatal" "$log" | cut -c1-80)
    echo "| $version | $cuda | $shown_toolkit | $from | **failed** after ${seconds} s: \`$reason\` | | | |" >> "$TABLE"; continue
  fi
  # setup.py's line: "manifold-mixup: built against torch X, CUDA kernel: fused, in <folder>".
  kernel=$(sed -n 's/.*manifold-mixup: built against torch .*, CUDA kernel: \([a-z]*\),.*/\1/p' "$log" | tail -n1)
  # CMake's line, when it configured: "manifold_mixup: CUDA architectures 75-real;80-real".
  archs=$(sed -n 's/.*manifold_mixup: CUDA architectures //p' "$log" | tail -n1 | sed 's/-real//g; s/;/, /g')
  [ "$kernel" = fused ] && [ -n "$archs" ] && kernel="fused ($archs)"
  registered=$(cd / && "$py" -c "import torch, manifold_mixup
print(' '.join('yes' if torch._C._dispatch_has_kernel_for_dispatch_key(f'manifold_mixup::{op}', 'CUDA') else 'no' for op in ('mix', '_mix_backward')))" 2>>"$log")
  summary=$(OMP_NUM_THREADS=1 "$py" -m pytest --installed -q -p no:cacheprovider -p no:xdist "${TESTS[@]}" 2>&1 \
            | tee -a "$log" | tail -n1)
  count() { echo "$summary" | grep -o "[0-9]* $1" | grep -o "[0-9]*" || echo 0; }
  failed=$(( $(count failed) + $(count error) ))
  echo "| $version | $cuda | $shown_toolkit | $from | ${seconds} s | $kernel | $registered | $(count passed) / $failed / $(count skipped) |" >> "$TABLE"
done
cat "$TABLE"
