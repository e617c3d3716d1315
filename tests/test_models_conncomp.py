"""ConnComp baseline and the detector registry, on synthetic images with known boxes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spair.errors import ConfigError, DataError, SpairError
from spair.models import conncomp as cc
from spair.models import detector as det_module
from spair.models.conncomp import (ConnCompDetector, conncomp_boxes, difference_map, estimate_background,
                                   load_tau, save_tau, tune_tau)
from spair.models.detector import Detections, Detector, get_detector, register_detector

WHITE = (255, 255, 255)


def canvas(h: int = 48, w: int = 48, colour=(0, 0, 0)) -> np.ndarray:
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[:] = colour
    return img


def test_rectangles_give_exact_continuous_boxes_in_raster_order():
    img = canvas()
    img[30:40, 2:9] = WHITE      # rows 30..39, columns 2..8
    img[5:17, 20:28] = WHITE     # rows 5..16, columns 20..27
    img[5, 40] = WHITE           # a single pixel
    det = conncomp_boxes(img, tau=0.5)
    # Ordered by the raster position of the first pixel: (5, 20), then (5, 40), then (30, 2).
    np.testing.assert_array_equal(det.boxes, [[20, 5, 28, 17], [40, 5, 41, 6], [2, 30, 9, 40]])
    assert det.boxes.dtype == np.float32 and det.scores.dtype == np.float32


def test_blob_extent():
    yy, xx = np.mgrid[:48, :48]
    img = canvas()
    img[(yy - 20) ** 2 + (xx - 10) ** 2 <= 25] = WHITE  # a disc of radius 5 around (20, 10)
    np.testing.assert_array_equal(conncomp_boxes(img, 0.3).boxes, [[5, 15, 16, 26]])


def test_touching_objects_merge_but_diagonal_neighbours_do_not():
    img = canvas()
    img[10:20, 10:15] = WHITE
    img[12:18, 15:22] = WHITE   # shares an edge with the first: one component
    img[30, 30] = WHITE
    img[31, 31] = WHITE         # only diagonal contact: two components (4-connectivity)
    np.testing.assert_array_equal(conncomp_boxes(img, 0.5).boxes,
                                  [[10, 10, 22, 20], [30, 30, 31, 31], [31, 31, 32, 32]])


def test_background_that_is_not_black():
    bg = (40, 80, 120)
    img = canvas(colour=bg)
    img[3:8, 4:10] = (40, 80, 250)   # d = 130 / 255 ~ 0.51 from the background
    img[20:30, 20:25] = (0, 0, 0)    # black ink on a coloured background: d = 240 / 255 ~ 0.94
    np.testing.assert_array_equal(estimate_background(img), bg)
    expected = [[4, 3, 10, 8], [20, 20, 25, 30]]
    np.testing.assert_array_equal(conncomp_boxes(img, 0.3).boxes, expected)  # estimated background
    np.testing.assert_array_equal(conncomp_boxes(img, 0.3, background=bg).boxes, expected)
    # Against a black background the whole canvas would be one component.
    np.testing.assert_array_equal(conncomp_boxes(img, 0.3, background=(0, 0, 0)).boxes, [[0, 0, 48, 48]])
    # d is the channel sum of absolute differences, divided by 255.
    assert difference_map(img)[5, 5] == pytest.approx(130 / 255)
    assert difference_map(img)[25, 22] == pytest.approx(240 / 255)


def test_tau_is_strict():
    img = canvas(8, 8)
    img[2:4, 2:4] = (51, 0, 0)       # d = 51 / 255 = 0.2 exactly
    assert len(conncomp_boxes(img, 0.2)) == 0
    assert len(conncomp_boxes(img, 0.199)) == 1
    # The same on a float image.
    flt = img.astype(np.float64) / 255
    assert len(conncomp_boxes(flt, 0.2)) == 0
    assert len(conncomp_boxes(flt, 0.199)) == 1


def test_float_and_grey_images():
    img = canvas(12, 12)
    img[1:5, 6:11] = (200, 200, 200)
    expected = [[6, 1, 11, 5]]
    np.testing.assert_array_equal(conncomp_boxes(img.astype(np.float32) / 255, 0.3).boxes, expected)
    np.testing.assert_array_equal(conncomp_boxes(img[:, :, 0], 0.3).boxes, expected)  # grey (H, W)


def test_scores():
    img = canvas(10, 10)
    img[1:3, 1:4] = WHITE          # 6 pixels with d = 3: mass 18
    img[6, 6] = (51, 0, 0)         # 1 pixel with d = 0.2: mass 0.2
    det = conncomp_boxes(img, 0.1)
    np.testing.assert_allclose(det.scores, [18 / 19, 0.2 / 1.2], rtol=1e-6)
    np.testing.assert_array_equal(conncomp_boxes(img, 0.1, score="constant").scores, [1.0, 1.0])


def test_background_mode_tie_goes_to_smallest_colour():
    img = canvas(4, 4, colour=(0, 0, 9))
    img[:2] = (0, 0, 7)   # 8 pixels each
    np.testing.assert_array_equal(estimate_background(img), (0, 0, 7))


def test_bad_inputs():
    with pytest.raises(DataError, match=r"image: expected an image of shape \(H, W, 3\)"):
        conncomp_boxes(np.zeros((4, 4, 4), np.uint8), 0.3)
    with pytest.raises(DataError, match=r"float images must hold finite values in \[0, 1\]"):
        conncomp_boxes(np.full((4, 4, 3), 2.0), 0.3)
    with pytest.raises(DataError, match="dtype int32"):
        conncomp_boxes(np.zeros((4, 4, 3), np.int32), 0.3)
    with pytest.raises(DataError, match="integers in 0..255"):
        conncomp_boxes(canvas(4, 4), 0.3, background=(0.5, 0, 0))
    with pytest.raises(ConfigError, match="tau"):
        conncomp_boxes(canvas(4, 4), -1.0)
    with pytest.raises(DataError, match=r"backgrounds: 1 colours for 2 images"):
        ConnCompDetector().detect([canvas(4, 4)] * 2, backgrounds=[(0, 0, 0)])


# ------------------------------------------------------------------------------------------
# The detector: stacks, mixed sizes, backgrounds, registry
# ------------------------------------------------------------------------------------------

def random_images(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    imgs = np.zeros((n, h, w, 3), dtype=np.uint8)
    imgs[:] = rng.integers(0, 256, size=(n, 1, 1, 3), dtype=np.uint8)  # per-image background
    ink = rng.uniform(size=(n, h, w)) < 0.08
    imgs[ink] = rng.integers(0, 256, size=(int(ink.sum()), 3), dtype=np.uint8)
    return imgs


def test_detect_on_stacks_and_mixed_sizes_equals_single_images(monkeypatch):
    rng = np.random.default_rng(3)
    stack = random_images(rng, 20, 16, 16)
    others = [random_images(rng, 1, 9, 23)[0], random_images(rng, 1, 30, 5)[0]]
    singles = [conncomp_boxes(im, 0.4) for im in list(stack) + others]
    assert sum(len(d) for d in singles) > 100
    monkeypatch.setattr(cc, "_MAX_CHUNK_PIXELS", 16 * 16 * 3)  # several chunks per shape
    detector = ConnCompDetector(tau=0.4)
    for got in (detector.detect(stack), detector.detect(list(stack) + others)):
        for a, b in zip(got, singles):
            np.testing.assert_array_equal(a.boxes, b.boxes)
            np.testing.assert_array_equal(a.scores, b.scores)
    assert len(detector.detect(list(stack) + others)) == 22
    assert detector.detect([]) == []


def test_detect_background_precedence():
    img = canvas(10, 10, colour=(100, 100, 100))
    img[2:5, 2:5] = (0, 0, 0)
    found = [[2, 2, 5, 5]]
    everything = [[0, 0, 10, 10]]
    np.testing.assert_array_equal(ConnCompDetector(0.3).detect([img])[0].boxes, found)
    np.testing.assert_array_equal(ConnCompDetector(0.3, background=(0, 0, 0)).detect([img])[0].boxes, everything)
    # Per-image backgrounds passed to detect() override the detector's own.
    np.testing.assert_array_equal(
        ConnCompDetector(0.3, background=(0, 0, 0)).detect([img], backgrounds=np.array([[100, 100, 100]],
                                                                                        np.uint8))[0].boxes, found)


def test_registry():
    detector = get_detector("conncomp", tau=0.25, score="constant")
    assert isinstance(detector, ConnCompDetector) and isinstance(detector, Detector)
    assert (detector.name, detector.tau, detector.score) == ("conncomp", 0.25, "constant")
    with pytest.raises(ConfigError, match=r"unknown detection method 'nope' \(known: .*conncomp"):
        get_detector("nope")
    with pytest.raises(ConfigError, match="method 'conncomp':.*bogus"):
        get_detector("conncomp", bogus=1)


def test_registry_missing_builtin_module_and_custom_detector(monkeypatch):
    monkeypatch.setitem(det_module._BUILTIN_MODULES, "ghost", "spair.models.no_such_module")
    with pytest.raises(ConfigError, match="method 'ghost' is not available"):
        get_detector("ghost")

    monkeypatch.setattr(det_module, "_REGISTRY", dict(det_module._REGISTRY))

    @register_detector("everything")
    class Everything:
        name = "everything"

        def detect(self, images, backgrounds=None):
            return [Detections([[0, 0, im.shape[1], im.shape[0]]], [1.0]) for im in images]

    (d,) = get_detector("everything").detect([canvas(6, 7)])
    np.testing.assert_array_equal(d.boxes, [[0, 0, 7, 6]])
    with pytest.raises(ValueError, match="already registered"):
        register_detector("everything")(ConnCompDetector)


def test_detections_validation():
    d = Detections(np.zeros((0,)), [])
    assert d.boxes.shape == (0, 4) and len(d) == 0
    with pytest.raises(ValueError, match="2 scores for 1 boxes"):
        Detections([[0, 0, 1, 1]], [1.0, 0.5])


# ------------------------------------------------------------------------------------------
# Tuning tau
# ------------------------------------------------------------------------------------------

def halo_scenes(n: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Squares of ink d = 3 inside a one-pixel halo of d = 0.3, plus specks of d = 0.15.

    GT is the core square. tau < 0.15: specks are detected too; 0.15 <= tau < 0.3: right count,
    boxes include the halo (IoU 16/36); 0.3 <= tau < 3: exact boxes; tau >= 3: nothing.
    """
    imgs = np.zeros((n, 24, 24, 3), dtype=np.uint8)
    gts = []
    for i in range(n):
        k = 1 + i % 2
        boxes = []
        for j in range(k):
            y, x = 2 + 10 * j, 2 + 5 * (i % 3)
            imgs[i, y - 1:y + 5, x - 1:x + 5] = (26, 25, 26)   # halo: d = 77 / 255 ~ 0.302
            imgs[i, y:y + 4, x:x + 4] = WHITE
            boxes.append([x, y, x + 4, y + 4])
        imgs[i, 22, 2 * (i % 5)] = (38, 0, 0)  # speck: d = 38 / 255 ~ 0.149
        gts.append(np.array(boxes, dtype=np.float32))
    return imgs, gts


