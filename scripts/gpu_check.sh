#!/usr/bin/env bash
# GPU verification of the CUDA kernels, from the repository root of a machine
# with nvcc, CMake, pybind11 and CuPy and/or PyTorch (TensorFlow not needed):
#
#   bash scripts/gpu_check.sh            # everything
#   GPU_CHECK_STEPS="build test" bash scripts/gpu_check.sh
#   GPU_CHECK_QUICK=1 bash scripts/gpu_check.sh   # quick benchmark
#   bash scripts/gpu_check.sh --dry-run  # no GPU needed: check that every step's
#                                        # files, CMake options, commands and test
#                                        # selections resolve (CI runs this)
#
# Steps (GPU_CHECK_STEPS, default all, in this order):
#   build     configure + build the pybind11 module only (no TF op) for sm_${CUDA_ARCH:-90}
#             and copy kernels*.so into myxtts_ops/
#   sass      ptxas resource usage; SASS of the forward/backward kernels: 128-bit
#             loads (LDG.E.128) and local memory (LDL/STL)
#   test      pytest tests/gpu
#   sanitize  compute-sanitizer memcheck, racecheck, initcheck, synccheck over
#             scripts/sanitize_driver.py
#   launches  kernel launches per call (graph capture; torch.profiler too if present)
#   bench     benchmarks/gpu_bench.py
# Logs and results go to $OUT (or build-gpu/check). Exit status: number of failed steps.
set -uo pipefail

cd "$(dirname "$0")/.."
DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$arg' (use --dry-run or no argument)" >&2; exit 2 ;;
  esac
done
OUT_DIR="${OUT:-build-gpu/check}"
BUILD_DIR="${BUILD_DIR:-build-gpu}"
CUDA_ARCH="${CUDA_ARCH:-90}"
PY="${PYTHON:-python3}"
# CUDA binary tools: PATH, then next to nvcc, then the usual toolkit folders.
find_cuda_tool() {
  local t="$1" d
  command -v "$t" 2>/dev/null && return 0
  for d in "$(dirname "$(readlink -f "$(command -v nvcc 2>/dev/null || echo /nonexistent)")")" \
           "${CUDA_HOME:-/nonexistent}/bin" /usr/local/cuda/bin /usr/local/cuda-*/bin; do
    [[ -x "$d/$t" ]] && { echo "$d/$t"; return 0; }
  done
  echo "$t"
}
CUOBJDUMP="$(find_cuda_tool cuobjdump)"
SANITIZER="$(find_cuda_tool compute-sanitizer)"
ALL_STEPS="build sass test sanitize launches bench"
STEPS="${GPU_CHECK_STEPS:-$ALL_STEPS}"
for step in $STEPS; do
  if [[ " $ALL_STEPS " != *" $step "* ]]; then
    echo "gpu_check.sh: unknown step '$step' in GPU_CHECK_STEPS; steps: $ALL_STEPS" >&2
    exit 2
  fi
done
# The pytest selection of the second array library's run (step test).
TORCH_SUBSET="wrapper or stream or launch or deterministic or oracle and 1031"

