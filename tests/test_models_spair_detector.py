"""SPAIR as a detector: window, ink and segment boxes on hand-made latents, duplicate removal,
and the Detector interface on images of mixed sizes."""

import numpy as np
import pytest
import torch

from spair.models.spair import Spair, SpairConfig, SpairOutput
from spair.models.spair_detector import (SpairDetector, detections_from_output, duplicate_objects, ink_boxes_px,
                                         segment_boxes_px, unexplained_objects, window_boxes_px)


def small_model(**kw):
    cfg = dict(backbone_channels=8, n_backbone_features=8, n_passthrough_features=4, lateral_hidden=(8,),
               encoder_hidden=(16,), decoder_hidden=(16,), A=4, object_shape=(8, 8))
    cfg.update(kw)
    torch.manual_seed(0)
    return Spair(SpairConfig(**cfg)).eval()


def fake_output(boxes_px, sprites_alpha, probs, hw=(24, 24)):
    """A SpairOutput with the given pixel boxes (x0, y0, x1, y1), white sprites with the given alpha
    maps, black background and presence probabilities."""
    H, W = hw
    N = len(boxes_px)
    b = torch.tensor(boxes_px, dtype=torch.float32)
    norm = torch.stack([b[:, 1] / H, b[:, 0] / W, (b[:, 3] - b[:, 1]) / H, (b[:, 2] - b[:, 0]) / W], -1)[None]
    alpha = torch.stack([torch.as_tensor(a, dtype=torch.float32) for a in sprites_alpha])[None, :, None]
    prob = torch.tensor(probs, dtype=torch.float32).view(1, N, 1)
    out = SpairOutput(grid_hw=(2, 2), image_hw=hw, z_where=torch.zeros(1, N, 4), boxes=norm,
                      z_what=torch.zeros(1, N, 4), z_depth=torch.ones(1, N, 1), z_pres=(prob > 0.5).float(),
                      pres_logit=torch.logit(prob), pres_prob=prob, glimpses=torch.zeros(1, N, 3, 8, 8))
    out.sprites_rgb = torch.ones(1, N, 3, *alpha.shape[-2:])
    out.sprites_alpha = alpha
    out.background = torch.zeros(1, 3, 1, 1)
    return out


def square_alpha(size=8, lo=2, hi=6):
    a = np.zeros((size, size), np.float32)
    a[lo:hi, lo:hi] = 1.0
    return a


def test_window_ink_and_segment_boxes():
    model = small_model()
    # one object whose 8×8 sprite covers pixels [4, 12) and holds ink in its central 4×4
    out = fake_output([(4, 4, 12, 12)], [square_alpha()], [0.9])
    np.testing.assert_allclose(window_boxes_px(out)[0, 0].numpy(), [4, 4, 12, 12])
    ink, found = ink_boxes_px(model, out)
    assert found[0, 0]
    np.testing.assert_allclose(ink[0, 0].numpy(), [6, 6, 10, 10])
    # the input holds a 3×5 block of ink inside the sprite's region: the segment box is its extent
    x = torch.zeros(1, 3, 24, 24)
    x[:, :, 6:9, 6:11] = 1.0
    seg, found = segment_boxes_px(model, out, x, torch.tensor([[True]]), attach_radius=None, exclusive_radius=None)
    assert found[0, 0]
    np.testing.assert_allclose(seg[0, 0].numpy(), [6, 6, 10, 9])  # clipped to where the object has ink
    # by default the input's ink next to it that no object claims (column 10) joins it
    seg, _ = segment_boxes_px(model, out, x, torch.tensor([[True]]))
    np.testing.assert_allclose(seg[0, 0].numpy(), [6, 6, 11, 9])


def block_with_specks(*specks):
    """One present object whose sprite has ink over image pixels [6, 10)², on a 4×4 block of input
    ink, and free input ink (no sprite reaches it) at each (rows, cols) of ``specks``."""
    out = fake_output([(4, 4, 12, 12)], [square_alpha()], [0.9])
    x = torch.zeros(1, 3, 24, 24)
    x[:, :, 6:10, 6:10] = 1.0
    for rows, cols in specks:
        x[:, :, rows, cols] = 1.0
    return out, x, torch.tensor([[True]])


