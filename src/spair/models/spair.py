"""SPAIR: Spatially Invariant Attend, Infer, Repeat (Crawford & Pineau, AAAI 2019).

A VAE whose encoder is a convolutional, YOLO-like object detector. Read top to bottom:

1. ``SpairConfig`` — every constant of the model, with the paper's / authors' value as default.
2. ``Spair.encode`` — the backbone maps the image to one feature vector per cell of c×c pixels
   (paper 4.3). Cells are then processed with *lateral connections*: each cell sees the sampled
   latents ("programs") of the already-processed neighbours in raster order. For every cell:
   box network → z_where, glimpse at z_where → object encoder → z_what, depth network → z_depth,
   presence network → z_pres. With lookback L, cell (h, w) depends only on cells with a smaller
   wavefront index t = (L + 1)·h + w, so all cells of equal t are computed together: the exact same
   model in (L+1)(H−1) + W steps instead of H·W (``schedule="wavefront"``; ``"raster"`` is the
   plain one-cell-at-a-time loop, kept for tests).
3. ``Spair.decode`` — the object decoder turns each z_what into an RGB + alpha sprite; sprites are
   placed with z_where and composited by depth-weighted importance over the background (4.4).
4. ``Spair.forward`` — the ELBO terms (4.5): Bernoulli reconstruction, Gaussian KLs of z_where,
   z_what, z_depth weighted by soft presence, and the sequential count-prior KL of z_pres.

Per-cell latents (paper eqs. 2–6, spec section 2):
    z_where = (z_y, z_x, z_h, z_w) ~ N(μ, σ) on logits;   b̃_y = b_min + (b_max − b_min)·σ(z_y),
    b_y = (i + b̃_y)·c_h;   b_h = σ(z_h)·a_h  (a = anchor box);   same for x / w.
    z_what ~ N(μ, σ) ∈ R^A;   z_depth = 4·σ(z) with z ~ N(μ, σ);
    z_pres ~ BinConcrete(α, λ) (relaxed in training, rounded at evaluation).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from ..config import param
from ..errors import ConfigError
from ..ops.count_prior import count_prior_kl, exponential_prior_kl
from ..ops.distributions import bounded_std, clipped_sigmoid, gaussian_kl, relaxed_bernoulli
from ..ops.render import extract_glimpses, render, render_windowed
from .networks import MLP, Backbone

SampleMode = Literal["relaxed", "hard", "mean"]
RenderMode = Literal["auto", "full"]


@dataclass
class SpairConfig:
    """Architecture and prior of SPAIR. Defaults are the authors' final (``aaai_2019``) values."""

    cell_size: int = param(12, lo=2, hi=256, help="cell height/width in pixels (c_h = c_w)")
    anchor: tuple[float, float] = param((48.0, 48.0), lo=1, help="anchor box (a_h, a_w) in pixels: the largest object size")
    object_shape: tuple[int, int] = param((14, 14), lo=2, hi=128, help="glimpse and sprite size (H_obj, W_obj)")
    A: int = param(50, lo=1, hi=4096, help="dimension of z_what")
    backbone_channels: int = param(128, lo=1, hi=4096, help="channels of the backbone's hidden conv layers")
    n_backbone_features: int = param(100, lo=1, hi=4096, help="backbone features per cell")
    n_passthrough_features: int = param(100, lo=0, hi=4096, help="features passed from the box to the depth net and from the depth to the presence net")
    n_final_layers: int = param(3, lo=1, hi=16, help="stride-1 conv layers after the strided ones")
    kernel_size: int = param(1, lo=1, hi=7, help="kernel of the stride-1 backbone layers")
    lateral_hidden: tuple[int, ...] = param((100, 100), lo=1, help="hidden layers of the box, depth and presence networks")
    encoder_hidden: tuple[int, ...] = param((512, 256), lo=1, help="hidden layers of the object encoder (glimpse → z_what)")
    decoder_hidden: tuple[int, ...] = param((256, 512), lo=1, help="hidden layers of the object decoder (z_what → sprite)")
    n_lookback: int = param(1, lo=0, hi=4, help="lateral connections reach L cells back (0 = none)")
    min_yx: float = param(-0.5, help="lower bound of the box centre offset, in cells")
    max_yx: float = param(1.5, help="upper bound of the box centre offset, in cells")
    min_hw: float = param(0.0, lo=0.0, hi=1.0, help="lower bound of the box size, as a fraction of the anchor")
    max_hw: float = param(1.0, lo=0.0, hi=1.0, lo_open=True, help="upper bound of the box size, as a fraction of the anchor")
    yx_prior_mean: float = param(0.0, help="prior mean of the centre logits")
    yx_prior_std: float = param(1.0, lo=0.0, lo_open=True, help="prior std of the centre logits")
    hw_prior_mean: float = param(math.log(0.1 / 0.9), help="prior mean of the size logits (logit 0.1: 4.8 px with a 48-px anchor)")
    hw_prior_std: float = param(0.5, lo=0.0, lo_open=True, help="prior std of the size logits")
    attr_prior_mean: float = param(0.0, help="prior mean of z_what")
    attr_prior_std: float = param(1.0, lo=0.0, lo_open=True, help="prior std of z_what")
    z_prior_mean: float = param(0.0, help="prior mean of the depth logit")
    z_prior_std: float = param(1.0, lo=0.0, lo_open=True, help="prior std of the depth logit")
    max_depth: float = param(4.0, lo=0.0, lo_open=True, help="z_depth = max_depth · sigmoid(z)")
    obj_temp: float = param(1.0, lo=0.0, lo_open=True, help="presence log-odds = logit / obj_temp")
    obj_concrete_temp: float = param(1.0, lo=0.0, lo_open=True, help="temperature λ of the relaxed Bernoulli")
    count_prior: Literal["geometric", "exponential"] = param("geometric", help="truncated geometric count prior (paper) or independent cells")
    color_logit_scale: float = param(2.0, lo=0.0, lo_open=True, help="scale on the sprite RGB logits")
    alpha_logit_scale: float = param(0.1, lo=0.0, lo_open=True, help="scale on the sprite alpha logits")
    alpha_logit_bias: float = param(5.0, help="bias on the sprite alpha logits (alpha starts near 1)")
    importance_floor: float = param(0.01, lo=0.0, lo_open=True, help="minimum rendering importance of any sprite pixel")
    background: Literal["none", "solid", "learn", "given"] = param(
        "none", help="none: black; solid: one learned colour; learn: a colour per image from an MLP; given: passed in")

    def __post_init__(self) -> None:
        if self.max_yx <= self.min_yx:
            raise ConfigError(f"model.max_yx ({self.max_yx}) must be larger than model.min_yx ({self.min_yx})")
        if self.max_hw <= self.min_hw:
            raise ConfigError(f"model.max_hw ({self.max_hw}) must be larger than model.min_hw ({self.min_hw})")

    @property
    def program_size(self) -> int:
        """Size of one cell's sampled latents [box (4), z_what (A), z_depth (1), z_pres (1)]."""
        return 4 + self.A + 2


