"""Boxes drawn on images (exact pixels), PNG writing, and matplotlib figures."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from spair.viz.boxes import GT_COLOUR, PRED_COLOUR, auto_scale, draw_boxes, overlay, png_bytes, save_png, upscale
from spair.viz.figures import line_plot, scene_grid

RED = (255, 0, 0)


def test_box_outline_covers_exactly_the_border_pixels_of_the_box():
    image = np.zeros((8, 10, 3), np.uint8)
    out = draw_boxes(image, np.array([[2, 1, 6, 4]], np.float32), RED)  # columns 2..5, rows 1..3
    mask = (out == RED).all(axis=-1)
    expected = np.zeros((8, 10), bool)
    expected[1, 2:6] = expected[3, 2:6] = True
    expected[1:4, 2] = expected[1:4, 5] = True
    np.testing.assert_array_equal(mask, expected)
    assert image.sum() == 0  # the input is not modified


def test_scaled_outline_lies_on_the_scaled_box_border():
    image = np.full((4, 4, 3), 7, np.uint8)
    out = draw_boxes(image, np.array([[1, 1, 3, 2]], np.float32), RED, scale=3)
    assert out.shape == (12, 12, 3)
    mask = (out == RED).all(axis=-1)
    rows, cols = np.nonzero(mask)
    # the box covers scaled columns 3..8 and rows 3..5
    assert (cols.min(), cols.max(), rows.min(), rows.max()) == (3, 8, 3, 5)
    assert mask[3, 3:9].all() and mask[5, 3:9].all() and mask[3:6, 3].all() and mask[3:6, 8].all()
    assert not mask[4, 4:8].any()  # interior untouched
    assert (out[~mask] == 7).all()


def test_boxes_are_clipped_and_degenerate_ones_skipped():
    image = np.zeros((5, 5), np.uint8)  # grey input is accepted
    boxes = np.array([[-3, -3, 2, 2], [3, 3, 3, 4], [np.nan, 0, 1, 1]], np.float32)
    mask = (draw_boxes(image, boxes, RED) == RED).all(axis=-1)
    expected = np.zeros((5, 5), bool)
    expected[0:2, 0:2] = True  # a 2x2 box: all four pixels are border
    np.testing.assert_array_equal(mask, expected)


def test_upscale_and_auto_scale():
    a = np.arange(4, dtype=np.uint8).reshape(2, 2)
    np.testing.assert_array_equal(upscale(a, 2), [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    assert auto_scale(48, 48) == 5 and auto_scale(500, 100) == 1 and auto_scale(10, 20) == 12
    with pytest.raises(ValueError):
        upscale(a, 0)


def test_overlay_draws_prediction_over_ground_truth():
    image = np.zeros((6, 6, 3), np.uint8)
    box = np.array([[1, 1, 5, 5]], np.float32)
    out = overlay(image, pred_boxes=box, gt_boxes=np.array([[1, 1, 5, 5], [0, 0, 6, 6]], np.float32), scale=1)
    assert tuple(out[1, 1]) == PRED_COLOUR  # same box: the prediction is drawn last
    assert tuple(out[0, 0]) == GT_COLOUR


def test_save_png_round_trips_and_is_deterministic(tmp_path):
    arr = np.random.default_rng(3).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    save_png(tmp_path / "sub" / "a.png", arr)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "sub" / "a.png")), arr)
    assert png_bytes(arr) == (tmp_path / "sub" / "a.png").read_bytes()
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.png"]  # no temporary file left


def test_scene_grid_draws_both_box_sets_and_is_deterministic(tmp_path):
    images = [np.zeros((48, 48, 3), np.uint8) for _ in range(5)]
    gt = [np.array([[4, 4, 20, 20]], np.float32)] * 5
    pred = [np.array([[28, 28, 44, 44]], np.float32)] * 5
    scene_grid(images, pred, gt, tmp_path / "a.png", ncols=3, dpi=100)
    scene_grid(images, pred, gt, tmp_path / "b.png", ncols=3, dpi=100)
    data = (tmp_path / "a.png").read_bytes()
    assert data == (tmp_path / "b.png").read_bytes()
    pixels = np.asarray(Image.open(tmp_path / "a.png").convert("RGB")).astype(int)
    assert pixels.shape == (320, 480, 3)  # 2 rows x 3 columns of 1.6 in at 100 dpi
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    blue = (b > 150) & (r < 100)
    yellow = (r > 150) & (g > 150) & (b < 100)
    # the predicted box lies in the lower right of each panel, the true one in the upper left
    panel = pixels.shape[1] // 3
    ys, xs = np.nonzero(blue[:panel, :panel])
    assert len(ys) > 100 and xs.min() > panel // 2 and ys.min() > panel // 2
    ys, xs = np.nonzero(yellow[:panel, :panel])
    assert len(ys) > 100 and xs.max() < panel // 2 and ys.max() < panel // 2
    assert not (blue | yellow)[160:, 2 * panel:].any()  # the sixth panel is empty


def test_scene_grid_checks_lengths():
    with pytest.raises(ValueError, match="gt_boxes has 1 entries for 2 images"):
        scene_grid([np.zeros((4, 4, 3), np.uint8)] * 2, None, [np.zeros((0, 4))])


def test_line_plot_writes_png(tmp_path):
    line_plot([1, 3, 5], {"a": [0.9, 0.8, 0.7], "b": [0.5, 0.4, 0.3]}, tmp_path / "p.png", ylim=(0, 1))
    assert Image.open(tmp_path / "p.png").size == (500, 360)
    with pytest.raises(ValueError, match="series 'a' has 2 values"):
        line_plot([1, 2, 3], {"a": [1, 2]})
