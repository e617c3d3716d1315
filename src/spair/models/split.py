"""Split and removal moves: the set of reported objects, chosen by the model's own objective.

Split moves: a reported object that draws two overlapping digits is replaced by two objects.

A cell of SPAIR reports one object, and where two digits overlap or touch, one cell often draws
both with one blurry sprite while the neighbouring cells stay off; the digit that has no object of
its own is then missed at every IoU threshold. Refinement (:mod:`spair.models.refine`) cannot fix
this: it keeps the set of objects fixed.

A split move asks the model itself whether two objects explain the image better than one. For each
reported object (the *parent*), with all other objects held fixed:

1. Eight proposals place two children along the parent's pixel extent. Four even ones: side by side,
   one above the other, and along both diagonals, each child centred a quarter of the extent from the
   centre, with a window 0.65 (0.75 on the diagonals) of the parent's along the split. Four uneven
   ones, one per side: a child with half the parent's window along the split, centred 0.3 of the
   extent from the centre, and one with 0.75 of it, centred 0.15 to the other side (made for a thin
   digit, a 1, beside a wide one, where both even children start over the wide digit; on validation
   scenes they found other merged pairs too: docs/cpu-recipe.md, "Uneven proposals").
2. Each child's z_what starts at the object encoder's mean for a glimpse at its box (paper 4.3's
   e^obj), its depth at the parent's; the children's z_what, boxes (a ``box_std_px`` Gaussian pull
   towards the proposal) and depth factors take ``steps`` Adam steps on the same objective as
   refinement.
3. The objective J = −log p(x | z) + ½‖z_what‖² summed over the objects (the box pull is left out:
   it only anchors the search) is compared on a crop around the parent, where the parent or its
   children can draw. The best proposal replaces the parent when it lowers J by more than
   ``min_gain`` nats, the price of one more object (a model-selection penalty, chosen on validation
   scenes: docs/cpu-recipe.md, "Split moves"; at the default no image of one digit was split on
   the validation or test scenes).

Screening: after ``SPLIT_SCREEN_STEPS`` steps, a parent none of whose proposals has lowered J yet is
dropped (on validation scenes a few accepted splits, worth 0.006 SPAIR-AP at n = 9, had not lowered
J after 5 steps; after 10 they had, and screening there still takes 20–30% off the detection time).
The other objects of the image that can draw into a parent's crop are rendered once per parent (their
sums of :func:`spair.ops.render.render_terms` are added to the children's at every step), so a
proposal costs two sprites per step whatever the number of objects, and parents are processed in
chunks of ``PARENT_CHUNK``. The children are new slots appended to
the output's per-cell tensors (they copy the parent's presence probability and cell fields); the
network's weights do not change.

Removal moves (:func:`remove_objects`), run after the split moves, are their converse at the same
price: an object that lowers J by no more than ``min_gain`` nats, the others held fixed, and whose
box overlaps another object's, is dropped, one per image at a time (the least useful first; the
gains of the rest are measured again, so of two objects drawing the same digit only one goes).
What they remove: an object that draws the same digit as another, a small piece where two digits
cross, an object that draws nothing the others do not (docs/cpu-recipe.md, "Removal moves").
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch

from ..ops.render import add_windows, extract_glimpses, gather_windows, render_terms, sprite_window_terms
from .refine import REFINE_LR, REFINE_STEPS, REFINE_WHAT_PRIOR, _first, _frozen, _sprite_layers, _take
from .spair import Spair, SpairOutput

SPLIT_MIN_GAIN = 30.0
"""Nats by which two children must lower the objective to replace their parent."""
SPLIT_BOX_STD_PX = 4.0
"""Pull of each child's box towards its proposal, pixels per coordinate."""
SPLIT_SCREEN_STEPS = 10
SPLIT_SCREEN_GAIN = 0.0
"""After ``SPLIT_SCREEN_STEPS`` steps only the parents with a proposal that lowers J by more than this go on."""

