"""The ``niiv`` command's entry point. Light on purpose: Ctrl-C while the command-line interface
is still being imported (numpy, the settings: ~0.15 s) ends in one line, not a traceback."""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        print("niiv: interrupted", file=sys.stderr)
        return 130
    return run()