# --------------------------------------------------------------------------------------------
# Lateral-connection schedules


def neighbour_offsets(lookback: int) -> list[tuple[int, int]]:
    """The ⌊(2L+1)²/2⌋ cells before the centre of a (2L+1)×(2L+1) window, in raster order
    (spec 3.2). L = 1: (−1,−1), (−1,0), (−1,+1), (0,−1)."""
    L = lookback
    return [(dh, dw) for dh in range(-L, 1) for dw in range(-L, L + 1) if (dh, dw) < (0, 0)]


@dataclass(frozen=True)
class Schedule:
    """Which cells are computed at each sequential step, and where their context comes from.

    ``groups[t]``: raster indices of the cells of step t. ``context[t]``: (n_t, K) indices into the
    running concatenation [edge, programs of step 0, programs of step 1, ...]; 0 is the edge
    element. ``to_raster``: permutation taking the step-ordered concatenation back to raster order.
    """

    groups: tuple[torch.Tensor, ...]
    context: tuple[torch.Tensor, ...]
    to_raster: torch.Tensor


@functools.lru_cache(maxsize=64)
def make_schedule(H: int, W: int, lookback: int, kind: str = "wavefront") -> Schedule:
    offsets = neighbour_offsets(lookback)
    cells = [(h, w) for h in range(H) for w in range(W)]
    if kind == "raster":
        order = [[c] for c in cells]
    elif kind == "wavefront" and lookback == 0:
        order = [cells]  # no lateral connections: every cell at once
    elif kind == "wavefront":
        a = lookback + 1  # every neighbour (h−dh, w+dw) with dh ≥ 1, |dw| ≤ L has a smaller a·h + w
        steps: dict[int, list[tuple[int, int]]] = {}
        for h, w in cells:
            steps.setdefault(a * h + w, []).append((h, w))
        order = [steps[t] for t in sorted(steps)]
    else:
        raise ValueError(f"unknown schedule {kind!r}")
    position: dict[tuple[int, int], int] = {}
    groups, context = [], []
    nxt = 1
    for group in order:
        ctx = []
        for h, w in group:
            row = []
            for dh, dw in offsets:
                nb = (h + dh, w + dw)
                if 0 <= nb[0] < H and 0 <= nb[1] < W:
                    if nb not in position:
                        raise AssertionError(f"schedule visits {(h, w)} before its neighbour {nb}")
                    row.append(position[nb])
                else:
                    row.append(0)
            ctx.append(row)
        for h, w in group:
            position[(h, w)] = nxt
            nxt += 1
        groups.append(torch.tensor([h * W + w for h, w in group], dtype=torch.long))
        context.append(torch.tensor(ctx, dtype=torch.long).reshape(len(group), len(offsets)))
    step_order = torch.cat(groups)
    to_raster = torch.empty_like(step_order)
    to_raster[step_order] = torch.arange(len(step_order))
    return Schedule(tuple(groups), tuple(context), to_raster)


