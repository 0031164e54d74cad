#!/usr/bin/env bash
# The whole check, as CI runs it: set-up, lint, format, types, then every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-test-tools
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff check";        ruff check .
echo "== ruff format --check"; ruff format --check .
echo "== mypy (strict)";     mypy
echo "== pytest";            pytest "$@"
