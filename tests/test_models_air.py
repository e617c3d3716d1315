"""AIR and DAIR: shapes, KLs against torch.distributions, sprite placement, the DAIR difference
input, halting, determinism, the detector, and short trainings (loss falls, exact resume)."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from spair.config import apply_overrides
from spair.errors import CheckpointError, ConfigError, DataError
from spair.models.air import (Air, AirConfig, AirDetector, AirNoise, ink_boxes_px, load_air_model, paper_where_prior,
                              place_sprites, read_air_checkpoint, where_to_boxes, window_boxes_px)
from spair.models.detector import get_detector
from spair.training.air_trainer import AirTrainer, paper_air_config


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPAIR_CACHE", str(tmp_path / "cache"))


def small_cfg(**kw) -> AirConfig:
    base = dict(image_size=(24, 24), object_shape=(6, 6), A=4, core_size=16, dair_hidden=(16, 16), output_hidden=(8,),
                encoder_hidden=(16,), decoder_hidden=(16,))
    base.update(kw)
    return AirConfig(**base)


def model(**kw) -> Air:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Air(small_cfg(**kw)).double()


def noise(B, T, A=4, seed=1):
    return AirNoise.sample(B, T, A, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


X = torch.rand(3, 3, 24, 24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("variant", ["air", "dair"])
@pytest.mark.parametrize("halting", [False, True])
def test_shapes_and_counts(variant, halting):
    m = model(variant=variant, halting=halting, max_steps=4)
    out = m(X, [0, 2, 3], noise=noise(3, 3), keep_sprites=True)
    assert out.boxes.shape == (3, 3, 4) and out.scale.shape == (3, 3, 2) and out.shift.shape == (3, 3, 2)
    assert out.z_what.shape == (3, 3, 4) and out.glimpses.shape == (3, 3, 3, 6, 6)
    assert out.sprites.shape == (3, 3, 3, 6, 6) and out.sprite_images.shape == (3, 3, 3, 24, 24)
    assert out.recon.shape == X.shape and 0 <= float(out.recon.detach().min()) and float(out.recon.detach().max()) <= 1
    assert (out.scale > 0).all() and (out.scale < 1).all() and (out.shift.abs() < 1).all()
    for term in ("recon", "kl_where", "kl_what", "kl_pres"):
        assert getattr(out.losses, term).shape == (3,)
    if halting:
        assert (out.counts <= torch.tensor([0, 2, 3])).all()
    else:
        assert out.counts.tolist() == [0, 2, 3]
        assert out.on.tolist() == [[False] * 3, [True, True, False], [True] * 3]
        assert (out.losses.kl_pres == 0).all()
    # an image with no steps costs only its reconstruction of a black canvas
    assert out.losses.kl_where[0] == 0 and out.losses.kl_what[0] == 0
    expected = -(X[0] * math.log(1e-9) + (1 - X[0]) * math.log(1 + 1e-9)).sum()
    torch.testing.assert_close(out.losses.recon[0], expected)


def test_zero_steps_everywhere():
    for variant in ("air", "dair"):
        out = model(variant=variant)(X, 0)
        assert out.boxes.shape == (3, 0, 4) and out.counts.tolist() == [0, 0, 0]
        assert torch.equal(out.recon, torch.zeros_like(X))


@pytest.mark.parametrize("variant", ["air", "dair"])
def test_kl_terms_match_torch_distributions(variant):
    m = model(variant=variant, scale_prior_mean=-2.0, scale_prior_std=0.3, shift_prior_mean=0.1, shift_prior_std=1.5,
              attr_prior_mean=0.2, attr_prior_std=0.7)
    out = m(X, [1, 2, 3], noise=noise(3, 3))
    p, on = out.params, out.on.double()
    kl_scale = kl_divergence(Normal(p["scale_mean"], p["scale_std"]), Normal(-2.0, 0.3)).sum(-1)
    kl_shift = kl_divergence(Normal(p["shift_mean"], p["shift_std"]), Normal(0.1, 1.5)).sum(-1)
    kl_what = kl_divergence(Normal(p["what_mean"], p["what_std"]), Normal(0.2, 0.7)).sum(-1)
    torch.testing.assert_close(out.losses.kl_where, ((kl_scale + kl_shift) * on).sum(1))
    torch.testing.assert_close(out.losses.kl_what, (kl_what * on).sum(1))
    assert on.sum() == 6 and (out.losses.kl_where > 0).all()


def test_presence_kl_matches_torch_bernoulli():
    m = model(halting=True, max_steps=3)
    kappa = -1.5
    out = m(X, None, noise=noise(3, 3), pres_prior_log_odds=kappa)
    q = torch.sigmoid(out.params["pres_logit"])
    expected = kl_divergence(Bernoulli(probs=q), Bernoulli(logits=torch.full_like(q, kappa)))
    torch.testing.assert_close(out.losses.kl_pres, (expected * out.reached.double()).sum(1))


def test_halting_stops_at_the_first_absent_object():
    m = model(halting=True, max_steps=5)
    with torch.no_grad():
        m.output_net[-1].bias[8] = 3.0  # presence logit ≈ 3: present...
    out = m(X, None, sample="mean")
    assert out.counts.tolist() == [5, 5, 5]
    with torch.no_grad():
        m.output_net[-1].bias[8] = -3.0  # ...or absent from the first step on
    out = m(X, None, sample="mean")
    assert out.counts.tolist() == [0, 0, 0] and out.reached[:, 0].all() and not out.reached[:, 1:].any()
    # relaxed samples: the steps that draw are a prefix of the reached steps
    out = m(X, None, noise=noise(3, 5))
    on = out.on.int()
    assert (on[:, 1:] <= on[:, :-1]).all() and (out.on <= out.reached).all()


def test_where_to_boxes_and_window_pixels():
    scale = torch.tensor([[[0.5, 0.25]]])
    shift = torch.tensor([[[0.0, -0.5]]])
    boxes = where_to_boxes(scale, shift)  # centre (0.5, 0.25), size (0.5, 0.25) of the image
    torch.testing.assert_close(boxes, torch.tensor([[[0.25, 0.125, 0.5, 0.25]]]))
    px = window_boxes_px(SimpleNamespace(image_hw=(48, 64), boxes=boxes))
    torch.testing.assert_close(px, torch.tensor([[[8.0, 12.0, 24.0, 36.0]]]))  # x0, y0, x1, y1
    edge = window_boxes_px(SimpleNamespace(image_hw=(48, 48), boxes=where_to_boxes(scale, torch.tensor([[[1.0, -1.0]]]))))
    torch.testing.assert_close(edge, torch.tensor([[[0.0, 36.0, 6.0, 48.0]]]))  # clipped to the image


def test_sprite_lands_on_its_box():
    """A 6×6 sprite in a 6×6 px box at rows 5..10, cols 12..17 is copied there exactly; a box twice
    that size covers its own pixels (constant sprite) and nothing beyond a one-pixel margin."""
    sprite = torch.rand(1, 1, 3, 6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    box = torch.tensor([[[5 / 24, 12 / 24, 6 / 24, 6 / 24]]], dtype=torch.float64)
    img = place_sprites(sprite, box, (24, 24))[0, 0]
    expected = torch.zeros(3, 24, 24, dtype=torch.float64)
    expected[:, 5:11, 12:18] = sprite[0, 0]
    torch.testing.assert_close(img, expected)

    ones = torch.ones(1, 1, 3, 6, 6, dtype=torch.float64)
    big = place_sprites(ones, torch.tensor([[[4 / 24, 8 / 24, 12 / 24, 12 / 24]]], dtype=torch.float64), (24, 24))[0, 0]
    assert torch.allclose(big[:, 5:15, 9:19], torch.ones(3, 10, 10, dtype=torch.float64))
    outside = big.clone()
    outside[:, 3:17, 7:21] = 0
    assert outside.abs().max() == 0
    # and ink boxes find exactly the pasted extent
    out = SimpleNamespace(sprite_images=img[None, None], image_hw=(24, 24))
    ink, found = ink_boxes_px(out, 1e-6)
    assert found.all() and ink[0, 0].tolist() == [12.0, 5.0, 18.0, 11.0]


def test_canvas_is_the_clipped_sum_of_objects():
    for variant in ("air", "dair"):
        out = model(variant=variant)(X, [1, 2, 3], noise=noise(3, 3), keep_sprites=True)
        drawn = (out.sprite_images * out.on.double()[..., None, None, None]).sum(1)
        torch.testing.assert_close(out.recon, drawn.clamp(0, 1))


def test_dair_core_reads_image_minus_canvas():
    m = model(variant="dair")
    seen = []
    m.core.register_forward_hook(lambda mod, inp, outp: seen.append(inp[0].detach().clone()))
    out = m(X, 3, noise=noise(3, 3), keep_sprites=True)
    assert len(seen) == 3
    canvas = torch.zeros_like(X)
    for t in range(3):
        torch.testing.assert_close(seen[t], (X - canvas.clamp(0, 1)).flatten(1))
        canvas = canvas + out.sprite_images[:, t]


@pytest.mark.parametrize("variant", ["air", "dair"])
def test_images_are_independent_and_masked_steps_do_not_matter(variant):
    m = model(variant=variant)
    nz = noise(3, 3)
    both = m(X, [2, 3, 1], noise=nz)
    alone = m(X[:1], [2], noise=AirNoise(nz.scale[:1, :2], nz.shift[:1, :2], nz.what[:1, :2], nz.pres[:1, :2]))
    torch.testing.assert_close(both.recon[:1], alone.recon)
    torch.testing.assert_close(both.losses.total[:1], alone.losses.total)
    torch.testing.assert_close(both.boxes[:1, :2], alone.boxes)


def test_determinism():
    m = model()
    a = m(X, 2, generator=torch.Generator().manual_seed(5))
    b = m(X, 2, generator=torch.Generator().manual_seed(5))
    c = m(X, 2, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.recon, b.recon) and torch.equal(a.losses.total, b.losses.total)
    assert not torch.equal(a.boxes, c.boxes)
    mean1, mean2 = m(X, 2, sample="mean"), m(X, 2, sample="mean")
    assert torch.equal(mean1.boxes, mean2.boxes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        w1 = Air(small_cfg()).state_dict()
        torch.manual_seed(0)
        w2 = Air(small_cfg()).state_dict()
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_input_errors():
    m = model()
    with pytest.raises(ConfigError, match="n_steps"):
        m(X)
    with pytest.raises(ConfigError, match="one count per image"):
        m(X, [1, 2])
    with pytest.raises(DataError, match="24x24"):
        m(torch.rand(1, 3, 20, 24, dtype=torch.float64), 1)


def test_paper_priors():
    assert paper_where_prior("air", 7) == (-1.386, 0.4, 4.0)
    assert paper_where_prior("dair", 3) == (-2.944, 0.5, 1.0)
    assert paper_where_prior("air", 2) == paper_where_prior("air", 1)  # nearest tabulated n, ties → smaller
    cfg = AirConfig.for_comparison("dair", 9)
    assert (cfg.variant, cfg.scale_prior_mean, cfg.scale_prior_std, cfg.shift_prior_std) == ("dair", -0.405, 0.25, 2.0)
    with pytest.raises(ConfigError):
        paper_where_prior("vae", 1)


# --------------------------------------------------------------------------------------------
# Training and the detector


def train_cfg(variant, *overrides):
    """Full-size AIR/DAIR on a few 48×48 scenes with 2 digits: a few seconds of CPU."""
    cfg = paper_air_config(variant, 2)
    return apply_overrides(cfg, ["data.n_train=64", "data.n_val=8", "test.n=8", "optim.batch_size=16",
                                 "optim.lr=1e-3", "optim.max_steps=40", "eval.every=20", "log_every=5",
                                 "num_threads=1", "device=cpu", *overrides])


@pytest.mark.parametrize("variant", ["air", "dair"])
def test_training_lowers_the_loss_and_writes_a_loadable_run(variant, tmp_path):
    out = tmp_path / variant
    summary = AirTrainer(train_cfg(variant), out, progress=False, log=lambda s: None).fit()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses) == 8 and losses[-1] < 0.8 * losses[0], losses
    assert summary["steps"] == 40 and summary["test"]["n_images"] == 8
    assert summary["test"]["count_abs_error"] == 0.0  # told the number of digits
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["model_config"]["variant"] == variant and ckpt["step"] == summary["best_step"]
    det = get_detector("air", checkpoint=str(out / "best.pt"), n_steps=2, box_mode="window")
    images = np.zeros((3, 48, 48, 3), np.uint8)
    dets = det.detect(images)
    assert [len(d) for d in dets] == [2, 2, 2] and all((d.scores == 1).all() for d in dets)
    assert [len(d) for d in det.detect(images, n_steps=[0, 1, 3])] == [0, 1, 3]
    for d in det.detect(images):
        assert (d.boxes[:, :2] >= 0).all() and (d.boxes[:, 2:] <= 48).all() and (d.boxes[:, 2:] > d.boxes[:, :2]).all()


def test_resume_after_interruption_gives_the_same_weights(tmp_path):
    cfg = train_cfg("dair", "optim.max_steps=20", "eval.every=10", "test.n=0")
    AirTrainer(cfg, tmp_path / "straight", progress=False, log=lambda s: None).fit()

    class Interrupted(Exception):
        pass

    class StopAfterFirstCheckpoint(AirTrainer):
        def _evaluate_and_checkpoint(self, bar):
            super()._evaluate_and_checkpoint(bar)
            raise Interrupted

    with pytest.raises(Interrupted):
        StopAfterFirstCheckpoint(cfg, tmp_path / "resumed", progress=False, log=lambda s: None).fit()
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["step"] == 10
    AirTrainer(cfg, tmp_path / "resumed", progress=False, log=lambda s: None).fit()
    a = read_air_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = read_air_checkpoint(tmp_path / "resumed" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="differs"):
        AirTrainer(apply_overrides(cfg, ["optim.lr=5e-4"]), tmp_path / "resumed", progress=False).fit()


def test_detector_and_checkpoint_errors(tmp_path):
    m = Air(small_cfg())
    with pytest.raises(ConfigError, match="checkpoint"):
        AirDetector()
    det = AirDetector(model=m)
    with pytest.raises(ConfigError, match="number of objects"):
        det.detect(np.zeros((1, 24, 24, 3), np.uint8))
    with pytest.raises(DataError, match="24x24"):
        det.detect(np.zeros((1, 48, 48, 3), np.uint8), n_steps=1)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_air_model(bad)
    other = tmp_path / "other.pt"
    torch.save({"format": "spair-train-1", "model": {}, "model_config": {}}, other)
    with pytest.raises(CheckpointError, match="not an AIR"):
        load_air_model(other)
    halting = AirDetector(model=Air(small_cfg(halting=True, max_steps=3)), box_mode="ink")
    dets = halting.detect(np.zeros((2, 24, 24, 3), np.uint8))
    assert all(len(d) <= 3 and ((d.scores > 0) & (d.scores <= 1)).all() for d in dets)


def test_checkpoint_with_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "spair-air-train-1", "model": {}, "model_config": {}, "x": Payload()}, path)
    with pytest.raises(CheckpointError, match="not plain data"):
        read_air_checkpoint(path)


def test_segment_boxes_follow_the_input_pixels_each_object_explains():
    from spair.models.air import segment_boxes_px

    sprites = torch.zeros(1, 3, 3, 10, 10)
    sprites[0, 0, :, 1:5, 1:5] = 0.8        # object 0: a bright blurry square
    sprites[0, 1, :, 3:9, 3:9] = 0.5        # object 1 overlaps it, dimmer
    sprites[0, 2, :, 0:10, 0:10] = 0.9      # object 2 is not drawn (off): it claims nothing
    out = SimpleNamespace(sprite_images=sprites, on=torch.tensor([[True, True, False]]), image_hw=(10, 10))
    x = torch.zeros(1, 3, 10, 10)
    x[0, :, 2:4, 2:4] = 1.0                 # ink inside object 0 only
    x[0, 1, 4, 4] = 0.6                     # in both: the brighter object 0 takes it
    x[0, :, 5:8, 5:8] = 1.0                 # ink inside object 1 only
    x[0, :, 9, 0] = 0.05                    # too faint to be ink
    boxes, found = segment_boxes_px(out, x)
    assert found.tolist() == [[True, True, False]]
    assert boxes[0, 0].tolist() == [2, 2, 5, 5] and boxes[0, 1].tolist() == [5, 5, 8, 8]
