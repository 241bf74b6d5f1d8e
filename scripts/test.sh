#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, then check the import layers and lint.
# Arguments go to pytest: `scripts/test.sh -m "not slow"` is the quick loop.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export NIIV_DATA_DIR=${NIIV_DATA_DIR:-$(cd .. && pwd)/shared/data}
.venv/bin/python -m pytest "$@"
.venv/bin/lint-imports --no-cache
.venv/bin/ruff check src tests benchmarks scripts
.venv/bin/ruff format --check .  # as the pre-commit hook formats
