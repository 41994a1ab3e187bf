#!/usr/bin/env bash
# Linters of the tree (fast, seconds): ruff (lint + format check) over the Python
# code, clang-format over csrc/. Configuration: [tool.ruff*] in pyproject.toml,
# .clang-format. Needs `pip install ruff clang-format` (or pre-commit: the same
# checks run from .pre-commit-config.yaml).
#
#   bash scripts/lint.sh          # check; exit status = number of failing linters
#   bash scripts/lint.sh --fix    # apply ruff format, ruff check --fix, clang-format -i
#   bash scripts/lint.sh --install-tools   # pip install the versions .pre-commit-config.yaml pins
set -uo pipefail
cd "$(dirname "$0")/.."

# The version pre-commit pins for a hook repository (its rev, without the "v").
pinned() { awk -v repo="$1" '$0 ~ "repo: .*/" repo "$" {on=1; next} on && /rev:/ {sub(/^v/, "", $2); print $2; exit}' .pre-commit-config.yaml; }

FIX=0
case "${1:-}" in
  "") ;;
  --fix) FIX=1 ;;
  --install-tools)
    exec python -m pip install --quiet "ruff==$(pinned ruff-pre-commit)" \
      "clang-format==$(pinned mirrors-clang-format)" ;;
  *) echo "lint.sh: unknown argument '$1' (use --fix, --install-tools or no argument)" >&2; exit 2 ;;
esac

for tool in ruff clang-format; do
  if ! command -v "$tool" > /dev/null; then
    echo "lint.sh: $tool not found (pip install ruff clang-format)" >&2
    exit 2
  fi
done

# Tracked C++/CUDA sources (and untracked ones not ignored by git).
mapfile -t CSRC < <(git ls-files --cached --others --exclude-standard -- \
  'csrc/*.h' 'csrc/*.cc' 'csrc/*.cu' 'csrc/*.cuh' 'csrc/*.cpp')

failed=0
run() {  # run NAME COMMAND...
  local name="$1"; shift
  echo "=== $name"
  if "$@"; then echo "ok: $name"; else echo "FAILED: $name"; failed=$((failed + 1)); fi
}

if [[ $FIX -eq 1 ]]; then
  run "ruff format" ruff format .
  run "ruff check --fix" ruff check --fix .
  run "clang-format -i" clang-format -i "${CSRC[@]}"
else
  run "ruff check" ruff check .
  run "ruff format --check" ruff format --check .
  run "clang-format --dry-run --Werror (${#CSRC[@]} files)" \
    clang-format --dry-run --Werror "${CSRC[@]}"
fi
echo "lint: $failed linter(s) failed"
exit "$failed"
