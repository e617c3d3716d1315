"""The renderer against a slow, literal reference of spec section 5.3; glimpses against a hand
computation; the windowed sampler against the full-image one."""

import math

import numpy as np
import pytest
import torch

from spair.ops.render import (component_labels, component_sums, extract_glimpses, mask_extents, render,
                              sample_windows, window_size)


def bilinear_tap_weights(coord: float, size: int):
    """(index, weight) pairs of 1-D bilinear interpolation at ``coord`` (pixel centres 0..size-1)."""
    i0 = math.floor(coord)
    f = coord - i0
    return [(i0, 1 - f), (i0 + 1, f)]


def reference_render(rgb, alpha, imp, boxes, bg, H, W):
    """Literal per-pixel loop over R1–R3 in float64."""
    B, N, _, sh, sw = rgb.shape
    out = np.zeros((B, 3, H, W))
    for b in range(B):
        for py in range(H):
            for px in range(W):
                bgp = bg[b, :, py, px]
                num, den, covered = np.zeros(3), 0.0, False
                for i in range(N):
                    yt, xt, ys, xs = boxes[b, i]
                    u = sw * ((px + 0.5) / W - xt) / xs - 0.5
                    v = sh * ((py + 0.5) / H - yt) / ys - 0.5
                    if not (-1 < u < sw and -1 < v < sh):
                        continue
                    covered = True
                    a = w = 0.0
                    c = np.zeros(3)
                    for iy, wy in bilinear_tap_weights(v, sh):
                        for ix, wx in bilinear_tap_weights(u, sw):
                            wt = wy * wx
                            if 0 <= iy < sh and 0 <= ix < sw:
                                a += wt * alpha[b, i, 0, iy, ix]
                                w += wt * imp[b, i, 0, iy, ix]
                                c += wt * rgb[b, i, :, iy, ix]
                            else:
                                c += wt * bgp  # taps outside the sprite take the background colour
                    val = a * c + (1 - a) * bgp
                    num += w * val
                    den += w
                out[b, :, py, px] = num / den if covered else bgp
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_render_matches_reference(seed):
    g = torch.Generator().manual_seed(seed)
    B, N, sh, sw, H, W = 2, 4, 4, 5, 11, 13
    rgb = torch.rand(B, N, 3, sh, sw, generator=g, dtype=torch.float64)
    alpha = torch.rand(B, N, 1, sh, sw, generator=g, dtype=torch.float64)
    alpha[:, 0] = 0.0  # a fully transparent sprite
    depth = 4 * torch.rand(B, N, 1, 1, 1, generator=g, dtype=torch.float64)
    imp = (alpha * depth).clamp(min=0.01)
    # overlapping boxes, some sticking out of the image
    yt = torch.rand(B, N, generator=g, dtype=torch.float64) * 1.0 - 0.3
    xt = torch.rand(B, N, generator=g, dtype=torch.float64) * 1.0 - 0.3
    ys = 0.2 + 0.6 * torch.rand(B, N, generator=g, dtype=torch.float64)
    xs = 0.2 + 0.6 * torch.rand(B, N, generator=g, dtype=torch.float64)
    boxes = torch.stack([yt, xt, ys, xs], -1)
    bg = torch.rand(B, 3, 1, 1, generator=g, dtype=torch.float64).expand(B, 3, H, W)
    out = render(rgb, alpha, imp, boxes, bg, (H, W))
    ref = reference_render(rgb.numpy(), alpha.numpy(), imp.numpy(), boxes.numpy(), bg.numpy(), H, W)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-10)


def test_render_depth_decides_overlap():
    """Two opaque sprites on the same spot: the one with the larger importance dominates."""
    B, N, s = 1, 2, 4
    rgb = torch.zeros(B, N, 3, s, s, dtype=torch.float64)
    rgb[0, 0, 0] = 1.0  # red
    rgb[0, 1, 2] = 1.0  # blue
    alpha = torch.ones(B, N, 1, s, s, dtype=torch.float64)
    depth = torch.tensor([4.0, 0.04], dtype=torch.float64).view(1, 2, 1, 1, 1)
    imp = (alpha * depth).clamp(min=0.01)
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]], dtype=torch.float64)
    bg = torch.zeros(1, 3, 1, 1, dtype=torch.float64)
    out = render(rgb, alpha, imp, boxes, bg, (8, 8))
    centre = out[0, :, 3, 3]
    assert centre[0] == pytest.approx(100 / 101) and centre[2] == pytest.approx(1 / 101)