def two_blocks(right_cols, *specks):
    """Two present objects: the block of :func:`block_with_specks` and a second sprite (window over
    image columns 10-17) with ink over rows 6-9 and image columns ``right_cols`` (a slice), on
    input ink there, plus free input ink at each (rows, cols) of ``specks``."""
    a_right = np.zeros((8, 8), np.float32)
    a_right[2:6, right_cols.start - 10:right_cols.stop - 10] = 1.0
    out = fake_output([(4, 4, 12, 12), (10, 4, 18, 12)], [square_alpha(), a_right], [0.9, 0.9])
    x = torch.zeros(1, 3, 24, 24)
    x[:, :, 6:10, 6:10] = 1.0
    x[:, :, 6:10, right_cols] = 1.0
    for rows, cols in specks:
        x[:, :, rows, cols] = 1.0
    return out, x


def test_free_ink_near_a_segment_joins_it():
    model = small_model()
    # a 2-px speck at column 11 (a gap of one column; Chebyshev distance 2 from the block), a 1-px
    # speck at row 13 (distance 4)
    out, x, present = block_with_specks((slice(7, 9), 11), (13, 7))
    for radius, box in ((None, [6, 6, 10, 10]), (0, [6, 6, 10, 10]), (1, [6, 6, 10, 10]),
                        (2, [6, 6, 12, 10]), (4, [6, 6, 12, 14])):
        seg, _ = segment_boxes_px(model, out, x, present, attach_radius=radius, exclusive_radius=None)
        np.testing.assert_allclose(seg[0, 0].numpy(), box, err_msg=f"radius {radius}")
    # a free part of 10 pixels or more is an object of its own: it stays out
    x[:, :, 7:9, 11:16] = 1.0
    seg, _ = segment_boxes_px(model, out, x, present, attach_radius=2)
    np.testing.assert_allclose(seg[0, 0].numpy(), [6, 6, 10, 10])
    seg, _ = segment_boxes_px(model, out, x, present)
    np.testing.assert_allclose(seg[0, 0].numpy(), [6, 6, 10, 10])
    # ink another object claims is not free; a free part near two segments joins both
    # free: columns 12-13 of row 8, 3 px from the left block, 3 from the right one (columns 16-17)
    out, x = two_blocks(slice(16, 18), (8, slice(12, 14)))
    seg, _ = segment_boxes_px(model, out, x, torch.tensor([[True, True]]), attach_radius=3, exclusive_radius=None)
    np.testing.assert_allclose(seg[0, 0].numpy(), [6, 6, 14, 10])
    np.testing.assert_allclose(seg[0, 1].numpy(), [12, 6, 18, 10])
    seg, _ = segment_boxes_px(model, out, x, torch.tensor([[True, False]]), attach_radius=3, exclusive_radius=None)
    np.testing.assert_allclose(seg[0, 0].numpy(), [6, 6, 14, 10])   # an absent object holds nothing
    for name in ("attach_radius", "exclusive_radius"):
        with pytest.raises(ValueError, match=name):
            segment_boxes_px(model, out, x, torch.tensor([[True, True]]), **{name: -1})


def test_free_ink_near_one_segment_only_joins_it():
    model = small_model()
    # free specks at Chebyshev distance 2 (column 11) and 3 (row 12) from the block
    out, x, present = block_with_specks((slice(7, 9), 11), (12, 7))
    for excl, box in ((None, [6, 6, 10, 10]), (2, [6, 6, 12, 10]), (3, [6, 6, 12, 13])):
        seg, _ = segment_boxes_px(model, out, x, present, exclusive_radius=excl)
        np.testing.assert_allclose(seg[0, 0].numpy(), box, err_msg=f"exclusive radius {excl}")
    seg, _ = segment_boxes_px(model, out, x, present)          # the default: 3
    np.testing.assert_allclose(seg[0, 0].numpy(), [6, 6, 12, 13])
    # two objects, blocks at columns 6-9 and 14-17, a free speck at column 12: 3 px from the left
    # block and 2 from the right one. Within 2 px it is near the right segment only, and joins it;
    # within 3 px it is near both, and joins neither.
    out, x = two_blocks(slice(14, 18), (8, 12))
    both = torch.tensor([[True, True]])
    seg, _ = segment_boxes_px(model, out, x, both, exclusive_radius=2)
    np.testing.assert_allclose(seg[0].numpy(), [[6, 6, 10, 10], [12, 6, 18, 10]])
    seg, _ = segment_boxes_px(model, out, x, both)            # the default, 3
    np.testing.assert_allclose(seg[0].numpy(), [[6, 6, 10, 10], [14, 6, 18, 10]])
    # the same speck beside an absent object: only the present one is near it
    seg, _ = segment_boxes_px(model, out, x, torch.tensor([[True, False]]), exclusive_radius=3)
    np.testing.assert_allclose(seg[0, 0].numpy(), [6, 6, 13, 10])


