"""The renderer against a slow, literal reference of spec section 5.3; glimpses against a hand
computation; the windowed sampler against the full-image one."""

import math

import numpy as np
import pytest
import torch

from spair.ops.render import (extract_glimpses, mask_extents, render, sample_windows, window_size)


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
