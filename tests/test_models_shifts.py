"""Shifted grids: where the views put the image, how their boxes come back, how the vote decides, that a
detector whose errors depend on the grid's position is corrected by the vote, and that the shipped
model's detector uses it."""

import numpy as np
import pytest

from spair.data.scenes import SceneConfig, generate_scenes
from spair.errors import ConfigError
from spair.models.detector import Detections
from spair.models.shifts import (detect_on_shifted_grids, grid_offsets, most_frequent_colours, pad_images, unshift,
                                 VOTE_KEEP_SHARE, view_weights, vote_detections)
from spair.models.spair_detector import SpairDetector
from test_models_refine import small_model
from test_models_split import matched


def test_grid_offsets_are_the_image_and_half_a_cell_down_right_and_both():
    assert grid_offsets(8, 1) == [(0, 0)]
    assert grid_offsets(8, 4) == [(0, 0), (0, 4), (4, 0), (4, 4)]
    assert grid_offsets(12, 4) == [(0, 0), (0, 6), (6, 0), (6, 6)]
    # eight: the four and a quarter / three quarters of a cell down and right in each combination
    assert grid_offsets(8, 8) == [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2), (6, 6), (2, 6), (6, 2)]
    assert grid_offsets(12, 8)[4:] == [(3, 3), (9, 9), (3, 9), (9, 3)]
    # sixteen: the eight first, then the rest of the quarter-cell lattice, every offset once
    sixteen = grid_offsets(8, 16)
    assert sixteen[:8] == grid_offsets(8, 8)
    assert sorted(sixteen) == [(dy, dx) for dy in (0, 2, 4, 6) for dx in (0, 2, 4, 6)]
    assert sorted(grid_offsets(12, 16)) == [(dy, dx) for dy in (0, 3, 6, 9) for dx in (0, 3, 6, 9)]
    for bad in (0, 2, 3, 5, 6, 12, 32):
        with pytest.raises(ConfigError, match="grid_shifts"):
            grid_offsets(8, bad)


def test_pad_images_places_the_image_on_whole_cells_of_its_background():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 10, 13, 3), dtype=np.uint8)
    colours = np.array([[1, 2, 3], [250, 251, 252]], dtype=np.uint8)
    out = pad_images(images, colours, 4, 2, 8)
    assert out.shape == (2, 16, 16, 3)                        # 4 + 10 → 16, 2 + 13 → 16
    np.testing.assert_array_equal(out[:, 4:14, 2:15], images)
    border = np.ones(out.shape[1:3], bool)
    border[4:14, 2:15] = False
    for b in range(2):
        assert (out[b][border] == colours[b]).all()
    np.testing.assert_array_equal(pad_images(images, colours, 0, 0, 8), images)   # no offset: no padding
    assert pad_images(images, colours, 0, 4, 8).shape == (2, 10, 24, 3)          # only the shifted axis grows


def test_most_frequent_colours():
    im = np.zeros((2, 5, 5, 3), np.uint8)
    im[0] = [10, 20, 30]
    im[0, :2, :2] = 255
    im[1, :, :3] = [0, 0, 255]
    np.testing.assert_array_equal(most_frequent_colours(im), [[10, 20, 30], [0, 0, 255]])


def test_unshift_moves_boxes_back_clips_them_and_drops_those_outside():
    d = Detections(np.array([[6, 5, 10, 9], [0, 0, 3, 3], [2, 4, 30, 9]], np.float32), np.array([0.9, 0.8, 0.7]))
    u = unshift(d, 4, 4, (12, 20))
    np.testing.assert_array_equal(u.boxes, [[2, 1, 6, 5], [0, 0, 20, 5]])   # the box in the padding is gone
    np.testing.assert_allclose(u.scores, [0.9, 0.7])


def _dets(*boxes, score=1.0):
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.full(len(boxes), score, np.float32))


def test_vote_keeps_what_half_the_views_find_with_the_median_box_and_mean_score():
    digit = [10, 10, 20, 24]
    views = [_dets([10, 10, 20, 24], [30, 30, 36, 40]),    # the digit, and a second one only two views see
             _dets([11, 10, 20, 25], score=0.5),
             _dets([10, 9, 21, 24], [30, 31, 36, 40]),
             _dets([10, 10, 20, 23], [0, 0, 4, 4])]         # and a speck only this view reports
    v = vote_detections(views)
    assert len(v) == 2
    order = np.argsort(v.boxes[:, 0])
    np.testing.assert_allclose(v.boxes[order[0]], np.median(np.array(
        [digit, [11, 10, 20, 25], [10, 9, 21, 24], [10, 10, 20, 23]]), 0))
    np.testing.assert_allclose(v.boxes[order[1]], [30, 30.5, 36, 40])
    np.testing.assert_allclose(v.scores[order], [(1 + 0.5 + 1 + 1) / 4, (1 + 1) / 4])  # over all four views
    assert vote_detections(views[:1]) is views[0]                       # one view: unchanged
    assert len(vote_detections([_dets(), _dets(), _dets(), _dets()])) == 0


