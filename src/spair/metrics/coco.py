"""COCO-style AP of detections, through faster-coco-eval (pycocotools as a reference backend).

Definition (the COCO bounding-box protocol, one category, area range "all"): detections of all
images are ranked by decreasing score; for each IoU threshold ``t`` each detection, in that order
within its image, is matched to the unmatched GT box of highest IoU provided that IoU is
**>= t** (note: the SPAIR protocol uses ``> t``); unmatched detections are false positives.
Precision is made monotone (the running maximum from the right) and sampled at the 101 recall
points ``0, 0.01, ..., 1`` (0 where a recall point is never reached); AP at ``t`` is the mean of
those 101 values, and a range AP is the mean over its thresholds.

Reported values:

- ``"AP[.1:.9]"``: mean over ``t`` in ``0.1, 0.2, ..., 0.9`` (the SPAIR thresholds), and each
  ``"AP@0.1"`` ... ``"AP@0.9"``;
- ``"AP[.5:.95]"``: the standard COCO AP over ``0.5, 0.55, ..., 0.95``, and ``"AP@.5"``.

Every image keeps all its detections (``maxDets`` is at least the largest number of detections
in one image, and at least 100). Edge cases: images without detections or without GT are
evaluated normally; no detection anywhere gives AP 0 when there is GT; no GT anywhere gives AP 0
when there are detections (all are false positives) and NaN when there are none either.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from ..errors import DataError, SpairError
from .ap import as_box_lists, as_scores, threshold_key

SPAIR_THRESHOLDS = np.linspace(0.1, 0.9, 9)
"""IoU thresholds 0.1:0.1:0.9 (computed as COCO computes its own, with ``linspace``)."""
COCO_THRESHOLDS = np.linspace(0.5, 0.95, 10)
"""The standard COCO IoU thresholds 0.5:0.05:0.95."""

_CATEGORY = 1
_AREA_ALL = [0.0, 1e10]


def _noop(*args: Any, **kwargs: Any) -> None:
    """Print function handed to faster-coco-eval to keep it quiet."""


def _image_sizes(image_sizes: Sequence[Sequence[int]] | Sequence[int] | None,
                 preds: list[np.ndarray], gts: list[np.ndarray]) -> list[tuple[int, int]]:
    """Per image ``(H, W)``: the given sizes, one size for all, or the smallest that holds every box."""
    n = len(preds)
    if image_sizes is None:
        owner = np.repeat(np.arange(2 * n) % n, [len(b) for b in preds + gts])
        corners = np.concatenate(preds + gts + [np.zeros((0, 4))])[:, 2:]
        extent = np.ones((n, 2))  # (W, H) at least one pixel
        np.maximum.at(extent, owner, corners)
        return [(int(h), int(w)) for w, h in np.ceil(extent)]
    arr = np.asarray(image_sizes)
    if arr.shape == (2,):
        arr = np.broadcast_to(arr, (n, 2))
    if arr.shape != (n, 2) or not np.issubdtype(arr.dtype, np.number) or (arr <= 0).any():
        raise DataError(f"image_sizes: expected one positive (H, W) pair or {n} of them, got shape {arr.shape}")
    return [(int(h), int(w)) for h, w in arr]


def _coco_dicts(preds: list[np.ndarray], scores: list[np.ndarray], gts: list[np.ndarray],
                sizes: list[tuple[int, int]]) -> tuple[dict, list[dict]]:
    """The GT dataset and the detection list in COCO's format (image ids start at 1)."""
    images = [{"id": i + 1, "height": h, "width": w} for i, (h, w) in enumerate(sizes)]
    annotations = []
    for i, g in enumerate(gts):
        for x0, y0, x1, y1 in g.tolist():
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": _CATEGORY,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                                "iscrowd": 0})
    detections = []
    for i, (p, s) in enumerate(zip(preds, scores)):
        for (x0, y0, x1, y1), score in zip(p.tolist(), s.tolist()):
            detections.append({"image_id": i + 1, "category_id": _CATEGORY,
                               "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score})
    dataset = {"images": images, "annotations": annotations,
               "categories": [{"id": _CATEGORY, "name": "object"}]}
    return dataset, detections


def _precision_faster(dataset: dict, detections: list[dict], thresholds: np.ndarray, max_dets: int) -> np.ndarray:
    from faster_coco_eval import COCO, COCOeval_faster

    gt = COCO(dataset, print_function=_noop)
    dt = gt.loadRes(detections)
    ev = COCOeval_faster(gt, dt, "bbox", print_function=_noop)
    _set_params(ev.params, thresholds, max_dets)
    ev.evaluate()
    ev.accumulate()
    return np.asarray(ev.eval["precision"])


def _precision_pycocotools(dataset: dict, detections: list[dict], thresholds: np.ndarray,
                           max_dets: int) -> np.ndarray:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise SpairError("backend 'pycocotools' needs the pycocotools package (pip install pycocotools)") from None
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
        dt = gt.loadRes(detections)
        ev = COCOeval(gt, dt, "bbox")
        _set_params(ev.params, thresholds, max_dets)
        ev.evaluate()
        ev.accumulate()
    return np.asarray(ev.eval["precision"])


def _set_params(params: Any, thresholds: np.ndarray, max_dets: int) -> None:
    params.iouThrs = thresholds
    params.maxDets = [max_dets]
    params.areaRng = [_AREA_ALL]
    params.areaRngLbl = ["all"]


def _mean_valid(precision: np.ndarray) -> float:
    """Mean of the entries COCO marks as defined (``> -1``); NaN when there are none."""
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else math.nan


def coco_ap(pred_boxes: Sequence[np.ndarray], pred_scores: Sequence[np.ndarray] | None,
            gt_boxes: Sequence[np.ndarray], image_sizes: Sequence[Sequence[int]] | Sequence[int] | None = None,
            *, backend: Literal["faster-coco-eval", "pycocotools"] = "faster-coco-eval") -> dict[str, float]:
    """COCO AP of per-image detections (module docstring: definition and edge cases).

    Args:
        pred_boxes: per image, detections ``(k, 4)`` ``(x0, y0, x1, y1)`` in pixels.
        pred_scores: per image, scores ``(k,)`` ranking the detections; None means 1.0 for all
            (ties are then broken by image order, and by box order within an image).
        gt_boxes: per image, ground-truth boxes ``(g, 4)``.
        image_sizes: per image ``(H, W)``, or one ``(H, W)`` for all; by default the smallest size
            holding every box of the image. Bounding-box IoU does not depend on it.
        backend: ``"faster-coco-eval"`` (default) or ``"pycocotools"`` (the reference
            implementation, slower; used to cross-check).

    Returns:
        ``{"AP[.1:.9]", "AP@0.1", ..., "AP@0.9", "AP[.5:.95]", "AP@.5"}`` as floats.
    """
    preds, gts = as_box_lists(pred_boxes, gt_boxes)
    scores = as_scores(pred_scores, preds)
    sizes = _image_sizes(image_sizes, preds, gts)
    if backend == "faster-coco-eval":
        run = _precision_faster
    elif backend == "pycocotools":
        run = _precision_pycocotools
    else:
        raise DataError(f"backend: expected 'faster-coco-eval' or 'pycocotools', got {backend!r}")

    n_spair, n_coco = len(SPAIR_THRESHOLDS), len(COCO_THRESHOLDS)
    n_gt = sum(len(g) for g in gts)
    n_det = sum(len(p) for p in preds)
    if n_gt == 0 or n_det == 0:
        # COCO leaves AP undefined (-1) without GT, and pycocotools cannot load an empty result.
        value = math.nan if n_gt == 0 and n_det == 0 else 0.0
        precision = np.full((n_spair + n_coco, 1), value)
    else:
        dataset, detections = _coco_dicts(preds, scores, gts, sizes)
        max_dets = max(100, max(len(p) for p in preds))
        # One evaluation over both threshold sets: COCO matches each threshold independently.
        thresholds = np.concatenate([SPAIR_THRESHOLDS, COCO_THRESHOLDS])
        precision = run(dataset, detections, thresholds, max_dets)[:, :, 0, 0, 0]  # (T, recall points)

    result = {"AP[.1:.9]": _mean_valid(precision[:n_spair])}
    for t, tau in enumerate(SPAIR_THRESHOLDS):
        result[threshold_key("AP", float(tau))] = _mean_valid(precision[t])
    result["AP[.5:.95]"] = _mean_valid(precision[n_spair:])
    result["AP@.5"] = _mean_valid(precision[n_spair])
    return result