def test_segment_pixels_go_to_the_strongest_claimant():
    model = small_model()
    a_left = np.zeros((8, 8), np.float32)
    a_left[:, :4] = 1.0
    a_right = np.zeros((8, 8), np.float32)
    a_right[:, 4:] = 0.6
    out = fake_output([(0, 0, 8, 8), (0, 0, 8, 8)], [a_left, a_right], [0.9, 0.8])
    x = torch.zeros(1, 3, 24, 24)
    x[:, :, 0:8, 0:8] = 1.0
    seg, found = segment_boxes_px(model, out, x, torch.tensor([[True, True]]))
    np.testing.assert_allclose(seg[0, 0].numpy(), [0, 0, 4, 8])
    np.testing.assert_allclose(seg[0, 1].numpy(), [4, 0, 8, 8])


def test_strongly_claimed_overlap_pixels_belong_to_both_objects():
    model = small_model()
    # two objects whose ink overlaps in columns 3-4: the left one draws columns 0-4 at full alpha, the
    # right one columns 3-7; column 5 holds a faint (0.2) claim of the left one, weaker than the right's
    a_left = np.zeros((8, 8), np.float32)
    a_left[:, :5] = 1.0
    a_left[:, 5] = 0.2
    a_right = np.zeros((8, 8), np.float32)
    a_right[:, 3:] = 0.8
    out = fake_output([(0, 0, 8, 8), (0, 0, 8, 8)], [a_left, a_right], [0.9, 0.8])
    x = torch.zeros(1, 3, 24, 24)
    x[:, :, 0:8, 0:8] = 1.0
    seg, _ = segment_boxes_px(model, out, x, torch.tensor([[True, True]]))
    np.testing.assert_allclose(seg[0, 0].numpy(), [0, 0, 5, 8])  # shares columns 3-4, not the faint 5
    np.testing.assert_allclose(seg[0, 1].numpy(), [3, 0, 8, 8])
    # with sharing switched off, the overlap goes to the strongest claimant only
    seg, _ = segment_boxes_px(model, out, x, torch.tensor([[True, True]]), share_threshold=1.0)
    np.testing.assert_allclose(seg[0, 1].numpy(), [5, 0, 8, 8])


def test_segment_drops_a_minor_contested_part_across_a_gap():
    model = small_model()
    # object 0 draws a 2-px-wide stroke (image columns 10-11) at full alpha and, blurred across an empty
    # gap, a 0.6 band over columns 4-5, rows 2-3, where the input holds the edge of another digit that
    # object 1 explains with weaker ink (0.4) there
    a0 = np.zeros((8, 8), np.float32)
    a0[:, 6:8] = 1.0
    a0[2:4, 0:2] = 0.6
    a1 = np.zeros((8, 8), np.float32)
    a1[:, 0:6] = 0.4
    x = torch.zeros(1, 3, 24, 24)
    x[:, :, 0:8, 10:12] = 1.0
    x[:, :, 0:8, 0:6] = 1.0
    out = fake_output([(4, 0, 12, 8), (0, 0, 8, 8)], [a0, a1], [0.9, 0.9])
    present = torch.tensor([[True, True]])
    seg, _ = segment_boxes_px(model, out, x, present)
    np.testing.assert_allclose(seg[0, 0].numpy(), [10, 0, 12, 8])   # 4 · 0.6 < 0.5 · 16: dropped
    np.testing.assert_allclose(seg[0, 1].numpy(), [0, 0, 6, 8])
    seg, _ = segment_boxes_px(model, out, x, present, min_part=None)
    np.testing.assert_allclose(seg[0, 0].numpy(), [4, 0, 12, 8])
    # a part no other object claims is the object's own (a digit drawn in two strokes): kept
    seg, _ = segment_boxes_px(model, out, x, torch.tensor([[True, False]]))
    np.testing.assert_allclose(seg[0, 0].numpy(), [4, 0, 12, 8])
    # a contested part heavy enough is kept too
    a0[0:8, 0:2] = 0.6
    out = fake_output([(4, 0, 12, 8), (0, 0, 8, 8)], [a0, a1], [0.9, 0.9])
    seg, _ = segment_boxes_px(model, out, x, present)
    np.testing.assert_allclose(seg[0, 0].numpy(), [4, 0, 12, 8])   # 16 · 0.6 ≥ 0.5 · 16


