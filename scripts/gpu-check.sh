#!/usr/bin/env bash
# Does CUDA work? One command on a machine with a GPU, nvcc, CMake and torch with CUDA:
#
#   scripts/gpu-check.sh            build with CUDA (build-gpu/), run the CUDA tests, the C host
#                                   on CUDA, compute-sanitizer, and make bench's CUDA table
#   scripts/gpu-check.sh --cpu      the same steps on the CPU build ($BUILD, default build/):
#                                   no CUDA build, no sanitizer; `make test` runs this, so that
#                                   the script and its tests keep working before a GPU is lent
#
# Prints one table (step | result | details) and exits 1 if a step failed. Needs no network,
# no GoogleTest and no fastai (their steps say "skipped"). Logs and the table go to $OUT_DIR
# (default build-gpu/check, or $BUILD/gpu-check with --cpu). PYTHON picks the interpreter.
# Budget on one GPU: under 8 minutes, most of it the build.
set -uo pipefail

MODE=cuda
[ "${1:-}" = "--cpu" ] && MODE=cpu
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT" || exit 2
PY="${PYTHON:-python3}"
START=$SECONDS
if [ "$MODE" = cuda ]; then
  BUILD_DIR="${BUILD_DIR:-$ROOT/build-gpu}"
else
  BUILD_DIR="${BUILD:-$ROOT/build}"
  case "$BUILD_DIR" in /*) ;; *) BUILD_DIR="$ROOT/$BUILD_DIR" ;; esac
fi
OUT_DIR="${OUT_DIR:-$BUILD_DIR/$([ "$MODE" = cuda ] && echo check || echo gpu-check)}"
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/rows.tsv "$OUT_DIR"/junit.xml "$OUT_DIR"/bench.json
JOBS="$(nproc 2>/dev/null || echo 2)"

row() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$OUT_DIR/rows.tsv"; }
say() { echo "gpu-check: $*" >&2; }
report() {
  "$PY" scripts/gpu_check.py report "$OUT_DIR" "$MODE"
  local rc=$?
  echo "($MODE mode, $((SECONDS - START)) s in all; logs in $OUT_DIR)"
  exit $rc
}

# --- 1. build ---------------------------------------------------------------------------------
t0=$SECONDS
if [ "$MODE" = cuda ]; then
  if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    row built FAILED "torch in $PY sees no GPU (torch.cuda.is_available() is False); use --cpu"
    report
  fi
  NVCC="$(command -v nvcc || true)"
  [ -z "$NVCC" ] && [ -x /usr/local/cuda/bin/nvcc ] && NVCC=/usr/local/cuda/bin/nvcc
  if [ -z "$NVCC" ]; then
    row built FAILED "no nvcc on PATH or in /usr/local/cuda/bin: the fused CUDA kernels need it"
    report
  fi
  # torch's CMake config looks for the toolkit beside nvcc, and for libnvrtc in it; a toolkit
  # without nvrtc can use the one pip installed beside torch (nvidia-cuda-nvrtc).
  TOOLKIT="$(dirname "$(dirname "$(readlink -f "$NVCC")")")"
  [ -f "$TOOLKIT/include/cuda_runtime.h" ] || TOOLKIT=/usr/local/cuda
  CONFIG=(-DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE="$(command -v "$PY")" -DMM_BUILD_TESTS=OFF
          -DCMAKE_CUDA_COMPILER="$NVCC" -DCUDA_TOOLKIT_ROOT_DIR="$TOOLKIT")
  if ! compgen -G "$TOOLKIT/lib64/libnvrtc.so*" >/dev/null && ! compgen -G "$TOOLKIT/lib/libnvrtc.so*" >/dev/null; then
    NVRTC="$("$PY" -c "import glob, os, site; print(next(iter(sorted(glob.glob(os.path.join(site.getsitepackages()[0], 'nvidia', '*', 'lib', 'libnvrtc.so*')))), ''))")"
    [ -n "$NVRTC" ] && CONFIG+=(-DCUDA_nvrtc_LIBRARY="$NVRTC")
  fi
  command -v ninja >/dev/null && CONFIG+=(-G Ninja)
  say "building with CUDA in $BUILD_DIR ($NVCC)"
  cmake -S . -B "$BUILD_DIR" "${CONFIG[@]}" > "$OUT_DIR/build.log" 2>&1 &&
    cmake --build "$BUILD_DIR" -j "$JOBS" --target mm_python manifold_mixup >> "$OUT_DIR/build.log" 2>&1
  rc=$?
  if [ $rc -ne 0 ]; then
    row built FAILED "cmake failed ($((SECONDS - t0)) s): $(grep -m1 -iE 'error' "$OUT_DIR/build.log" | cut -c1-160)"
    report
  fi
  WITH_CUDA="$(sed -n 's/^MM_WITH_CUDA:[A-Z]*=//p' "$BUILD_DIR/CMakeCache.txt")"
  ARCHS="$(sed -n 's/^MM_CUDA_ARCHITECTURES:[A-Z]*=//p' "$BUILD_DIR/CMakeCache.txt")"
  [ -z "$ARCHS" ] && ARCHS="$(grep -m1 'CUDA architectures' "$OUT_DIR/build.log" | sed 's/.*architectures //')"
  SO="$BUILD_DIR/libmanifold_mixup_core.so"  # the kernels live in the one core library
  CUBINS="$(command -v cuobjdump >/dev/null && cuobjdump --list-elf "$SO" 2>/dev/null |
            grep -o 'sm_[0-9a-z]*' | sort -u | tr '\n' ' ')"
  if [ "$WITH_CUDA" != ON ]; then
    row built FAILED "CMake built no CUDA kernels (MM_WITH_CUDA=$WITH_CUDA): see build.log"
    report
  fi
  row built ok "fused CUDA kernels for ${ARCHS:-?} (cubins: ${CUBINS:-cuobjdump not found}), $("$NVCC" --version | sed -n 's/.*release \([0-9.]*\).*/nvcc \1/p'), $((SECONDS - t0)) s"