def test_render_background_where_uncovered_and_transparent():
    rgb = torch.ones(1, 1, 3, 4, 4, dtype=torch.float64)
    alpha = torch.zeros(1, 1, 1, 4, 4, dtype=torch.float64)
    imp = alpha.clamp(min=0.01)
    boxes = torch.tensor([[[0.25, 0.25, 0.5, 0.5]]], dtype=torch.float64)
    bg = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64).view(1, 3, 1, 1)
    out = render(rgb, alpha, imp, boxes, bg, (8, 8))
    np.testing.assert_allclose(out[0].numpy(), bg[0].expand(3, 8, 8).numpy(), atol=1e-12)


def test_glimpse_reads_the_box_corners():
    """The corner-aligned sampler puts glimpse pixel k at x = (W−1)·(left + size·k/(g−1))."""
    H = W = 9
    img = torch.arange(H * W, dtype=torch.float64).view(1, 1, H, W)
    # box spanning normalized [0.25, 0.75] in both axes: samples x = 8·(0.25 + 0.5·k/2), k = 0..2
    boxes = torch.tensor([[[0.25, 0.25, 0.5, 0.5]]], dtype=torch.float64)
    g = extract_glimpses(img, boxes, (3, 3))[0, 0, 0]
    xs = 8 * np.array([0.25, 0.5, 0.75])
    expected = np.array([[y * W + x for x in xs] for y in xs])
    np.testing.assert_allclose(g.numpy(), expected, atol=1e-9)


def test_glimpse_replicates_edges():
    img = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    img[..., :, 0] = 7.0
    boxes = torch.tensor([[[0.0, -1.0, 1.0, 1.0]]], dtype=torch.float64)  # left of the image
    g = extract_glimpses(img, boxes, (4, 4))[0, 0, 0]
    assert torch.all(g[:, 0] == 7.0)


def test_windowed_samples_equal_full_image_samples():
    """Sampling each sprite only over its window gives the same values as over the whole image."""
    g = torch.Generator().manual_seed(5)
    B, N, sh, sw, H, W = 2, 5, 6, 6, 40, 37
    maps = torch.rand(B, N, 2, sh, sw, generator=g, dtype=torch.float64)
    max_px = (12.0, 12.0)
    ys = (torch.rand(B, N, generator=g, dtype=torch.float64) * max_px[0] + 1) / H
    xs = (torch.rand(B, N, generator=g, dtype=torch.float64) * max_px[1] + 1) / W
    yt = torch.rand(B, N, generator=g, dtype=torch.float64) * 1.2 - 0.2
    xt = torch.rand(B, N, generator=g, dtype=torch.float64) * 1.2 - 0.2
    boxes = torch.stack([yt, xt, ys, xs], -1)
    win = window_size(max_px, (sh, sw))
    s, m, y0, x0 = sample_windows(maps, boxes, (H, W), win)
    # full-image samples through the renderer's grid
    from spair.ops.render import sprite_grid
    import torch.nn.functional as F
    gy, gx = sprite_grid(boxes, (H, W))
    grid = torch.stack(torch.broadcast_tensors(gx[..., None, :, None], gy[..., :, None, None]), -1)
    full = F.grid_sample(maps.reshape(B * N, 2, sh, sw), grid.reshape(B * N, H, W, 2), align_corners=False)
    full = full.reshape(B, N, 2, H, W)
    total_full = full.sum((-1, -2))
    # scatter window samples into the image and compare
    acc = torch.zeros(B, N, 2, H, W, dtype=torch.float64)
    for b in range(B):
        for i in range(N):
            for r in range(win[0]):
                for c in range(win[1]):
                    py, px = int(y0[b, i]) + r, int(x0[b, i]) + c
                    if 0 <= py < H and 0 <= px < W:
                        acc[b, i, :, py, px] = s[b, i, :, r, c]
    np.testing.assert_allclose(acc.numpy(), full.numpy(), atol=1e-12)
    assert total_full.sum() > 0


def test_mask_extents():
    mask = torch.zeros(1, 2, 5, 6, dtype=torch.bool)
    mask[0, 0, 1:3, 2:5] = True          # rows 1..2, cols 2..4 of the window
    y0 = torch.tensor([[10, -3]])
    x0 = torch.tensor([[20, 0]])
    mask[0, 1, 0:4, 1] = True            # rows −3..0 of the image: only row 0 is inside
    boxes, found = mask_extents(mask, y0, x0, (50, 50))
    assert found.tolist() == [[True, True]]
    np.testing.assert_array_equal(boxes[0, 0].numpy(), [22, 11, 25, 13])
    np.testing.assert_array_equal(boxes[0, 1].numpy(), [1, 0, 2, 1])


