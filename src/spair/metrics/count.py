"""Count metrics: how well the number of detected objects matches the number of GT objects.

With ``p_i`` the predicted and ``t_i`` the true number of objects of image ``i`` (``N`` images):

- ``count_abs_error = mean_i |p_i - t_i|`` (the paper's "count absolute error", ``count_1norm``);
- ``count_01_error = mean_i 1[p_i != t_i]`` (the paper's "count 0-1 error", ``count_error``);
- ``count_bias = mean_i (p_i - t_i)`` (signed: positive when the model over-counts).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import DataError


def _as_counts(values: Sequence[int] | np.ndarray, where: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(f"{where}: counts must be numbers") from None
    if not np.isfinite(arr).all() or (arr < 0).any() or (arr != np.round(arr)).any():
        raise DataError(f"{where}: counts must be non-negative integers")
    return arr.astype(np.int64)


def count_errors(pred_counts: Sequence[int] | np.ndarray, true_counts: Sequence[int] | np.ndarray) -> dict[str, float]:
    """Count absolute error, count 0-1 error and count bias (definitions in the module docstring).

    Returns ``{"count_abs_error": ..., "count_01_error": ..., "count_bias": ...}``.
    """
    pred = _as_counts(pred_counts, "pred_counts")
    true = _as_counts(true_counts, "true_counts")
    if pred.shape != true.shape:
        raise DataError(f"pred_counts has {pred.size} images but true_counts has {true.size}")
    if pred.size == 0:
        raise DataError("count_errors: no images to evaluate")
    diff = pred - true
    return {
        "count_abs_error": float(np.abs(diff).mean()),
        "count_01_error": float((diff != 0).mean()),
        "count_bias": float(diff.mean()),
    }
