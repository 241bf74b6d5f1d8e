#!/usr/bin/env bash
# Create .venv with everything napari-niiv needs; safe to run again (it only adds what is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# Pin torch first: an unpinned torch may pull a multi-GB CUDA build onto a CPU-only machine.
# Set TORCH_SPEC (e.g. "torch --index-url https://download.pytorch.org/whl/cu124") to choose another build.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q ${TORCH_SPEC:-torch==2.13.0}
fi
.venv/bin/python -m pip install -q -e ".[test]"