#: The proposals, one pair of children each: a child's offset from the parent's centre in units of
#: its extent (dy, dx) and its window size as a fraction of the parent's (fh, fw).
PROPOSALS = (((0.0, -0.25, 1.0, 0.65), (0.0, 0.25, 1.0, 0.65)),        # side by side
             ((-0.25, 0.0, 0.65, 1.0), (0.25, 0.0, 0.65, 1.0)),        # one above the other
             ((-0.25, -0.25, 0.75, 0.75), (0.25, 0.25, 0.75, 0.75)),   # along the diagonals
             ((-0.25, 0.25, 0.75, 0.75), (0.25, -0.25, 0.75, 0.75)),
             ((0.0, -0.3, 1.0, 0.5), (0.0, 0.15, 1.0, 0.75)),          # a thin child on the left,
             ((0.0, 0.3, 1.0, 0.5), (0.0, -0.15, 1.0, 0.75)),          # on the right,
             ((-0.3, 0.0, 0.5, 1.0), (0.15, 0.0, 0.75, 1.0)),          # above,
             ((0.3, 0.0, 0.5, 1.0), (-0.15, 0.0, 0.75, 1.0)))          # below

#: Parents per chunk of hypotheses (bounds the memory: each parent holds 8 proposals of crop size).
PARENT_CHUNK = 256

#: Per-cell fields of :class:`~spair.models.spair.SpairOutput` that get a slot for each child.
_CELL_FIELDS = ("z_where", "boxes", "z_what", "z_depth", "z_pres", "pres_logit", "pres_prob", "glimpses")


def _crop_boxes(boxes: torch.Tensor, image_hw: tuple[int, int], origin: torch.Tensor, size: int) -> torch.Tensor:
    """Normalized image boxes (M, K, 4) → normalized to a ``size`` square crop at pixel ``origin`` (M, 2)."""
    H, W = image_hw
    y = (boxes[..., 0] * H - origin[:, None, 0]) / size
    x = (boxes[..., 1] * W - origin[:, None, 1]) / size
    return torch.stack([y, x, boxes[..., 2] * H / size, boxes[..., 3] * W / size], -1)


def proposal_boxes(extent: torch.Tensor, window: torch.Tensor, proposals: Sequence | None = None) -> torch.Tensor:
    """The children's pixel boxes (P, R, 2, 4) (top, left, height, width) of each proposal (default
    :data:`PROPOSALS`) for parents with pixel extent ``extent`` (P, 4) (x0, y0, x1, y1) and sprite
    window ``window`` (P, 2) (height, width) in pixels: each child centred at the extent's centre plus
    its offset times the extent, its window the parent's times its fractions."""
    prop = torch.tensor(PROPOSALS if proposals is None else proposals, dtype=extent.dtype,
                        device=extent.device)                                  # (R, 2, 4)
    cy, cx = (extent[:, 1] + extent[:, 3]) / 2, (extent[:, 0] + extent[:, 2]) / 2
    ey, ex = extent[:, 3] - extent[:, 1], extent[:, 2] - extent[:, 0]
    ch = prop[None, ..., 2] * window[:, None, None, 0]                         # (P, R, 2)
    cw = prop[None, ..., 3] * window[:, None, None, 1]
    ccy = cy[:, None, None] + prop[None, ..., 0] * ey[:, None, None]
    ccx = cx[:, None, None] + prop[None, ..., 1] * ex[:, None, None]
    return torch.stack([ccy - ch / 2, ccx - cw / 2, ch, cw], -1)


