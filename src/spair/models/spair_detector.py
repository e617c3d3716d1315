"""SPAIR as a detector: latents → boxes with scores, for evaluation and ``spair detect``.

Three box definitions are offered (``box_mode``):

- ``"window"``: the sprite window given by z_where (what the authors' code evaluates).
- ``"ink"``: the extent of the object's *visible ink*, the pixels where the object, drawn alone over
  the background, changes the image by more than ``ink_threshold``:
  α_i(p) · max_c |S_i[rgb](p) − m_i(p)·bg_c| > ink_threshold, with the notation of
  ``spair.ops.render``, computed at image resolution in a local window around each object (cost
  O(objects · window)). An object whose sprite has no visible pixel falls back to its window box.
- ``"segment"`` (default): the extent of the input's own ink pixels the object explains, and of
  the small parts of ink no object explains that touch them or lie near them and near no other
  object's (:func:`segment_boxes_px`), the same
  definition as the ground truth (the extent of each digit's ink) and as sharp as the image where
  the decoded sprite is blurry; it falls back to the ink box, then to the window box.

Scores are the presence probabilities sigmoid(α). With ``sample="mean"`` (deterministic inference:
Gaussian means, z_pres = 1[α > 0]) the cells with probability ≥ ``min_score`` are reported, less the
duplicates (:func:`duplicate_objects`), plus the less probable cells (≥ ``explain_min_score``) that
explain input ink no reported object explains (:func:`unexplained_objects`); with ``sample="hard"``
(the paper's stochastic evaluation) the cells whose Bernoulli sample is 1. With ``refine_steps`` > 0
(deterministic inference only) the reported objects' latents are first refined on the image
(:mod:`spair.models.refine`), an object that two objects explain better is split in two and an
object that does not pay for itself is removed (:mod:`spair.models.split`), and the boxes come from
the refined sprites. :class:`SpairDetector` (``spair detect``, ``spair eval``) runs all this on the image at
``grid_shifts`` offsets of the cell grid and keeps the objects most views agree on (:mod:`spair.models.shifts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..ops.render import component_labels, component_sums, mask_extents, sample_windows, window_size
from .detector import Detections, register_detector
from .refine import REFINE_STEPS, refine_latents
from .shifts import GRID_SHIFTS, check_grid_shifts, detect_on_shifted_grids, most_frequent_colours
from .split import SPLIT_MIN_GAIN, image_objective, remove_objects, split_objects
from .spair import SampleMode, Spair, SpairOutput

BoxMode = Literal["window", "ink", "segment"]
INK_THRESHOLD = 0.1
CLAIM_THRESHOLD = 0.05
"""Visible ink above which an object claims a pixel when duplicates are looked for."""
SEGMENT_CLAIM_THRESHOLD = 0.01
"""Visible ink above which an object may claim a pixel for its segment box (tuned on validation scenes,
docs/cpu-recipe.md: the decoded sprites are blurry, so a digit's faint edge pixels get little ink)."""
SHARE_THRESHOLD = 0.3
"""Visible ink above which an object claims a pixel even where another object has more (overlaps);
0.5 until 2026-12-05, chosen again on validation scenes with refinement and split moves on
(docs/cpu-recipe.md)."""
SEGMENT_MIN_PART = 0.5
"""A part of an object's segment that does not touch its main part, and that other objects claim too,
is kept only when it holds at least this fraction of the main part's visible ink (chosen on validation
scenes, docs/cpu-recipe.md): a blurry sprite next to a thin digit otherwise claims the edge of the
neighbouring digit across the gap."""
DEDUP_IOU = 0.5
EXPLAIN_MIN_SCORE = 0.05
"""Objects below the presence threshold but at least this probable are reported when they explain
``EXPLAIN_MIN_PIXELS`` input pixels that no reported object explains (:func:`unexplained_objects`)."""
EXPLAIN_MIN_PIXELS = 10
SEGMENT_ATTACH_RADIUS = 1
"""Input ink that no object claims, in a part of fewer than ``EXPLAIN_MIN_PIXELS`` pixels, joins the
segments within this many pixels of it (1: the segments it touches; chosen on validation scenes,
docs/cpu-recipe.md)."""
SEGMENT_EXCLUSIVE_RADIUS = 3
"""Free ink still left after that, in a part of fewer than ``EXPLAIN_MIN_PIXELS`` pixels, joins the one
segment within this many pixels of it when no other segment comes that close (chosen on validation
scenes, docs/cpu-recipe.md)."""
EXPLAIN_CLAIM_THRESHOLD = 0.1
"""Visible ink above which an object explains a pixel, for :func:`unexplained_objects`."""


def window_boxes_px(out: SpairOutput) -> torch.Tensor:
    """Sprite windows as pixel boxes (B, N, 4) (x0, y0, x1, y1), clipped to the image."""
    H, W = out.image_hw
    yt, xt, ys, xs = out.boxes.unbind(-1)
    b = torch.stack([xt * W, yt * H, (xt + xs) * W, (yt + ys) * H], -1)
    lim = torch.tensor([W, H, W, H], dtype=b.dtype, device=b.device)
    return torch.minimum(b.clamp(min=0), lim)


def visible_ink_windows(model: Spair, out: SpairOutput) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each object's visible ink over its own pixel window: v_i(p) = α_i(p)·max_c |S_i[rgb](p) − m_i(p)·bg_c|,
    the change it makes to the image when drawn alone (B, N, wh, ww), and the window origins y0, x0.

    Computed once per output and kept in ``out.visible_ink``: duplicate removal, the unexplained-ink
    completion and the box rules all read it (set it to None after changing the output's latents)."""
    if out.visible_ink is not None:
        return out.visible_ink
    if out.sprites_rgb is None:
        out.sprites_rgb, out.sprites_alpha = model.decode_sprites(out.z_what)
    bg = out.background
    if bg is None:
        raise ValueError("ink boxes need the background colour (run the model with render_image=True "
                         "or set out.background)")
    cfg = model.cfg
    sh, sw = cfg.object_shape
    maps = torch.cat([out.sprites_rgb, out.sprites_alpha], 2)                  # (B, N, 4, sh, sw)
    win = window_size((cfg.max_hw * cfg.anchor[0], cfg.max_hw * cfg.anchor[1]), (sh, sw))
    s, m, y0, x0 = sample_windows(maps, out.boxes, out.image_hw, win)
    bgc = bg.reshape(bg.shape[0], 1, 3, 1, 1)
    diff = (s[:, :, :3] - m[:, :, None] * bgc).abs().amax(2)                   # (B, N, wh, ww)
    out.visible_ink = (s[:, :, 3] * diff, y0, x0)
    return out.visible_ink


def _window_pixels(y0: torch.Tensor, x0: torch.Tensor, win: tuple[int, int], hw: tuple[int, int]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat image index (B, N, wh, ww) of every window pixel (clamped) and whether it is inside the image."""
    H, W = hw
    rows = y0[..., None] + torch.arange(win[0], device=y0.device)             # (B, N, wh)
    cols = x0[..., None] + torch.arange(win[1], device=x0.device)             # (B, N, ww)
    inside = ((rows >= 0) & (rows < H))[..., :, None] & ((cols >= 0) & (cols < W))[..., None, :]
    flat = rows.clamp(0, H - 1)[..., :, None] * W + cols.clamp(0, W - 1)[..., None, :]
    return flat, inside


@torch.no_grad()
def ink_boxes_px(model: Spair, out: SpairOutput, ink_threshold: float = INK_THRESHOLD) -> tuple[torch.Tensor, torch.Tensor]:
    """Extent of each object's own visible ink (B, N, 4), and a bool (B, N): whether it has any."""
    v, y0, x0 = visible_ink_windows(model, out)
    return mask_extents(v > ink_threshold, y0, x0, out.image_hw)


def _image_ink(x: torch.Tensor, out: SpairOutput) -> torch.Tensor:
    """The input's own ink max_c |x − bg| at every image pixel, (B, H·W)."""
    return (x - out.background).abs().amax(1).reshape(x.shape[0], -1)


def _input_ink(x: torch.Tensor, out: SpairOutput, idx: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The input's own ink max_c |x − bg| at every window pixel."""
    return _image_ink(x, out).gather(1, idx).reshape(shape)


def explained_pixels(model: Spair, out: SpairOutput, x: torch.Tensor, ink_threshold: float, claim_threshold: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The input pixels each object explains, over its window (B, N, wh, ww bool): the input differs
    there from the background by more than ``ink_threshold`` and the object's visible ink exceeds
    ``claim_threshold``; and the flat image index of every window pixel (B, N, wh, ww)."""
    v, y0, x0 = visible_ink_windows(model, out)
    B = v.shape[0]
    flat, inside = _window_pixels(y0, x0, v.shape[-2:], out.image_hw)
    own = inside & (_input_ink(x, out, flat.reshape(B, -1), v.shape) > ink_threshold) & (v > claim_threshold)
    return own, flat


@torch.no_grad()
def duplicate_objects(model: Spair, out: SpairOutput, x: torch.Tensor, present: torch.Tensor, max_iou: float,
                      ink_threshold: float = INK_THRESHOLD, claim_threshold: float = CLAIM_THRESHOLD) -> torch.Tensor:
    """Present objects that explain the same image pixels as a more probable one (B, N bool).

    The pixels an object explains are the foreground pixels of the input (ink > ``ink_threshold``)
    where its own visible ink exceeds ``claim_threshold``. Going through the present objects by
    decreasing presence probability, an object whose pixel set overlaps one already kept with
    intersection-over-union above ``max_iou`` is a duplicate: two cells that both drew the same digit.
    (The renderer averages overlapping sprites, so a duplicate leaves the reconstruction unchanged and
    training removes it only slowly.)
    """
    own, flat = explained_pixels(model, out, x, ink_threshold, claim_threshold)
    B, N = own.shape[:2]
    H, W = out.image_hw
    own = own & present[..., None, None]
    canvas = torch.zeros(B * N, H * W, dtype=torch.float32, device=own.device).scatter_reduce(
        1, flat.reshape(B * N, -1), own.reshape(B * N, -1).float(), reduce="amax", include_self=True)
    canvas = canvas.reshape(B, N, H * W)
    inter = canvas @ canvas.transpose(1, 2)                                    # (B, N, N)
    area = inter.diagonal(dim1=1, dim2=2)
    iou = inter / (area[:, :, None] + area[:, None, :] - inter).clamp(min=1.0)
    prob = out.pres_prob.squeeze(-1)
    dup = torch.zeros_like(present)
    for b in range(B):
        kept: list[int] = []
        for i in torch.argsort(prob[b], descending=True).tolist():
            if not present[b, i]:
                continue
            if any(iou[b, i, j] > max_iou for j in kept):
                dup[b, i] = True
            else:
                kept.append(i)
    return dup


@torch.no_grad()
def unexplained_objects(model: Spair, out: SpairOutput, x: torch.Tensor, present: torch.Tensor, min_score: float,
                        min_pixels: int = EXPLAIN_MIN_PIXELS, ink_threshold: float = INK_THRESHOLD,
                        claim_threshold: float = EXPLAIN_CLAIM_THRESHOLD) -> torch.Tensor:
    """Absent objects that explain ink no present object explains (B, N bool): the ones to add.

    An object explains pixel p when the input differs there from the background by more than
    ``ink_threshold`` and the object's visible ink exceeds ``claim_threshold``. Going through the absent
    objects whose presence probability is at least ``min_score`` by decreasing probability, one that
    explains at least ``min_pixels`` pixels not yet explained is added (and its pixels count as explained).
    A digit the model splits between two cells, each below the presence threshold, or half-covers with
    a weak cell, is otherwise missed although the model's own sprites account for it.
    Cost: O(objects · window); the loop runs only over the candidates.
    """
    prob = out.pres_prob.squeeze(-1)
    cand = ~present & (prob >= min_score)
    add = torch.zeros_like(present)
    if not bool(cand.any()):
        return add
    own, flat = explained_pixels(model, out, x, ink_threshold, claim_threshold)
    B, N = own.shape[:2]
    H, W = out.image_hw
    explained = torch.zeros(B, H * W, dtype=torch.float32, device=own.device).scatter_reduce(
        1, flat.reshape(B, -1), (own & present[..., None, None]).reshape(B, -1).float(), reduce="amax",
        include_self=True) > 0
    flat, own = flat.reshape(B, N, -1), own.reshape(B, N, -1)
    order = torch.argsort(torch.where(cand, prob, torch.full_like(prob, -1.0)), dim=1, descending=True, stable=True)
    for b in range(B):
        for j in order[b, :int(cand[b].sum())].tolist():
            pix = flat[b, j][own[b, j]]
            if int((~explained[b, pix]).sum()) >= min_pixels:
                add[b, j] = True
                explained[b, pix] = True
    return add


@torch.no_grad()
def segment_boxes_px(model: Spair, out: SpairOutput, x: torch.Tensor, present: torch.Tensor,
                     ink_threshold: float = INK_THRESHOLD, claim_threshold: float = SEGMENT_CLAIM_THRESHOLD,
                     share_threshold: float = SHARE_THRESHOLD, min_part: float | None = SEGMENT_MIN_PART,
                     attach_radius: int | None = SEGMENT_ATTACH_RADIUS,
                     exclusive_radius: int | None = SEGMENT_EXCLUSIVE_RADIUS) -> tuple[torch.Tensor, torch.Tensor]:
    """Extent of the image pixels each present object explains (its segment), (B, N, 4) and (B, N).

    A pixel p belongs to object i when the input differs there from the background by more than
    ``ink_threshold`` (max over channels), object i's visible ink v_i(p) exceeds ``claim_threshold``,
    and either no other present object has more visible ink at p or v_i(p) exceeds ``share_threshold``
    (where two digits overlap, the pixel belongs to both, as in their ground-truth boxes). Of these
    pixels, an 8-connected part holding less than ``min_part`` times the visible ink of the object's
    heaviest part, most of whose pixels another present object claims too (visible ink above
    ``claim_threshold``), is dropped (None keeps every part): the edge of a neighbouring digit that a
    blurry sprite reaches across a gap is not the object's, while a digit drawn in separate strokes
    keeps them all. Last, input ink that no object claims joins the segments nearby
    (:func:`_attach_free_ink`; ``attach_radius`` None: it stays out): a stroke or speck of a digit that
    its blurry sprite does not reach is still in the digit's ground-truth box; then the free ink within
    ``exclusive_radius`` pixels of exactly one segment joins that one (None: no such pass), while ink
    as near to two segments stays out. The extent then comes from the input's own pixels, so it is as
    sharp as the image even where the decoded sprite is blurry.
    """
    for name, radius in (("attach_radius", attach_radius), ("exclusive_radius", exclusive_radius)):
        if radius is not None and radius < 0:
            raise ValueError(f"{name} must be ≥ 0 or None, got {radius}")
    v, y0, x0 = visible_ink_windows(model, out)
    v = v * present[..., None, None].to(v.dtype)
    B, N, wh, ww = v.shape
    H, W = out.image_hw
    flat, inside = _window_pixels(y0, x0, (wh, ww), (H, W))
    idx = flat.reshape(B, -1)
    claims = torch.where(inside, v, torch.zeros_like(v)).reshape(B, -1)
    strongest = torch.zeros(B, H * W, dtype=v.dtype, device=v.device).scatter_reduce(
        1, idx, claims, reduce="amax", include_self=True)
    best = strongest.gather(1, idx).reshape(B, N, wh, ww)
    image_ink = _image_ink(x, out)                                             # (B, H·W)
    ink = image_ink.gather(1, idx).reshape(v.shape)
    claimed = inside & (v > claim_threshold)
    mask = claimed & (ink > ink_threshold) & ((v >= best) | (v > share_threshold))
    if min_part is not None and bool(present.any()):
        n_claims = torch.zeros(B, H * W, dtype=v.dtype, device=v.device).scatter_add(
            1, idx, claimed.reshape(B, -1).to(v.dtype)).gather(1, idx).reshape(B, N, wh, ww)
        contested = n_claims > 1
        some = (mask & contested).flatten(2).any(-1)          # only these objects can lose a part
        if bool(some.any()):
            mask[some] = _drop_minor_contested_parts(mask[some], v[some], contested[some], min_part)
    for radius, exclusive in ((attach_radius, False), (exclusive_radius, True)):
        if radius is not None and bool(present.any()):
            mask = _attach_free_ink(mask, idx, inside, image_ink > ink_threshold, (H, W), radius, exclusive=exclusive)
    return mask_extents(mask, y0, x0, (H, W))


def _attach_free_ink(mask: torch.Tensor, idx: torch.Tensor, inside: torch.Tensor, fg: torch.Tensor,
                     hw: tuple[int, int], radius: int, max_pixels: int = EXPLAIN_MIN_PIXELS,
                     exclusive: bool = False) -> torch.Tensor:
    """``mask`` (B, N, wh, ww; window pixels at flat image index ``idx``, (B, N·wh·ww)) plus the free ink
    near each segment: an 8-connected part of the input's ink ``fg`` (B, H·W bool) that no segment
    holds, with fewer than ``max_pixels`` pixels (a part that large is an object of its own, which
    :func:`unexplained_objects` would have added), joins every segment it comes within ``radius``
    pixels of (Chebyshev distance: 1 means the parts that touch the segment, 0 none); with
    ``exclusive``, only a part within ``radius`` pixels of exactly one segment joins it."""
    B, N, wh, ww = mask.shape
    HW = hw[0] * hw[1]
    bi, ni = mask.flatten(2).any(-1).nonzero(as_tuple=True)                  # the K non-empty segments
    if len(bi) == 0:
        return mask
    at = bi[:, None] * HW + idx.reshape(B, N, -1)[bi, ni]                    # (K, wh·ww) into B·H·W
    ins = inside.reshape(B, N, -1)[bi, ni]
    seg = mask.reshape(B, N, -1)[bi, ni] & ins
    held = torch.zeros(B * HW, dtype=torch.bool, device=mask.device)
    held[at[seg]] = True
    free = (fg.reshape(-1) & ~held).reshape(B, *hw)
    if not bool(free.any()):
        return mask
    labels = component_labels(free)                                           # (B, H, W)
    small = component_sums(labels, torch.ones(free.shape, device=mask.device)) < max_pixels    # (B, H·W + 1)
    labels = labels.reshape(B, -1)
    labels = torch.where(small.gather(1, labels), labels, 0).reshape(-1)      # the small parts only
    lab = labels[at] * ins                                                     # (K, wh·ww)
    rows = (lab > 0).any(-1).nonzero(as_tuple=True)[0]                         # segments with free ink around
    if len(rows) == 0:
        return mask
    lab = lab[rows]
    near = torch.nn.functional.max_pool2d(seg[rows].reshape(-1, 1, wh, ww).to(torch.float32), 2 * radius + 1,
                                          stride=1, padding=radius).reshape(len(rows), -1) > 0
    # a free part joins segment k when one of its pixels is near it: key (k, label)
    key = torch.arange(len(rows), device=mask.device)[:, None] * (HW + 1) + lab
    hits = torch.unique(key[near & (lab > 0)])
    if exclusive:
        # the same part seen from two segments of its image: (image, label) ids of each hit
        part = bi[rows][hits // (HW + 1)] * (HW + 1) + hits % (HW + 1)
        ids, counts = torch.unique(part, return_counts=True)
        hits = hits[torch.isin(part, ids[counts == 1])]
    joins = torch.isin(key, hits) & (lab > 0)
    mask = mask.clone()
    mask[bi[rows], ni[rows]] |= joins.reshape(-1, wh, ww)
    return mask


def _drop_minor_contested_parts(mask: torch.Tensor, v: torch.Tensor, contested: torch.Tensor,
                                min_part: float) -> torch.Tensor:
    """``mask`` (P, wh, ww) less its parts that hold under ``min_part`` times the visible ink ``v`` of
    the heaviest part and whose pixels are mostly ``contested`` (claimed by another object too)."""
    labels = component_labels(mask)
    ink = component_sums(labels, v)
    minor = ink < min_part * ink.amax(1, keepdim=True)
    mostly_contested = 2 * component_sums(labels, contested.to(v.dtype)) > component_sums(labels, mask.to(v.dtype))
    drop = minor & mostly_contested
    drop[:, 0] = False
    return mask & ~drop.gather(1, labels.reshape(labels.shape[0], -1)).reshape(mask.shape)


@torch.no_grad()
def reported_objects(model: Spair, out: SpairOutput, min_score: float = 0.5, ink_threshold: float = INK_THRESHOLD,
                     use_samples: bool = False, x: torch.Tensor | None = None, dedup_iou: float | None = DEDUP_IOU,
                     explain_min_score: float | None = EXPLAIN_MIN_SCORE,
                     refine_steps: int = 0, split_min_gain: float | None = SPLIT_MIN_GAIN
                     ) -> tuple[SpairOutput, torch.Tensor]:
    """The objects a forward pass reports, (B, N + E) bool, and the output their boxes are read from
    (``out`` itself, or its copy with refined latents and E ≥ 0 slots for split objects). See
    :func:`detections_from_output`."""
    prob = out.pres_prob.squeeze(-1)                                          # (B, N)
    keep = out.z_pres.squeeze(-1) > 0.5 if use_samples else prob >= min_score
    if dedup_iou is not None and x is not None:
        keep = keep & ~duplicate_objects(model, out, x, keep, dedup_iou, ink_threshold)
    if explain_min_score is not None and explain_min_score < min_score and x is not None and not use_samples:
        keep = keep | unexplained_objects(model, out, x, keep, explain_min_score, ink_threshold=ink_threshold)
    if refine_steps and x is not None and not use_samples:
        out = refine_latents(model, out, x, keep, refine_steps)
        if split_min_gain is not None:
            # the pixels each object's sprite explains, without the free ink that joins segments
            seg, found = segment_boxes_px(model, out, x, keep, ink_threshold, attach_radius=None,
                                          exclusive_radius=None)
            extents = torch.where(found[..., None], seg.to(out.boxes.dtype), window_boxes_px(out))
            out, keep = split_objects(model, out, x, keep, extents, split_min_gain, refine_steps)
            keep = remove_objects(model, out, x, keep, split_min_gain)
            out = refine_latents(model, out, x, keep, max(1, refine_steps // 2))   # all objects together again
    return out, keep


@torch.no_grad()
def object_detections(model: Spair, out: SpairOutput, keep: torch.Tensor, box_mode: BoxMode = "segment",
                      ink_threshold: float = INK_THRESHOLD, x: torch.Tensor | None = None) -> list[Detections]:
    """Per-image detections of the objects ``keep`` (B, N) with boxes of ``box_mode``."""
    boxes = window_boxes_px(out)
    if box_mode in ("ink", "segment"):
        ink, found = ink_boxes_px(model, out, ink_threshold)
        boxes = torch.where(found[..., None], ink.to(boxes.dtype), boxes)
        if box_mode == "segment":
            if x is None:
                raise ValueError("box_mode 'segment' needs the input images")
            seg, found = segment_boxes_px(model, out, x, keep, ink_threshold)
            boxes = torch.where(found[..., None], seg.to(boxes.dtype), boxes)
    elif box_mode != "window":
        raise ConfigError(f"unknown box mode '{box_mode}' (use 'segment', 'ink' or 'window')")
    prob = out.pres_prob.squeeze(-1)
    boxes_np, prob_np, keep_np = boxes.cpu().numpy(), prob.cpu().numpy(), keep.cpu().numpy()
    return [Detections(boxes_np[b][keep_np[b]], prob_np[b][keep_np[b]]) for b in range(len(boxes_np))]


@torch.no_grad()
def detections_from_output(model: Spair, out: SpairOutput, box_mode: BoxMode = "segment",
                           min_score: float = 0.5, ink_threshold: float = INK_THRESHOLD,
                           use_samples: bool = False, x: torch.Tensor | None = None,
                           dedup_iou: float | None = DEDUP_IOU,
                           explain_min_score: float | None = EXPLAIN_MIN_SCORE,
                           refine_steps: int = 0, split_min_gain: float | None = SPLIT_MIN_GAIN,
                           objective_region: tuple[int, int, int, int] | None = None) -> list[Detections]:
    """Turn a forward pass into per-image detections (see the module docstring); ``x`` is the
    input batch, needed by ``box_mode="segment"``, by ``dedup_iou`` (None: keep duplicates), by
    ``explain_min_score`` (None: report only objects with probability ≥ ``min_score``; with
    ``use_samples`` it is not applied) and by ``refine_steps`` (not applied with ``use_samples``).
    With refinement, ``split_min_gain`` (None: off) turns on the moves of :mod:`spair.models.split`:
    an object that two objects explain better by more than that many nats becomes two, then an object
    that lowers the objective by no more than that many nats is removed; after them all reported
    objects are refined together for ``refine_steps // 2`` more steps.
    :func:`reported_objects` then :func:`object_detections`; call those two to read several box modes
    from one selection and refinement. With ``objective_region`` = (top, left, height, width) and
    ``x``, each image's detections carry the objective J of its objects over those pixels
    (:func:`spair.models.split.image_objective`), by which views of one image on shifted grids compare."""
    out, keep = reported_objects(model, out, min_score, ink_threshold, use_samples, x, dedup_iou, explain_min_score,
                                 refine_steps, split_min_gain)
    dets = object_detections(model, out, keep, box_mode, ink_threshold, x)
    if objective_region is not None and x is not None:
        for d, j in zip(dets, image_objective(model, out, x, keep, region=objective_region).tolist()):
            d.objective = j
    return dets


@torch.no_grad()
def run_model(model: Spair, x: torch.Tensor, sample: SampleMode = "mean", generator: torch.Generator | None = None,
              background: torch.Tensor | None = None) -> SpairOutput:
    """Inference without rendering the whole image; the background colour is still computed."""
    from .spair import SpairNoise

    B, _, H, W = x.shape
    gh, gw = model.grid_shape(H, W)
    noise = SpairNoise.sample(B, gh * gw, model.cfg.A, x.device, generator, x.dtype)
    out = model(x, sample=sample, noise=noise, render_image=False, background=background)
    out.background = model.background_colour(x, noise, sample, background)
    return out


def to_tensor(images: Sequence[np.ndarray] | np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 (B, H, W, 3) → float (B, 3, H, W) in [0, 1]."""
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise DataError(f"expected uint8 images of shape (B, H, W, 3), got {arr.dtype} {arr.shape}")
    return torch.from_numpy(arr).to(device).permute(0, 3, 1, 2).float().div_(255.0)


@register_detector("spair")
class SpairDetector:
    """``spair detect --method spair``: the shipped pretrained model, or ``checkpoint``."""

    name = "spair"

    def __init__(self, checkpoint: str | None = None, box_mode: BoxMode = "segment", min_score: float = 0.5,
                 batch_size: int = 32, sample: SampleMode = "mean", seed: int = 0, device: str = "cpu",
                 ink_threshold: float = INK_THRESHOLD, model: Spair | None = None,
                 explain_min_score: float | None = EXPLAIN_MIN_SCORE, refine_steps: int = REFINE_STEPS,
                 split_min_gain: float | None = SPLIT_MIN_GAIN, grid_shifts: int = GRID_SHIFTS):
        from .io import load_model

        if not 0.0 <= min_score <= 1.0:
            raise ConfigError(f"min_score must be in [0, 1], got {min_score}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model if model is not None else load_model(checkpoint, device)
        self.model.eval()
        self.box_mode, self.min_score, self.batch_size = box_mode, min_score, batch_size
        self.sample, self.device, self.ink_threshold = sample, device, ink_threshold
        if explain_min_score is not None and not 0.0 <= explain_min_score <= 1.0:
            raise ConfigError(f"explain_min_score must be in [0, 1], got {explain_min_score}")
        self.explain_min_score = explain_min_score
        if refine_steps < 0:
            raise ConfigError(f"refine_steps must be >= 0, got {refine_steps}")
        self.refine_steps = refine_steps
        if split_min_gain is not None and not split_min_gain >= 0.0:
            raise ConfigError(f"split_min_gain must be >= 0 (None: no split moves), got {split_min_gain}")
        self.split_min_gain = split_min_gain
        self.grid_shifts = check_grid_shifts(grid_shifts)
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def detect(self, images: Sequence[np.ndarray], backgrounds: Sequence[np.ndarray] | None = None) -> list[Detections]:
        results: list[Detections | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            by_size.setdefault(tuple(im.shape[:2]), []).append(i)
        given = self.model.cfg.background == "given"
        for idx in by_size.values():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                batch = np.stack([np.asarray(images[i]) for i in chunk])
                colours = None if backgrounds is None else np.stack([np.asarray(backgrounds[i]) for i in chunk])
                if given and colours is None:
                    colours = most_frequent_colours(batch)
                given_bg = colours if given else None
                dets = detect_on_shifted_grids(lambda b, region, bg=given_bg: self._detect_batch(b, bg, region),
                                               batch, colours, self.model.cfg.cell_size, self.grid_shifts)
                for i, d in zip(chunk, dets):
                    results[i] = d
        return results  # type: ignore[return-value]

    def _detect_batch(self, batch: np.ndarray, colours: np.ndarray | None,
                      region: tuple[int, int, int, int] | None = None) -> list[Detections]:
        """Detections for uint8 images (B, H, W, 3) of one size; ``colours`` (B, 3): their given backgrounds;
        ``region``: the pixels their objective is measured over (see :func:`detections_from_output`)."""
        x = to_tensor(batch, self.device)
        bg = None if colours is None else torch.from_numpy(colours).float().div(255.0).to(self.device)
        out = run_model(self.model, x, self.sample, self.generator, bg)
        return detections_from_output(self.model, out, self.box_mode, self.min_score, self.ink_threshold,
                                      use_samples=self.sample != "mean", x=x,
                                      explain_min_score=self.explain_min_score,
                                      refine_steps=self.refine_steps, split_min_gain=self.split_min_gain,
                                      objective_region=region)
