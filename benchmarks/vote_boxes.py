#!/usr/bin/env python
"""How the vote over shifted grids (``spair.models.shifts``) chooses each object's box, and which objects it
keeps, on *validation* scenes: the box is the median of the boxes of all views that found the object,
the median of the K of them whose reading explains the image best (lowest objective J,
``spair.models.split.image_objective``), or their mean weighted by exp(−J / T); an object is kept when
half of the views found it, or at least two whose weights exp(−J / 20 nats) make up a share S of all.

For each ``--digits`` n, scenes with exactly n digits of the validation digit split (seed ``--seed``;
48×48, 84×84 for n ≥ 15 with half as many scenes) go through the shipped detector's pipeline
(deterministic inference, refinement, split and removal moves) once per grid view; the views' boxes
and objectives are then voted with each rule of ``--rules`` ("median", "bestK" for ``best_views=K``,
"weightedT" for ``temperature=T``: boxes, each with the default keep rule; "keepS" for the default
weighted boxes with ``keep_share=S``, "keephalf" for ``keep_share=None``: half of the views needed).
With four views (the default ``--grid-shifts``) two are half, so the keep rules agree and only the
boxes differ ("median" drops the objectives, so of eight views it keeps what half of them found);
``--grid-shifts 8`` adds the quarter-cell offsets. Prints one JSON line per rule and n with SPAIR-AP,
AP@0.1, AP@0.5, AP@0.9, the number of boxes against the number of digits and the count errors; with
``--out`` writes the JSON atomically.

Usage::

    PYTHONPATH=src python benchmarks/vote_boxes.py [CHECKPOINT] [--digits 1,3,5,7,9,20]
        [--rules median,best1,best2,best3,weighted2,weighted5,weighted10] [--grid-shifts 4]
        [--refine-steps K] [--n 512] [--seed 11] [--threads 2] [--out F]

    # which objects eight views keep (docs/cpu-recipe.md, "Eight views"):
    PYTHONPATH=src python benchmarks/vote_boxes.py --grid-shifts 8 --digits 3,5,7,9 \
        --rules keep0,keephalf,keep0.1,keep0.2,keep0.3

Without a checkpoint it evaluates the model shipped in the package.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
try:
    import spair  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(HERE.parent / "src"))


def views_of(detector, images, grid_shifts: int, batch_size: int = 32) -> list[list]:
    """Per view (the ``grid_shifts`` grid offsets of ``spair.models.shifts``), the detections of every
    image, in the images' coordinates and with each view's objective over the images' own pixels."""
    import numpy as np

    from spair.models.shifts import shifted_views

    colours = np.zeros((len(images), 3), np.uint8)          # the scenes' background is black
    views: list[list] = [[] for _ in range(grid_shifts)]
    for s in range(0, len(images), batch_size):
        chunk = shifted_views(lambda b, region: detector._detect_batch(b, None, region), images[s:s + batch_size],
                              colours[s:s + batch_size], detector.model.cfg.cell_size, grid_shifts)
        for v, found in zip(views, chunk):
            v += found
    return views


def _number_after(rule: str, prefix: str) -> float | None:
    """The number that follows ``prefix`` in ``rule``, or None."""
    if not rule.startswith(prefix):
        return None
    try:
        return float(rule[len(prefix):])
    except ValueError:
        return None


def vote_options(rule: str) -> dict | None:
    """``vote_detections`` options of a rule: None for "median" (the median of all views' boxes),
    ``best_views=K`` for "bestK", ``temperature=T`` for "weightedT", ``keep_share=S`` for "keepS",
    ``keep_share=None`` for "keephalf"."""
    if rule == "median":
        return None
    if rule == "keephalf":
        return {"keep_share": None}
    share = _number_after(rule, "keep")
    if share is not None and 0 <= share <= 1:
        return {"keep_share": share}
    if rule.startswith("best") and rule[4:].isdigit() and int(rule[4:]) >= 1:
        return {"best_views": int(rule[4:])}
    t = _number_after(rule, "weighted")
    if t is not None and t > 0:
        return {"temperature": t}
    raise ValueError(f"unknown rule {rule!r} (use median, bestK with K >= 1, weightedT with T > 0, keepS with "
                     "S in [0, 1] or keephalf)")


def vote(views: list[list], rule: str) -> list:
    from spair.models.shifts import vote_detections

    options = vote_options(rule)
    if options is None:                                     # without objectives the vote takes the median
        views = [[dataclasses.replace(d, objective=None) for d in v] for v in views]
        options = {}
    return [vote_detections([v[i] for v in views], **options) for i in range(len(views[0]))]


def run(checkpoint: str | None, digits: list[int], rules: list[str], n: int, seed: int, grid_shifts: int,
        refine_steps: int) -> dict:
    from split_moves import val_scenes   # the benchmark beside this one (same folder)

    from spair.metrics import count_errors, spair_ap
    from spair.models.io import load_model
    from spair.models.spair_detector import SpairDetector

    detector = SpairDetector(model=load_model(checkpoint), grid_shifts=1, refine_steps=refine_steps)
    rows = []
    for k in digits:
        scenes = val_scenes(k, n, seed)
        views = views_of(detector, scenes.images, grid_shifts)
        for rule in rules:
            found = vote(views, rule)
            ap = spair_ap([d.boxes for d in found], scenes.boxes, None)
            counts = count_errors([len(d) for d in found], [len(b) for b in scenes.boxes])
            row = {"n_digits": k, "image_size": int(scenes.images.shape[1]), "n_scenes": len(scenes),
                   "box_rule": rule, "spair_AP": ap["AP"], "AP@0.1": ap["AP@0.1"], "AP@0.5": ap["AP@0.5"],
                   "AP@0.9": ap["AP@0.9"], "boxes": int(sum(len(d) for d in found)),
                   "digits": int(sum(len(b) for b in scenes.boxes)),
                   "count_01_error": counts["count_01_error"], "count_bias": counts["count_bias"]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return {"checkpoint": checkpoint or "shipped", "split": "val", "seed": seed, "grid_shifts": grid_shifts,
            "refine_steps": refine_steps, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?", default=None)
    ap.add_argument("--digits", default="1,3,5,7,9,20")
    ap.add_argument("--rules", default="median,best1,best2,best3,weighted2,weighted5,weighted10")
    from spair.models.refine import REFINE_STEPS
    from spair.models.shifts import ALLOWED_SHIFTS, GRID_SHIFTS

    ap.add_argument("--grid-shifts", type=int, choices=[n for n in ALLOWED_SHIFTS if n > 1], default=GRID_SHIFTS,
                    help="views to vote over (default: the detector's default)")
    ap.add_argument("--refine-steps", type=int, default=REFINE_STEPS, metavar="K",
                    help="the detector's refinement steps (default: its default)")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import torch
    from split_moves import report   # the benchmark beside this one (same folder)

    rules = args.rules.split(",")
    for rule in rules:
        try:
            vote_options(rule)
        except ValueError as e:
            ap.error(f"--rules: {e}")
    if args.refine_steps < 0:
        ap.error("--refine-steps must be >= 0")
    torch.set_num_threads(args.threads)
    result = run(args.checkpoint, [int(d) for d in args.digits.split(",")], rules, args.n, args.seed,
                 args.grid_shifts, args.refine_steps)
    report(result, "box_rule", "vote_boxes.py", argv, args.out, digits=4)
    return 0


if __name__ == "__main__":
    sys.exit(main())
