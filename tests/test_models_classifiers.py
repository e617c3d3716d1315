"""Classifiers over object sets and the front ends: shapes, masking of absent objects, packing,
a task each classifier learns, and what each front end gives (and trains)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spair.config import to_dict
from spair.data.scenes import SceneConfig, generate_scenes
from spair.errors import CheckpointError, ConfigError, DataError
from spair.models.air import CHECKPOINT_FORMAT, Air, AirConfig
from spair.models.classifiers import (CLASSIFIER_KINDS, AirFrontEnd, ClassifierConfig, ConvNetFrontEnd,
                                      DownstreamModel, FrontEndConfig, GlimpseFrontEnd, ObjectSetClassifier,
                                      SpairFrontEnd, build_downstream_model, build_front_end, images_to_tensor,
                                      masked_max, pack_objects, pad_boxes, raster_order)
from spair.models.io import save_model
from spair.models.spair import Spair, SpairConfig

torch.set_num_threads(1)

SMALL = dict(input_hidden=(16,), input_dim=8, lstm_units=16, output_hidden=(16,), n_slots=4, mlp_hidden=(32, 32),
             d_model=16, embed_hidden=(16,), block_hidden=(16,), qkv_hidden=(16,), head_hidden=(16,))


def small(kind: str, n_classes: int = 3) -> ClassifierConfig:
    return ClassifierConfig(kind=kind, n_classes=n_classes, **SMALL)


def tiny_spair_config() -> SpairConfig:
    return SpairConfig(A=6, backbone_channels=8, n_backbone_features=8, n_passthrough_features=4, lateral_hidden=(8,),
                       encoder_hidden=(16,), decoder_hidden=(16,), object_shape=(6, 6))


@pytest.mark.parametrize("kind", CLASSIFIER_KINDS)
def test_shapes_and_masking_of_absent_objects(kind):
    torch.manual_seed(0)
    clf = ObjectSetClassifier(small(kind), object_dim=5).eval()
    objects = torch.randn(4, 6, 5)
    mask = torch.tensor([[1, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]]).bool()
    logits = clf(objects, mask)
    assert logits.shape == (4, 3) and torch.isfinite(logits).all()
    # what absent objects hold does not matter
    changed = torch.where(mask[..., None], objects, torch.randn(4, 6, 5) * 100)
    assert torch.allclose(clf(changed, mask), logits, atol=1e-5)
    # an image without objects gives the same logits whatever its objects hold
    empty = torch.zeros(2, 6, dtype=torch.bool)
    a, b = clf(torch.randn(2, 6, 5), empty)
    assert torch.allclose(a, b, atol=1e-6)
    if kind in ("obj", "arn1", "arn3"):  # set functions: the order of the objects does not matter
        perm = torch.tensor([5, 3, 1, 0, 4, 2])
        assert torch.allclose(clf(objects[:, perm], mask[:, perm]), logits, atol=1e-5)
    else:  # recurrent and mlp read the present objects packed at the front, in their order
        packed, pmask = pack_objects(objects, mask)
        assert torch.allclose(clf(packed, pmask), logits, atol=1e-5)
    with pytest.raises(ValueError):
        clf(objects[..., :4], mask)


def test_packing_and_pooling_helpers():
    x = torch.arange(12.0).reshape(1, 4, 3)
    packed, m = pack_objects(x, torch.tensor([[False, True, False, True]]))
    assert m.tolist() == [[True, True, False, False]]
    assert packed[0, :2].tolist() == [[3, 4, 5], [9, 10, 11]]
    pooled = masked_max(torch.tensor([[[1.0, -5.0], [9.0, 9.0], [2.0, -1.0]]]), torch.tensor([[True, False, True]]))
    assert pooled.tolist() == [[2.0, -1.0]]
    assert masked_max(torch.randn(2, 3, 2), torch.zeros(2, 3, dtype=torch.bool)).abs().sum() == 0


@pytest.mark.parametrize("kind", CLASSIFIER_KINDS)
def test_each_classifier_learns_an_existence_task(kind):
    """Label 1 iff some present object has a positive first feature: learnable by every classifier."""
    gen = torch.Generator().manual_seed(1)
    n = 512
    objects = torch.randn(n, 5, 4, generator=gen)
    mask = torch.rand(n, 5, generator=gen) < 0.6
    labels = ((objects[..., 0] > 0.5) & mask).any(1).long()
    torch.manual_seed(0)
    clf = ObjectSetClassifier(small(kind, n_classes=2), object_dim=4)
    opt = torch.optim.Adam(clf.parameters(), lr=3e-3)
    for step in range(300):
        idx = torch.randint(n, (64,), generator=gen)
        loss = torch.nn.functional.cross_entropy(clf(objects[idx], mask[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        accuracy = (clf(objects, mask).argmax(1) == labels).float().mean()
    assert accuracy > 0.9, (kind, float(accuracy))


def test_recurrent_counts_present_objects():
    """The LSTM's output is taken at the last *present* object: it can count them."""
    gen = torch.Generator().manual_seed(2)
    objects = torch.randn(400, 6, 3, generator=gen)
    counts = torch.randint(0, 4, (400,), generator=gen)
    mask = torch.zeros(400, 6, dtype=torch.bool)
    for i, c in enumerate(counts.tolist()):
        mask[i, torch.randperm(6, generator=gen)[:c]] = True
    torch.manual_seed(0)
    clf = ObjectSetClassifier(ClassifierConfig(kind="recurrent", n_classes=4, **{**SMALL, "lstm_units": 16}), 3)
    opt = torch.optim.Adam(clf.parameters(), lr=1e-2)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(clf(objects, mask), counts)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (clf(objects, mask).argmax(1) == counts).float().mean() > 0.95


