#!/usr/bin/env python
"""What SPAIR-AP at many digits is made of: how many boxes fall short at each IoU threshold, and how many
would have to be right for the paper's metric to move.

SPAIR-AP (``spair.metrics.spair_ap``, the paper's protocol) interpolates precision at 11 recall points
per batch of 32 images, and its point at recall 1.0 counts only where *every* digit of the batch is found
at that IoU threshold. At 9 digits a batch holds 288, so one box below the threshold in a batch costs
1/11 of that batch's AP there. This benchmark runs the shipped detector's pipeline (as ``vote_boxes.py``:
deterministic inference, refinement, split and removal moves, ``--grid-shifts`` views voted with the
default rule) on scenes with exactly n digits of the validation digit split, and reports per n:

- per IoU threshold τ: SPAIR-AP at τ, the digits no box matches at τ (the protocol's greedy matching),
  and the batches in which every digit is matched at τ;
- false positives: boxes the protocol counts as false at every threshold (a box that only comes after
  all of its image's digits are matched costs nothing and is not one), and SPAIR-AP with them left out
  (an oracle: which boxes they are comes from the ground truth);
- a repair curve, also an oracle: SPAIR-AP when the k boxes that fit their digit worst (each digit's
  best IoU with any box; a digit no box touches gets its own box) are replaced by the digit's true box,
  for k = 0, 10, 20, 40, 80, 160: how many of the scenes' boxes would have to be right to reach a
  given SPAIR-AP.

Prints one JSON line per n and, with ``--out``, writes the JSON atomically.

Usage::

    PYTHONPATH=src python benchmarks/box_errors.py [CHECKPOINT] [--digits 7,9] [--grid-shifts 4]
        [--n 512] [--seed 11] [--threads 2] [--out F]

Without a checkpoint it evaluates the model shipped in the package.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
try:
    import spair  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(HERE.parent / "src"))

import numpy as np  # noqa: E402

REPAIRS = (0, 10, 20, 40, 80, 160)
BATCH = 32   # the protocol's batch of images (``spair_ap``'s default)


def matched_digits(pred: list[np.ndarray], gt: list[np.ndarray], thresholds: np.ndarray
                   ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per threshold, the number of digits the protocol's greedy matching leaves unmatched, per batch
    (n_thr, n_batches); and per image, which predictions it counts as false at every threshold (a box
    false at a low threshold can still match at a higher one, where an earlier box fails)."""
    from spair.metrics.ap import box_iou, match_predictions

    statuses = match_predictions([box_iou(p, g) for p, g in zip(pred, gt)], thresholds)
    n_batches = -(-len(gt) // BATCH)
    missed = np.zeros((thresholds.size, n_batches), np.int64)
    for i, (s, g) in enumerate(zip(statuses, gt)):
        missed[:, i // BATCH] += len(g) - (s == 1).sum(1)
    return missed, [(s == 0).all(0) for s in statuses]


def repaired(pred: list[np.ndarray], gt: list[np.ndarray], k: int) -> list[np.ndarray]:
    """The boxes with the ``k`` worst-fitting digits' boxes replaced by the digits' true boxes (an oracle):
    a digit's box is the box that overlaps it most; where that box is already the best of a worse digit,
    or no box touches the digit, the true box is added instead."""
    from spair.metrics.ap import box_iou

    fits = []                                           # (best IoU, image, digit, box index or -1)
    for i, (p, g) in enumerate(zip(pred, gt)):
        iou = box_iou(g, p) if len(p) else np.zeros((len(g), 0))
        for j in range(len(g)):
            r = int(iou[j].argmax()) if iou.shape[1] else -1
            fits.append((float(iou[j, r]) if r >= 0 else 0.0, i, j, r if r >= 0 and iou[j, r] > 0 else -1))
    fits.sort(key=lambda f: f[0])
    out = [p.copy() for p in pred]
    extra: list[list[np.ndarray]] = [[] for _ in pred]
    used: set[tuple[int, int]] = set()
    for _, i, j, r in fits[:k]:
        if r >= 0 and (i, r) not in used:
            out[i][r] = gt[i][j]
            used.add((i, r))
        else:
            extra[i].append(gt[i][j])
    return [np.concatenate([o, np.asarray(e, np.float32).reshape(-1, 4)]) for o, e in zip(out, extra)]


def analyse(pred: list[np.ndarray], gt: list[np.ndarray]) -> dict:
    from spair.metrics import spair_ap
    from spair.metrics.ap import DEFAULT_IOU_THRESHOLDS

    thr = np.asarray(DEFAULT_IOU_THRESHOLDS, np.float64)
    ap = spair_ap(pred, gt, None)
    missed, false = matched_digits(pred, gt, thr)
    per_threshold = [{"iou": round(float(t), 1), "AP": round(ap[f"AP@{t:.1f}"], 4),
                      "digits_missed": int(missed[a].sum()),
                      "batches_complete": int((missed[a] == 0).sum())} for a, t in enumerate(thr)]
    clean = [p[~f] for p, f in zip(pred, false)]           # an oracle: the ground truth says which
    return {"spair_AP": round(ap["AP"], 4), "digits": int(sum(len(g) for g in gt)),
            "boxes": int(sum(len(p) for p in pred)), "batches": int(missed.shape[1]),
            "per_threshold": per_threshold, "false_positives": int(sum(f.sum() for f in false)),
            "spair_AP_without_false_positives": round(spair_ap(clean, gt, None)["AP"], 4),
            "repair_curve": {str(k): round(spair_ap(repaired(pred, gt, k), gt, None)["AP"], 4) for k in REPAIRS}}


def run(checkpoint: str | None, digits: list[int], n: int, seed: int, grid_shifts: int) -> dict:
    from split_moves import val_scenes   # the benchmarks beside this one (same folder)
    from vote_boxes import views_of

    from spair.models.io import load_model
    from spair.models.shifts import vote_detections
    from spair.models.spair_detector import SpairDetector

    detector = SpairDetector(model=load_model(checkpoint), grid_shifts=1)
    rows = []
    for k in digits:
        scenes = val_scenes(k, n, seed)
        views = views_of(detector, scenes.images, grid_shifts)
        found = [vote_detections([v[i] for v in views]) for i in range(len(scenes))]
        row = {"n_digits": k, "image_size": int(scenes.images.shape[1]), "n_scenes": len(scenes),
               **analyse([d.boxes for d in found], scenes.boxes)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return {"checkpoint": checkpoint or "shipped", "split": "val", "seed": seed, "grid_shifts": grid_shifts,
            "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?", default=None)
    ap.add_argument("--digits", default="7,9")
    from spair.models.shifts import ALLOWED_SHIFTS, GRID_SHIFTS

    ap.add_argument("--grid-shifts", type=int, choices=ALLOWED_SHIFTS, default=GRID_SHIFTS,
                    help="views to vote over (default: the detector's default)")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import torch

    from spair.io import write_json_atomic

    torch.set_num_threads(args.threads)
    result = run(args.checkpoint, [int(d) for d in args.digits.split(",")], args.n, args.seed, args.grid_shifts)
    result["command"] = "python benchmarks/box_errors.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.out:
        write_json_atomic(Path(args.out), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
