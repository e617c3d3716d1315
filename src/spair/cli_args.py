"""Argument helpers shared by the experiment verbs (``*_cli.py``): argparse types, the ``--cache``
option, the output-folder check, the command line and the progress printer.

Only the standard library is imported here, so ``spair --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path
from typing import Callable


def int_list(what: str, lo: int, hi: int | None = None) -> Callable[[str], list[int]]:
    """argparse type: comma-separated distinct integers in ``[lo, hi]`` (``"0,1"`` → ``[0, 1]``)."""
    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None
        bad = not values or len(set(values)) != len(values) or min(values) < lo or (hi is not None and max(values) > hi)
        if bad:
            bound = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"expected distinct {what} (integers {bound}), got '{text}'")
        return values

    parse.__name__ = what
    return parse


def int_at_least(lo: int) -> Callable[[str], int]:
    """argparse type: one integer ≥ ``lo``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def add_cache_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", type=Path, default=None, metavar="DIR",
                   help="dataset cache folder (default: $SPAIR_CACHE, else $XDG_CACHE_HOME/spair, else ~/.cache/spair)")


def check_out(out: Path) -> None:
    """Fail before any work when ``out`` cannot be a writable folder."""
    from .errors import SpairError

    probe = out
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise SpairError(f"--out: {probe} is a file, not a folder")
    if probe.is_dir() and not os.access(probe, os.W_OK | os.X_OK):
        raise SpairError(f"--out: folder {probe} is not writable")


def command_line(args: argparse.Namespace) -> str:
    """The command as the user typed it (recorded in results files)."""
    return shlex.join(["spair", *getattr(args, "argv", [])])


def sayer(args: argparse.Namespace) -> Callable[[str], None]:
    """A ``log`` function that prints unless ``--quiet`` was given."""
    quiet = getattr(args, "quiet", False)

    def say(message: str) -> None:
        if not quiet:
            print(message, flush=True)

    return say
