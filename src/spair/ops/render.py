"""Sprite rendering ("inverse spatial transformer") and glimpse extraction.

Rendering follows the authors' `render_sprites` op (spec section 5.3). For output pixel p and sprite
i with normalized box (y_t, x_t, y_s, x_s) (top-left corner and size as fractions of the image), the
sprite-frame coordinates of p are

    u = s_w·((p_x + ½)/W − x_t)/x_s − ½,    v = s_h·((p_y + ½)/H − y_t)/y_s − ½            (R1)

Sprite i *covers* p iff −1 < u < s_w and −1 < v < s_h (the support of bilinear sampling). With
bilinear samples (zero padding) α_i(p) and w_i(p) of the sprite's alpha and importance maps, and a
colour c_i(p) that uses the background bg(p) for taps falling outside the sprite,

    val_i(p) = α_i(p)·c_i(p) + (1 − α_i(p))·bg(p)                                        (R2)
    out(p)   = Σ_{i covers p} w_i(p)·val_i(p) / Σ_{i covers p} w_i(p),  or bg(p) if none  (R3)

so the image is an importance-weighted average of "object over background" layers; a large
importance (depth) makes an object dominate where objects overlap. Because w ≥ 0.01 on every sprite
pixel and zero outside, Σ_i w_i(p) > 0 exactly where some sprite covers p, which lets (R3) be
written without an explicit mask:

    out(p) = bg(p) + Σ_i w_i α_i (S_i[rgb] − m_i·bg) / Σ_i w_i

where S_i[rgb] is the bilinear sample of the colour map and m_i(p) ∈ [0, 1] is the bilinear weight
that falls inside sprite i (computed in closed form below).

Two implementations of (R3):

- :func:`render` samples every sprite over the whole image with ``grid_sample``: cost O(N·H·W),
  quadratic in the image area for a fixed cell size. It is the reference.
- :func:`render_windowed` uses that a sprite covers at most size·(1 + 1/s) pixels per axis: each
  sprite is sampled only over its own pixel window and the window's numerator and denominator terms
  are added into the canvas, O(N·window), linear in the image area. Bilinear sampling of an
  axis-aligned box is separable, S = W_y · M · W_xᵀ with per-sprite (window × sprite) tap-weight
  matrices, so the sampling is two small batched matmuls (faster than ``grid_sample`` on the CPU,
  forward and backward). Same values as :func:`render` up to float rounding, gradients included
  (except at coordinates that fall exactly on a sprite pixel centre, a set of measure zero where the
  piecewise-linear interpolation has no derivative and the two pick different one-sided ones).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


def inside_mass(coord: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear weight that falls on sprite pixels along one axis, for sprite coordinate ``coord``
    (pixel centres at 0..size−1): 1 inside, linear ramps over (−1, 0) and (size − 1, size), 0 beyond."""
    return torch.minimum(coord + 1.0, size - coord).clamp(0.0, 1.0)


