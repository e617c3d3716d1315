"""Test-time refinement of the latents of the reported objects (iterative inference).

The encoder is amortized: one forward pass maps an image to q(z|x), and its means are good but not
the best latents for *this* image (the amortization gap). The decoded sprites come out blurry at
the edges, and a box edge decided by blurry sprites is often a pixel off, which at IoU 0.9 is a
miss. Refinement keeps the set of reported objects fixed and improves their latents by a few steps
of gradient ascent on

    log p(x | z)  +  log N(z_what; 0, I)  +  log N(box; box_enc, σ_box² I)  (+ a free depth scale)

with the model's own decoder and renderer (paper eq. 1's likelihood, the z_what prior of paper 4.1),
starting from the encoder's means. The box term keeps each box near the encoder's estimate
(``box_std_px`` pixels per coordinate) so an object cannot wander off to another digit; the
importance (depth) of each object gets a multiplicative factor exp(d) so that overlapping objects
can settle which one is in front. Only the reported objects are rendered, each exactly as in
:func:`spair.ops.render.render_windowed`. The network's weights do not change.

Adam's update is elementwise, so an image's refined latents do not depend on the other images of
its batch (up to float rounding of the batch's shared rendering window). Chosen on validation
scenes (docs/cpu-recipe.md, "Refinement"): 20 steps at lr 0.1, σ_box = 2 px, prior weight 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch

from ..ops.render import render_windowed
from .spair import Spair, SpairOutput

REFINE_STEPS = 20
REFINE_LR = 0.1
REFINE_BOX_STD_PX = 2.0
REFINE_WHAT_PRIOR = 1.0


@contextlib.contextmanager
def _frozen(model: torch.nn.Module) -> Iterator[None]:
    """The model's parameters without gradients for the duration (restored afterwards)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _take(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """t (B, N, ...) at index (B, K) along dim 1 → (B, K, ...)."""
    shape = index.shape + t.shape[2:]
    return t.gather(1, index.reshape(*index.shape, *([1] * (t.dim() - 2))).expand(shape))


def _put(t: torch.Tensor, index: torch.Tensor, values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """A copy of t (B, N, ...) with values (B, K, ...) written at index (B, K) where valid (B, K)."""
    old = _take(t, index)
    mask = valid.reshape(*valid.shape, *([1] * (t.dim() - 2)))
    new = torch.where(mask, values.to(t.dtype), old)
    return t.clone().scatter(1, index.reshape(*index.shape, *([1] * (t.dim() - 2))).expand(new.shape), new)


def _first(mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (B, k) of the True entries of ``mask`` (B, N) first, in order, then padding; and
    whether each index is a True entry (B, k)."""
    index = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :k]
    return index, mask.gather(1, index)


def _sprite_layers(model: Spair, z_what: torch.Tensor, depth: torch.Tensor, gate: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the renderer draws for objects ``z_what`` (B, K, A) with depths (B, K, 1), each drawn where
    ``gate`` (B, K, 1, 1, 1) is 1: RGB, alpha and importance maps, as in :meth:`Spair.decode`."""
    rgb, alpha = model.decode_sprites(z_what)
    gated = alpha * gate
    importance = (gated * depth[..., None, None]).clamp(min=model.cfg.importance_floor)
    return rgb, gated, importance * gate


def refine_latents(model: Spair, out: SpairOutput, x: torch.Tensor, present: torch.Tensor,
                   steps: int = REFINE_STEPS, lr: float = REFINE_LR, box_std_px: float = REFINE_BOX_STD_PX,
                   what_prior: float = REFINE_WHAT_PRIOR) -> SpairOutput:
    """A copy of ``out`` whose present objects (``present`` (B, N) bool) have refined z_what, boxes
    and z_depth (see the module docstring); the other cells are unchanged. ``out.background`` must be
    set (:func:`spair.models.spair_detector.run_model` does). The detector caches of the copy
    (sprites, visible ink) are cleared. ``steps`` = 0 returns ``out`` itself."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if steps == 0 or not bool(present.any()):
        return out
    if out.background is None:
        raise ValueError("refinement needs the background colour (out.background)")
    B, N = present.shape
    H, W = out.image_hw
    K = int(present.sum(1).max())
    # the present cells of each image first, in raster order; the rest of the K slots are padding
    index, valid = _first(present, K)
    what0 = _take(out.z_what, index).detach().float()
    boxes0 = _take(out.boxes, index).detach().float()
    depth0 = _take(out.z_depth, index).detach().float()
    scale = boxes0.new_tensor([H, W, H, W])
    min_size = boxes0.new_tensor([0.0, 0.0, 1.0 / H, 1.0 / W])
    gate = valid.to(x.dtype)[..., None, None, None]
    weight = valid.to(x.dtype)
    bg, target = out.background.detach().float(), x.detach().float()

    z_what = what0.clone().requires_grad_(True)
    delta = torch.zeros_like(boxes0, requires_grad=True)          # box change in pixels (y, x, h, w)
    log_depth = torch.zeros_like(depth0, requires_grad=True)      # depth × exp(log_depth)
    opt = torch.optim.Adam([z_what, delta, log_depth], lr=lr)

    def boxes_now() -> torch.Tensor:
        b = boxes0 + delta / scale
        return torch.cat([b[..., :2], torch.maximum(b[..., 2:], min_size[2:])], -1)

    with torch.enable_grad(), _frozen(model):
        for _ in range(steps):
            rgb, alpha, importance = _sprite_layers(model, z_what, depth0 * log_depth.exp(), gate)
            recon = render_windowed(rgb, alpha, importance, boxes_now(), bg, (H, W))
            recon = recon.clamp(1e-6, 1 - 1e-6)
            nll = -(target * recon.log() + (1 - target) * (1 - recon).log()).sum()
            prior = 0.5 * what_prior * (z_what.square().sum(-1) * weight).sum() \
                + 0.5 * ((delta / box_std_px).square().sum(-1) * weight).sum()
            opt.zero_grad(set_to_none=True)
            (nll + prior).backward()
            opt.step()

    with torch.no_grad():
        return dataclasses.replace(
            out,
            z_what=_put(out.z_what, index, z_what.detach(), valid),
            boxes=_put(out.boxes, index, boxes_now(), valid),
            z_depth=_put(out.z_depth, index, depth0 * log_depth.exp(), valid),
            sprites_rgb=None, sprites_alpha=None, recon=None, visible_ink=None)
