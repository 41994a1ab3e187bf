#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer run of the CPU code paths.
#
#   scripts/sanitize_cpu.sh [extra pytest args]
#
# 1. Builds the kernels, the TF op library and the pybind11 module with
#    -DMYXTTS_SANITIZE=ON and CUDA off into build/sanitize-cpu/ (or
#    $MYXTTS_SANITIZE_BUILD_DIR). The in-tree build in myxtts_ops/ is never
#    touched.
# 2. Copies the Python packages and the tests into a temporary directory and
#    drops the sanitized libraries into that copy.
# 3. Runs the op tests (tests/test_reference.py -- the contract battery, run
#    for the fused op too --, tests/test_fused_op.py, tests/test_fuzz.py,
#    tests/test_silent_errors.py, tests/test_stop_op.py, tests/test_rule_op.py,
#    tests/test_finalise_op.py, or the files in
#    $MYXTTS_SANITIZE_TESTS)
#    there, with libasan/libubsan preloaded into the (uninstrumented) Python
#    interpreter.
#
# Exit status: non-zero on a build failure, a sanitizer report (ASan aborts;
# UBSan halts on the first error) or a failing test. Leak detection is off:
# TensorFlow and CPython leak at exit by design.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
BUILD_DIR="${MYXTTS_SANITIZE_BUILD_DIR:-$ROOT/build/sanitize-cpu}"
JOBS="${MYXTTS_OPS_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"
TESTS="${MYXTTS_SANITIZE_TESTS:-tests/test_reference.py tests/test_fused_op.py tests/test_fuzz.py tests/test_silent_errors.py tests/test_stop_op.py tests/test_rule_op.py tests/test_finalise_op.py}"
START=$(date +%s)

log() { echo "[sanitize_cpu +$(( $(date +%s) - START ))s] $*"; }

# ---------------------------------------------------------------- build
mkdir -p "$BUILD_DIR"
GEN=()
if command -v ninja >/dev/null 2>&1 && [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  GEN=(-G Ninja)
fi
mkdir -p "$BUILD_DIR"
log "configuring $BUILD_DIR"
cmake -S "$ROOT" -B "$BUILD_DIR" "${GEN[@]}" \
  -DPython3_EXECUTABLE="$(command -v "$PYTHON")" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMYXTTS_SANITIZE=ON \
  -DMYXTTS_OPS_CUDA=OFF \
  -DMYXTTS_OUTPUT_DIR="$BUILD_DIR/out" >"$BUILD_DIR.configure.log" 2>&1 \
  || { cat "$BUILD_DIR.configure.log"; exit 1; }
log "building (-j$JOBS)"
cmake --build "$BUILD_DIR" --parallel "$JOBS"

OUT="$BUILD_DIR/out"
KERNELS=$(ls "$OUT"/kernels*.so 2>/dev/null | head -n1 || true)
for f in "$OUT/_mel_loss_op.so" "$OUT/_build_info.py" "$OUT/_state_layout.py" "$KERNELS"; do
  [ -n "$f" ] && [ -f "$f" ] || { echo "sanitize_cpu: missing build output in $OUT" >&2; exit 1; }
done

# The libraries really are instrumented (a silently plain build would pass).
for f in "$OUT/_mel_loss_op.so" "$KERNELS"; do
  syms="$(nm -D --undefined-only "$f")"
  if [[ "$syms" != *__asan_report* || "$syms" != *__ubsan_handle* ]]; then
    echo "sanitize_cpu: $f is not built with ASan + UBSan" >&2; exit 1
  fi
done

# ------------------------------------------------- temporary package copy
WORK="$(mktemp -d "${TMPDIR:-/tmp}/myxtts-sanitize.XXXXXX")"
cleanup() { rm -rf "$WORK"; }
if [ "${MYXTTS_SANITIZE_KEEP:-0}" = "0" ]; then trap cleanup EXIT; fi
log "package copy in $WORK"
mkdir -p "$WORK/python"
# Sources only: no in-tree .so, no caches.
tar -C "$ROOT" --exclude='*.so' --exclude='__pycache__' -cf - myxtts_ops | tar -C "$WORK" -xf -
tar -C "$ROOT/python" --exclude='__pycache__' -cf - myxtts | tar -C "$WORK/python" -xf -
tar -C "$ROOT" --exclude='__pycache__' --exclude='gpu' -cf - tests | tar -C "$WORK" -xf -
mkdir -p "$WORK/myxtts_ops/_lib"
cp "$OUT/_mel_loss_op.so" "$OUT/_build_info.py" "$OUT/_state_layout.py" "$WORK/myxtts_ops/_lib/"
cp "$KERNELS" "$WORK/myxtts_ops/"
[ -f "$ROOT/pyproject.toml" ] && cp "$ROOT/pyproject.toml" "$WORK/" || true
[ -f "$ROOT/setup.cfg" ] && cp "$ROOT/setup.cfg" "$WORK/" || true

# --------------------------------------------------------------- run
LIBASAN="$(gcc -print-file-name=libasan.so)"
LIBUBSAN="$(gcc -print-file-name=libubsan.so)"
for f in "$LIBASAN" "$LIBUBSAN"; do
  [ -f "$f" ] || { echo "sanitize_cpu: $f not found (gcc -print-file-name)" >&2; exit 1; }
done

export PYTHONPATH="$WORK:$WORK/python"
export PYTHONDONTWRITEBYTECODE=1
export TF_CPP_MIN_LOG_LEVEL=2
export CUDA_VISIBLE_DEVICES=""
# Reports go to stderr and abort the process with a non-zero status.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:detect_odr_violation=0:allocator_may_return_null=1:print_summary=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:abort_on_error=1"

cd "$WORK"
# Make sure the copy (with the sanitized libraries) is what gets imported.
LD_PRELOAD="$LIBASAN:$LIBUBSAN" "$PYTHON" - <<'EOF'
import os, sys
import myxtts_ops, myxtts_ops.kernels as k
from myxtts_ops import _loader
work = os.getcwd()
for f in (myxtts_ops.__file__, k.__file__, _loader._LIBRARY_FILE):
    assert f.startswith(work), f"{f} is not from the sanitized copy in {work}"
_loader.load_ops()
print("sanitize_cpu: sanitized op library loaded from", _loader._LIBRARY_FILE)
EOF

present=()
for t in $TESTS; do
  if [ -f "$t" ]; then present+=("$t"); else log "skipping $t (not present)"; fi
done
[ ${#present[@]} -gt 0 ] || { echo "sanitize_cpu: no test files to run" >&2; exit 1; }

log "running pytest ${present[*]}"
set +e
LD_PRELOAD="$LIBASAN:$LIBUBSAN" "$PYTHON" -m pytest -q -p no:cacheprovider "${present[@]}" "$@"
rc=$?
set -e
log "done: pytest exit status $rc, total $(( $(date +%s) - START ))s"
exit $rc
