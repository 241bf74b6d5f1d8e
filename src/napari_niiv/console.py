"""The ``niiv`` command's entry point. Light on purpose: Ctrl-C while the command-line interface
is still being imported (numpy, the settings: ~0.15 s) ends in one line, not a traceback. Output
read by a command that stops early (``niiv info | head -3``) ends quietly, as other tools do."""

from __future__ import annotations

import os
import sys

# The shell's status of a command stopped by SIGPIPE (128 + 13): Python ignores the signal and
# raises BrokenPipeError instead, which ended in a traceback
EXIT_BROKEN_PIPE = 141


def main() -> int:
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        print("niiv: interrupted", file=sys.stderr)
        return 130
    try:
        return run()
    except BrokenPipeError:
        # whatever is still buffered goes nowhere, not into a second error at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