def test_duplicates_are_dropped_keeping_the_most_probable():
    model = small_model()
    out = fake_output([(4, 4, 12, 12), (4, 5, 12, 13), (14, 14, 22, 22)],
                      [square_alpha(), square_alpha(), square_alpha()], [0.7, 0.95, 0.9])
    x = torch.zeros(1, 3, 24, 24)
    x[:, :, 6:10, 6:10] = 1.0
    x[:, :, 16:20, 16:20] = 1.0
    present = torch.tensor([[True, True, True]])
    dup = duplicate_objects(model, out, x, present, max_iou=0.5)
    assert dup.tolist() == [[True, False, False]]
    dets = detections_from_output(model, out, x=x)
    assert len(dets[0]) == 2
    np.testing.assert_allclose(sorted(dets[0].scores), [0.9, 0.95], atol=1e-6)
    kept = detections_from_output(model, out, x=x, dedup_iou=None)
    assert len(kept[0]) == 3


def test_unlikely_objects_are_added_only_for_ink_nothing_else_explains():
    model = small_model()
    # object 0 (present) draws the block at 6-10; object 1 (p = 0.3) draws the same block; object 2
    # (p = 0.2) draws a second block at 16-20 that nothing present explains; object 3 (p = 0.02)
    # draws a third block but is below explain_min_score; object 4 (p = 0.25) draws the second block too
    sq = square_alpha()
    out = fake_output([(4, 4, 12, 12), (4, 4, 12, 12), (14, 14, 22, 22), (14, 4, 22, 12), (14, 14, 22, 22)],
                      [sq] * 5, [0.9, 0.3, 0.2, 0.02, 0.25])
    x = torch.zeros(1, 3, 24, 24)
    x[:, :, 6:10, 6:10] = 1.0
    x[:, :, 16:20, 16:20] = 1.0
    x[:, :, 6:10, 16:20] = 1.0
    present = torch.tensor([[True, False, False, False, False]])
    add = unexplained_objects(model, out, x, present, min_score=0.05, min_pixels=10)
    # the second block's 16 pixels go to the more probable of its two claimants (4), not to both
    assert add.tolist() == [[False, False, False, False, True]]
    assert not unexplained_objects(model, out, x, present, min_score=0.05, min_pixels=17).any()
    dets = detections_from_output(model, out, x=x, explain_min_score=0.05)
    np.testing.assert_allclose(sorted(dets[0].scores), [0.25, 0.9], atol=1e-6)
    assert len(detections_from_output(model, out, x=x, explain_min_score=None)[0]) == 1
    assert len(detections_from_output(model, out, x=x, explain_min_score=0.01)[0]) == 3


def test_min_score_filters_by_presence_probability():
    model = small_model()
    out = fake_output([(4, 4, 12, 12), (14, 14, 22, 22)], [square_alpha(), square_alpha()], [0.3, 0.9])
    x = torch.zeros(1, 3, 24, 24)
    assert len(detections_from_output(model, out, x=x, min_score=0.5)[0]) == 1
    assert len(detections_from_output(model, out, x=x, min_score=0.2)[0]) == 2


def test_detector_on_mixed_sizes():
    det = SpairDetector(model=small_model(), min_score=0.0)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((24, 24), (30, 17), (24, 24), (5, 7))]
    out = det.detect(images)
    assert len(out) == 4
    for im, d in zip(images, out):
        H, W = im.shape[:2]
        # min_score 0: every cell but duplicates, and a split move can make one object two
        assert 1 <= len(d) <= 2 * model_cells(det.model, H, W)
        assert np.all((d.scores >= 0) & (d.scores <= 1))
        assert np.all(d.boxes[:, [0, 2]] <= W) and np.all(d.boxes[:, [1, 3]] <= H) and np.all(d.boxes >= 0)


def model_cells(model, H, W):
    gh, gw = model.grid_shape(H, W)
    return gh * gw


def test_detector_rejects_bad_options():
    from spair.errors import ConfigError

    with pytest.raises(ConfigError, match="min_score"):
        SpairDetector(model=small_model(), min_score=2.0)


def test_visible_ink_is_computed_once_per_output():
    from spair.models.spair_detector import visible_ink_windows

    model = small_model()
    out = fake_output([(4, 4, 12, 12), (10, 10, 18, 18)], [square_alpha(), square_alpha()], [0.9, 0.3])
    first = visible_ink_windows(model, out)
    assert visible_ink_windows(model, out) is first           # cached on the output
    x = torch.zeros(1, 3, 24, 24)
    x[:, :, 6:10, 6:10] = 1.0
    x[:, :, 12:16, 12:16] = 1.0
    cached = detections_from_output(model, out, x=x)[0]
    out.visible_ink = None                                    # a fresh computation gives the same detections
    fresh = detections_from_output(model, out, x=x)[0]
    np.testing.assert_array_equal(cached.boxes, fresh.boxes)
    np.testing.assert_array_equal(cached.scores, fresh.scores)
    assert len(fresh.boxes) == 2                              # the weak object explains its own block
