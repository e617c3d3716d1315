"""COCO AP through faster-coco-eval: hand-computed cases and agreement with pycocotools."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest

from spair.errors import DataError
from spair.metrics import coco_ap, count_errors, evaluate_detections

SPAIR_KEYS = [f"AP@{t:.1f}" for t in np.arange(1, 10) / 10]
EMPTY = np.zeros((0, 4), dtype=np.float32)


def boxes(*rows: tuple[float, float, float, float]) -> np.ndarray:
    return np.array(rows, dtype=np.float32).reshape(-1, 4)


def test_result_keys_and_perfect_predictions():
    gts = [boxes((0, 0, 10, 10), (20, 5, 30, 19)), boxes((3, 4, 12, 16))]
    result = coco_ap([g.copy() for g in gts], None, gts)
    assert list(result) == ["AP[.1:.9]", *SPAIR_KEYS, "AP[.5:.95]", "AP@.5"]
    assert all(v == 1.0 for v in result.values())


def test_threshold_is_inclusive_unlike_spair():
    # IoU exactly 0.6: COCO matches at t = 0.6 (IoU >= t), not at 0.7.
    result = coco_ap([boxes((0, 0, 10, 6))], None, [boxes((0, 0, 10, 10))])
    assert [result[k] for k in SPAIR_KEYS] == [1.0] * 6 + [0.0] * 3
    assert result["AP[.1:.9]"] == pytest.approx(6 / 9)
    # 0.5:0.95 -> matched at 0.5, 0.55, 0.6 (3 of 10 thresholds).
    assert result["AP[.5:.95]"] == pytest.approx(0.3)
    assert result["AP@.5"] == 1.0


def test_duplicates_count_as_false_positives():
    gts = [boxes((0, 0, 10, 10)), boxes((5, 5, 15, 15))]
    preds = [boxes((0, 0, 10, 10), (0, 0, 10, 10)), boxes((5, 5, 15, 15))]
    scores = [np.array([0.9, 0.8]), np.array([0.7])]
    # Ranked TP, FP (duplicate), TP: precision 1 up to recall 0.5 (51 of the 101 recall points),
    # then 2/3 (the 50 points above 0.5).
    expected = (51 * 1.0 + 50 * (2 / 3)) / 101
    result = coco_ap(preds, scores, gts)
    assert result["AP[.1:.9]"] == pytest.approx(expected)
    assert result["AP@.5"] == pytest.approx(expected)


def test_missed_objects_and_empty_images():
    gts = [boxes((0, 0, 10, 10), (20, 20, 30, 30)), EMPTY, boxes((1, 1, 5, 5))]
    preds = [boxes((0, 0, 10, 10)), EMPTY, EMPTY]
    # Recall reaches 1/3 with precision 1: the 34 recall points 0, 0.01, ..., 0.33.
    result = coco_ap(preds, None, gts)
    assert result["AP[.1:.9]"] == pytest.approx(34 / 101)


def test_no_predictions_and_no_ground_truth():
    gts = [boxes((0, 0, 10, 10)), EMPTY]
    assert all(v == 0.0 for v in coco_ap([EMPTY, EMPTY], None, gts).values())
    # Predictions but no GT anywhere: every detection is a false positive.
    assert all(v == 0.0 for v in coco_ap([boxes((0, 0, 1, 1))], None, [EMPTY]).values())
    # Nothing at all: undefined.
    assert all(math.isnan(v) for v in coco_ap([EMPTY], None, [EMPTY]).values())


def test_false_positive_in_image_without_gt_ranked_first():
    preds = [boxes((0, 0, 10, 10)), boxes((30, 30, 40, 40))]
    gts = [boxes((0, 0, 10, 10)), EMPTY]
    # The stray box ranked above the hit: precision 1/2 at every recall point.
    assert coco_ap(preds, [np.array([0.5]), np.array([0.9])], gts)["AP[.1:.9]"] == pytest.approx(0.5)
    # Ranked below: precision 1 at recall 1.
    assert coco_ap(preds, [np.array([0.9]), np.array([0.5])], gts)["AP[.1:.9]"] == 1.0


def test_every_detection_of_a_crowded_image_is_kept():
    # 150 objects in one image: the default COCO limit of 100 detections would cap recall at 2/3.
    xy = np.stack(np.meshgrid(np.arange(15) * 4, np.arange(10) * 4), axis=-1).reshape(-1, 2)
    gt = np.concatenate([xy, xy + 3], axis=1).astype(np.float32)
    assert coco_ap([gt.copy()], None, [gt])["AP[.1:.9]"] == 1.0


def test_image_sizes_argument():
    preds, gts = [boxes((0, 0, 10, 10))], [boxes((0, 0, 10, 6))]
    derived = coco_ap(preds, None, gts)
    assert coco_ap(preds, None, gts, image_sizes=[(48, 48)]) == derived
    assert coco_ap(preds, None, gts, image_sizes=(64, 80)) == derived
    with pytest.raises(DataError, match="image_sizes"):
        coco_ap(preds, None, gts, image_sizes=[(48, 48), (48, 48)])


def test_prints_nothing(capsys):
    preds, gts = [boxes((0, 0, 10, 10))], [boxes((0, 0, 10, 6))]
    coco_ap(preds, None, gts)
    coco_ap(preds, None, gts, backend="pycocotools")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def random_case(rng: np.random.Generator, n_images: int):
    def random_boxes(k: int) -> np.ndarray:
        xy = rng.uniform(0, 40, size=(k, 2))
        wh = rng.uniform(2, 14, size=(k, 2))
        return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)

    gts = [random_boxes(int(rng.integers(0, 7))) for _ in range(n_images)]
    preds, scores = [], []
    for g in gts:
        p = g + rng.normal(0, 1.5, size=g.shape).astype(np.float32)
        p = np.concatenate([np.minimum(p[:, :2], p[:, 2:]), np.maximum(p[:, :2], p[:, 2:])], axis=1)
        p = np.concatenate([p[rng.uniform(size=len(p)) < 0.85], random_boxes(int(rng.integers(0, 3)))])
        preds.append(p)
        scores.append(rng.uniform(size=len(p)))
    return preds, scores, gts


def pycocotools_ap(preds, scores, gts, thresholds) -> np.ndarray:
    """Precision array [T, R] straight from pycocotools (no spair code involved)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images = [{"id": i + 1, "width": 64, "height": 64} for i in range(len(gts))]
    anns = [{"image_id": i + 1, "category_id": 1, "iscrowd": 0,
             "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
             "area": float((b[2] - b[0]) * (b[3] - b[1]))}
            for i, g in enumerate(gts) for b in g]
    for k, ann in enumerate(anns):
        ann["id"] = k + 1
    dets = [{"image_id": i + 1, "category_id": 1, "score": float(s),
             "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
            for i, (p, sc) in enumerate(zip(preds, scores)) for b, s in zip(p, sc)]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "o"}]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.params.iouThrs = thresholds
        ev.params.maxDets = [100]
        ev.params.areaRng = [[0, 1e10]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    return ev.eval["precision"][:, :, 0, 0, 0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_pycocotools_with_custom_thresholds(seed):
    rng = np.random.default_rng(seed)
    preds, scores, gts = random_case(rng, 60)
    result = coco_ap(preds, scores, gts)
    p_spair = pycocotools_ap(preds, scores, gts, np.linspace(0.1, 0.9, 9))
    p_coco = pycocotools_ap(preds, scores, gts, np.linspace(0.5, 0.95, 10))
    assert result["AP[.1:.9]"] == pytest.approx(p_spair.mean(), abs=1e-12)
    for t, key in enumerate(SPAIR_KEYS):
        assert result[key] == pytest.approx(p_spair[t].mean(), abs=1e-12)
    assert result["AP[.5:.95]"] == pytest.approx(p_coco.mean(), abs=1e-12)
    assert result["AP@.5"] == pytest.approx(p_coco[0].mean(), abs=1e-12)
    # The pycocotools backend of coco_ap gives the same numbers.
    assert coco_ap(preds, scores, gts, backend="pycocotools") == pytest.approx(result, abs=1e-12)
    # Without scores (all 1.0) both libraries break the ties the same way.
    assert coco_ap(preds, None, gts) == pytest.approx(coco_ap(preds, None, gts, backend="pycocotools"), abs=1e-12)
    assert 0.2 < result["AP[.1:.9]"] < 0.95  # a non-trivial case


def test_unknown_backend():
    with pytest.raises(DataError, match="backend"):
        coco_ap([EMPTY], None, [boxes((0, 0, 1, 1))], backend="nope")


# ------------------------------------------------------------------------------------------
# evaluate_detections: every metric at once
# ------------------------------------------------------------------------------------------

def test_evaluate_detections_uses_confidence_one_for_spair_ap_and_scores_for_coco():
    gts = [boxes((0, 0, 10, 10))]
    preds = [boxes((30, 30, 40, 40), (0, 0, 10, 10))]  # a miss first, then the hit
    scores = [np.array([0.1, 0.9])]
    result = evaluate_detections(preds, scores, gts)
    # SPAIR-AP in raster order: [FP, TP] -> precision 1/2 at every recall point.
    assert result["spair_AP"] == 0.5
    assert result["spair_AP@0.9"] == 0.5
    # COCO ranks the hit first -> 1.
    assert result["coco_AP[.1:.9]"] == 1.0
    assert result["coco_AP[.5:.95]"] == 1.0
    assert result["count_abs_error"] == 1.0
    assert result["count_01_error"] == 1.0
    assert result["count_bias"] == 1.0
    assert (result["n_images"], result["n_gt"], result["n_pred"]) == (1, 1, 2)
    assert set(result) == ({"n_images", "n_gt", "n_pred", "spair_AP", "coco_AP[.1:.9]", "coco_AP[.5:.95]",
                            "coco_AP@.5"} | {f"spair_{k}" for k in SPAIR_KEYS} | {f"coco_{k}" for k in SPAIR_KEYS}
                           | set(count_errors([0], [0])))


def test_evaluate_detections_batches_spair_ap():
    hit = boxes((0, 0, 10, 10))
    preds = [hit, boxes((20, 20, 30, 30))]
    gts = [hit, hit]
    assert evaluate_detections(preds, None, gts, batch_size=1)["spair_AP"] == 0.5
    assert evaluate_detections(preds, None, gts, batch_size=2)["spair_AP"] == pytest.approx(6 / 11)
