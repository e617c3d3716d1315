#!/usr/bin/env python
"""SPAIR-AP with and without removal moves (``spair.models.split.remove_objects``), on *validation* scenes.

After the split moves, an object that lowers the model's objective by no more than a price (in nats;
by default the split moves' ``split_min_gain``) is removed. For each ``--digits`` n, scenes with
exactly n digits of the validation digit split (seed ``--seed``; 48×48, 84×84 for n ≥ 15 with half
as many scenes) go through ``SpairDetector`` (deterministic inference, refinement and split moves
on) with each ``--prices`` value ("off" = no removal moves).
Prints one JSON line per setting and n with SPAIR-AP, AP@0.1, AP@0.5, AP@0.9, the number of boxes
against the number of digits; with ``--out`` writes the JSON atomically.

Usage::

    PYTHONPATH=src python benchmarks/removal_moves.py [CHECKPOINT] [--digits 1,3,5,7,9,20]
        [--prices off,30,60] [--n 1024] [--seed 11] [--threads 2] [--out F]

Without a checkpoint it evaluates the model shipped in the package.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
try:
    import spair  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(HERE.parent / "src"))


def run(checkpoint: str | None, digits: list[int], prices: list[float | None], n: int, seed: int) -> dict:
    from split_moves import sweep_rule   # the benchmark beside this one (same folder)

    from spair.models.split import remove_objects

    def rule(price: float | None):   # "off" keeps every object
        if price is None:
            return lambda model, out, x, present, *_: present
        return lambda model, out, x, present, *_: remove_objects(model, out, x, present, price)

    settings = [("off" if p is None else p, rule(p)) for p in prices]
    return sweep_rule(checkpoint, digits, n, seed, "remove_objects", "removal_price", settings)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?", default=None)
    ap.add_argument("--digits", default="1,3,5,7,9,20")
    ap.add_argument("--prices", default="off,30,60")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import torch
    from split_moves import report   # the benchmark beside this one (same folder)

    torch.set_num_threads(args.threads)
    prices = [None if p.strip() == "off" else float(p) for p in args.prices.split(",")]
    result = run(args.checkpoint, [int(d) for d in args.digits.split(",")], prices, args.n, args.seed)
    report(result, "removal_price", "removal_moves.py", argv, args.out, digits=4)
    return 0


if __name__ == "__main__":
    sys.exit(main())