def test_component_labels_and_sums():
    mask = torch.zeros(2, 6, 9, dtype=torch.bool)
    mask[0, 1:5, 1:3] = True             # one part: 8 pixels
    mask[0, 4, 3] = True                 # shares an edge with it: the same part
    mask[0, 5, 4] = True                 # touches (4, 3) only at a corner: still the same part (8-connected)
    mask[0, 0:2, 7:9] = True             # a second part, apart from the first
    labels = component_labels(mask)
    assert labels.shape == mask.shape and labels.dtype == torch.long
    assert torch.equal(labels > 0, mask)
    first, second = labels[0, 1, 1], labels[0, 0, 7]
    assert first != second
    assert bool((labels[0][mask[0]] == first).sum() == 10) and bool((labels[0][mask[0]] == second).sum() == 4)
    assert not labels[1].any()
    weight = torch.arange(2 * 6 * 9, dtype=torch.float64).reshape(2, 6, 9)
    sums = component_sums(labels, weight)
    assert sums.shape == (2, 6 * 9 + 1) and sums.dtype == torch.float64
    assert sums[0, first] == weight[0][labels[0] == first].sum()
    assert sums[0, second] == weight[0, 0:2, 7:9].sum()
    assert sums[0].sum() == weight[0][mask[0]].sum() and not sums[1].any()
    assert component_labels(torch.zeros(0, 3, 3, dtype=torch.bool)).shape == (0, 3, 3)
    # maps whose masks lie in different corners: each map's parts keep their own labels
    far = torch.zeros(3, 7, 7, dtype=torch.bool)
    far[0, 0, 0] = far[0, 1, 1] = True          # one part (diagonal)
    far[1, 6, 6] = far[1, 6, 4] = True          # two parts (a one-pixel gap)
    far[2, 3, 0:7] = True                       # one part across the map
    lab = component_labels(far)
    assert torch.equal(lab > 0, far) and int(lab.max()) <= 7 * 7
    assert lab[0, 0, 0] == lab[0, 1, 1] and lab[1, 6, 6] != lab[1, 6, 4] and len(lab[2][far[2]].unique()) == 1


# -- windowed rendering ---------------------------------------------------------------------------

from spair.ops.render import (add_windows, inside_mass, render_window, render_windowed, sample_separable,  # noqa: E402
                              tap_weights)


def random_scene(seed, B=2, N=9, sh=5, sw=6, H=37, W=41, max_px=14.0, dtype=torch.float64):
    """Sprites of at most ``max_px`` pixels, overlapping, some partly or wholly outside the image."""
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(B, N, 3, sh, sw, generator=g, dtype=dtype)
    alpha = torch.rand(B, N, 1, sh, sw, generator=g, dtype=dtype)
    alpha[:, 0] = 0.0
    depth = 4 * torch.rand(B, N, 1, 1, 1, generator=g, dtype=dtype)
    yt = torch.rand(B, N, generator=g, dtype=dtype) * 1.5 - 0.5
    xt = torch.rand(B, N, generator=g, dtype=dtype) * 1.5 - 0.5
    ys = (1 + (max_px - 1) * torch.rand(B, N, generator=g, dtype=dtype)) / H
    xs = (1 + (max_px - 1) * torch.rand(B, N, generator=g, dtype=dtype)) / W
    boxes = torch.stack([yt, xt, ys, xs], -1)
    bg = torch.rand(B, 3, 1, 1, generator=g, dtype=dtype)
    return rgb, alpha, depth, boxes, bg, (H, W)


def render_and_grads(fn, scene, **kw):
    rgb, alpha, depth, boxes, bg, hw = [t.clone().requires_grad_() if torch.is_tensor(t) else t for t in scene]
    imp = (alpha * depth).clamp(min=0.01)
    out = fn(rgb, alpha, imp, boxes, bg, hw, **kw)
    weights = torch.rand(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
    grads = torch.autograd.grad((out * weights).sum(), (rgb, alpha, depth, boxes, bg))
    return out, grads


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kw", [{}, {"max_size_px": (14.0, 14.0)}, {"max_size_px": (14.0, 14.0), "full_above": 1.0},
                                {"max_size_px": None}, {"full_above": 0.0}])
