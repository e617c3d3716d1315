"""Detection and counting metrics (definitions in ``docs/metrics.md``).

- :func:`spair_ap`: the SPAIR paper's AP protocol (IoU > 0.1..0.9, per-batch 11-point AP).
- :func:`coco_ap`: COCO AP through faster-coco-eval, over IoU 0.1:0.9 and the standard 0.5:0.95.
- :func:`count_errors`: count absolute error, count 0-1 error, count bias.
- :func:`evaluate_detections`: all of them in one flat dict.

Boxes are ``(x0, y0, x1, y1)`` in continuous pixel coordinates, one ``(k, 4)`` array per image.
This package does not depend on torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .ap import DEFAULT_IOU_THRESHOLDS, as_box_lists, box_iou, eleven_point_ap, match_predictions, spair_ap
from .coco import coco_ap
from .count import count_errors

__all__ = [
    "DEFAULT_IOU_THRESHOLDS",
    "box_iou",
    "coco_ap",
    "count_errors",
    "eleven_point_ap",
    "evaluate_detections",
    "match_predictions",
    "spair_ap",
]


def evaluate_detections(pred_boxes: Sequence[np.ndarray], pred_scores: Sequence[np.ndarray] | None,
                        gt_boxes: Sequence[np.ndarray],
                        image_sizes: Sequence[Sequence[int]] | Sequence[int] | None = None,
                        batch_size: int = 32) -> dict[str, float]:
    """Every metric of the package in one flat dict.

    - ``"spair_AP"``, ``"spair_AP@0.1"`` ... ``"spair_AP@0.9"``: :func:`spair_ap` with confidence
      1.0 for every box, as in the paper (``pred_scores`` are *not* used; call :func:`spair_ap`
      with scores for a score-ranked variant), pooled per ``batch_size`` images;
    - ``"coco_AP[.1:.9]"``, ``"coco_AP@0.1"`` ... ``"coco_AP@0.9"``, ``"coco_AP[.5:.95]"``,
      ``"coco_AP@.5"``: :func:`coco_ap` ranked by ``pred_scores`` (all 1.0 when None);
    - ``"count_abs_error"``, ``"count_01_error"``, ``"count_bias"``: :func:`count_errors` with
      the number of predicted boxes against the number of GT boxes of each image;
    - ``"n_images"``, ``"n_gt"``, ``"n_pred"``: totals, for the record.
    """
    preds, gts = as_box_lists(pred_boxes, gt_boxes)
    pred_counts = [len(p) for p in preds]
    true_counts = [len(g) for g in gts]
    result: dict[str, float] = {"n_images": len(gts), "n_gt": sum(true_counts), "n_pred": sum(pred_counts)}
    for key, value in spair_ap(preds, gts, None, batch_size=batch_size).items():
        result[f"spair_{key}"] = value
    for key, value in coco_ap(preds, pred_scores, gts, image_sizes).items():
        result[f"coco_{key}"] = value
    result.update(count_errors(pred_counts, true_counts))
    return result