def test_vote_weights_each_objects_box_by_how_well_the_views_that_found_it_explain_the_image():
    digit, speck = [10, 10, 20, 24], [30, 30, 36, 40]
    found = [[11, 10, 20, 24], digit, [12, 10, 21, 24], [10, 11, 20, 24]]       # the digit in the four views
    views = [_dets(found[0], [30, 31, 36, 40]), _dets(found[1]), _dets(found[2], speck), _dets(found[3])]
    objective = np.array([305.0, 300.0, 300.0 + 5.0 * np.log(3.0), 310.0])       # nats
    for d, j in zip(views, objective):
        d.objective = float(j)

    def boxes(v):
        return v.boxes[np.argsort(v.boxes[:, 0])]

    # weights ∝ exp(−J / 5): e^-1, 1, 1/3, e^-2 for the digit; e^-1 against 1/3 for the speck (views 0 and 2)
    w = np.array([np.exp(-1.0), 1.0, 1.0 / 3.0, np.exp(-2.0)])
    np.testing.assert_allclose(view_weights(objective, 5.0), w / w.sum(), rtol=1e-12)
    ws = w[[0, 2]] / w[[0, 2]].sum()
    want_speck = ws[0] * np.array([30, 31, 36, 40]) + ws[1] * np.array(speck)
    np.testing.assert_allclose(boxes(vote_detections(views)), [w @ np.array(found) / w.sum(), want_speck], rtol=1e-6)
    # a low temperature takes the best view's box, a high one the mean of all
    np.testing.assert_allclose(boxes(vote_detections(views, temperature=0.01)), [digit, [30, 31, 36, 40]], atol=1e-6)
    np.testing.assert_allclose(boxes(vote_detections(views, temperature=1e6))[0], np.mean(found, 0), rtol=1e-5)
    # the median of the best K, as in the earlier rule
    np.testing.assert_array_equal(boxes(vote_detections(views, best_views=1)), [digit, [30, 31, 36, 40]])
    np.testing.assert_allclose(boxes(vote_detections(views, best_views=2)), [[10.5, 10, 20, 24], [30, 30.5, 36, 40]])
    # the score is the presence averaged over all four views, the digit (four views) first
    v = vote_detections(views)
    np.testing.assert_allclose(v.scores, [1.0, 0.5])
    np.testing.assert_allclose(v.boxes[0], w @ np.array(found) / w.sum(), rtol=1e-6)
    views[3].objective = None                             # a view without an objective: the median of all
    np.testing.assert_allclose(boxes(vote_detections(views)), [[10.5, 10, 20, 24], [30, 30.5, 36, 40]])


def test_vote_never_merges_two_boxes_of_one_view():
    # two overlapping digits, each view reports both: they stay two objects
    a, b = [10, 10, 20, 24], [14, 10, 24, 24]
    views = [_dets(a, b), _dets(b, a), _dets(a, b), _dets(a, b)]
    v = vote_detections(views)
    np.testing.assert_allclose(v.boxes[np.argsort(v.boxes[:, 0])], [a, b])


def _with_objective(d, j):
    d.objective = j
    return d


def test_an_object_fewer_than_half_the_views_found_is_reported_when_they_explain_the_image_best():
    digit, speck = [10, 10, 20, 24], [30, 30, 36, 40]
    # eight views; two found the speck too and explain the image 10 nats better than the other six
    views = ([_with_objective(_dets(digit, speck), 100.0) for _ in range(2)]
             + [_with_objective(_dets(digit), 110.0) for _ in range(6)])
    share = 2 * np.exp(0.5) / (2 * np.exp(0.5) + 6)                   # their weights at 20 nats: 0.355
    assert share >= VOTE_KEEP_SHARE
    v = vote_detections(views)
    np.testing.assert_allclose(v.boxes, [digit, speck])
    np.testing.assert_allclose(v.scores, [1.0, 0.25])                 # presence averaged over all eight views
    assert len(vote_detections(views, keep_share=0.36)) == 1          # a share above theirs: not reported
    assert len(vote_detections(views, keep_share=None)) == 1          # half of the views needed
    assert len(vote_detections(views, min_views=3)) == 1              # two views are too few
    # the same two views explaining the image 30 nats worse: weight share 2e^-1.5 / (2e^-1.5 + 6) = 0.069
    worse = [_with_objective(_dets(digit, speck), 140.0) for _ in range(2)] + views[2:]
    assert len(vote_detections(worse)) == 1
    # one view is never enough, however well it explains the image
    one = [_with_objective(_dets(digit, speck), 50.0)] + views[2:]
    assert len(vote_detections(one)) == 1
    # without objectives: half of the views (four of eight; two of four)
    plain = [_dets(digit, speck)] * 4 + [_dets(digit)] * 4
    assert len(vote_detections(plain)) == 2 and len(vote_detections(plain[3:])) == 1
    assert len(vote_detections([_dets(digit, speck)] * 2 + [_dets(digit)] * 2)) == 2


