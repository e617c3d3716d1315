"""Split moves: when they leave the output alone, what an accepted split changes (and what it does
not), and that on held-out scenes they find digits the shipped model had merged, without splitting
single digits."""

import math

import numpy as np
import pytest
import torch

from spair.data.scenes import SceneConfig, generate_scenes
from spair.metrics import box_iou
from spair.models.io import load_model
from spair.models.refine import refine_latents
from spair.models.spair_detector import SpairDetector, reported_objects, run_model, segment_boxes_px
from spair.models.split import _CELL_FIELDS, split_objects
from test_models_refine import small_model  # the same tiny untrained model


def matched(dets, gts, thr=0.5):
    """Ground-truth boxes matched one-to-one by a predicted box with IoU > thr (greedy by IoU)."""
    n = 0
    for d, g in zip(dets, gts):
        if not len(d.boxes):
            continue
        iou = box_iou(g, d.boxes)
        used_g, used_p = set(), set()
        for flat in np.argsort(-iou, axis=None):
            i, j = np.unravel_index(flat, iou.shape)
            if iou[i, j] <= thr:
                break
            if i not in used_g and j not in used_p:
                used_g.add(i)
                used_p.add(j)
                n += 1
    return n


def test_no_split_leaves_the_output_alone():
    model = small_model()
    x = torch.rand(2, 3, 24, 24)
    out = run_model(model, x)
    present = torch.zeros(out.pres_prob.shape[:2], dtype=torch.bool)
    extents = torch.zeros(*present.shape, 4)
    got = split_objects(model, out, x, present, extents)                             # nothing present
    assert got[0] is out and got[1] is present
    present[:, 0] = True
    extents[..., 2:] = 8.0
    got = split_objects(model, out, x, present, extents, min_gain=math.inf)
    assert got[0] is out and got[1] is present
    got = split_objects(model, out, x, present, extents, min_gain=1e9, steps=2)     # nothing gains that much
    assert got[0] is out and got[1] is present
    with pytest.raises(ValueError):
        split_objects(model, out, x, present, extents, steps=-1)


@pytest.fixture(scope="module")
def shipped():
    return load_model(None)


def test_an_accepted_split_adds_one_slot_per_split_object_and_leaves_the_model_alone(shipped):
    scenes = generate_scenes(SceneConfig(image_size=(48, 48), n_objects=(9, 9), split="val"), 32, 5)
    x = torch.from_numpy(scenes.images).permute(0, 3, 1, 2).float() / 255
    out = run_model(shipped, x)
    out, present = reported_objects(shipped, out, x=x, refine_steps=20, split_min_gain=None)
    seg, _ = segment_boxes_px(shipped, out, x, present)
    before = {k: v.clone() for k, v in shipped.state_dict().items()}
    flags = [p.requires_grad for p in shipped.parameters()]
    new, keep = split_objects(shipped, out, x, present, seg.float())
    B, N = present.shape
    E = keep.shape[1] - N
    assert E >= 1
    # every per-cell field has the new slots; the old slots keep their presence; each new slot is one split
    for f in _CELL_FIELDS:
        assert getattr(new, f).shape[:2] == (B, N + E), f
    assert torch.equal(keep[:, :N], present)
    added = keep[:, N:].sum(1)
    changed = (new.z_what[:, :N] != out.z_what).any(-1)
    assert torch.equal(changed.sum(1), added)              # each split rewrites its parent's cell ...
    assert not (changed & ~present).any()                  # ... which was a reported one
    for b, i in zip(*changed.nonzero(as_tuple=True)):      # children keep their parent's presence probability
        assert float(new.pres_prob[b, i]) in new.pres_prob[b, N:].flatten().tolist()
    assert new.visible_ink is None and new.sprites_rgb is None
    assert new.params["what_mean"].shape[:2] == (B, N + E)
    for k, v in shipped.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert [p.requires_grad for p in shipped.parameters()] == flags
    # the output with new slots refines like any other
    again = refine_latents(shipped, new, x, keep, steps=2)
    assert again.z_what.shape == new.z_what.shape


def test_split_moves_find_merged_digits_and_leave_single_digits_alone(shipped):
    """Held-out scenes of 9 digits: more digits matched at IoU 0.5 (the merged ones); scenes of one
    digit: not one more box."""
    crowded = generate_scenes(SceneConfig(image_size=(48, 48), n_objects=(9, 9), split="val"), 32, 5)
    off = SpairDetector(model=shipped, split_min_gain=None).detect(list(crowded.images))
    on = SpairDetector(model=shipped).detect(list(crowded.images))
    assert matched(on, crowded.boxes) >= matched(off, crowded.boxes) + 8, (matched(off, crowded.boxes),
                                                                          matched(on, crowded.boxes))
    single = generate_scenes(SceneConfig(image_size=(48, 48), n_objects=(1, 1), split="val"), 64, 5)
    dets = SpairDetector(model=shipped).detect(list(single.images))
    assert [len(d) for d in dets] == [len(d) for d in
                                      SpairDetector(model=shipped, split_min_gain=None).detect(list(single.images))]


def test_detector_rejects_a_negative_gain():
    from spair.errors import ConfigError

    with pytest.raises(ConfigError):
        SpairDetector(model=small_model(), split_min_gain=-1.0)
    with pytest.raises(ConfigError):
        SpairDetector(model=small_model(), split_min_gain=float("nan"))
