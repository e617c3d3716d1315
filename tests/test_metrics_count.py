"""Count metrics on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from spair.errors import DataError
from spair.metrics import count_errors


def test_hand_computed_counts():
    # differences: 0, -1, +2, 0
    result = count_errors([1, 2, 3, 0], [1, 3, 1, 0])
    assert result == {"count_abs_error": 0.75, "count_01_error": 0.5, "count_bias": 0.25}


def test_perfect_counts_and_pure_undercount():
    assert count_errors(np.array([4, 5]), np.array([4, 5])) == {
        "count_abs_error": 0.0, "count_01_error": 0.0, "count_bias": 0.0}
    assert count_errors([0, 0, 1], [2, 1, 3]) == {
        "count_abs_error": pytest.approx(5 / 3), "count_01_error": 1.0, "count_bias": pytest.approx(-5 / 3)}


def test_integral_floats_are_accepted():
    assert count_errors(np.array([2.0, 3.0]), [2, 2])["count_bias"] == 0.5


@pytest.mark.parametrize("pred, true, match", [
    ([1, 2], [1], "pred_counts has 2 images but true_counts has 1"),
    ([], [], "no images"),
    ([1.5], [1], "pred_counts: counts must be non-negative integers"),
    ([1], [-1], "true_counts: counts must be non-negative integers"),
    (["a"], [1], "pred_counts: counts must be numbers"),
])
def test_bad_counts(pred, true, match):
    with pytest.raises(DataError, match=match):
        count_errors(pred, true)
