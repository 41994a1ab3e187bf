#!/usr/bin/env bash
# Build myxtts-ops against each supported TensorFlow minor and run the op,
# XTTSLoss, install, XLA and MyXTTS drop-in tests against it (the README's
# "Which TensorFlow it is built for" says what this found).
#
#   bash scripts/tf_versions.sh            # every supported minor (build_backend/tf_requirement.py)
#   bash scripts/tf_versions.sh 2.18 2.20  # just these
#
# One fresh venv per minor (tensorflow-cpu, CPU build, --no-build-isolation so
# the TensorFlow under test is the one built against), a clean copy of the
# committed tree (HEAD), about 3 minutes per minor once pip's cache holds the
# wheels. python3 must be one every minor has wheels for (3.9 to 3.12 for
# 2.16). Prints one line per minor and exits non-zero if any failed.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/myxtts-tf-versions.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

if [ "$#" -eq 0 ]; then
  mapfile -t MINORS < <(python3 -c '
import sys
sys.path.insert(0, sys.argv[1])
import tf_requirement as t
major = t.OLDEST_SUPPORTED[0]  # one major: 2.x
print("\n".join("%d.%d" % (major, m) for m in range(t.OLDEST_SUPPORTED[1], t.NEWEST_SUPPORTED[1] + 1)))
' "$ROOT/build_backend")
else
  MINORS=("$@")
fi
[ "${#MINORS[@]}" -gt 0 ] || { echo "tf_versions.sh: no TensorFlow minors to test" >&2; exit 1; }

TESTS=(test_fused_op.py test_xtts_loss.py test_rule_op.py test_finalise_op.py test_install.py test_xla.py
  test_myxtts_dropin.py)
git clone -q "$ROOT" "$WORK/src" || exit 1
echo "testing $(git -C "$WORK/src" rev-parse --short HEAD) against TensorFlow ${MINORS[*]}"
SUMMARY=()
failed=0
for minor in "${MINORS[@]}"; do
  echo "=== TensorFlow $minor"
  venv="$WORK/venv-$minor"
  log="$WORK/$minor.log"
  (
    set -e
    python3 -m venv "$venv"
    . "$venv/bin/activate"
    python -m pip install --quiet --upgrade pip
    python -m pip install --quiet "tensorflow-cpu==$minor.*" "setuptools>=77" wheel cmake ninja \
      pybind11 pytest hypothesis psutil
    cd "$WORK/src"
    rm -rf build
    MYXTTS_OPS_CUDA=off pip install --quiet --no-build-isolation .
    cd "$WORK"
    python -c 'import tensorflow as tf; from myxtts_ops import _loader
reason = _loader.xla_unavailable_reason()
print("TensorFlow", tf.__version__, "| XLA custom calls:", "no: " + reason.split(" (")[0] if reason else "yes")'
    python -m pytest -q -p no:cacheprovider "${TESTS[@]/#/"$WORK/src/tests/"}"
  ) >"$log" 2>&1
  rc=$?
  result="$(grep -E '^TensorFlow ' "$log" | tail -1) | $(grep -E '^[0-9]+ (passed|failed)|^=+ .*[0-9]+ (passed|failed|errors?)' "$log" | tail -1)"
  if [ "$rc" -ne 0 ]; then
    failed=1
    result="FAILED (exit $rc) $result"
    tail -40 "$log"
  fi
  SUMMARY+=("$minor: $result")
  rm -rf "$venv"
done
echo "=== summary"
printf '%s\n' "${SUMMARY[@]}"
exit "$failed"
