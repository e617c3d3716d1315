"""SPAIR-AP (the paper's protocol) on hand-computed cases, and against a plain reference loop."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spair.errors import DataError
from spair.metrics import box_iou, eleven_point_ap, match_predictions, spair_ap
from spair.metrics import ap as ap_module

THRESHOLDS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
KEYS = [f"AP@{t:.1f}" for t in THRESHOLDS]
EMPTY = np.zeros((0, 4), dtype=np.float32)


def boxes(*rows: tuple[float, float, float, float]) -> np.ndarray:
    return np.array(rows, dtype=np.float32).reshape(-1, 4)


def per_threshold(result: dict) -> list[float]:
    return [result[k] for k in KEYS]


# ------------------------------------------------------------------------------------------
# A plain, unvectorized transcription of the protocol, to cross-check the implementation.
# ------------------------------------------------------------------------------------------

def reference_spair_ap(preds, gts, scores=None, batch_size=32, thresholds=THRESHOLDS):
    n = len(preds)
    if scores is None:
        scores = [np.ones(len(p)) for p in preds]
    per_thr = []
    for tau in thresholds:
        total, weight = 0.0, 0
        for start in range(0, n, batch_size):
            entries, n_gt = [], 0
            for i in range(start, min(start + batch_size, n)):
                order = sorted(range(len(preds[i])), key=lambda k: -scores[i][k])  # stable
                remaining = list(range(len(gts[i])))
                n_gt += len(gts[i])
                for k in order:
                    if gts[i].shape[0] > 0 and not remaining:
                        break  # all GT matched: the rest is ignored
                    best, best_g = -1.0, None
                    for g in remaining:
                        iou = box_iou(preds[i][k:k + 1], gts[i][g:g + 1])[0, 0]
                        if iou > best:
                            best, best_g = iou, g
                    if best_g is not None and best > tau:
                        remaining.remove(best_g)
                        entries.append((scores[i][k], 1))
                    else:
                        entries.append((scores[i][k], 0))
            if not entries and n_gt == 0:
                continue
            entries.sort(key=lambda e: -e[0])
            tp = 0
            points = []
            for k, (_, is_tp) in enumerate(entries, 1):
                tp += is_tp
                points.append((tp / k, tp / n_gt if n_gt else 0.0))
            ap = 0.0
            for r in range(11):
                reached = [p for p, rec in points if n_gt and round(rec * 10, 9) >= r]
                ap += max(reached, default=0.0) / 11
            total += ap * (min(start + batch_size, n) - start)
            weight += min(start + batch_size, n) - start
        per_thr.append(total / weight)
    return per_thr


# ------------------------------------------------------------------------------------------
# IoU
# ------------------------------------------------------------------------------------------

def test_box_iou_hand_values():
    a = boxes((0, 0, 10, 10))
    b = boxes((0, 0, 10, 6), (5, 5, 15, 15), (20, 20, 30, 30), (3, 3, 3, 3))
    np.testing.assert_allclose(box_iou(a, b)[0], [0.6, 25 / 175, 0.0, 0.0])
    assert box_iou(boxes((1, 1, 1, 1)), boxes((1, 1, 1, 1)))[0, 0] == 0.0  # empty union
    assert box_iou(EMPTY, a).shape == (0, 1)


# ------------------------------------------------------------------------------------------
# Hand-computed cases
# ------------------------------------------------------------------------------------------

def test_perfect_predictions_give_ap_one():
    gts = [boxes((0, 0, 10, 10), (20, 5, 30, 19)), boxes((3, 4, 12, 16)), boxes((1, 1, 2, 2))]
    result = spair_ap([g.copy() for g in gts], gts)
    assert list(result) == ["AP"] + KEYS
    assert result["AP"] == 1.0
    assert per_threshold(result) == [1.0] * 9


def test_known_iou_and_strict_threshold():
    # IoU exactly 0.6 (60 / 100): a TP for tau < 0.6, an FP for tau >= 0.6 (strict ">").
    gts = [boxes((0, 0, 10, 10))] * 4
    preds = [boxes((0, 0, 10, 6))] * 4
    result = spair_ap(preds, gts)
    assert per_threshold(result) == [1.0] * 5 + [0.0] * 4
    assert result["AP"] == pytest.approx(5 / 9)
    # IoU exactly 0.5 at threshold 0.5 is not a match either.
    half = spair_ap([boxes((0, 0, 10, 5))], [boxes((0, 0, 10, 10))], iou_thresholds=[0.49, 0.5])
    assert half == {"AP": 0.5, "AP@0.49": 1.0, "AP@0.5": 0.0}


def test_duplicates_after_all_gt_matched_are_ignored():
    gts = [boxes((0, 0, 10, 10)), boxes((5, 5, 15, 15))]
    preds = [boxes((0, 0, 10, 10), (0, 0, 10, 10), (1, 0, 11, 10)), boxes((5, 5, 15, 15))]
    assert spair_ap(preds, gts)["AP"] == 1.0


def test_missed_objects_cap_recall():
    # One of two objects found: precision 1 up to recall 0.5, so 6 of the 11 points.
    result = spair_ap([boxes((0, 0, 10, 10))], [boxes((0, 0, 10, 10), (20, 20, 30, 30))])
    assert per_threshold(result) == [pytest.approx(6 / 11)] * 9


def test_false_positives_in_image_without_gt_depend_on_order():
    found = (boxes((0, 0, 10, 10)), boxes((0, 0, 10, 10)))  # (pred, gt) of an image
    stray = (boxes((30, 30, 40, 40)), EMPTY)  # a prediction in an image without GT
    # Pooled in image order with confidence 1: [TP, FP] keeps precision 1 at recall 1 ...
    assert spair_ap([found[0], stray[0]], [found[1], stray[1]])["AP"] == 1.0
    # ... while [FP, TP] has precision 1/2 at recall 1 at every recall point.
    assert spair_ap([stray[0], found[0]], [stray[1], found[1]])["AP"] == 0.5
    # A batch with predictions but no GT at all has AP 0.
    assert spair_ap([stray[0]], [stray[1]])["AP"] == 0.0


def test_empty_images_and_empty_batches():
    found = boxes((0, 0, 10, 10))
    # An empty image in a batch adds no entry but counts in the batch weight; an all-empty
    # batch (no GT, no prediction) is skipped.
    preds = [found, EMPTY, EMPTY, EMPTY]
    gts = [found, EMPTY, EMPTY, EMPTY]
    assert spair_ap(preds, gts, batch_size=2)["AP"] == 1.0
    # GT but no prediction in a batch: AP 0 for that batch, weighted by its size.
    assert spair_ap([found, EMPTY, found], [found, found, found], batch_size=2)["AP"] == pytest.approx(
        (2 * (6 / 11) + 1 * 1.0) / 3)
    # Nothing at all to evaluate: NaN.
    assert all(math.isnan(v) for v in spair_ap([EMPTY, EMPTY], [EMPTY, EMPTY]).values())


def test_per_batch_weighted_mean_differs_from_pooled():
    hit = (boxes((0, 0, 10, 10)), boxes((0, 0, 10, 10)))
    miss = (boxes((20, 20, 30, 30)), boxes((0, 0, 10, 10)))
    preds, gts = [hit[0], miss[0]], [hit[1], miss[1]]
    # Batches of one image: AP 1 and AP 0, mean 0.5.
    assert spair_ap(preds, gts, batch_size=1)["AP"] == 0.5
    # One pooled batch: [TP, FP] with 2 GT -> precision 1 up to recall 0.5: 6/11.
    assert spair_ap(preds, gts, batch_size=2)["AP"] == pytest.approx(6 / 11)
    # A partial last batch is weighted by its size: (2 * 1 + 1 * 0) / 3, not (1 + 0) / 2.
    assert spair_ap([hit[0], hit[0], miss[0]], [hit[1], hit[1], miss[1]], batch_size=2)["AP"] == pytest.approx(2 / 3)


def test_matching_takes_best_remaining_gt_per_threshold():
    gts = [boxes((0, 0, 10, 10), (6, 0, 16, 10))]
    # p1 overlaps g2 with IoU 2/3 and g1 with 3/7; p2 equals g2 and overlaps g1 with IoU 1/4.
    preds = [boxes((4, 0, 14, 10), (6, 0, 16, 10))]
    result = spair_ap(preds, gts)
    # tau 0.1, 0.2: p1 -> g2, p2 -> g1 (0.25 > tau): [TP, TP] -> 1.
    # tau 0.3 .. 0.6: p1 -> g2, p2 finds only g1 at 0.25: [TP, FP] -> 6/11.
    # tau 0.7 .. 0.9: p1 is an FP (2/3 <= tau), p2 -> g2: [FP, TP] -> precision 1/2 up to recall 1/2.
    expected = [1.0, 1.0] + [6 / 11] * 4 + [3 / 11] * 3
    assert per_threshold(result) == pytest.approx(expected)
    assert result["AP"] == pytest.approx(5 / 9)


def test_scores_set_the_order_within_an_image():
    gts = [boxes((0, 0, 10, 10))]
    preds = [boxes((30, 30, 40, 40), (0, 0, 10, 10))]  # a miss first, then the hit
    # Confidence 1 for both: raster order, [FP, TP] -> 0.5.
    assert spair_ap(preds, gts)["AP"] == 0.5
    # The hit ranked first: TP, then all GT matched and the miss is ignored -> 1.
    assert spair_ap(preds, gts, pred_scores=[np.array([0.2, 0.9])])["AP"] == 1.0
    # Equal scores keep the given order (stable sort).
    assert spair_ap(preds, gts, pred_scores=[np.array([0.5, 0.5])])["AP"] == 0.5


def test_match_predictions_statuses():
    iou = np.array([[0.0, 0.0], [0.7, 0.3], [0.8, 0.9], [0.95, 0.2]])
    (status,) = match_predictions([iou], [0.5, 0.85])
    # tau 0.5: FP, TP(g0), TP(g1), then ignored. tau 0.85: FP, FP, TP(g1 0.9), TP(g0 0.95).
    np.testing.assert_array_equal(status, [[0, 1, 1, -1], [0, 0, 1, 1]])


def test_eleven_point_interpolation_hand_curve():
    # Ranks: T F T F F T with 4 GT -> (P, R) = (1, .25) (.5, .25) (.67, .5) (.5, .5) (.4, .5) (.5, .75).
    # r = 0, .1, .2 -> 1; r = .3, .4, .5 -> 2/3; r = .6, .7 -> 1/2; r = .8, .9, 1 -> 0.
    assert eleven_point_ap([1, 0, 1, 0, 0, 1], 4) == pytest.approx((3 * 1 + 3 * 2 / 3 + 2 * 0.5) / 11)
    # Recall exactly 0.3 reaches the point r = 0.3 (compared exactly, not in floating point).
    assert eleven_point_ap([1, 1, 1], 10) == pytest.approx(4 / 11)
    assert eleven_point_ap([], 3) == 0.0
    assert eleven_point_ap([0, 0], 0) == 0.0


# ------------------------------------------------------------------------------------------
# Against the reference loop, on random cases (also with tiny chunks in the vectorized matcher)
# ------------------------------------------------------------------------------------------

def random_case(rng: np.random.Generator, n_images: int):
    def random_boxes(k: int) -> np.ndarray:
        xy = rng.integers(0, 30, size=(k, 2))
        wh = rng.integers(1, 12, size=(k, 2))
        return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)

    gts = [random_boxes(int(rng.integers(0, 6))) for _ in range(n_images)]
    preds = []
    for g in gts:
        jittered = g + rng.integers(-2, 3, size=g.shape)
        jittered[:, 2:] = np.maximum(jittered[:, 2:], jittered[:, :2])
        keep = rng.uniform(size=len(g)) < 0.8
        extra = random_boxes(int(rng.integers(0, 3)))
        p = np.concatenate([jittered[keep], extra, jittered[~keep][:1]])
        preds.append(p[rng.permutation(len(p))].astype(np.float32))
    scores = [np.round(rng.uniform(size=len(p)), 1) for p in preds]  # with ties
    return preds, gts, scores


@pytest.mark.parametrize("chunk", [1 << 22, 50])
def test_matches_reference_loop_on_random_cases(monkeypatch, chunk):
    monkeypatch.setattr(ap_module, "_CHUNK_ELEMENTS", chunk)
    rng = np.random.default_rng(7)
    preds, gts, scores = random_case(rng, 45)
    for batch_size, sc in [(32, None), (8, scores), (5, None)]:
        got = spair_ap(preds, gts, pred_scores=sc, batch_size=batch_size)
        expected = reference_spair_ap(preds, gts, sc, batch_size)
        assert per_threshold(got) == pytest.approx(expected, abs=1e-12)
        assert got["AP"] == pytest.approx(np.mean(expected), abs=1e-12)


# ------------------------------------------------------------------------------------------
# Input errors
# ------------------------------------------------------------------------------------------

def test_bad_inputs_raise_data_error_naming_the_field():
    good = [boxes((0, 0, 1, 1))]
    with pytest.raises(DataError, match="pred_boxes has 2 images but gt_boxes has 1"):
        spair_ap(good * 2, good)
    with pytest.raises(DataError, match=r"pred_boxes\[0\].*\(k, 4\)"):
        spair_ap([np.zeros((2, 3))], good)
    with pytest.raises(DataError, match=r"gt_boxes\[0\].*NaN"):
        spair_ap(good, [np.array([[0, 0, np.nan, 1]])])
    with pytest.raises(DataError, match=r"gt_boxes\[0\].*x1 >= x0"):
        spair_ap(good, [np.array([[5, 0, 1, 1]])])
    with pytest.raises(DataError, match=r"pred_scores\[0\]: 2 scores for 1 boxes"):
        spair_ap(good, good, pred_scores=[np.ones(2)])
    with pytest.raises(DataError, match="batch_size"):
        spair_ap(good, good, batch_size=0)
    with pytest.raises(DataError, match="iou_thresholds"):
        spair_ap(good, good, iou_thresholds=[1.0])
    # Empty lists in any form are accepted as "no boxes".
    assert math.isnan(spair_ap([[]], [np.zeros((0,))])["AP"])
