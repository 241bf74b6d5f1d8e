#!/usr/bin/env bash
# Set up (if needed) and run the main job: napari with a real anisotropic sample, the niiv widget and
# a live reconstruction; headless (Xvfb), it saves screenshots to out/main/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export NIIV_DATA_DIR=${NIIV_DATA_DIR:-$(cd .. && pwd)/shared/data}
if [ -z "${DISPLAY:-}" ]; then
  exec xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python scripts/main_job.py "$@"
fi
exec .venv/bin/python scripts/main_job.py "$@"