else
  if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
    row built FAILED "no CPU build in $BUILD_DIR: run make build first"
    report
  fi
  row built ok "CPU build in $BUILD_DIR (no CUDA build: skipped: no GPU)"
fi
say "built ($((SECONDS - t0)) s)"

# --- 2. the tests that run on the device (pytest) ---------------------------------------------
t0=$SECONDS
if [ "$MODE" = cuda ]; then
  TESTS=(tests/python/test_cuda.py tests/python/test_ops.py tests/python/test_family.py -k "test_cuda or cuda")
  DEVICE_ENV=()
else
  TESTS=(tests/python/test_cuda.py)
  DEVICE_ENV=(MM_TEST_DEVICE=cpu)
fi
env "${DEVICE_ENV[@]}" "$PY" -m pytest -q -p no:cacheprovider -o addopts="" "${TESTS[@]}" \
    --junitxml="$OUT_DIR/junit.xml" -rs > "$OUT_DIR/pytest.log" 2>&1
say "pytest: $(tail -1 "$OUT_DIR/pytest.log") ($((SECONDS - t0)) s)"

# --- 3. the C host: tests/c/test_capi.c against the built C library ---------------------------
t0=$SECONDS
LIB="$BUILD_DIR/capi/libmanifold_mixup.so"
TORCH_INCLUDE="$("$PY" -c "import torch.utils.cpp_extension as c; print(c.include_paths()[0])" 2>/dev/null)"
CC="${CC:-cc}"
c_models() {  # the C tests' models: those ctest wrote into the build, else written here
  if [ -f "$BUILD_DIR/tests/c/models/mlp.pt" ]; then
    echo "$BUILD_DIR/tests/c/models"
  else
    "$PY" tests/c/make_models.py "$OUT_DIR/models" >> "$OUT_DIR/c_host.log" 2>&1 && echo "$OUT_DIR/models"
  fi
}
if [ ! -f "$LIB" ]; then
  row "C host" FAILED "no libmanifold_mixup.so in $BUILD_DIR/capi"