def _terms(model: Spair, z_what: torch.Tensor, boxes: torch.Tensor, depth: torch.Tensor, gate: torch.Tensor,
           hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rendering sums of the objects (M, K) where ``gate`` (M, K) is 1, over an ``hw`` canvas."""
    return render_terms(*_sprite_layers(model, z_what, depth, gate[..., None, None, None]), boxes, hw)


def _nll(x: torch.Tensor, bg: torch.Tensor, terms: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Bernoulli −log p(x | z) of each crop (M,), from summed rendering terms."""
    num, mass, den = terms
    recon = (bg + (num - mass * bg) / den.clamp(min=1e-12)).clamp(1e-6, 1 - 1e-6)
    return -(x * recon.log() + (1 - x) * (1 - recon).log()).flatten(1).sum(1)


def _best_split(model: Spair, x: torch.Tensor, pb: torch.Tensor, ps: torch.Tensor, boxes: torch.Tensor,
                what: torch.Tensor, depth: torch.Tensor, ext: torch.Tensor, bg_all: torch.Tensor, origin: torch.Tensor,
                size: int, nidx: torch.Tensor, nvalid: torch.Tensor, steps: int, lr: float, box_std_px: float,
                what_prior: float, screen_steps: int, proposals: Sequence | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The best proposal of each parent (image ``pb``, slot ``ps``; the objects' ``boxes``, ``what``,
    ``depth``, ``ext`` (B, K, ·)): its gain in J (−inf for parents cut at screening) and its children's
    z_what (p, 2, A), boxes (p, 2, 4) and depths (p, 2, 1)."""
    H, W = x.shape[-2:]
    dev, dt = x.device, torch.float32
    P = pb.numel()
    ar = torch.arange(P, device=dev)
    rows = (origin[:, 0, None] + torch.arange(size, device=dev)).long()        # (P, size)
    cols = (origin[:, 1, None] + torch.arange(size, device=dev)).long()
    xc = x.to(dt)[pb[:, None, None, None], torch.arange(x.shape[1], device=dev)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]              # (P, C, size, size)
    bg = bg_all[pb]                                                            # (P, C, 1, 1)
    parent_box = boxes[pb, ps]                                                 # (P, 4) normalized
    e = ext[pb, ps]                                                            # (P, 4) px x0, y0, x1, y1

    with torch.no_grad():
        # the parent's neighbours, and the parent alone, rendered into its crop
        crop_near = _crop_boxes(_take(boxes[pb], nidx), (H, W), origin, size)
        fixed = _terms(model, _take(what[pb], nidx), crop_near, _take(depth[pb], nidx), nvalid.to(dt), (size, size))
        crop_parent = _crop_boxes(parent_box[:, None], (H, W), origin, size)
        alone = _terms(model, what[pb, ps][:, None], crop_parent, depth[pb, ps][:, None],
                       torch.ones(P, 1, device=dev), (size, size))
        j_base = _nll(xc, bg, tuple(f + a for f, a in zip(fixed, alone))) \
            + 0.5 * what_prior * what[pb, ps].square().sum(-1)

        # the proposals: P·R hypotheses of two children each
        window = parent_box[:, 2:] * parent_box.new_tensor([H, W])             # (P, 2) px
        child_px = proposal_boxes(e, window, proposals)                        # (P, R, 2, 4) px
        R = child_px.shape[1]
        child_px = child_px.reshape(P * R, 2, 4)
        scale = child_px.new_tensor([H, W, H, W])
        child0 = child_px / scale                                              # normalized image boxes
        glimpses = extract_glimpses(x[pb].to(dt), child0.reshape(P, 2 * R, 4), model.cfg.object_shape)
        what0 = model.obj_encoder(glimpses.flatten(2)).to(dt)[..., :model.cfg.A].reshape(P * R, 2, -1)
        depth0 = depth[pb, ps].repeat_interleave(R, 0)[:, None].expand(-1, 2, -1)

    # the state of every hypothesis (R per parent, contiguous), cut down to the promising ones below
    hyp = {"parent": ar.repeat_interleave(R), "child0": child0, "depth0": depth0, "origin": origin.repeat_interleave(R, 0),
           "x": xc.repeat_interleave(R, 0), "bg": bg.repeat_interleave(R, 0), "j_base": j_base.repeat_interleave(R),
           **{f"fixed{k}": t.repeat_interleave(R, 0) for k, t in enumerate(fixed)}}
    params = [what0.clone().requires_grad_(True),                              # z_what of both children
              torch.zeros_like(child0, requires_grad=True),                    # box change in px (y, x, h, w)
              torch.zeros_like(depth0, requires_grad=True)]                    # depth × exp(log_depth)
    min_size = 1.0 / max(H, W)

    def children() -> torch.Tensor:
        b = hyp["child0"] + params[1] / scale
        return torch.cat([b[..., :2], b[..., 2:].clamp(min=min_size)], -1)

    def objective() -> tuple[torch.Tensor, torch.Tensor]:
        z_what, delta, log_depth = params
        t = _terms(model, z_what, _crop_boxes(children(), (H, W), hyp["origin"], size),
                   hyp["depth0"] * log_depth.exp(), torch.ones(z_what.shape[:2], device=dev, dtype=dt), (size, size))
        fixed_terms = (hyp["fixed0"], hyp["fixed1"], hyp["fixed2"])
        j = _nll(hyp["x"], hyp["bg"], tuple(f + c for f, c in zip(fixed_terms, t))) \
            + 0.5 * what_prior * z_what.square().sum((-2, -1))
        return j, 0.5 * (delta / box_std_px).square().sum((-2, -1))

    best_gain = torch.full((P,), -math.inf, device=dev, dtype=dt)
    c_what, c_box = what0.new_zeros(P, 2, what0.shape[-1]), child0.new_zeros(P, 2, 4)
    c_depth = depth0.new_zeros(P, 2, depth0.shape[-1])
    opt = torch.optim.Adam(params, lr=lr)
    with torch.enable_grad(), _frozen(model):
        for step in range(steps):
            if step == screen_steps:
                # screening: only parents with a proposal that already lowers J go on (module docstring)
                with torch.no_grad():
                    gain = (hyp["j_base"] - objective()[0]).view(-1, R).amax(1)
                sel = (gain > SPLIT_SCREEN_GAIN).repeat_interleave(R)
                if not bool(sel.any()):
                    return best_gain, c_what, c_box, c_depth
                hyp = {k: v[sel] for k, v in hyp.items()}
                old, params = params, [p.detach()[sel].requires_grad_(True) for p in params]
                moments = [opt.state[p] for p in old]
                opt = torch.optim.Adam(params, lr=lr)
                for p, st in zip(params, moments):                          # Adam goes on where it was
                    opt.state[p] = {k: (v[sel] if v.dim() else v.clone()) for k, v in st.items()}
            j, pull = objective()
            opt.zero_grad(set_to_none=True)
            (j + pull).sum().backward()
            opt.step()
    with torch.no_grad():
        gain = (hyp["j_base"] - objective()[0]).view(-1, R)
        g, best = gain.max(1)
        pick = torch.arange(gain.shape[0], device=dev) * R + best             # hypothesis of each parent
        parent = hyp["parent"][pick]
        best_gain[parent] = g
        c_what[parent], c_box[parent] = params[0][pick].detach(), children()[pick]
        c_depth[parent] = (hyp["depth0"] * params[2].exp())[pick].detach()
    return best_gain, c_what, c_box, c_depth


def split_objects(model: Spair, out: SpairOutput, x: torch.Tensor, present: torch.Tensor, extents: torch.Tensor,
                  min_gain: float = SPLIT_MIN_GAIN, steps: int = REFINE_STEPS, lr: float = REFINE_LR,
                  box_std_px: float = SPLIT_BOX_STD_PX, what_prior: float = REFINE_WHAT_PRIOR,
                  screen_steps: int = SPLIT_SCREEN_STEPS, proposals: Sequence | None = None
                  ) -> tuple[SpairOutput, torch.Tensor]:
    """Split the present objects (``present`` (B, N) bool) that two objects explain better (module
    docstring). ``extents`` (B, N, 4) are the pixel boxes (x0, y0, x1, y1) of the image pixels each
    object explains (the segment boxes); ``proposals`` defaults to :data:`PROPOSALS`. Returns the output,
    with E ≥ 0 appended slots, and the present mask (B, N + E); ``out`` and ``present`` themselves when
    nothing splits."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if out.background is None:
        raise ValueError("split moves need the background colour (out.background)")
    if not bool(present.any()) or math.isinf(min_gain):
        return out, present
    B, N = present.shape
    H, W = out.image_hw
    dev, dt = x.device, torch.float32
    K = int(present.sum(1).max())
    index, valid = _first(present, K)                                          # present cells first
    what, boxes, depth = (_take(t, index).detach().to(dt) for t in (out.z_what, out.boxes, out.z_depth))
    ext = _take(extents.to(dt), index)
    bg_all = out.background.detach().to(dt)

    # parents: every present object; P = number of them
    pb, ps = valid.nonzero(as_tuple=True)
    P = pb.numel()
    parent_box = boxes[pb, ps]                                                 # (P, 4) normalized
    e = ext[pb, ps]                                                            # (P, 4) px x0, y0, x1, y1
    cy, cx = (e[:, 1] + e[:, 3]) / 2, (e[:, 0] + e[:, 2]) / 2                  # px

    # one crop per parent: a square of the largest parent window plus 4 px a side, inside the image
    side = float(torch.maximum(parent_box[:, 2] * H, parent_box[:, 3] * W).max())
    size = int(min(H, W, math.ceil(side) + 8))
    origin = torch.stack([(cy - size / 2).round().clamp(0, H - size), (cx - size / 2).round().clamp(0, W - size)], 1)
    ar = torch.arange(P, device=dev)

    # the other objects of each parent's image that can draw into its crop (sprite support: the box
    # plus one sprite pixel a side)
    others = valid[pb].clone()
    others[ar, ps] = False
    sh, sw = model.cfg.object_shape
    top, left, hh, ww = (boxes[pb][..., k] for k in range(4))
    pad_y, pad_x = hh * H / sh, ww * W / sw
    meets = (top * H - pad_y < origin[:, None, 0] + size) & ((top + hh) * H + pad_y > origin[:, None, 0]) \
        & (left * W - pad_x < origin[:, None, 1] + size) & ((left + ww) * W + pad_x > origin[:, None, 1])
    near = others & meets
    Kn = max(1, int(near.sum(1).max()))
    nidx, nvalid = _first(near, Kn)

    results = [_best_split(model, x, pb[c], ps[c], boxes, what, depth, ext, bg_all, origin[c], size,
                           nidx[c], nvalid[c], steps, lr, box_std_px, what_prior, screen_steps, proposals)
               for c in torch.arange(P, device=dev).split(PARENT_CHUNK)]
    best_gain = torch.cat([r[0] for r in results])
    c_what, c_box, c_depth = (torch.cat([r[k] for r in results]) for k in (1, 2, 3))
    with torch.no_grad():
        accept = best_gain > min_gain
        if not bool(accept.any()):
            return out, present

        # the parent's cell takes child 1; child 2 gets a new slot copying the parent's cell fields
        acc = accept.nonzero(as_tuple=True)[0]
        img, cell = pb[acc], index[pb[acc], ps[acc]]
        rank = torch.zeros_like(img)
        for i in range(1, img.numel()):
            rank[i] = rank[i - 1] + 1 if img[i] == img[i - 1] else 0
        E = int(rank.max()) + 1
        slot = N + rank
        src = torch.zeros(B, E, dtype=torch.long, device=dev)
        src[img, rank] = cell
        new = {f: torch.cat([getattr(out, f), _take(getattr(out, f), src)], 1).clone() for f in _CELL_FIELDS}
        dist_params = {k: torch.cat([v, _take(v, src)], 1) for k, v in out.params.items()}
        for f, values in (("z_what", c_what), ("boxes", c_box), ("z_depth", c_depth)):
            t = new[f]
            t[img, cell] = values[acc, 0].to(t.dtype)
            t[img, slot] = values[acc, 1].to(t.dtype)
        keep = torch.cat([present, torch.zeros(B, E, dtype=torch.bool, device=dev)], 1)
        keep[img, slot] = True
        return dataclasses.replace(out, **new, params=dist_params, sprites_rgb=None, sprites_alpha=None, recon=None,
                                   visible_ink=None), keep


@torch.no_grad()
def object_gains(model: Spair, out: SpairOutput, x: torch.Tensor, present: torch.Tensor,
                 what_prior: float = REFINE_WHAT_PRIOR) -> torch.Tensor:
    """By how much each present object (``present`` (B, N) bool) lowers the objective J of the module
    docstring, all other present objects held fixed: J without it − J with it, in nats (B, N); +inf
    where not present. Removing an object changes the image only inside its sprite's window, so the
    difference is summed there."""
    B, N = present.shape
    H, W = out.image_hw
    dt = torch.float32
    gains = torch.full((B, N), math.inf, device=x.device, dtype=dt)
    if not bool(present.any()):
        return gains
    K = int(present.sum(1).max())
    index, valid = _first(present, K)                                          # present cells first
    what, boxes, depth = (_take(t, index).detach().to(dt) for t in (out.z_what, out.boxes, out.z_depth))
    own, y0, x0 = sprite_window_terms(*_sprite_layers(model, what, depth, valid.to(dt)[..., None, None, None]),
                                      boxes, (H, W))                           # (B, K, 5, wh, ww)
    win = own.shape[-2:]
    all_terms = gather_windows(add_windows(own, y0, x0, (H, W)), y0, x0, win)  # every object, over each window
    target = gather_windows(x.to(dt), y0, x0, win)
    bg = gather_windows(out.background.detach().to(dt).expand(B, -1, H, W).contiguous(), y0, x0, win)

    def nll(t: torch.Tensor) -> torch.Tensor:
        num, mass, den = t.split((3, 1, 1), dim=2)
        recon = (bg + (num - mass * bg) / den.clamp(min=1e-12)).clamp(1e-6, 1 - 1e-6)
        return -(target * recon.log() + (1 - target) * (1 - recon).log()).flatten(2).sum(-1)

    g = nll(all_terms - own) - nll(all_terms) - 0.5 * what_prior * what.square().sum(-1)
    return gains.scatter(1, index, torch.where(valid, g, math.inf))


@torch.no_grad()
def image_objective(model: Spair, out: SpairOutput, x: torch.Tensor, present: torch.Tensor,
                    price: float = SPLIT_MIN_GAIN, what_prior: float = REFINE_WHAT_PRIOR,
                    region: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """The objective of the module docstring for each image with the ``present`` (B, N) objects, plus
    ``price`` nats per object (the price of the split and removal moves): −log p(x | z) summed over the
    pixels of ``region`` = (top, left, height, width) (None: the whole image) + ½‖z_what‖² + price ×
    objects, in nats (B,). Lower is a better account of the image; two readings of the same pixels
    (views of one image on shifted grids, :mod:`spair.models.shifts`) compare by it."""
    B, N = present.shape
    H, W = out.image_hw
    dt = torch.float32
    gate = present.to(dt)
    what = out.z_what.detach().to(dt)
    terms = _terms(model, what, out.boxes.detach().to(dt), out.z_depth.detach().to(dt), gate, (H, W))
    top, left, h, w = (0, 0, H, W) if region is None else region
    crop = (..., slice(top, top + h), slice(left, left + w))
    bg = out.background.detach().to(dt).expand(B, -1, H, W)
    nll = _nll(x.to(dt)[crop], bg[crop], tuple(t[crop] for t in terms))
    return nll + ((0.5 * what_prior * what.square().sum(-1) + price) * gate).sum(1)


def overlapping_objects(boxes: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Which present objects' boxes (B, N, 4: y, x, h, w) overlap the box of another present object
    (B, N) bool."""
    lo, size = boxes[..., :2], boxes[..., 2:]
    hi = lo + size
    inter = (torch.minimum(hi[:, :, None], hi[:, None]) - torch.maximum(lo[:, :, None], lo[:, None])).clamp(min=0)
    meets = (inter.prod(-1) > 0) & present[:, :, None] & present[:, None]
    meets &= ~torch.eye(present.shape[1], dtype=torch.bool, device=present.device)
    return meets.any(-1)


@torch.no_grad()
def remove_objects(model: Spair, out: SpairOutput, x: torch.Tensor, present: torch.Tensor,
                   min_gain: float = SPLIT_MIN_GAIN, what_prior: float = REFINE_WHAT_PRIOR) -> torch.Tensor:
    """Removal moves, the converse of the split moves: while an image has a present object that lowers
    J by no more than ``min_gain`` nats (:func:`object_gains`) and whose box overlaps another present
    object's, the one that lowers it least is dropped, and the gains of the rest are measured again.
    An object alone in its part of the image keeps the encoder's presence decision: a small object
    (a few pixels) can explain less than the price and still be real. Returns the new present mask
    (B, N)."""
    present = present.clone()
    if math.isinf(min_gain):
        return present
    while bool(present.any()):
        gain = object_gains(model, out, x, present, what_prior)
        gain, slot = gain.masked_fill(~overlapping_objects(out.boxes, present), math.inf).min(1)
        drop = gain <= min_gain
        if not bool(drop.any()):
            break
        present[drop.nonzero(as_tuple=True)[0], slot[drop]] = False
    return present