@dataclass(frozen=True)
class StepPlan:
    """A :class:`Schedule` laid out for the encoder loop on one device.

    ``order``: raster indices of all cells in step order; ``sizes[t]``: cells of step t (so the
    per-step inputs are views of one gathered tensor). Context is read from the programs of a few
    recent steps only: ``first[t]`` is the earliest step that step t reads, and ``context[t]``
    (n_t, K) indexes [edge, programs of steps first[t] .. t−1] (0 = edge). ``to_raster`` maps the
    step-ordered outputs back to raster order.
    """

    order: torch.Tensor
    sizes: tuple[int, ...]
    first: tuple[int, ...]
    context: tuple[torch.Tensor, ...]
    to_raster: torch.Tensor


@functools.lru_cache(maxsize=64)
def step_plan(H: int, W: int, lookback: int, kind: str = "wavefront",
              device: torch.device | str = "cpu") -> StepPlan:
    sched = make_schedule(H, W, lookback, kind)
    sizes = tuple(len(g) for g in sched.groups)
    start = [0]
    for n in sizes:
        start.append(start[-1] + n)          # programs of step t hold positions start[t]+1 .. start[t+1]
    step_of = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes, dtype=torch.long))
    first, context = [], []
    for t, ctx in enumerate(sched.context):
        refs = ctx[ctx > 0]
        f = int(step_of[int(refs.min()) - 1]) if refs.numel() else t
        first.append(f)
        local = torch.where(ctx > 0, ctx - start[f], torch.zeros_like(ctx))
        context.append(local.reshape(-1).to(device))
    return StepPlan(torch.cat(sched.groups).to(device), sizes, tuple(first), tuple(context),
                    sched.to_raster.to(device))


# --------------------------------------------------------------------------------------------
# Outputs