def test_render_windowed_equals_full_render_with_gradients(seed, kw):
    """Window sums and whole-image sums give the same image and the same gradients for every input."""
    scene = random_scene(seed)
    ref, ref_grads = render_and_grads(render, scene)
    out, grads = render_and_grads(render_windowed, scene, **kw)
    np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), atol=1e-12)
    for name, a, b in zip(("rgb", "alpha", "depth", "boxes", "background"), grads, ref_grads):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-9, err_msg=name)
    assert ref_grads[3].abs().sum() > 0  # the boxes do receive gradients


def test_render_windowed_matches_the_literal_reference():
    rgb, alpha, depth, boxes, bg, (H, W) = random_scene(3, B=1, N=5, H=23, W=19, max_px=9.0)
    imp = (alpha * depth).clamp(min=0.01)
    out = render_windowed(rgb, alpha, imp, boxes, bg, (H, W), (9.0, 9.0), full_above=1.0)
    ref = reference_render(rgb.numpy(), alpha.numpy(), imp.numpy(), boxes.numpy(),
                           bg.expand(1, 3, H, W).numpy(), H, W)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-10)


def test_render_terms_of_disjoint_sprite_sets_add_up_to_the_image():
    """render_terms: the sums of two sets of sprites add to the sums of both, which give the image."""
    from spair.ops.render import render_terms

    rgb, alpha, depth, boxes, bg, (H, W) = random_scene(6)
    imp = (alpha * depth).clamp(min=0.01)
    ref = render(rgb, alpha, imp, boxes, bg, (H, W))
    first, second = slice(0, 4), slice(4, None)
    a = render_terms(rgb[:, first], alpha[:, first], imp[:, first], boxes[:, first], (H, W))
    b = render_terms(rgb[:, second], alpha[:, second], imp[:, second], boxes[:, second], (H, W))
    num, mass, den = (p + q for p, q in zip(a, b))
    assert num.shape == (2, 3, H, W) and mass.shape == den.shape == (2, 1, H, W)
    image = bg + (num - mass * bg) / den.clamp(min=1e-12)
    np.testing.assert_allclose(image.numpy(), ref.numpy(), atol=1e-12)


def test_sprite_window_terms_are_each_sprites_own_part_of_render_terms():
    """sprite_window_terms: every window lies inside the image, the windows added up give render_terms,
    and each sprite's terms are those of rendering it alone; gather_windows reads a canvas back at them."""
    from spair.ops.render import add_windows, gather_windows, render_terms, sprite_window_terms

    rgb, alpha, depth, boxes, bg, (H, W) = random_scene(6)
    imp = (alpha * depth).clamp(min=0.01)
    terms, y0, x0 = sprite_window_terms(rgb, alpha, imp, boxes, (H, W))
    B, N, C, wh, ww = terms.shape
    assert (B, N, C) == (2, 9, 5) and wh < H and ww < W
    assert (y0 >= 0).all() and (x0 >= 0).all() and (y0 + wh <= H).all() and (x0 + ww <= W).all()
    whole = add_windows(terms, y0, x0, (H, W))
    for got, ref in zip(whole.split((3, 1, 1), dim=1), render_terms(rgb, alpha, imp, boxes, (H, W))):
        np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=1e-12)
    alone = torch.cat(render_terms(rgb[:, 2:3], alpha[:, 2:3], imp[:, 2:3], boxes[:, 2:3], (H, W)), 1)
    canvas = torch.zeros_like(alone)
    for b in range(B):
        canvas[b, :, y0[b, 2]:y0[b, 2] + wh, x0[b, 2]:x0[b, 2] + ww] = terms[b, 2]
    np.testing.assert_allclose(canvas.numpy(), alone.numpy(), atol=1e-12)   # nothing of it outside its window
    read = gather_windows(whole, y0, x0, (wh, ww))
    assert read.shape == terms.shape
    for b in range(B):
        for n in range(N):
            assert torch.equal(read[b, n], whole[b, :, y0[b, n]:y0[b, n] + wh, x0[b, n]:x0[b, n] + ww])


def test_render_windowed_takes_a_per_pixel_background():
    rgb, alpha, depth, boxes, _, hw = random_scene(4)
    bg = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    imp = (alpha * depth).clamp(min=0.01)
    a = render(rgb, alpha, imp, boxes, bg, hw)
    b = render_windowed(rgb, alpha, imp, boxes, bg, hw, (14.0, 14.0))
    np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-12)