# ---------------------------------------------------------------------------
# --dry-run: what every step needs, checked without a GPU. Exit status: failures.
if [[ $DRY_RUN -eq 1 ]]; then
  fails=0
  check() {  # check DESCRIPTION COMMAND...
    local what="$1"; shift
    if "$@" > /dev/null 2>&1; then echo "ok    $what"; else echo "FAIL  $what"; fails=$((fails + 1)); fi
  }
  tool() {  # tool NAME PATH: GPU-machine tools are reported, not required here
    if command -v "$2" > /dev/null 2>&1; then echo "ok    $1: $(command -v "$2")"
    else echo "note  $1 not found here (needed on the GPU machine)"; fi
  }
  for f in CMakeLists.txt csrc/kernels/mel_loss_cuda.cu csrc/kernels/stop_loss_cuda.cu \
           csrc/python/kernels_module.cc scripts/sanitize_driver.py scripts/sass_check.py \
           benchmarks/gpu_bench.py tests/gpu/conftest.py tests/gpu/test_cuda_kernels.py \
           tests/gpu/test_stop_cuda.py; do
    check "file $f" test -f "$f"
  done
  for opt in MYXTTS_BUILD_TF_OP MYXTTS_BUILD_PYBIND MYXTTS_OPS_CUDA; do
    check "CMake option $opt (step build)" grep -Eq "(option|set)\($opt " CMakeLists.txt
  done
  for name in $("$PY" -c "import sys; sys.path.insert(0, 'scripts'); import sass_check; print(*sass_check.KERNEL_NAMES)" 2>/dev/null || echo "sass_check.KERNEL_NAMES"); do
    check "kernel $name of the SASS check is in the CUDA source" grep -q "$name" csrc/kernels/mel_loss_cuda.cu
  done
  check "command $PY" command -v "$PY"
  check "command cmake" command -v cmake
  tool nvcc nvcc
  tool cuobjdump "$CUOBJDUMP"
  tool compute-sanitizer "$SANITIZER"
  check "python scripts compile" "$PY" -m py_compile scripts/sanitize_driver.py \
    scripts/sass_check.py benchmarks/gpu_bench.py
  check "myxtts_ops.gpu and the array backend import" \
    "$PY" -P -c "import importlib.util, sys; importlib.util.find_spec('myxtts_ops') or sys.path.insert(0, '.'); import myxtts_ops.gpu, myxtts_ops.array_backend"
  check "sanitize_driver.py --help" "$PY" scripts/sanitize_driver.py --help
  check "gpu_bench.py --help" "$PY" benchmarks/gpu_bench.py --help
  check "pytest collects tests/gpu (step test)" \
    "$PY" -P -m pytest tests/gpu --collect-only -q -p no:cacheprovider
  check "the PyTorch subset selects tests (step test)" bash -c \
    "'$PY' -P -m pytest tests/gpu --collect-only -q -p no:cacheprovider -k '$TORCH_SUBSET' | grep -q '::'"
  echo "dry run: $fails failure(s)"
  exit "$fails"
fi

mkdir -p "$OUT_DIR"
VERDICTS="$OUT_DIR/verdicts.txt"
: > "$VERDICTS"
: > "$OUT_DIR/gpu_check.log"

# Each step runs in a subshell piped to tee, so verdicts go through a file.
log() { printf '\n=== %s ===\n' "$*"; }
want() { [[ " $STEPS " == *" $1 "* ]]; }
record() {  # record STEP RC
  if [[ "$2" -eq 0 ]]; then echo "PASS  $1" >> "$VERDICTS"; else echo "FAIL  $1 (rc=$2)" >> "$VERDICTS"; fi
}

{
  log "environment"
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo "nvidia-smi unavailable"
  command -v nvcc >/dev/null && nvcc --version | tail -n 2
  cmake --version | head -n 1
  "$PY" - <<'EOF'
import importlib
for m in ("numpy", "pybind11", "cupy", "torch", "jax", "pytest"):
    try:
        mod = importlib.import_module(m)
        print(f"{m} {getattr(mod, '__version__', '?')}")
    except Exception as e:
        print(f"{m}: not available ({type(e).__name__})")
EOF
} 2>&1 | tee -a "$OUT_DIR/gpu_check.log"

# ---------------------------------------------------------------------------
if want build; then
  log "build (sm_${CUDA_ARCH}, pybind11 module only)"
  (
    set -e
    cmake -S . -B "$BUILD_DIR" \
      -DMYXTTS_BUILD_TF_OP=OFF -DMYXTTS_BUILD_PYBIND=ON -DMYXTTS_OPS_CUDA=ON \
      -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH}" \
      -DCMAKE_CUDA_FLAGS="-lineinfo" \
      -DPython3_EXECUTABLE="$(command -v "$PY")"
    cmake --build "$BUILD_DIR" -j "$(nproc 2>/dev/null || echo 8)" --verbose
  ) > "$OUT_DIR/build.log" 2>&1
  rc=$?
  if [[ $rc -eq 0 ]]; then
    so=$(find "$BUILD_DIR" -name 'kernels*.so' -newer CMakeLists.txt | head -n 1)
    [[ -z "$so" ]] && so=$(find "$BUILD_DIR" -name 'kernels*.so' | head -n 1)
    if [[ -n "$so" ]]; then
      rm -f myxtts_ops/kernels*.so && cp "$so" myxtts_ops/ && echo "installed $so -> myxtts_ops/"
      # The state layout generated from mel_loss_math.h goes where the package reads it.
      layout=$(find "$BUILD_DIR" -name '_state_layout.py' | head -n 1)
      if [[ -n "$layout" ]]; then
        cp "$layout" myxtts_ops/_lib/ && echo "installed $layout -> myxtts_ops/_lib/"
      else
        echo "no _state_layout.py produced"; rc=1
      fi
    else
      echo "no kernels*.so produced"; rc=1
    fi
  else
    tail -n 60 "$OUT_DIR/build.log"
  fi
  echo "--- ptxas resource usage (from -Xptxas=-v) ---"
  grep -E "ptxas info|bytes stack frame|spill" "$OUT_DIR/build.log" | sed 's/^ *//' | sort -u | head -n 80
  "$PY" -c "import sys; sys.path.insert(0, '.'); from myxtts_ops import kernels as k; print('built_with_cuda', k.built_with_cuda(), 'devices', k.cuda_device_count())" || rc=1
  record build $rc