def test_boxes_below_the_vote_iou_are_different_objects():
    views = [_dets([0, 0, 10, 10]), _dets([6, 6, 16, 16]), _dets([0, 0, 10, 10]), _dets([6, 6, 16, 16])]
    assert len(vote_detections(views, min_iou=0.3)) == 2                # IoU 16/184: two objects, two votes each
    assert len(vote_detections(views, min_iou=0.05)) == 1


def test_the_vote_corrects_a_detector_whose_errors_depend_on_the_grid():
    """A stand-in detector finds the box of each bright square, but on one view of the four it merges
    the two squares into one box and on another it reports each a pixel too wide; the vote gives the
    true boxes, in the original image's coordinates, at every grid offset."""
    img = np.zeros((1, 24, 32, 3), np.uint8)
    img[0, 4:10, 5:11] = 255
    img[0, 12:20, 14:19] = 255
    truth = np.array([[5, 4, 11, 10], [14, 12, 19, 20]], np.float32)
    seen = []

    def detect(batch, region):
        H, W = batch.shape[1:3]
        ys, xs = np.nonzero(batch[0, :, :, 0])
        dy, dx = int(ys.min()) - 4, int(xs.min()) - 5             # where the view put the image
        assert region == (dy, dx, 24, 32) or region is None and (dy, dx) == (0, 0)
        seen.append((dy, dx, H, W))
        boxes = truth + np.array([dx, dy, dx, dy], np.float32)
        if (dy, dx) == (0, 4):
            boxes = np.array([[boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()]])
        elif (dy, dx) == (4, 0):
            boxes = boxes + np.array([-1, 0, 1, 0], np.float32)
        return [Detections(boxes, np.ones(len(boxes)))]

    out = detect_on_shifted_grids(detect, img, None, 8, 4)
    assert sorted(seen) == [(0, 0, 24, 32), (0, 4, 24, 40), (4, 0, 32, 32), (4, 4, 32, 40)]
    np.testing.assert_allclose(out[0].boxes[np.argsort(out[0].boxes[:, 0])], truth)
    seen.clear()
    out = detect_on_shifted_grids(detect, img, None, 8, 8)
    assert sorted(seen) == sorted([(0, 0, 24, 32), (0, 4, 24, 40), (4, 0, 32, 32), (4, 4, 32, 40), (2, 2, 32, 40),
                                   (6, 6, 32, 40), (2, 6, 32, 40), (6, 2, 32, 40)])
    np.testing.assert_allclose(out[0].boxes[np.argsort(out[0].boxes[:, 0])], truth)
    assert len(detect_on_shifted_grids(detect, img, None, 8, 1)[0]) == 2


def test_spair_detector_votes_over_shifted_grids():
    """The shipped model's detector with 4 views is the vote over its one-view detections of the image
    placed at the four grid offsets on its background, each with the objective of its reading over the
    image's own pixels, and on held-out scenes it finds the digits one view finds."""
    scenes = generate_scenes(SceneConfig(image_size=(48, 48), n_objects=(3, 3), split="test"), 8, 5)
    images = scenes.images
    single = SpairDetector(grid_shifts=1)
    four = SpairDetector(model=single.model).detect(list(images))          # grid_shifts=4 is the default
    views = []
    for dy, dx in grid_offsets(single.model.cfg.cell_size, 4):
        padded = pad_images(images, np.zeros((len(images), 3), np.uint8), dy, dx, single.model.cfg.cell_size)
        found = single._detect_batch(padded, None, (dy, dx, 48, 48))
        assert all(d.objective > 0 for d in found)
        views.append([unshift(d, dy, dx, (48, 48)) for d in found])
    for i, d in enumerate(four):
        expected = vote_detections([v[i] for v in views])
        np.testing.assert_allclose(d.boxes, expected.boxes)
        np.testing.assert_allclose(d.scores, expected.scores)
    one = views[0]
    assert matched(four, scenes.boxes) >= matched(one, scenes.boxes) >= 22
    with pytest.raises(ConfigError, match="grid_shifts"):
        SpairDetector(model=small_model(), grid_shifts=2)
