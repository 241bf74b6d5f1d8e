#!/usr/bin/env bash
# Create .venv with everything napari-niiv needs, and the system libraries napari needs to draw
# headless (Xvfb, Mesa, Qt's xcb); safe to run again (it only adds what is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# Xvfb and Qt's xcb libraries: napari cannot render with QT_QPA_PLATFORM=offscreen.
APT_PACKAGES="xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0
  libxcb-image0 libxcb-render-util0 libxcb-randr0 libxcb-shape0 libxcb-xfixes0 libxcb-xkb1 libxcb-cursor0
  libfontconfig1 libdbus-1-3"
if ! command -v Xvfb >/dev/null 2>&1 || ! ldconfig -p | grep -q libxcb-cursor; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $APT_PACKAGES >/dev/null
  else
    echo "setup: install Xvfb and Qt's xcb libraries with your package manager (see README)" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# Pin torch first: on Linux, PyPI's torch is the CUDA build (several GB of nvidia-* wheels), so a
# Linux machine without an NVIDIA driver gets the CPU build from PyTorch's own index.
# Set TORCH_SPEC (e.g. "torch --index-url https://download.pytorch.org/whl/cu124") to choose another build.
if [ -z "${TORCH_SPEC:-}" ]; then
  TORCH_SPEC="torch==2.13.0"
  if [ "$(uname -s)" = Linux ] && ! command -v nvidia-smi >/dev/null 2>&1; then
    TORCH_SPEC="$TORCH_SPEC --index-url https://download.pytorch.org/whl/cpu"
  fi
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # shellcheck disable=SC2086
  .venv/bin/python -m pip install -q --retries 2 $TORCH_SPEC
fi
.venv/bin/python -m pip install -q -e ".[test]"