def test_render_windowed_float32_close_to_render():
    scene = random_scene(5, dtype=torch.float32, H=48, W=48, N=16, sh=14, sw=14, max_px=40.0)
    a, _ = render_and_grads(render, scene)
    b, _ = render_and_grads(render_windowed, scene, max_size_px=(40.0, 40.0), full_above=1.0)
    torch.testing.assert_close(b, a, atol=2e-6, rtol=0)


def test_render_windowed_with_non_finite_boxes_renders_nan_instead_of_failing():
    rgb, alpha, depth, boxes, bg, hw = random_scene(6)
    boxes[0, 1, 2] = float("nan")
    out = render_windowed(rgb, alpha, (alpha * depth).clamp(min=0.01), boxes, bg, hw)
    assert torch.isnan(out[0]).any() and torch.isfinite(out[1]).all()


def test_window_is_independent_of_the_image_size():
    """The per-sprite window depends on the sprite bound only: linear total cost in the image area."""
    assert render_window((256, 256), (14, 14), (48.0, 48.0)) == (54, 54)
    assert render_window((210, 160), (14, 14), (48.0, 48.0)) == (54, 54)
    assert render_window((48, 48), (14, 14), (48.0, 48.0)) == (48, 48)     # never larger than the image
    assert render_window((48, 48), (14, 14), None) == (48, 48)


def test_tap_weights_and_separable_sampling_equal_grid_sample():
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(8)
    coord = torch.rand(2, 3, 11, generator=g, dtype=torch.float64) * 9 - 2
    np.testing.assert_allclose(tap_weights(coord, 6).sum(-1).numpy(), inside_mass(coord, 6).numpy(), atol=1e-12)
    maps = torch.rand(2, 3, 4, 6, 5, generator=g, dtype=torch.float64)
    v = torch.rand(2, 3, 7, generator=g, dtype=torch.float64) * 9 - 2      # rows, sprite pixel units
    u = torch.rand(2, 3, 8, generator=g, dtype=torch.float64) * 8 - 2
    s = sample_separable(maps, tap_weights(v, 6), tap_weights(u, 5))
    gy = (2 * v + 1) / 6 - 1                                                  # back to grid_sample's [-1, 1]
    gx = (2 * u + 1) / 5 - 1
    grid = torch.stack(torch.broadcast_tensors(gx[..., None, :], gy[..., :, None]), -1)
    ref = F.grid_sample(maps.reshape(6, 4, 6, 5), grid.reshape(6, 7, 8, 2), align_corners=False)
    np.testing.assert_allclose(s.reshape(6, 4, 7, 8).numpy(), ref.numpy(), atol=1e-12)


def test_add_windows_places_values_and_has_the_adjoint_gradient():
    v = torch.zeros(1, 2, 1, 2, 3, dtype=torch.float64)
    v[0, 0, 0] = 1.0
    v[0, 1, 0] = 2.0
    y0, x0 = torch.tensor([[0, 1]]), torch.tensor([[0, 2]])
    out = add_windows(v, y0, x0, (4, 5))[0, 0]
    expected = torch.zeros(4, 5, dtype=torch.float64)
    expected[0:2, 0:3] += 1.0
    expected[1:3, 2:5] += 2.0
    assert torch.equal(out, expected)
    w = torch.rand(2, 4, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    y0 = torch.randint(0, 6, (2, 4), generator=torch.Generator().manual_seed(0))
    x0 = torch.randint(0, 5, (2, 4), generator=torch.Generator().manual_seed(1))
    assert torch.autograd.gradcheck(lambda t: add_windows(t, y0, x0, (9, 9)), (w,))


def test_model_renders_the_same_image_with_either_renderer():
    from spair.models.spair import Spair, SpairConfig, SpairNoise
    torch.manual_seed(0)
    m = Spair(SpairConfig(backbone_channels=16, n_backbone_features=12, n_passthrough_features=8,
                          lateral_hidden=(16,), encoder_hidden=(32,), decoder_hidden=(32,), A=6)).double()
    x = torch.rand(2, 3, 84, 72, dtype=torch.float64)
    noise = SpairNoise.sample(2, 42, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    a = m(x, -1.0, noise=noise)
    m.render_mode = "full"
    b = m(x, -1.0, noise=noise)
    torch.testing.assert_close(a.recon, b.recon, atol=1e-12, rtol=0)
    torch.testing.assert_close(a.losses.recon, b.losses.recon, atol=1e-9, rtol=0)