@dataclass
class SpairNoise:
    """All randomness of one forward pass, drawn per cell in raster order (B, N, ·), so that any
    schedule sees the same noise for the same cell."""

    where: torch.Tensor   # (B, N, 4) standard normal
    what: torch.Tensor    # (B, N, A) standard normal
    depth: torch.Tensor   # (B, N, 1) standard normal
    pres: torch.Tensor    # (B, N, 1) uniform(0, 1)
    bg: torch.Tensor      # (B, 3) standard normal (background mode "learn")

    @staticmethod
    def sample(B: int, N: int, A: int, device: torch.device | str = "cpu",
               generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> "SpairNoise":
        g = dict(generator=generator, device=device, dtype=dtype)
        return SpairNoise(torch.randn(B, N, 4, **g), torch.randn(B, N, A, **g), torch.randn(B, N, 1, **g),
                          torch.rand(B, N, 1, **g), torch.randn(B, 3, **g))


@dataclass
class LossTerms:
    """Per-image loss terms, each (B,). ``total`` = the negative ELBO (paper eq. 1)."""

    recon: torch.Tensor      # −log p(x | z), Bernoulli cross-entropy summed over pixels and channels
    kl_where: torch.Tensor   # Σ_cells z_pres · KL(z_where)
    kl_what: torch.Tensor    # Σ_cells z_pres · KL(z_what)
    kl_depth: torch.Tensor   # Σ_cells z_pres · KL(z_depth)
    kl_pres: torch.Tensor    # Σ_cells KL(z_pres) under the count prior (not gated by z_pres)

    @property
    def kl(self) -> torch.Tensor:
        return self.kl_where + self.kl_what + self.kl_depth + self.kl_pres

    @property
    def total(self) -> torch.Tensor:
        return self.recon + self.kl

    def means(self) -> dict[str, float]:
        d = {k: float(getattr(self, k).mean()) for k in ("recon", "kl_where", "kl_what", "kl_depth", "kl_pres")}
        d["kl"] = float(self.kl.mean())
        d["total"] = float(self.total.mean())
        return d


@dataclass
class SpairOutput:
    """Everything one forward pass produces. Per-cell tensors are in raster order, (B, N, ·)."""

    grid_hw: tuple[int, int]
    image_hw: tuple[int, int]
    z_where: torch.Tensor        # (B, N, 4) squashed (b̃_y, b̃_x, h, w): offsets in cells, sizes / anchor
    boxes: torch.Tensor          # (B, N, 4) normalized (y_top, x_left, height, width) in the image
    z_what: torch.Tensor         # (B, N, A)
    z_depth: torch.Tensor        # (B, N, 1) in (0, max_depth)
    z_pres: torch.Tensor         # (B, N, 1) relaxed or hard presence sample
    pres_logit: torch.Tensor     # (B, N, 1) log-odds α
    pres_prob: torch.Tensor      # (B, N, 1) sigmoid(α)
    glimpses: torch.Tensor       # (B, N, 3, gh, gw)
    params: dict[str, torch.Tensor] = field(default_factory=dict)  # distribution parameters, for the KLs
    sprites_rgb: torch.Tensor | None = None     # (B, N, 3, sh, sw)
    sprites_alpha: torch.Tensor | None = None   # (B, N, 1, sh, sw), not gated by presence
    background: torch.Tensor | None = None      # (B, 3, 1, 1)
    recon: torch.Tensor | None = None           # (B, 3, H, W) rendered image
    losses: LossTerms | None = None
    visible_ink: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # detector cache (spair_detector)


# --------------------------------------------------------------------------------------------
# The model


class Spair(nn.Module):
    #: How :meth:`decode` renders: "auto" = :func:`~spair.ops.render.render_windowed` (each sprite over
    #: its own pixel window, cost linear in the image area), "full" = the reference
    #: :func:`~spair.ops.render.render` (every sprite over the whole image). Same images up to float
    #: rounding; a run-time setting, not part of the model's config or weights.
    render_mode: RenderMode = "auto"

    def __init__(self, cfg: SpairConfig | None = None):
        super().__init__()
        cfg = cfg or SpairConfig()
        self.cfg = cfg
        A, P = cfg.A, cfg.program_size
        K = len(neighbour_offsets(cfg.n_lookback))
        F_, T = cfg.n_backbone_features, cfg.n_passthrough_features
        gh, gw = cfg.object_shape
        self.backbone = Backbone(cfg.cell_size, cfg.backbone_channels, F_, cfg.n_final_layers, cfg.kernel_size)
        ctx = K * P
        self.box_net = MLP(F_ + ctx, cfg.lateral_hidden, 8 + T)                    # e^lat: where
        self.obj_encoder = MLP(3 * gh * gw, cfg.encoder_hidden, 2 * A)             # e^obj: glimpse → what
        self.depth_net = MLP(F_ + ctx + T + 4 + A, cfg.lateral_hidden, 2 + T)      # e^lat: depth
        self.pres_net = MLP(F_ + ctx + T + 4 + A + 1, cfg.lateral_hidden, 1)       # e^lat: presence
        self.obj_decoder = MLP(A, cfg.decoder_hidden, 4 * gh * gw)                 # d^obj: what → sprite
        bound = math.sqrt(6.0 / (2 * P))  # Glorot-uniform for a P-vector
        self.edge_element = nn.Parameter(torch.empty(P).uniform_(-bound, bound))
        if cfg.background == "solid":
            self.bg_logit = nn.Parameter(torch.zeros(3))                           # colour = σ(10 θ)
        elif cfg.background == "learn":
            self.bg_net = MLP(6, (10, 10), 6)                                       # per-image colour
        prior_mean = torch.tensor([cfg.yx_prior_mean] * 2 + [cfg.hw_prior_mean] * 2)
        prior_std = torch.tensor([cfg.yx_prior_std] * 2 + [cfg.hw_prior_std] * 2)
        self.register_buffer("where_prior_mean", prior_mean, persistent=False)
        self.register_buffer("where_prior_std", prior_std, persistent=False)

    # -- helpers ------------------------------------------------------------------------------

    def grid_shape(self, h: int, w: int) -> tuple[int, int]:
        return self.backbone.grid_shape(h, w)

    def edge_program(self) -> torch.Tensor:
        """The learned stand-in for neighbours outside the grid; box and presence parts squashed."""
        e = self.edge_element
        A = self.cfg.A
        return torch.cat([torch.sigmoid(e[:4]), e[4:4 + A + 1], torch.sigmoid(e[4 + A + 1:])])

    def where_to_boxes(self, z_where: torch.Tensor, cells: torch.Tensor, grid_w: int,
                       image_hw: tuple[int, int]) -> torch.Tensor:
        """Paper eqs. 2–6: squashed (b̃_y, b̃_x, h, w) of cells with raster indices ``cells`` →
        normalized (y_top, x_left, height, width)."""
        H_img, W_img = image_hw
        c = self.cfg.cell_size
        i = torch.div(cells, grid_w, rounding_mode="floor").to(z_where.dtype)
        j = (cells % grid_w).to(z_where.dtype)
        ys = z_where[..., 2] * self.cfg.anchor[0] / H_img
        xs = z_where[..., 3] * self.cfg.anchor[1] / W_img
        cy = (i + z_where[..., 0]) * c / H_img
        cx = (j + z_where[..., 1]) * c / W_img
        return torch.stack([cy - ys / 2, cx - xs / 2, ys, xs], -1)

    # -- encoder ------------------------------------------------------------------------------

    def encode(self, x: torch.Tensor, noise: SpairNoise, sample: SampleMode = "relaxed",
               training_wheels: float = 0.0, schedule: str = "wavefront") -> SpairOutput:
        """Infer every cell's latents q(z | x) (paper 4.3), lateral connections included.

        Under autocast only the networks' matmuls and convolutions run in low precision: every
        network output is cast back to the input's dtype before the distribution maths."""
        cfg = self.cfg
        B, _, H_img, W_img = x.shape
        dt = x.dtype
        feat = self.backbone(x.contiguous(memory_format=torch.channels_last)).to(dt)   # (B, F, H, W)
        H, W = feat.shape[-2:]
        feat = feat.flatten(2).transpose(1, 2)                          # (B, N, F) raster order
        plan = step_plan(H, W, cfg.n_lookback, schedule, x.device)
        T = cfg.n_passthrough_features
        stochastic = sample != "mean"

        def wheels(v: torch.Tensor) -> torch.Tensor:
            # "training wheels" (spec 6.2): tw·stopgrad(v) + (1 − tw)·v
            if training_wheels <= 0.0:
                return v
            if training_wheels >= 1.0:
                return v.detach()
            return training_wheels * v.detach() + (1.0 - training_wheels) * v

        def by_step(v: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return v.index_select(1, plan.order).split(plan.sizes, 1)

        feats, cells_t = by_step(feat), plan.order.split(plan.sizes)
        if stochastic:
            n_where, n_what, n_depth, n_pres = (by_step(v) for v in (noise.where, noise.what, noise.depth, noise.pres))
        edge = self.edge_program().to(dt).expand(B, 1, cfg.program_size)
        programs: list[torch.Tensor] = []                               # one (B, n_t, P) tensor per step
        outs: dict[str, list[torch.Tensor]] = {k: [] for k in (
            "where_mean", "where_std", "z_where", "boxes", "glimpses", "what_mean", "what_std", "z_what",
            "depth_mean", "depth_std", "z_depth", "pres_logit", "z_pres")}
        for t, (f, cells) in enumerate(zip(feats, cells_t)):
            n = cells.numel()
            ctx_idx = plan.context[t]
            if ctx_idx.numel() > 0:
                recent = torch.cat([edge, *programs[plan.first[t]:t]], 1)
                f_ctx = torch.cat([f, recent.index_select(1, ctx_idx).reshape(B, n, -1)], -1)
            else:
                f_ctx = f

            # z_where (box network)
            h = self.box_net(f_ctx).to(dt)
            w_mean, w_std = wheels(h[..., :4]), wheels(bounded_std(h[..., 4:8]))
            f1 = h[..., 8:8 + T]
            w_logit = w_mean + w_std * n_where[t] if stochastic else w_mean
            yx = cfg.min_yx + (cfg.max_yx - cfg.min_yx) * clipped_sigmoid(w_logit[..., :2])
            hw = cfg.min_hw + (cfg.max_hw - cfg.min_hw) * clipped_sigmoid(w_logit[..., 2:])
            z_where = torch.cat([yx, hw], -1)
            boxes = self.where_to_boxes(z_where, cells, W, (H_img, W_img))

            # z_what (glimpse + object encoder)
            glimpses = extract_glimpses(x, boxes, cfg.object_shape)     # (B, n, 3, gh, gw)
            e = self.obj_encoder(glimpses.flatten(2)).to(dt)
            a_mean, a_std = e[..., :cfg.A], bounded_std(e[..., cfg.A:])
            z_what = a_mean + a_std * n_what[t] if stochastic else a_mean

            # z_depth (depth network)
            h = self.depth_net(torch.cat([f_ctx, f1, z_where, z_what], -1)).to(dt)
            d_mean, d_std = wheels(h[..., :1]), wheels(bounded_std(h[..., 1:2]))
            f2 = h[..., 2:2 + T]
            d_logit = d_mean + d_std * n_depth[t] if stochastic else d_mean
            z_depth = cfg.max_depth * clipped_sigmoid(d_logit)

            # z_pres (presence network), relaxed Bernoulli
            logit = wheels(self.pres_net(torch.cat([f_ctx, f2, z_where, z_what, z_depth], -1)).to(dt))
            alpha = (logit / cfg.obj_temp).clamp(-10.0, 10.0)
            if sample == "mean":
                z_pres = (alpha > 0).to(alpha.dtype)
            else:
                z_pres = relaxed_bernoulli(alpha, n_pres[t], cfg.obj_concrete_temp)
                if sample == "hard":
                    z_pres = torch.round(z_pres)

            programs.append(torch.cat([z_where, z_what, z_depth, z_pres], -1))
            for k, v in (("where_mean", w_mean), ("where_std", w_std), ("z_where", z_where), ("boxes", boxes),
                         ("glimpses", glimpses), ("what_mean", a_mean), ("what_std", a_std), ("z_what", z_what),
                         ("depth_mean", d_mean), ("depth_std", d_std), ("z_depth", z_depth),
                         ("pres_logit", alpha), ("z_pres", z_pres)):
                outs[k].append(v)

        r = {k: (torch.cat(v, 1) if len(v) > 1 else v[0]).index_select(1, plan.to_raster) for k, v in outs.items()}
        return SpairOutput(
            grid_hw=(H, W), image_hw=(H_img, W_img), z_where=r["z_where"], boxes=r["boxes"],
            z_what=r["z_what"], z_depth=r["z_depth"], z_pres=r["z_pres"], pres_logit=r["pres_logit"],
            pres_prob=torch.sigmoid(r["pres_logit"]), glimpses=r["glimpses"],
            params={k: r[k] for k in ("where_mean", "where_std", "what_mean", "what_std", "depth_mean", "depth_std")})

    # -- decoder ------------------------------------------------------------------------------

    def background_colour(self, x: torch.Tensor, noise: SpairNoise, sample: SampleMode,
                          given: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, 1, 1) background colour for the configured mode (spec 5.4)."""
        B = x.shape[0]
        mode = self.cfg.background
        if mode == "none":
            return x.new_zeros(B, 3, 1, 1)
        if mode == "solid":
            return torch.sigmoid(10.0 * self.bg_logit).view(1, 3, 1, 1).expand(B, 3, 1, 1)
        if mode == "given":
            if given is None:
                raise ConfigError("model.background is 'given' but no background colour was passed")
            return given.to(x.dtype).view(B, 3, 1, 1)
        flat = x.flatten(2)
        stats = torch.cat([flat.mean(-1), flat.median(-1).values], -1)   # (B, 6): robust colour statistics
        h = self.bg_net(stats).to(x.dtype)
        mean, log_std = h[:, :3], h[:, 3:]
        logit = mean + torch.exp(log_std) * noise.bg if sample != "mean" else mean
        return torch.sigmoid(logit).view(B, 3, 1, 1)

    def decode_sprites(self, z_what: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """d^obj: z_what (B, N, A) → RGB (B, N, 3, sh, sw) and alpha (B, N, 1, sh, sw) (spec 5.1)."""
        cfg = self.cfg
        B, N, _ = z_what.shape
        sh, sw = cfg.object_shape
        logits = self.obj_decoder(z_what).to(z_what.dtype).view(B, N, 4, sh, sw)
        rgb = clipped_sigmoid(cfg.color_logit_scale * logits[:, :, :3])
        alpha = clipped_sigmoid(cfg.alpha_logit_scale * logits[:, :, 3:] + cfg.alpha_logit_bias)
        return rgb, alpha

    def decode(self, out: SpairOutput, background: torch.Tensor) -> torch.Tensor:
        """Render the image from the latents (paper 4.4, spec 5.2–5.3)."""
        cfg = self.cfg
        rgb, alpha = self.decode_sprites(out.z_what)
        out.sprites_rgb, out.sprites_alpha = rgb, alpha
        gated = alpha * out.z_pres[..., None, None]                         # alpha' = alpha · z_pres
        importance = (gated * out.z_depth[..., None, None]).clamp(min=cfg.importance_floor)
        with torch.autocast(rgb.device.type, enabled=False):               # rendering stays in full precision
            if self.render_mode == "full":
                return render(rgb, gated, importance, out.boxes, background, out.image_hw)
            if self.render_mode != "auto":
                raise ConfigError(f"render_mode: '{self.render_mode}' is not 'auto' or 'full'")
            # on the CPU the batch's largest box gives the tightest window (one host read); elsewhere the
            # configured bound on the box size avoids a device synchronization
            bound = "batch" if rgb.device.type == "cpu" else (cfg.max_hw * cfg.anchor[0], cfg.max_hw * cfg.anchor[1])
            return render_windowed(rgb, gated, importance, out.boxes, background, out.image_hw, bound)

    # -- the ELBO -----------------------------------------------------------------------------

    def kl_terms(self, out: SpairOutput, count_prior_log_odds: float) -> tuple[torch.Tensor, ...]:
        cfg = self.cfg
        p = out.params
        pres = out.z_pres.squeeze(-1)                                        # (B, N) soft presence
        kl_where = gaussian_kl(p["where_mean"], p["where_std"], self.where_prior_mean, self.where_prior_std).sum(-1)
        kl_what = gaussian_kl(p["what_mean"], p["what_std"], cfg.attr_prior_mean, cfg.attr_prior_std).sum(-1)
        kl_depth = gaussian_kl(p["depth_mean"], p["depth_std"], cfg.z_prior_mean, cfg.z_prior_std).sum(-1)
        q = out.pres_prob.squeeze(-1)
        if cfg.count_prior == "geometric":
            kl_pres = count_prior_kl(q, pres.detach(), count_prior_log_odds)
        else:
            kl_pres = exponential_prior_kl(q, count_prior_log_odds)
        return ((pres * kl_where).sum(1), (pres * kl_what).sum(1), (pres * kl_depth).sum(1), kl_pres.sum(1))

    def forward(self, x: torch.Tensor, count_prior_log_odds: float = math.log(0.0125), *,
                sample: SampleMode = "relaxed", training_wheels: float = 0.0, noise: SpairNoise | None = None,
                generator: torch.Generator | None = None, schedule: str = "wavefront",
                background: torch.Tensor | None = None, render_image: bool = True) -> SpairOutput:
        """Encode, decode and score a batch ``x`` (B, 3, H, W) in [0, 1].

        ``sample``: "relaxed" (training: reparameterized Gaussians, Concrete z_pres), "hard" (the
        paper's evaluation: samples, z_pres rounded), "mean" (deterministic: means, z_pres = 1[α > 0]).
        ``count_prior_log_odds`` and ``training_wheels`` are the trainer's schedules at this step.
        """
        B, _, H_img, W_img = x.shape
        H, W = self.grid_shape(H_img, W_img)
        if noise is None:
            noise = SpairNoise.sample(B, H * W, self.cfg.A, x.device, generator, x.dtype)
        out = self.encode(x, noise, sample, training_wheels, schedule)
        if not render_image:
            return out
        bg = self.background_colour(x, noise, sample, background)
        out.background = bg
        out.recon = self.decode(out, bg)
        recon = -(x * torch.log(out.recon + 1e-9) + (1 - x) * torch.log(1 - out.recon + 1e-9)).flatten(1).sum(1)
        out.losses = LossTerms(recon, *self.kl_terms(out, count_prior_log_odds))
        return out
