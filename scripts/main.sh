#!/usr/bin/env bash
# Set up (if needed) and run the main job: niiv on real anisotropic EM, headless; results in out/main/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export NIIV_DATA_DIR=${NIIV_DATA_DIR:-$(cd .. && pwd)/shared/data}
.venv/bin/python scripts/main_job.py
