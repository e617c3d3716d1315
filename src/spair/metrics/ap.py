"""SPAIR-AP: the average-precision protocol of the SPAIR paper, reproduced exactly.

This is the AP the authors' code reports (``core.AP`` + ``core.mAP``), not COCO AP. For one IoU
threshold ``tau`` it is computed as follows.

1. **Per image**, predictions are stable-sorted by decreasing confidence (with the paper's constant
   confidence 1.0 the raster order in which the model emitted them is kept). Each prediction in turn
   is compared with the ground-truth (GT) boxes not matched yet and takes the one of highest IoU
   (the first such box on ties). If that IoU is **strictly greater** than ``tau`` the prediction is
   a true positive (TP) and the GT box is removed; otherwise it is a false positive (FP).
   Once every GT box of the image is matched, the image's remaining predictions are **ignored**
   (neither TP nor FP). An image without GT counts every prediction as an FP.
2. **Per batch** of ``batch_size`` consecutive images, the (confidence, TP/FP) pairs of all images
   are pooled in image order and stable-sorted by decreasing confidence. With ``k`` counted
   predictions so far, ``precision_k = TP_k / k`` and ``recall_k = TP_k / n_gt`` where ``n_gt``
   is the number of GT boxes in the batch.
3. **11-point interpolated AP** of the batch: the mean over ``r`` in ``{0, 0.1, ..., 1.0}`` of the
   largest ``precision_k`` with ``recall_k >= r`` (0 when no ``k`` reaches ``r``). The comparison
   ``recall_k >= r`` is done exactly in integers (``10 * TP_k >= i * n_gt`` for ``r = i / 10``).
4. The AP at ``tau`` is the mean of the batch APs weighted by the number of images in each batch
   (so the last, partial batch counts for its size).
5. ``"AP"`` is the mean over the thresholds (by default 0.1, 0.2, ..., 0.9).

Edge cases the original code leaves undefined (it can produce NaN) are defined here:

- a batch with GT but no counted prediction has AP 0 (nothing was found);
- a batch with predictions but no GT has AP 0 (every prediction is a false positive);
- a batch with neither GT nor predictions is skipped: it takes no part in the weighted mean;
- if every batch is skipped (no GT and no prediction anywhere) every value is NaN: there is
  nothing to evaluate.

Boxes are ``(x0, y0, x1, y1)`` in continuous pixel coordinates (``docs/architecture.md``); the IoU
of two boxes is ``area(A ∩ B) / area(A ∪ B)`` with areas ``(x1 - x0) * (y1 - y0)``, and 0 when
the union is empty.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import DataError

DEFAULT_IOU_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""The IoU thresholds of the paper's AP."""

_IGNORED = -1  # status of a prediction after all GT of its image are matched
_FP = 0
_TP = 1
_CHUNK_ELEMENTS = 1 << 22  # bound on thresholds × images × predictions × GT held at once


# ---------------------------------------------------------------------------------------------
# Input checks and helpers shared with the other metric modules
# ---------------------------------------------------------------------------------------------

