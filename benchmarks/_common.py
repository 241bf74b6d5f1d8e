"""What the benchmarks share: where the real data is, checked before any work, and their
arguments and errors as one line each, as the ``niiv`` command gives them."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from napari_niiv.errors import NiivInputError

DATA = Path(os.environ.get("NIIV_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def prog() -> str:
    return Path(sys.argv[0]).name


def data_file(*parts: str) -> Path:
    """``$NIIV_DATA_DIR/PARTS``; exits with one line when it is missing (before a benchmark spends
    minutes on the paths that do not need it)."""
    path = DATA.joinpath(*parts)
    if not path.is_file():
        where = "NIIV_DATA_DIR is" if "NIIV_DATA_DIR" in os.environ else "NIIV_DATA_DIR is not set, default"
        raise SystemExit(
            f"{prog()}: error: {path} is missing ({where} {DATA}): set NIIV_DATA_DIR to the shared data "
            "folder (the one holding fibsem/, anisotropic_em/ and lm/)"
        )
    return path


def positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """An argparse type: a finite number above 0."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r}: give a number above 0")
        return value

    return parse


def report_path(text: str) -> Path:
    """An argparse type for a results file: refused before the run (not after it) when it is a
    folder or its folder cannot take a new file."""
    path = Path(text)
    if not text.strip() or path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; give a file name for the results")
    folder = path.parent
    while not folder.exists():  # the benchmark makes missing folders: the first one there must take them
        folder = folder.parent
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise argparse.ArgumentTypeError(f"{text!r}: cannot write there (permission denied)")
    return path


def run(main: Callable[[], object]) -> None:
    """Run a benchmark's ``main``: what niiv refuses (unknown weights, a bad alpha ...) is one line."""
    try:
        main()
    except NiivInputError as exc:
        raise SystemExit(f"{prog()}: error: {exc}") from None
