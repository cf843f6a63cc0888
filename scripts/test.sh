#!/usr/bin/env bash
# The test command: lint, type-check, then pytest (extra arguments go to pytest), in the
# project's .venv. Every step runs even if an earlier one fails, so one run shows everything;
# the exit status is non-zero if any failed. Usage: scripts/test.sh [pytest args...]
set -euo pipefail

cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/_venv.sh
source scripts/_venv.sh
maildesk_venv

failed=()

step() {
    local name=$1
    shift
    echo "==> $name: $*"
    local rc=0
    "$@" || rc=$?
    if [[ $name == pytest && $rc -eq 5 ]]; then
        # pytest's "no tests collected": a typo in a path must not pass as green.
        echo "==> pytest collected no tests" >&2
    fi
    if [[ $rc -ne 0 ]]; then
        failed+=("$name (exit $rc)")
    fi
}

# Only directories that exist: git does not keep empty ones, and ruff fails on a missing path.
lint_paths=()
for dir in src tests bench; do
    if [[ -d $dir ]]; then
        lint_paths+=("$dir")
    fi
done

step ruff ruff check "${lint_paths[@]}"
step mypy mypy
step pytest pytest "$@"

if [[ ${#failed[@]} -eq 0 ]]; then
    echo "test.sh: OK (ruff, mypy, pytest all passed)"
else
    summary=$(printf '%s, ' "${failed[@]}")
    echo "test.sh: FAILED: ${summary%, }"
    exit 1
fi
