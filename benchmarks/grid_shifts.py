#!/usr/bin/env python
"""SPAIR-AP with one view of the image and with the vote over four offsets of the cell grid
(``spair.models.shifts``), on *validation* scenes.

For each ``--digits`` n, scenes with exactly n digits of the validation digit split (seed ``--seed``;
48×48, 84×84 for n ≥ 15 with half as many scenes) go through ``SpairDetector`` (deterministic
inference, refinement, split and removal moves on) with each ``--views`` value of ``grid_shifts``.
Prints one JSON line per setting and n with SPAIR-AP, AP@0.1, AP@0.5, AP@0.9, the number of boxes
against the number of digits and the detection speed; with ``--out`` writes the JSON atomically.

Usage::

    PYTHONPATH=src python benchmarks/grid_shifts.py [CHECKPOINT] [--digits 1,3,5,7,9,20]
        [--views 1,4] [--n 1024] [--seed 11] [--threads 2] [--out F]

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


def run(checkpoint: str | None, digits: list[int], views: list[int], n: int, seed: int) -> dict:
    from split_moves import measure, val_scenes   # the benchmark beside this one (same folder)

    from spair.models.io import load_model
    from spair.models.spair_detector import SpairDetector

    model = load_model(checkpoint)
    rows = []
    for k in digits:
        scenes = val_scenes(k, n, seed)
        for v in views:
            rows.append(measure(SpairDetector(model=model, grid_shifts=v), scenes, k, {"grid_shifts": v}))
    return {"checkpoint": checkpoint or "shipped", "split": "val", "seed": seed, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?", default=None)
    ap.add_argument("--digits", default="1,3,5,7,9,20")
    ap.add_argument("--views", default="1,4")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import torch
    from split_moves import report   # the benchmark beside this one (same folder)

    from spair.models.shifts import ALLOWED_SHIFTS

    views = [int(v) for v in args.views.split(",")]
    if any(v not in ALLOWED_SHIFTS for v in views):
        ap.error(f"--views: each value must be one of {ALLOWED_SHIFTS}")
    torch.set_num_threads(args.threads)
    result = run(args.checkpoint, [int(d) for d in args.digits.split(",")], views, args.n, args.seed)
    report(result, "grid_shifts", "grid_shifts.py", argv, args.out, digits=4)
    return 0


if __name__ == "__main__":
    sys.exit(main())
