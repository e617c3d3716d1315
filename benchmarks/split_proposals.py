#!/usr/bin/env python
"""SPAIR-AP with each set of split proposals and screening step (``spair.models.split``), on
*validation* scenes.

``--settings`` lists ``PROPOSALS:STEPS`` pairs: ``even`` is the four even splits alone (the proposals
before 2026-12-05), ``all`` adds the four uneven ones for a thin digit beside a wide one (today's
``PROPOSALS``); ``STEPS`` is the screening step (``screen_steps`` of ``split_objects``; 5 before
2026-12-05, 10 today; 20 or more screens nothing with the default 20 steps). For each ``--digits``
n, scenes with exactly n digits of the validation digit split (seed ``--seed``; 48×48, 84×84 for
n ≥ 15 with half as many scenes) go through ``SpairDetector`` (deterministic inference, refinement,
split and removal moves on) with each setting. Prints one JSON line per setting and n with SPAIR-AP,
AP@0.1, AP@0.5, AP@0.9, the number of boxes against the number of digits and the detection speed;
with ``--out`` writes the JSON atomically.

Usage::

    PYTHONPATH=src python benchmarks/split_proposals.py [CHECKPOINT] [--digits 1,3,5,7,9,20]
        [--settings even:5,even:10,all:10] [--n 1024] [--seed 11] [--threads 2] [--out F]

Without a checkpoint it evaluates the model shipped in the package.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
try:
    import spair  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(HERE.parent / "src"))


def proposal_sets() -> dict:
    """The named proposal sets: the even splits alone, and all of today's proposals."""
    from spair.models import split

    return {"even": split.PROPOSALS[:4], "all": split.PROPOSALS}


def run(checkpoint: str | None, digits: list[int], settings: list[tuple[str, int]], n: int, seed: int) -> dict:
    from split_moves import sweep_rule   # the benchmark beside this one (same folder)

    from spair.models.split import split_objects

    sets = proposal_sets()
    rules = [(f"{name}:{steps}", functools.partial(split_objects, screen_steps=steps, proposals=sets[name]))
             for name, steps in settings]
    return sweep_rule(checkpoint, digits, n, seed, "split_objects", "setting", rules)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?", default=None)
    ap.add_argument("--digits", default="1,3,5,7,9,20")
    ap.add_argument("--settings", default="even:5,even:10,all:10")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import torch
    from split_moves import report   # the benchmark beside this one (same folder)

    settings = []
    for item in args.settings.split(","):
        name, _, steps = item.strip().partition(":")
        if name not in proposal_sets() or not steps.isdigit():
            ap.error(f"--settings: '{item}' is not PROPOSALS:STEPS with PROPOSALS 'even' or 'all'")
        settings.append((name, int(steps)))
    torch.set_num_threads(args.threads)
    result = run(args.checkpoint, [int(d) for d in args.digits.split(",")], settings, args.n, args.seed)
    report(result, "setting", "split_proposals.py", argv, args.out, digits=4)
    return 0


if __name__ == "__main__":
    sys.exit(main())