def test_raster_order_and_padding():
    boxes = np.array([[30, 2, 40, 10], [1, 30, 10, 40], [2, 1, 12, 9], [14, 3, 20, 11]], np.float32)
    assert raster_order(boxes, 12).tolist() == [2, 3, 0, 1]
    b, m = pad_boxes([boxes, boxes[:1]], (48, 48), max_objects=3, cell_size=12)
    assert b.shape == (2, 3, 4) and m.tolist() == [[True, True, True], [True, False, False]]
    assert b[0, 0].tolist() == pytest.approx([1 / 48, 2 / 48, 8 / 48, 10 / 48])  # (y_top, x_left, h, w)
    assert b[1, 1:].abs().sum() == 0
    b, m = pad_boxes([np.zeros((0, 4), np.float32)], (48, 48), max_objects=5, cell_size=12)
    assert b.shape == (1, 1, 4) and not m.any()


def scenes(n=6, seed=0):
    return generate_scenes(SceneConfig(image_size=(24, 24), n_objects=(1, 2), max_overlap=50.0), n, seed)


def test_glimpse_front_ends_read_the_given_or_connected_component_boxes():
    s = scenes()
    truth = GlimpseFrontEnd("truth", (14, 14), A=7, encoder_hidden=(16,))
    prep = truth.prepare(s.images, s.boxes)
    assert prep["boxes"].shape == (6, 2, 4) and prep["mask"].sum(1).tolist() == s.counts.tolist()
    objects, mask = truth(images_to_tensor(s.images), prep)
    assert objects.shape == (6, 2, 7) and torch.equal(mask, prep["mask"])
    with pytest.raises(DataError):
        truth.prepare(s.images, None)
    cc = GlimpseFrontEnd("conncomp", (21, 21), A=7, encoder_hidden=(16,), tau=0.02)
    prep = cc.prepare(s.images, None, s.backgrounds)
    assert prep["mask"].any(1).all() and cc(images_to_tensor(s.images), prep)[0].shape[-1] == 7
    # a single isolated digit is one component whose box is its ink box
    single = generate_scenes(SceneConfig(image_size=(24, 24), n_objects=(1, 1)), 3, 5)
    prep = cc.prepare(single.images, None, single.backgrounds)
    truth_prep = truth.prepare(single.images, single.boxes)
    for i in range(3):
        if int(prep["mask"][i].sum()) == 1:
            assert torch.allclose(prep["boxes"][i, 0], truth_prep["boxes"][i, 0])


def test_convnet_front_end_makes_every_cell_an_object():
    fe = ConvNetFrontEnd(A=5, channels=8)
    objects, mask = fe(torch.rand(2, 3, 48, 48), fe.prepare(np.zeros((2, 48, 48, 3), np.uint8)))
    assert objects.shape == (2, 16, 5) and mask.all()
    assert fe.uses_images