def as_boxes(boxes: object, where: str) -> np.ndarray:
    """``boxes`` as a float64 ``(k, 4)`` array; :class:`DataError` naming ``where`` otherwise.

    Accepts anything array-like of shape ``(k, 4)``, and empty inputs (``[]``, shape ``(0,)``).
    Boxes must be finite with ``x1 >= x0`` and ``y1 >= y0``.
    """
    try:
        arr = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: boxes must be a numeric array of shape (k, 4)") from None
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise DataError(f"{where}: boxes must have shape (k, 4), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise DataError(f"{where}: boxes contain NaN or infinite values")
    if (arr[:, 2] < arr[:, 0]).any() or (arr[:, 3] < arr[:, 1]).any():
        raise DataError(f"{where}: boxes must satisfy x1 >= x0 and y1 >= y0")
    return arr


def as_box_lists(pred_boxes: Sequence[object], gt_boxes: Sequence[object]
                 ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Check and convert per-image prediction and GT box lists of the same length."""
    if len(pred_boxes) != len(gt_boxes):
        raise DataError(f"pred_boxes has {len(pred_boxes)} images but gt_boxes has {len(gt_boxes)}")
    preds = [as_boxes(b, f"pred_boxes[{i}]") for i, b in enumerate(pred_boxes)]
    gts = [as_boxes(b, f"gt_boxes[{i}]") for i, b in enumerate(gt_boxes)]
    return preds, gts


def as_scores(pred_scores: Sequence[object] | None, preds: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per-image float64 scores matching ``preds``; all 1.0 when ``pred_scores`` is None."""
    if pred_scores is None:
        return [np.ones(len(b), dtype=np.float64) for b in preds]
    if len(pred_scores) != len(preds):
        raise DataError(f"pred_scores has {len(pred_scores)} images but pred_boxes has {len(preds)}")
    out = []
    for i, (s, b) in enumerate(zip(pred_scores, preds)):
        try:
            arr = np.asarray(s, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise DataError(f"pred_scores[{i}]: scores must be numeric") from None
        if arr.shape[0] != len(b):
            raise DataError(f"pred_scores[{i}]: {arr.shape[0]} scores for {len(b)} boxes")
        if not np.isfinite(arr).all():
            raise DataError(f"pred_scores[{i}]: scores contain NaN or infinite values")
        out.append(arr)
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``(len(a), len(b))`` of two sets of ``(x0, y0, x1, y1)`` boxes, in float64.

    ``IoU = area(A ∩ B) / area(A ∪ B)`` with ``area = (x1 - x0) * (y1 - y0)``; 0 where the union
    has zero area (two degenerate boxes).
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou


def threshold_key(prefix: str, tau: float) -> str:
    """Result key of one IoU threshold: ``"AP@0.5"`` (one decimal when exact, else ``%g``)."""
    tenths = round(tau * 10)
    text = f"{tau:.1f}" if abs(tau * 10 - tenths) < 1e-9 else f"{tau:g}"
    return f"{prefix}@{text}"


def _check_thresholds(iou_thresholds: Sequence[float]) -> np.ndarray:
    thr = np.asarray(iou_thresholds, dtype=np.float64).reshape(-1)
    if thr.size == 0:
        raise DataError("iou_thresholds: at least one threshold is needed")
    if not np.isfinite(thr).all() or (thr < 0).any() or (thr >= 1).any():
        raise DataError(f"iou_thresholds: every threshold must lie in [0, 1), got {thr.tolist()}")
    return thr


# ---------------------------------------------------------------------------------------------
# Step 1: greedy matching inside each image, for all thresholds at once
# ---------------------------------------------------------------------------------------------

def match_predictions(ious: Sequence[np.ndarray], thresholds: Sequence[float]) -> list[np.ndarray]:
    """Greedy per-image matching of the paper's protocol, for every threshold.

    ``ious[i]`` is the ``(k_pred, k_gt)`` IoU matrix of image ``i`` with its predictions already
    in evaluation order (decreasing confidence). Returns, per image, an int8 array
    ``(len(thresholds), k_pred)`` holding 1 (TP), 0 (FP) or -1 (ignored: every GT of the image was
    already matched). See the module docstring for the rule.

    Images are processed in chunks of similar prediction counts, vectorized over images and
    thresholds, so the cost is one small numpy step per prediction *rank*, not per prediction.
    """
    thr = _check_thresholds(thresholds)
    n_thr = thr.size
    n_pred = np.array([m.shape[0] for m in ious], dtype=np.int64)
    n_gt = np.array([m.shape[1] for m in ious], dtype=np.int64)
    out: list[np.ndarray] = [np.empty((n_thr, 0), dtype=np.int8)] * len(ious)

    order = np.argsort(n_pred, kind="stable")
    order = order[n_pred[order] > 0]  # images without predictions need no matching
    start = 0
    while start < len(order):
        # Grow the chunk while thresholds × images × max predictions × max GT stays bounded.
        end, g_max = start, 0
        while end < len(order):
            g_new = max(g_max, int(n_gt[order[end]]))
            size = n_thr * (end - start + 1) * int(n_pred[order[end]]) * max(g_new, 1)
            if end > start and size > _CHUNK_ELEMENTS:
                break
            g_max, end = g_new, end + 1
        idx = order[start:end]
        statuses = _match_chunk([ious[i] for i in idx], thr, g_max)
        for i, s in zip(idx, statuses):
            out[i] = s
        start = end
    return out


def _match_chunk(ious: list[np.ndarray], thr: np.ndarray, g_max: int) -> list[np.ndarray]:
    """Greedy matching of a chunk of images, vectorized over images and thresholds."""
    n_img, n_thr = len(ious), thr.size
    k_pred = np.array([m.shape[0] for m in ious])
    k_gt = np.array([m.shape[1] for m in ious])
    p_max = int(k_pred.max())
    status = np.full((n_thr, n_img, p_max), _IGNORED, dtype=np.int8)
    if g_max == 0:  # no GT anywhere in the chunk: every prediction is a false positive
        for j, k in enumerate(k_pred):
            status[:, j, :k] = _FP
        return [status[:, j, :k] for j, k in enumerate(k_pred)]

    padded = np.zeros((n_img, p_max, g_max), dtype=np.float64)
    for j, m in enumerate(ious):
        padded[j, : m.shape[0], : m.shape[1]] = m
    remaining = np.broadcast_to(np.arange(g_max) < k_gt[:, None], (n_thr, n_img, g_max)).copy()
    unmatched = np.broadcast_to(k_gt, (n_thr, n_img)).copy()
    has_gt = k_gt > 0
    thr_col = thr[:, None]
    t_grid, i_grid = np.meshgrid(np.arange(n_thr), np.arange(n_img), indexing="ij")
    for p in range(p_max):
        candidates = np.where(remaining, padded[None, :, p, :], -np.inf)  # (T, I, G)
        best_gt = candidates.argmax(axis=-1)  # first GT of highest IoU
        best_iou = candidates[t_grid, i_grid, best_gt]
        active = (p < k_pred)[None, :] & ~(has_gt[None, :] & (unmatched == 0))
        tp = active & (best_iou > thr_col)
        status[:, :, p] = np.where(active, np.where(tp, _TP, _FP), _IGNORED)
        t_idx, i_idx = np.nonzero(tp)
        remaining[t_idx, i_idx, best_gt[t_idx, i_idx]] = False
        unmatched -= tp
    return [status[:, j, :k] for j, k in enumerate(k_pred)]


# ---------------------------------------------------------------------------------------------
# Steps 2-3: pooled precision/recall per batch and 11-point interpolated AP
# ---------------------------------------------------------------------------------------------

def _eleven_point(status: np.ndarray, n_gt: int) -> np.ndarray:
    """11-point AP per row of ``status`` ``(T, M)`` (1 TP, 0 FP, -1 not counted), pooled order."""
    n_rows = status.shape[0]
    counted = status >= 0
    if n_gt == 0 or not counted.any():
        return np.zeros(n_rows, dtype=np.float64)
    cum_tp = np.cumsum(status == _TP, axis=1)
    cum_n = np.cumsum(counted, axis=1)
    precision = cum_tp / np.maximum(cum_n, 1)
    levels = np.arange(11)
    # recall_k >= i / 10  <=>  10 * TP_k >= i * n_gt, exactly in integers
    reaches = counted[:, :, None] & (10 * cum_tp[:, :, None] >= levels[None, None, :] * n_gt)
    best = np.where(reaches, precision[:, :, None], 0.0).max(axis=1)  # (T, 11)
    return best.mean(axis=1)


def eleven_point_ap(is_tp: Sequence[bool], n_gt: int) -> float:
    """11-point interpolated AP of one ranked list of predictions.

    ``is_tp[k]`` tells whether the ``k``-th prediction (in ranking order) is a true positive;
    ``n_gt`` is the number of GT objects. With ``precision_k = TP_k / k`` and
    ``recall_k = TP_k / n_gt`` (``k`` = 1-based rank), the result is the mean over
    ``r`` in ``{0, 0.1, ..., 1}`` of ``max{precision_k : recall_k >= r}``, 0 for an empty set.
    Returns 0 when ``n_gt`` is 0 or the list is empty.
    """
    flags = np.asarray(is_tp, dtype=bool).reshape(1, -1)
    if n_gt < 0:
        raise DataError(f"n_gt: must be >= 0, got {n_gt}")
    if flags.sum() > n_gt:
        raise DataError(f"is_tp: {int(flags.sum())} true positives for only {n_gt} GT objects")
    return float(_eleven_point(flags.astype(np.int8), int(n_gt))[0])


def spair_ap(pred_boxes: Sequence[np.ndarray], gt_boxes: Sequence[np.ndarray],
             pred_scores: Sequence[np.ndarray] | None = None, batch_size: int = 32,
             iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS) -> dict[str, float]:
    """SPAIR-AP: the paper's AP protocol (original code spec, section 7.1).

    Args:
        pred_boxes: per image, predicted boxes ``(k, 4)`` ``(x0, y0, x1, y1)`` in pixels.
        gt_boxes: per image, ground-truth boxes ``(g, 4)``.
        pred_scores: per image, confidences ``(k,)``; None means 1.0 for every box (the paper's
            protocol: ties everywhere, so the order of the boxes decides).
        batch_size: number of consecutive images pooled into one precision/recall curve.
        iou_thresholds: thresholds ``tau``; a prediction matches when IoU > tau (strictly).

    Returns:
        ``{"AP": mean over thresholds, "AP@0.1": ..., ..., "AP@0.9": ...}``: per threshold, the
        batch-size-weighted mean of the per-batch 11-point interpolated AP. The module docstring
        gives the full definition and the edge cases (NaN only when there is no GT and no
        prediction at all).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise DataError(f"batch_size: must be a positive integer, got {batch_size!r}")
    thr = _check_thresholds(iou_thresholds)
    preds, gts = as_box_lists(pred_boxes, gt_boxes)
    scores = as_scores(pred_scores, preds)

    # Evaluation order inside each image: decreasing confidence, stable.
    orders = [np.argsort(-s, kind="stable") for s in scores]
    ious = [box_iou(p[o], g) for p, o, g in zip(preds, orders, gts)]
    statuses = match_predictions(ious, thr)
    sorted_scores = [s[o] for s, o in zip(scores, orders)]

    weighted = np.zeros(thr.size, dtype=np.float64)
    total_weight = 0
    n_images = len(preds)
    for start in range(0, n_images, batch_size):
        stop = min(start + batch_size, n_images)
        n_gt = sum(len(g) for g in gts[start:stop])
        batch_scores = np.concatenate(sorted_scores[start:stop]) if stop > start else np.zeros(0)
        if n_gt == 0 and batch_scores.size == 0:
            continue  # nothing to evaluate in this batch
        batch_status = np.concatenate(statuses[start:stop], axis=1)
        pooled = np.argsort(-batch_scores, kind="stable")
        weighted += (stop - start) * _eleven_point(batch_status[:, pooled], n_gt)
        total_weight += stop - start

    per_threshold = weighted / total_weight if total_weight else np.full(thr.size, np.nan)
    result = {"AP": float(per_threshold.mean())}
    for tau, value in zip(thr, per_threshold):
        result[threshold_key("AP", float(tau))] = float(value)
    return result
