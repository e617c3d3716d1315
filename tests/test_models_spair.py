"""SPAIR model: shapes, wavefront == raster, training wheels, latent bounds."""

import math

import pytest
import torch

from spair.models.spair import Spair, SpairConfig, SpairNoise, make_schedule, neighbour_offsets


def small_cfg(**kw):
    base = dict(backbone_channels=16, n_backbone_features=12, n_passthrough_features=8, lateral_hidden=(16,),
                encoder_hidden=(32,), decoder_hidden=(32,), A=6, background="solid")
    base.update(kw)
    return SpairConfig(**base)


def test_neighbour_offsets():
    assert neighbour_offsets(0) == []
    assert neighbour_offsets(1) == [(-1, -1), (-1, 0), (-1, 1), (0, -1)]
    assert len(neighbour_offsets(2)) == 12


@pytest.mark.parametrize("L,H,W,steps", [(1, 4, 4, 10), (1, 7, 7, 19), (0, 4, 4, 1), (2, 3, 5, 11)])
def test_wavefront_step_count(L, H, W, steps):
    s = make_schedule(H, W, L, "wavefront")
    assert len(s.groups) == steps
    assert sorted(torch.cat(s.groups).tolist()) == list(range(H * W))
    # a cell's context only refers to programs of earlier steps
    done = 1
    for g, ctx in zip(s.groups, s.context):
        assert int(ctx.max()) < done if ctx.numel() else True
        done += len(g)


@pytest.mark.parametrize("L", [0, 1, 2])
@pytest.mark.parametrize("sample", ["relaxed", "hard", "mean"])
def test_wavefront_equals_raster(L, sample):
    """Same noise → same outputs, to 1e-6, in float64 (float32 differs only by matmul rounding)."""
    torch.manual_seed(0)
    m = Spair(small_cfg(n_lookback=L)).double()
    x = torch.rand(3, 3, 50, 61, dtype=torch.float64)
    H, W = m.grid_shape(50, 61)
    noise = SpairNoise.sample(3, H * W, m.cfg.A, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    a = m(x, -1.0, noise=noise, sample=sample, schedule="wavefront")
    b = m(x, -1.0, noise=noise, sample=sample, schedule="raster")
    for k in ("boxes", "z_what", "z_depth", "z_pres", "pres_logit", "recon"):
        torch.testing.assert_close(getattr(a, k), getattr(b, k), atol=1e-6, rtol=0)
    for k in ("recon", "kl_where", "kl_what", "kl_depth", "kl_pres"):
        torch.testing.assert_close(getattr(a.losses, k), getattr(b.losses, k), atol=1e-6, rtol=1e-9)


def test_float32_wavefront_close_to_raster():
    torch.manual_seed(0)
    m = Spair(SpairConfig())
    x = torch.rand(2, 3, 48, 48)
    noise = SpairNoise.sample(2, 16, 50, generator=torch.Generator().manual_seed(3))
    a = m(x, 0.0, noise=noise)
    b = m(x, 0.0, noise=noise, schedule="raster")
    torch.testing.assert_close(a.recon, b.recon, atol=1e-5, rtol=1e-5)


def test_shapes_and_bounds():
    torch.manual_seed(0)
    m = Spair(small_cfg())
    out = m(torch.rand(2, 3, 48, 84), 0.0)
    assert out.grid_hw == (4, 7)
    N = 28
    assert out.boxes.shape == (2, N, 4) and out.z_what.shape == (2, N, 6)
    assert out.recon.shape == (2, 3, 48, 84)
    assert torch.all(out.z_where[..., :2] >= -0.5) and torch.all(out.z_where[..., :2] <= 1.5)
    assert torch.all(out.z_where[..., 2:] >= 0) and torch.all(out.z_where[..., 2:] <= 1)
    assert torch.all((out.z_depth > 0) & (out.z_depth < 4))
    assert torch.all((out.recon >= 0) & (out.recon <= 1))
    for v in (out.losses.recon, out.losses.kl_where, out.losses.kl_pres):
        assert v.shape == (2,) and torch.isfinite(v).all()


def test_boxes_follow_paper_equations():
    """b_y = (i + b̃_y)·c_h, b_h = h·a_h (eqs. 2–6), normalized by the image size."""
    m = Spair(small_cfg())
    z_where = torch.tensor([[[0.5, 0.25, 0.5, 0.25]]])
    cells = torch.tensor([5])  # row 1, col 1 of a 4-wide grid
    b = m.where_to_boxes(z_where, cells, 4, (48, 48))[0, 0]
    cy, cx = (1 + 0.5) * 12 / 48, (1 + 0.25) * 12 / 48
    hh, ww = 0.5 * 48 / 48, 0.25 * 48 / 48
    torch.testing.assert_close(b, torch.tensor([cy - hh / 2, cx - ww / 2, hh, ww]))


def test_training_wheels_block_detector_gradients():
    torch.manual_seed(0)
    m = Spair(small_cfg())
    out = m(torch.rand(2, 3, 48, 48), 0.0, training_wheels=1.0)
    out.losses.total.mean().backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in m.backbone.parameters())
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in m.box_net.parameters())
    assert m.edge_element.grad is None or m.edge_element.grad.abs().max() == 0
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in m.obj_decoder.parameters())
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in m.obj_encoder.parameters())
    m.zero_grad()
    out = m(torch.rand(2, 3, 48, 48), 0.0, training_wheels=0.0)
    out.losses.total.mean().backward()
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in m.backbone.parameters())


def test_mean_mode_is_deterministic_and_hard_presence_is_binary():
    torch.manual_seed(0)
    m = Spair(small_cfg())
    x = torch.rand(2, 3, 48, 48)
    a = m(x, 0.0, sample="mean", generator=torch.Generator().manual_seed(0))
    b = m(x, 0.0, sample="mean", generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a.recon, b.recon)
    h = m(x, 0.0, sample="hard")
    assert set(h.z_pres.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a.z_pres, (a.pres_logit > 0).float())


def test_default_config_matches_the_authors_values():
    c = SpairConfig()
    assert (c.cell_size, c.anchor, c.object_shape, c.A) == (12, (48.0, 48.0), (14, 14), 50)
    assert c.hw_prior_mean == pytest.approx(math.log(1 / 9)) and c.hw_prior_std == 0.5
    assert (c.color_logit_scale, c.alpha_logit_scale, c.alpha_logit_bias) == (2.0, 0.1, 5.0)
    assert c.program_size == 56