def sprite_grid(boxes: torch.Tensor, out_hw: tuple[int, int], y0: int = 0, x0: int = 0,
                win_hw: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized sampling grids (R1) of each sprite over output pixels.

    ``boxes``: (..., 4) normalized (y_t, x_t, y_s, x_s). Returns ``gy`` (..., h) and ``gx`` (..., w)
    in grid_sample's [−1, 1] convention (align_corners=False) for the pixel rows/cols
    ``y0 .. y0 + h − 1`` and ``x0 .. x0 + w − 1`` (``y0``/``x0`` may be tensors of shape (...) for
    per-sprite windows).
    """
    H, W = out_hw
    h, w = win_hw if win_hw is not None else out_hw
    yt, xt, ys, xs = boxes.unbind(-1)
    ry = torch.arange(h, dtype=boxes.dtype, device=boxes.device)
    rx = torch.arange(w, dtype=boxes.dtype, device=boxes.device)
    py = (torch.as_tensor(y0, dtype=boxes.dtype, device=boxes.device)[..., None] + ry + 0.5) / H
    px = (torch.as_tensor(x0, dtype=boxes.dtype, device=boxes.device)[..., None] + rx + 0.5) / W
    gy = 2.0 * (py - yt[..., None]) / ys[..., None] - 1.0
    gx = 2.0 * (px - xt[..., None]) / xs[..., None] - 1.0
    return gy, gx


def render(rgb: torch.Tensor, alpha: torch.Tensor, importance: torch.Tensor, boxes: torch.Tensor,
           background: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Composite N sprites per image onto the background, over the whole image (R1–R3).

    rgb (B, N, 3, sh, sw), alpha and importance (B, N, 1, sh, sw) in sprite space (alpha already
    gated by presence, importance already floored); boxes (B, N, 4) normalized (y_t, x_t, y_s, x_s);
    background broadcastable to (B, 3, H, W). Returns (B, 3, H, W). Cost O(B·N·H·W).
    """
    B, N, _, sh, sw = rgb.shape
    H, W = out_hw
    gy, gx = sprite_grid(boxes, out_hw)                                       # (B,N,H), (B,N,W)
    grid = torch.stack(torch.broadcast_tensors(gx[..., None, :, None], gy[..., :, None, None]), -1)
    grid = grid.reshape(B * N, H, W, 2)
    maps = torch.cat([rgb, alpha, importance], dim=2).reshape(B * N, 5, sh, sw)
    s = F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    s = s.reshape(B, N, 5, H, W)
    s_rgb, s_alpha, s_w = s[:, :, :3], s[:, :, 3:4], s[:, :, 4:5]
    # bilinear weight inside each sprite, separable: m = m_y(v) * m_x(u)
    v = (gy + 1.0) * (sh / 2.0) - 0.5
    u = (gx + 1.0) * (sw / 2.0) - 0.5
    m = inside_mass(v, sh)[..., :, None] * inside_mass(u, sw)[..., None, :]   # (B,N,H,W)
    bg = background.expand(B, 3, H, W)
    wa = s_w * s_alpha                                                        # (B,N,1,H,W)
    num = (wa * (s_rgb - m[:, :, None] * bg[:, None])).sum(1)                 # (B,3,H,W)
    den = s_w.sum(1)                                                          # (B,1,H,W)
    return bg + num / den.clamp(min=1e-12)


def extract_glimpses(images: torch.Tensor, boxes: torch.Tensor, glimpse_hw: tuple[int, int]) -> torch.Tensor:
    """Read a glimpse of size ``glimpse_hw`` from each box (spec section 3.4).

    images (B, C, H, W); boxes (B, n, 4) normalized (y_t, x_t, y_s, x_s). Bilinear sampling with
    clamped coordinates (edge pixels replicated) and the corner-aligned grid of the authors' sampler:
    glimpse pixel k samples x = (W − 1)·(left + size·k/(g − 1)). Returns (B, n, C, gh, gw).
    """
    B, C, H, W = images.shape
    n = boxes.shape[1]
    gh, gw = glimpse_hw
    yt, xt, ys, xs = boxes.unbind(-1)
    lin_y = torch.linspace(-1.0, 1.0, gh, dtype=images.dtype, device=images.device)
    lin_x = torch.linspace(-1.0, 1.0, gw, dtype=images.dtype, device=images.device)
    cy = 2.0 * (yt + ys / 2) - 1.0
    cx = 2.0 * (xt + xs / 2) - 1.0
    gy = cy[..., None] + ys[..., None] * lin_y                                # (B,n,gh)
    gx = cx[..., None] + xs[..., None] * lin_x                                # (B,n,gw)
    grid = torch.stack(torch.broadcast_tensors(gx[..., None, :], gy[..., :, None]), -1)  # (B,n,gh,gw,2)
    out = F.grid_sample(images, grid.reshape(B, n * gh, gw, 2), mode="bilinear",
                        padding_mode="border", align_corners=True)            # (B,C,n*gh,gw)
    return out.reshape(B, C, n, gh, gw).permute(0, 2, 1, 3, 4)


def window_origin(boxes: torch.Tensor, out_hw: tuple[int, int], sprite_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """First pixel row/column that a sprite can cover: the smallest p with v > −1 in (R1) is above
    y_t·H − y_s·H/(2 s_h) − ½. Returns integer tensors (...,) of that floor."""
    H, W = out_hw
    sh, sw = sprite_hw
    yt, xt, ys, xs = boxes.unbind(-1)
    y0 = torch.floor(yt * H - ys * H / (2 * sh) - 0.5).to(torch.long)
    x0 = torch.floor(xt * W - xs * W / (2 * sw) - 0.5).to(torch.long)
    return y0, x0


def window_size(max_size_px: tuple[float, float], sprite_hw: tuple[int, int]) -> tuple[int, int]:
    """Height/width of a pixel window that holds everything a sprite of at most ``max_size_px`` covers
    (its support spans size·(1 + 1/s) pixels; +2 for the floor of the origin and the open ends)."""
    return tuple(int(math.ceil(m * (1.0 + 1.0 / s))) + 2 for m, s in zip(max_size_px, sprite_hw))  # type: ignore[return-value]


def sample_windows(maps: torch.Tensor, boxes: torch.Tensor, out_hw: tuple[int, int],
                   win_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear samples of sprite maps over each sprite's own pixel window (cost O(N · window)).

    maps (B, N, C, sh, sw); boxes (B, N, 4). Returns ``samples`` (B, N, C, wh, ww), the inside mass
    ``m`` (B, N, wh, ww) and the window origins ``y0``, ``x0`` (B, N) in image pixels. Window pixels
    outside the image are included; callers mask them.
    """
    B, N, C, sh, sw = maps.shape
    wh, ww = win_hw
    y0, x0 = window_origin(boxes, out_hw, (sh, sw))
    gy, gx = sprite_grid(boxes, out_hw, y0, x0, win_hw)                       # (B,N,wh), (B,N,ww)
    grid = torch.stack(torch.broadcast_tensors(gx[..., None, :, None], gy[..., :, None, None]), -1)
    s = F.grid_sample(maps.reshape(B * N, C, sh, sw), grid.reshape(B * N, wh, ww, 2), mode="bilinear",
                      padding_mode="zeros", align_corners=False).reshape(B, N, C, wh, ww)
    v = (gy + 1.0) * (sh / 2.0) - 0.5
    u = (gx + 1.0) * (sw / 2.0) - 0.5
    m = inside_mass(v, sh)[..., :, None] * inside_mass(u, sw)[..., None, :]
    return s, m, y0, x0


def mask_extents(mask: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor,
                 out_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Extent of True pixels of per-sprite window masks (..., wh, ww) in image pixels.

    Pixels outside the image are ignored. Returns boxes (..., 4) as (x0, y0, x1, y1) with the
    continuous convention (pixel j spans [j, j+1)) and a bool (...,) telling whether any pixel was set.
    """
    H, W = out_hw
    wh, ww = mask.shape[-2:]
    rows = y0[..., None] + torch.arange(wh, device=mask.device)                # (..., wh)
    cols = x0[..., None] + torch.arange(ww, device=mask.device)
    mask = mask & ((rows >= 0) & (rows < H))[..., :, None] & ((cols >= 0) & (cols < W))[..., None, :]
    any_row = mask.any(-1)                                                    # (..., wh)
    any_col = mask.any(-2)                                                    # (..., ww)
    found = any_row.any(-1)
    big = torch.iinfo(torch.long).max
    r_first = torch.where(any_row, rows, big).amin(-1)
    r_last = torch.where(any_row, rows, -1).amax(-1)
    c_first = torch.where(any_col, cols, big).amin(-1)
    c_last = torch.where(any_col, cols, -1).amax(-1)
    boxes = torch.stack([c_first, r_first, c_last + 1, r_last + 1], -1).to(torch.float32)
    return torch.where(found[..., None], boxes, torch.zeros_like(boxes)), found


def component_labels(mask: torch.Tensor) -> torch.Tensor:
    """Labels of the 8-connected components of each map of ``mask`` (..., h, w) bool, as int64 of the
    same shape: 0 outside the mask, and inside it a positive id (at most h·w) shared by the pixels of
    one component and unique within the map.

    Each pixel starts with its own flat index + 1; 3×3 max pooling restricted to the mask spreads the
    largest one through its component until nothing changes. The work is done on the smallest
    rectangle that holds every map's mask.
    """
    labels = torch.zeros(mask.shape, dtype=torch.long, device=mask.device)
    if not bool(mask.any()):
        return labels
    h, w = mask.shape[-2:]
    flat = mask.reshape(-1, h, w)
    rows = torch.nonzero(flat.any(0).any(1)).flatten()
    cols = torch.nonzero(flat.any(0).any(0)).flatten()
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    crop = flat[:, r0:r1, c0:c1]
    ch, cw = crop.shape[-2:]
    on = crop[:, None].to(torch.float32)
    ids = torch.arange(1, ch * cw + 1, device=mask.device, dtype=torch.float32).reshape(1, 1, ch, cw)
    label = ids * on
    while True:
        grown = F.max_pool2d(label, 3, stride=1, padding=1) * on
        if torch.equal(grown, label):
            break
        label = grown
    labels.view(-1, h, w)[:, r0:r1, c0:c1] = label[:, 0].to(torch.long)
    return labels


def component_sums(labels: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` over each component of ``labels`` (from :func:`component_labels`), (M, h·w + 1)
    for the M = prod(leading dims) maps; column 0 (outside the mask) is 0."""
    h, w = labels.shape[-2:]
    flat = labels.reshape(-1, h * w)
    sums = torch.zeros(flat.shape[0], h * w + 1, dtype=values.dtype, device=values.device)
    sums.scatter_add_(1, flat, values.reshape(-1, h * w) * (flat > 0).to(values.dtype))
    sums[:, 0] = 0
    return sums


# --------------------------------------------------------------------------------------------
# Windowed rendering, O(N · window)


def tap_weights(coord: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear tap weights with zero padding: ``coord`` (..., n) in sprite-pixel units (pixel centres
    at 0..size−1) → (..., n, size) with entry k = max(0, 1 − |coord − k|). A row sums to
    :func:`inside_mass` of its coordinate."""
    k = torch.arange(size, dtype=coord.dtype, device=coord.device)
    return torch.relu(1.0 - (coord[..., None] - k).abs())


def sample_separable(maps: torch.Tensor, wy: torch.Tensor, wx: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of sprite maps at a separable grid: S = W_y · M · W_xᵀ per sprite and channel.

    maps (B, N, C, sh, sw); wy (B, N, h, sh) and wx (B, N, w, sw) from :func:`tap_weights`.
    Returns (B, N, C, h, w), equal to ``grid_sample`` (bilinear, zero padding) at the same grid.
    """
    B, N, C, sh, sw = maps.shape
    h, w = wy.shape[-2], wx.shape[-2]
    t = torch.matmul(maps.reshape(B * N, C * sh, sw), wx.reshape(B * N, w, sw).transpose(1, 2))  # (BN, C·sh, w)
    t = torch.matmul(wy.reshape(B * N, 1, h, sh), t.view(B * N, C, sh, w))                       # (BN, C, h, w)
    return t.view(B, N, C, h, w)


def largest_box_px(boxes: torch.Tensor, out_hw: tuple[int, int]) -> tuple[float, float] | None:
    """Height and width in pixels of the largest box of the batch, or None when a box is not finite
    (one device → host read)."""
    if boxes.numel() == 0:
        return (0.0, 0.0)
    size = boxes[..., 2:].detach().flatten(0, -2).amax(0) * boxes.new_tensor(out_hw)
    hs, ws = size.tolist()
    if not (math.isfinite(hs) and math.isfinite(ws)):
        return None
    return hs, ws


def render_window(out_hw: tuple[int, int], sprite_hw: tuple[int, int],
                  max_size_px: tuple[float, float] | None) -> tuple[int, int]:
    """Window (h, w) :func:`render_windowed` uses for sprites of at most ``max_size_px`` pixels
    (None: unknown, the whole image); never larger than the image."""
    H, W = out_hw
    if max_size_px is None:
        return H, W
    wh, ww = window_size(max_size_px, sprite_hw)
    return min(wh, H), min(ww, W)


def _window_index(y0: torch.Tensor, x0: torch.Tensor, channels: int, win_hw: tuple[int, int],
                  out_hw: tuple[int, int]) -> torch.Tensor:
    """Flat canvas index of every element of (B, N, C, wh, ww) window values, canvas (B, C, H, W).
    Windows must lie inside the image."""
    B = y0.shape[0]
    H, W = out_hw
    wh, ww = win_hw
    dtype = torch.int32 if B * channels * H * W < 2**31 else torch.int64
    dev = y0.device
    b = torch.arange(B, device=dev, dtype=dtype)[:, None] * (channels * H * W)
    base = (b + (y0 * W + x0).to(dtype))[:, :, None, None, None]                       # (B, N, 1, 1, 1)
    c = (torch.arange(channels, device=dev, dtype=dtype) * (H * W))[:, None, None]     # (C, 1, 1)
    r = (torch.arange(wh, device=dev, dtype=dtype) * W)[:, None]                       # (wh, 1)
    col = torch.arange(ww, device=dev, dtype=dtype)                                    # (ww,)
    return base + (c + (r + col))


class _AddWindows(torch.autograd.Function):
    """Sum per-sprite window values into a canvas: out[b, c, y0+y, x0+x] += v[b, n, c, y, x].

    The flat index is rebuilt in the backward pass rather than saved, so only the small origin
    tensors stay alive between the passes."""

    @staticmethod
    def forward(ctx: Any, values: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor,
                out_hw: tuple[int, int]) -> torch.Tensor:
        B, N, C, wh, ww = values.shape
        H, W = out_hw
        idx = _window_index(y0, x0, C, (wh, ww), out_hw)
        out = values.new_zeros(B * C * H * W)
        out.index_add_(0, idx.reshape(-1), values.reshape(-1))
        ctx.save_for_backward(y0, x0)
        ctx.shape, ctx.out_hw = values.shape, out_hw
        return out.view(B, C, H, W)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        y0, x0 = ctx.saved_tensors
        B, N, C, wh, ww = ctx.shape
        idx = _window_index(y0, x0, C, (wh, ww), ctx.out_hw)
        g = grad.contiguous().view(-1).index_select(0, idx.reshape(-1))
        return g.view(ctx.shape), None, None, None


def add_windows(values: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Canvas (B, C, H, W) holding the sum of every sprite's window ``values`` (B, N, C, wh, ww) placed
    at its origin (``y0``, ``x0``: (B, N) integers; each window must lie inside the image)."""
    return _AddWindows.apply(values, y0, x0, tuple(out_hw))


#: Sprite-window values per chunk of images in :func:`render_windowed` (elements of one 5-channel
#: tensor): 16 MB of float32, so every large temporary stays well below glibc's largest mmap
#: threshold (32 MB) and is reused from the heap instead of being page-faulted in at every step.
CHUNK_ELEMENTS = 1 << 22


def render_windowed(rgb: torch.Tensor, alpha: torch.Tensor, importance: torch.Tensor, boxes: torch.Tensor,
                    background: torch.Tensor, out_hw: tuple[int, int],
                    max_size_px: tuple[float, float] | None | str = "batch", *,
                    full_above: float = 0.75, chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """:func:`render` at a cost linear in the image area: each sprite only over its own window.

    Arguments as for :func:`render`. ``max_size_px``: an upper bound (h, w) in pixels on every box
    size, e.g. the anchor size; "batch" (default) takes the largest box of the batch (exact for any
    boxes, one device → host read); None renders every sprite over the whole image. Each window is
    moved inside the image (it still holds every image pixel its sprite covers), so no pixel is
    wasted outside the image. Windows covering more than ``full_above`` of the image area are
    replaced by the whole image, where a plain sum over the sprites is cheaper than adding windows
    into a canvas. Images are rendered in chunks of about ``chunk_elements`` window values. The
    result does not depend on these choices beyond float rounding.
    """
    B, N, _, sh, sw = rgb.shape
    H, W = out_hw
    if isinstance(max_size_px, str):
        if max_size_px != "batch":
            raise ValueError(f"max_size_px: expected a (h, w) pair, None or 'batch', got {max_size_px!r}")
        max_size_px = largest_box_px(boxes, out_hw)
    wh, ww = render_window(out_hw, (sh, sw), max_size_px)
    if wh * ww > full_above * H * W:
        wh, ww = H, W
    per_image = max(N * 5 * wh * ww, 1)
    chunk = max(1, chunk_elements // per_image)
    if chunk >= B:
        return _render_windows(rgb, alpha, importance, boxes, background, out_hw, (wh, ww))
    bg = background if background.shape[0] == B else background.expand(B, *background.shape[1:])
    parts = [_render_windows(*(t[i:i + chunk] for t in (rgb, alpha, importance, boxes, bg)), out_hw, (wh, ww))
             for i in range(0, B, chunk)]
    return torch.cat(parts, 0)


def render_terms(rgb: torch.Tensor, alpha: torch.Tensor, importance: torch.Tensor, boxes: torch.Tensor,
                 out_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three sums of (R3) over the sprites, each sprite over its own window: Σ w·α·S_rgb (B, 3, H, W),
    Σ w·α·m and Σ w (B, 1, H, W). The image is ``bg + (num − mass·bg) / den`` where den > 0; sums of
    disjoint sets of sprites add, so a part of a scene can be rendered once and reused. Arguments as
    for :func:`render`; ``out_hw`` may be any canvas whose pixel grid the boxes are normalized to."""
    B, N, _, sh, sw = rgb.shape
    wh, ww = render_window(out_hw, (sh, sw), largest_box_px(boxes, out_hw))
    return _window_terms(rgb, alpha, importance, boxes, out_hw, (wh, ww))


def _render_windows(rgb: torch.Tensor, alpha: torch.Tensor, importance: torch.Tensor, boxes: torch.Tensor,
                    background: torch.Tensor, out_hw: tuple[int, int], win_hw: tuple[int, int]) -> torch.Tensor:
    """(R3) with every sprite sampled over a ``win_hw`` window inside the image (the whole image
    when ``win_hw`` equals it)."""
    B, H, W = rgb.shape[0], *out_hw
    num, mass, den = _window_terms(rgb, alpha, importance, boxes, out_hw, win_hw)
    bg = background.expand(B, 3, H, W)
    return bg + (num - mass * bg) / den.clamp(min=1e-12)


def _window_terms(rgb: torch.Tensor, alpha: torch.Tensor, importance: torch.Tensor, boxes: torch.Tensor,
                  out_hw: tuple[int, int], win_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Σ w·α·S_rgb, Σ w·α·m and Σ w of (R3), every sprite sampled over a ``win_hw`` window inside the image."""
    terms, y0, x0 = sprite_window_terms(rgb, alpha, importance, boxes, out_hw, win_hw)
    if tuple(win_hw) == tuple(out_hw):
        return terms.sum(1).split((3, 1, 1), dim=1)                          # type: ignore[return-value]
    return add_windows(terms, y0, x0, out_hw).split((3, 1, 1), dim=1)        # type: ignore[return-value]


def sprite_window_terms(rgb: torch.Tensor, alpha: torch.Tensor, importance: torch.Tensor, boxes: torch.Tensor,
                        out_hw: tuple[int, int], win_hw: tuple[int, int] | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each sprite's own terms of (R3) over its own pixel window: w·α·S_rgb, w·α·m and w stacked as
    (B, N, 5, wh, ww), and the window origins ``y0``, ``x0`` (B, N). Every window lies inside the
    image and holds every image pixel its sprite covers; :func:`add_windows` of the terms gives
    :func:`render_terms`. ``win_hw`` defaults to the window of the batch's largest box."""
    B, N, _, sh, sw = rgb.shape
    H, W = out_hw
    if win_hw is None:
        win_hw = render_window(out_hw, (sh, sw), largest_box_px(boxes, out_hw))
    wh, ww = win_hw
    if (wh, ww) == (H, W):
        y0 = x0 = torch.zeros(B, N, dtype=torch.long, device=rgb.device)
    else:
        y0, x0 = window_origin(boxes, out_hw, (sh, sw))
        y0, x0 = y0.clamp(0, H - wh), x0.clamp(0, W - ww)
    gy, gx = sprite_grid(boxes, out_hw, y0, x0, (wh, ww))                     # (B,N,wh), (B,N,ww)
    v = (gy + 1.0) * (sh / 2.0) - 0.5                                         # sprite coordinates (R1)
    u = (gx + 1.0) * (sw / 2.0) - 0.5
    maps = torch.cat([rgb, alpha, importance], dim=2)                         # (B,N,5,sh,sw)
    s = sample_separable(maps, tap_weights(v, sh), tap_weights(u, sw))        # (B,N,5,wh,ww)
    s_rgb, s_alpha, s_w = s.split((3, 1, 1), dim=2)
    m = inside_mass(v, sh)[..., :, None] * inside_mass(u, sw)[..., None, :]   # (B,N,wh,ww)
    wa = s_w * s_alpha                                                        # (B,N,1,wh,ww)
    return torch.cat([wa * s_rgb, wa * m[:, :, None], s_w], 2), y0, x0       # w·α·S_rgb, w·α·m, w


def gather_windows(canvas: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, win_hw: tuple[int, int]) -> torch.Tensor:
    """The values of ``canvas`` (B, C, H, W) over every window at (``y0``, ``x0``) (B, N), as
    (B, N, C, wh, ww); the inverse read of :func:`add_windows` (windows must lie inside the image)."""
    B, C, H, W = canvas.shape
    idx = _window_index(y0, x0, C, win_hw, (H, W))
    return canvas.reshape(-1).index_select(0, idx.reshape(-1).long()).view(idx.shape)