def test_tune_tau_picks_the_known_best():
    imgs, gts = halo_scenes(12)
    grid = [0.1, 0.2, 0.25, 0.35, 0.5, 1.0, 3.0]
    tau, table = tune_tau(imgs, gts, metric="ap", grid=grid, batch_size=4)
    assert tau == 0.35
    assert [row["tau"] for row in table] == grid
    ap = [row["AP"] for row in table]
    assert ap[3:6] == [1.0, 1.0, 1.0] and ap[6] == 0.0 and max(ap[:3]) < 1.0
    # Counting is already right at 0.2 (halo included): the count metrics pick the first such tau.
    assert tune_tau(imgs, gts, metric="count_abs", grid=grid)[0] == 0.2
    tau01, table01 = tune_tau(imgs, gts, metric="count_01", grid=grid)
    assert tau01 == 0.2 and "AP" not in table01[0]
    assert table01[0]["count_abs_error"] == 1.0 and table01[0]["count_bias"] == 1.0  # one speck each
    assert table01[-1]["count_abs_error"] == pytest.approx(1.5)  # nothing found: mean count 1.5


def test_tune_tau_uses_given_backgrounds():
    imgs, gts = halo_scenes(4)
    inverted = 255 - imgs
    backgrounds = np.full((4, 3), 255, dtype=np.uint8)
    tau, _ = tune_tau(inverted, gts, backgrounds=backgrounds, grid=[0.1, 0.35])
    assert tau == 0.35
    with pytest.raises(ConfigError, match="metric"):
        tune_tau(imgs, gts, metric="f1")


def test_save_and_load_tau_round_trip(tmp_path):
    imgs, gts = halo_scenes(4)
    grid = np.array([0.1, 0.35])
    tau, table = tune_tau(imgs, gts, grid=grid)
    info = {"metric": "ap", "grid": grid, "data": "4 halo scenes", "table": table, "n": np.int64(4)}
    path = tmp_path / "sub" / "tau.json"
    save_tau(path, tau, info)
    loaded_tau, loaded_info = load_tau(path)
    assert loaded_tau == tau == 0.35
    assert loaded_info == {"metric": "ap", "grid": [0.1, 0.35], "data": "4 halo scenes", "table": table, "n": 4}
    assert [p.name for p in path.parent.iterdir()] == ["tau.json"]  # no temporary file left

    path.write_text(json.dumps({"format": 1, "method": "conncomp", "tau": -2}))
    with pytest.raises(ConfigError, match="'tau' must be a finite number"):
        load_tau(path)
    path.write_text(json.dumps({"format": 1, "method": "other", "tau": 0.3}))
    with pytest.raises(ConfigError, match="not a ConnComp tau file"):
        load_tau(path)
    with pytest.raises(SpairError, match="tau file not found"):
        load_tau(tmp_path / "missing.json")