elif ! "$CC" -std=c11 -O1 -o "$OUT_DIR/test_capi" tests/c/test_capi.c -Icapi -I"$TORCH_INCLUDE" \
       -L"$(dirname "$LIB")" -Wl,-rpath,"$(dirname "$LIB")" -lmanifold_mixup -lm -lpthread \
       > "$OUT_DIR/c_host.log" 2>&1; then
  row "C host" FAILED "tests/c/test_capi.c did not compile: $(head -1 "$OUT_DIR/c_host.log" | cut -c1-140)"
elif ! MODELS="$(c_models)"; then
  row "C host" FAILED "tests/c/make_models.py failed (see c_host.log)"
elif "$OUT_DIR/test_capi" "$MODELS" devices training_step errors >> "$OUT_DIR/c_host.log" 2>&1; then
  if [ "$MODE" = cuda ]; then
    row "C host (test_capi on CUDA)" ok "a mixed training step on cuda through the C ABI, and 2 more cases, $((SECONDS - t0)) s"
  else
    row "C host (test_capi)" ok "on the CPU; CUDA refused with the reason (no GPU), $((SECONDS - t0)) s"
  fi
else
  row "C host" FAILED "$(grep -m2 -E 'FAIL|failed' "$OUT_DIR/c_host.log" | tr '\n' ' ' | cut -c1-160)"
fi
say "C host ($((SECONDS - t0)) s)"

# --- 4. compute-sanitizer on a small workload -------------------------------------------------
sanitize() {  # tool
  local tool=$1 t0=$SECONDS log="$OUT_DIR/sanitizer-$1.log" filter=()
  # Only our kernels are instrumented (torch's run at full speed); the caching allocator is off
  # so that an access past a tensor's end is past an allocation's end.
  compute-sanitizer --help 2>&1 | grep -q -- '--kernel-name' && filter=(--kernel-name kns=manifold_mixup)
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 240 compute-sanitizer --tool "$tool" --error-exitcode 9 \
      "${filter[@]}" "$PY" scripts/gpu_check.py workload > "$log" 2>&1
  local rc=$?
  local summary
  summary="$(grep -m1 'ERROR SUMMARY' "$log" | sed 's/^=* *//')"
  if [ $rc -eq 0 ] && grep -q "workload done" "$log"; then
    row "compute-sanitizer $tool" ok "${summary:-no error}, our kernels instrumented, $((SECONDS - t0)) s"
  elif [ $rc -eq 124 ]; then
    row "compute-sanitizer $tool" FAILED "did not finish in 240 s"
  else
    row "compute-sanitizer $tool" FAILED "${summary:-exit $rc}: $(grep -m1 -E 'Invalid|Error|error' "$log" | cut -c1-140)"
  fi
}
if [ "$MODE" = cpu ]; then
  row "compute-sanitizer memcheck" "skipped: no GPU" ""
  row "compute-sanitizer racecheck" "skipped: no GPU" ""
elif ! command -v compute-sanitizer >/dev/null; then
  row "compute-sanitizer memcheck" skipped "compute-sanitizer not found"
else
  sanitize memcheck
  # racecheck checks shared memory, which only the grouping block's scan touches through
  # shuffles; it runs when the time so far leaves room.
  if [ $((SECONDS - START)) -lt 330 ]; then
    sanitize racecheck
  else
    row "compute-sanitizer racecheck" skipped "skipped: $((SECONDS - START)) s spent already"
  fi
fi
say "sanitizer done ($((SECONDS - START)) s so far)"

# --- 5. make bench's device table -------------------------------------------------------------
t0=$SECONDS
if [ "$MODE" = cuda ]; then
  BENCH=(--table-only cuda --sizes 64 256 --dtypes float32 bfloat16 --min-time 0.05)
else
  BENCH=(--table-only cpu --sizes 1 --dtypes float32 --min-time 0.01)
fi
PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}" "$PY" bench/bench_mix.py "${BENCH[@]}" --json "$OUT_DIR/bench.json" > "$OUT_DIR/bench.log" 2>&1 ||
  say "bench failed: $(tail -1 "$OUT_DIR/bench.log")"
say "bench ($((SECONDS - t0)) s)"

report