fi 2>&1 | tee -a "$OUT_DIR/gpu_check.log"

# ---------------------------------------------------------------------------
if want sass; then
  log "SASS: resource usage, 128-bit loads, local memory"
  rc=0
  target=$(ls myxtts_ops/kernels*.so 2>/dev/null | head -n 1)
  obj=$(find "$BUILD_DIR" -name 'mel_loss_cuda.cu.o' 2>/dev/null | head -n 1)
  [[ -n "$obj" ]] && target="$obj"
  if [[ -z "$target" ]] || ! command -v "$CUOBJDUMP" >/dev/null; then
    echo "no CUDA binary or no cuobjdump"; rc=1
  else
    echo "binary: $target"
    "$CUOBJDUMP" --dump-resource-usage "$target" > "$OUT_DIR/resource_usage.txt" 2>&1 || rc=1
    grep -E "Function|REG|STACK|LOCAL" "$OUT_DIR/resource_usage.txt" | \
      (command -v c++filt >/dev/null && c++filt || cat) | head -n 60
    "$CUOBJDUMP" -sass "$target" > "$OUT_DIR/sass.txt" 2>&1 || rc=1
    "$PY" scripts/sass_check.py "$OUT_DIR/sass.txt" || rc=1
  fi
  record sass $rc
fi 2>&1 | tee -a "$OUT_DIR/gpu_check.log"

# ---------------------------------------------------------------------------
if want test; then
  log "pytest tests/gpu"
  "$PY" -m pytest tests/gpu -q -rs -p no:cacheprovider --junitxml="$OUT_DIR/pytest-gpu.xml"
  rc=$?
  # Second array library, if both are present: the stream / wrapper / launch tests.
  if "$PY" -c "import cupy, torch; assert torch.cuda.is_available()" 2>/dev/null; then
    log "pytest tests/gpu with PyTorch arrays (subset)"
    MYXTTS_GPU_BACKEND=torch "$PY" -m pytest tests/gpu -q -rs -p no:cacheprovider \
      -k "$TORCH_SUBSET" \
      --junitxml="$OUT_DIR/pytest-gpu-torch.xml" || rc=1
  fi
  record test $rc
fi 2>&1 | tee -a "$OUT_DIR/gpu_check.log"

# ---------------------------------------------------------------------------
if want sanitize; then
  rc=0
  if ! command -v "$SANITIZER" >/dev/null; then
    echo "compute-sanitizer not found"; rc=1
  else
    for tool in memcheck racecheck initcheck synccheck; do
      log "compute-sanitizer --tool $tool"
      extra=()
      [[ $tool == racecheck ]] && extra=(--racecheck-report all)
      [[ $tool == memcheck ]] && extra=(--check-api-memory-access yes)
      "$SANITIZER" --tool "$tool" "${extra[@]}" --target-processes all \
        --error-exitcode 99 "$PY" scripts/sanitize_driver.py > "$OUT_DIR/sanitize_$tool.log" 2>&1
      trc=$?
      tail -n 15 "$OUT_DIR/sanitize_$tool.log"
      [[ $trc -ne 0 ]] && { echo "$tool: FAILED (rc=$trc)"; rc=1; } || echo "$tool: clean"
    done
  fi
  record sanitize $rc
fi 2>&1 | tee -a "$OUT_DIR/gpu_check.log"

# ---------------------------------------------------------------------------
if want launches; then
  log "kernel launches per call"
  "$PY" scripts/sanitize_driver.py --count-launches
  record launches $?
fi 2>&1 | tee -a "$OUT_DIR/gpu_check.log"

# ---------------------------------------------------------------------------
if want bench; then
  log "benchmark"
  quick=()
  [[ -n "${GPU_CHECK_QUICK:-}" ]] && quick=(--quick)
  "$PY" benchmarks/gpu_bench.py "${quick[@]}" --json "$OUT_DIR/gpu_bench.json"
  record bench $?
fi 2>&1 | tee -a "$OUT_DIR/gpu_check.log"

{
  log "summary ($OUT_DIR)"
  cat "$VERDICTS"
} 2>&1 | tee -a "$OUT_DIR/gpu_check.log"
exit "$(grep -c '^FAIL' "$VERDICTS")"
