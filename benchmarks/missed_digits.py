#!/usr/bin/env python
"""Why a SPAIR model misses digits: merged pairs, digits sharing a cell, or neither.

Runs a checkpoint (deterministic inference, segment boxes, presence threshold 0.5, as ``spair eval``)
on held-out 48×48 scenes with ``--digits`` digits of the test split (seed 2, the demo's test scenes)
and classifies every ground-truth digit that no predicted box matches at IoU > ``--iou``:

- ``merged``: its best-overlapping prediction (IoU > 0.1) also overlaps another digit by IoU > 0.1,
  i.e. one object explains two digits;
- ``misplaced``: a prediction overlaps it (IoU > 0.1) but overlaps no other digit;
- ``unexplained``: no prediction overlaps it.

It also counts the digits whose box centre lies in the same cell of the model's grid as another
digit's (a cell predicts at most one object), among all digits and among the missed ones.
Prints a JSON object and, with ``--out``, writes it atomically.

Usage::

    PYTHONPATH=src python benchmarks/missed_digits.py CHECKPOINT [--digits 5] [--n 1000] [--out F]
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


def analyse(checkpoint: str, digits: int = 5, n: int = 1000, iou: float = 0.5, seed: int = 2) -> dict:
    import torch

    from spair.data.scenes import SceneConfig, generate_scenes
    from spair.metrics.ap import box_iou
    from spair.models.io import load_model
    from spair.training.evaluate import predict

    torch.set_num_threads(1)
    model = load_model(checkpoint)
    scenes = generate_scenes(SceneConfig(image_size=(48, 48), n_objects=(digits, digits), split="test"), n, seed)
    dets = predict(model, scenes.images, box_mode="segment")
    cell = model.cfg.cell_size
    counts = dict(digits=0, missed=0, merged=0, misplaced=0, unexplained=0, extra_predictions=0,
                  digits_sharing_a_cell=0, missed_sharing_a_cell=0)
    count_diff = []
    for det, gt in zip(dets, scenes.boxes):
        pred = det.boxes
        counts["digits"] += len(gt)
        count_diff.append(len(pred) - len(gt))
        ious = box_iou(gt, pred) if len(pred) else np.zeros((len(gt), 0))
        centre = np.stack([(gt[:, 0] + gt[:, 2]) / 2, (gt[:, 1] + gt[:, 3]) / 2], 1)
        key = [tuple(k) for k in np.floor(centre / cell).astype(int)]
        shares = np.array([key.count(k) > 1 for k in key])
        counts["digits_sharing_a_cell"] += int(shares.sum())
        if len(pred):
            counts["extra_predictions"] += int((ious.max(0) <= iou).sum())
        for g in range(len(gt)):
            best = ious[g].max() if len(pred) else 0.0
            if best > iou:
                continue
            counts["missed"] += 1
            counts["missed_sharing_a_cell"] += int(shares[g])
            if best <= 0.1:
                counts["unexplained"] += 1
            elif (ious[:, ious[g].argmax()] > 0.1).sum() >= 2:
                counts["merged"] += 1
            else:
                counts["misplaced"] += 1
    diff = np.array(count_diff)
    return {"checkpoint": checkpoint, "cell_size": cell, "n_scenes": n, "digits_per_scene": digits, "iou": iou,
            **counts, "count_difference_histogram": {str(k): int((diff == k).sum()) for k in range(-3, 4)}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--digits", type=int, default=5)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--iou", type=float, default=0.5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from spair.io import write_json_atomic

    result = analyse(args.checkpoint, args.digits, args.n, args.iou)
    print(json.dumps(result, indent=1))
    if args.out:
        write_json_atomic(Path(args.out), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