def test_spair_front_end_fixed_unfixed_and_reencode(tmp_path):
    torch.manual_seed(0)
    model = Spair(tiny_spair_config())
    path = tmp_path / "spair.safetensors"
    save_model(path, model)
    images = scenes(4).images
    fixed = build_front_end(FrontEndConfig(kind="spair", checkpoint=str(path)))
    assert isinstance(fixed, SpairFrontEnd) and not fixed.uses_images
    assert not any(p.requires_grad for p in fixed.parameters())
    prep = fixed.prepare(images)
    assert prep["what"].shape == (4, 4, 6) and prep["mask"].shape == (4, 4) and prep["boxes"].shape == (4, 4, 4)
    out = fixed.stage1.encode(images_to_tensor(images), _zero_noise(4, 4, 6), sample="mean")
    assert torch.allclose(prep["what"], out.params["what_mean"]) and torch.equal(prep["mask"], out.z_pres[..., 0] > 0.5)
    objects, mask = fixed(None, prep)
    assert torch.equal(objects, prep["what"])
    for reencode in (False, True):
        unfixed = build_front_end(FrontEndConfig(kind="spair", mode="unfixed", reencode=reencode, checkpoint=str(path)))
        trainable = {n for n, p in unfixed.named_parameters() if p.requires_grad}
        assert trainable and all(n.startswith(("encoder.", "stage1.obj_encoder.")) for n in trainable)
        objects, mask = unfixed(images_to_tensor(images), prep)
        assert torch.allclose(objects, prep["what"], atol=1e-5) and torch.equal(mask, prep["mask"])
        objects.sum().backward()
        assert all(p.grad is not None for p in unfixed.encoder.parameters())
        assert all(p.grad is None for n, p in unfixed.named_parameters() if "obj_encoder" not in n
                   and not n.startswith("encoder."))
    with pytest.raises(ConfigError, match="checkpoint"):
        build_front_end(FrontEndConfig(kind="spair"))
    with pytest.raises(CheckpointError):
        build_front_end(FrontEndConfig(kind="spair", checkpoint=str(tmp_path / "missing.pt")))


def _zero_noise(B, N, A):
    from spair.models.spair import SpairNoise

    return SpairNoise(torch.zeros(B, N, 4), torch.zeros(B, N, A), torch.zeros(B, N, 1), torch.full((B, N, 1), 0.5),
                      torch.zeros(B, 3))


def air_checkpoint(tmp_path):
    torch.manual_seed(0)
    cfg = AirConfig(image_size=(24, 24), core_size=16, output_hidden=(8,), encoder_hidden=(16,), decoder_hidden=(16,),
                    A=5, object_shape=(6, 6))
    path = tmp_path / "air.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model": Air(cfg).state_dict(), "model_config": to_dict(cfg)}, path)
    return path


def test_air_front_end(tmp_path):
    path = air_checkpoint(tmp_path)
    images = scenes(3).images
    fixed = build_front_end(FrontEndConfig(kind="air", checkpoint=str(path), air_steps=2))
    assert isinstance(fixed, AirFrontEnd)
    prep = fixed.prepare(images)
    assert prep["what"].shape == (3, 2, 5) and prep["mask"].all()
    unfixed = build_front_end(FrontEndConfig(kind="air", mode="unfixed", checkpoint=str(path), air_steps=2))
    objects, mask = unfixed(images_to_tensor(images), prep)
    assert torch.allclose(objects, prep["what"], atol=1e-5) and mask.all()
    assert {n.split(".")[0] for n, p in unfixed.named_parameters() if p.requires_grad} == {"encoder"}


def test_downstream_model_saves_only_what_stage_two_trains(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "spair.safetensors"
    save_model(path, Spair(tiny_spair_config()))
    fe_cfg = FrontEndConfig(kind="spair", mode="unfixed", checkpoint=str(path))
    model = build_downstream_model(fe_cfg, small("recurrent"))
    state = model.trainable_state_dict()
    assert state and not any(k.startswith("front_end.stage1.") for k in state)
    assert any(k.startswith("front_end.encoder.") for k in state) and any(k.startswith("classifier.") for k in state)
    other = build_downstream_model(fe_cfg, small("recurrent"))
    other.load_trainable_state_dict(state)
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(CheckpointError, match="does not fit"):
        other.load_trainable_state_dict({k: v for k, v in state.items() if not k.startswith("classifier.head")})
    with pytest.raises(ConfigError):
        DownstreamModel(GlimpseFrontEnd("truth", A=4), ObjectSetClassifier(small("recurrent"), object_dim=5))
    with pytest.raises(ConfigError):
        ObjectSetClassifier(ClassifierConfig(kind="transformer"), 4)  # type: ignore[arg-type]
