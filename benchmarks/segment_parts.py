#!/usr/bin/env python
"""SPAIR-AP with and without dropping the minor parts of segments, on *validation* scenes; also any
other threshold of the segment rule (``--param``).

An object's segment (``spair.models.spair_detector.segment_boxes_px``) is the set of input pixels it
explains; its box is their extent. With ``min_part`` = f, an 8-connected part of a segment that holds
less than f times the visible ink of the object's heaviest part is dropped ("off" keeps every part,
the rule before 2026-12-05). The same rule gives the extents the split moves start from.
``--param share_threshold`` (or ``claim_threshold``, ``attach_radius``, ``exclusive_radius``) sweeps
that keyword of ``segment_boxes_px`` instead, the others at their defaults.

For each ``--digits`` n, scenes with exactly n digits of the validation digit split (seed ``--seed``;
48×48, 84×84 for n ≥ 15 with half as many scenes) go through ``SpairDetector`` (deterministic
inference, refinement and split moves on) with each ``--min-parts`` value. Prints one JSON line per
setting and n with SPAIR-AP, AP@0.1, AP@0.5, AP@0.9, the number of boxes against the number of
digits; with ``--out`` writes the JSON atomically.

Usage::

    PYTHONPATH=src python benchmarks/segment_parts.py [CHECKPOINT] [--digits 1,3,5,7,9,20]
        [--param min_part] [--values off,0.3,0.5] [--n 1024] [--seed 11] [--threads 2] [--out F]

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


PARAMS = ("min_part", "share_threshold", "claim_threshold", "attach_radius", "exclusive_radius")
OFF_OK = ("min_part", "attach_radius", "exclusive_radius")    # the keywords that take None


def run(checkpoint: str | None, digits: list[int], values: list[float | None], n: int, seed: int,
        param: str = "min_part") -> dict:
    from split_moves import sweep_rule   # the benchmark beside this one (same folder)

    from spair.models.spair_detector import segment_boxes_px

    settings = [("off" if v is None else v, functools.partial(segment_boxes_px, **{param: v})) for v in values]
    return sweep_rule(checkpoint, digits, n, seed, "segment_boxes_px", param, settings)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?", default=None)
    ap.add_argument("--digits", default="1,3,5,7,9,20")
    ap.add_argument("--param", default="min_part", choices=PARAMS)
    ap.add_argument("--values", "--min-parts", dest="values", default="off,0.3,0.5",
                    help="settings of --param; 'off' for min_part and the radii only")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import torch
    from split_moves import report   # the benchmark beside this one (same folder)

    torch.set_num_threads(args.threads)
    cast = int if args.param.endswith("_radius") else float
    values = [None if v.strip() == "off" else cast(v) for v in args.values.split(",")]
    if None in values and args.param not in OFF_OK:
        ap.error(f"--values: 'off' is a setting of {' and '.join(OFF_OK)} only, not of {args.param}")
    result = run(args.checkpoint, [int(d) for d in args.digits.split(",")], values, args.n, args.seed, args.param)
    report(result, args.param, "segment_parts.py", argv, args.out, digits=4)
    return 0


if __name__ == "__main__":
    sys.exit(main())
