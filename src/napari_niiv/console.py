"""The ``niiv`` command's entry point. Light on purpose: Ctrl-C while the command-line interface
is still being imported (numpy, the settings: ~0.15 s) ends in one line, not a traceback. Output
read by a command that stops early (``niiv info | head -3``) ends quietly, as other tools do. A
second Ctrl-C after the command said it was interrupted ends the process at once, quietly."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Any

# The shell's status of a command stopped by SIGPIPE (128 + 13): Python ignores the signal and
# raises BrokenPipeError instead, which ended in a traceback
EXIT_BROKEN_PIPE = 141
EXIT_INTERRUPTED = 130


def main() -> int:
    _stop_at_once_on_a_second_interrupt()
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        print("niiv: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    try:
        return run()
    except BrokenPipeError:
        # whatever is still buffered goes nowhere, not into a second error at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _stop_at_once_on_a_second_interrupt() -> None:
    """The first Ctrl-C interrupts as Python's own handler does (the command stops its work and
    says so; ``niiv train`` handles it itself while it trains). Python then still waits at exit for
    threads that finish their current block (seconds on a CPU): a second Ctrl-C there was raised
    inside threading's shutdown, a traceback and then an abort ("terminate called without an active
    exception"). It now ends the process at once; what is left is what a kill leaves, which the same
    command resumes. A SIGINT the process ignores (a background job) or handles otherwise stays so."""
    seen: list[int] = []

    def interrupt(signum: int, frame: Any) -> None:
        if not seen:
            seen.append(signum)
            raise KeyboardInterrupt
        with contextlib.suppress(OSError):  # raw: a signal handler must not re-enter sys.stderr's buffer
            os.write(2, b"niiv: interrupted again: stopped at once\n")
        os._exit(EXIT_INTERRUPTED)

    with contextlib.suppress(ValueError):  # not the main thread: Python delivers no signal there
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, interrupt)
