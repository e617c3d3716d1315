"""AIR and DAIR (Eslami et al. 2016), the baselines of the paper's comparison (section 5.1).

AIR explains an image with a sequence of objects found one per step by a recurrent core:

1. **Core.** ``air``: an LSTM with 256 units whose input is the flattened image, the same at every
   step (its hidden state is what tells it which objects were already explained). ``dair``
   (Difference AIR): a feed-forward network ``MLP([256] * 4) → 256`` without state, whose input
   at step t is the image minus the canvas drawn so far, recomputed every step.
2. **Output net** ``MLP([128])`` on the core's output → 9 numbers: scale mean and log-std (2 + 2),
   shift mean and log-std (2 + 2), the presence logit (1).
3. **where.** ``scale = sigmoid(z_s)``, ``shift = tanh(z_t)`` with ``z_s, z_t ~ N(μ, exp(log σ))``;
   per axis, the object's box has size ``scale · image size`` and centre
   ``(shift + 1) / 2 · image size``. In the normalized box convention of :mod:`spair.ops.render`,
   ``(y_top, x_left, height, width) = ((t_y + 1)/2 − s_y/2, (t_x + 1)/2 − s_x/2, s_y, s_x)``.
4. **what.** A 14×14 glimpse at the box (:func:`spair.ops.render.extract_glimpses`) →
   ``MLP([512, 256])`` with softplus → mean and log-std of ``z_what`` (A = 50); the decoder
   ``MLP([256, 512])`` with softplus → 14·14·3 logits → sigmoid: the object's RGB sprite.
5. **Canvas.** Additive: ``canvas = clip(Σ_t z_pres_t · place(sprite_t, box_t), 0, 1)`` where
   ``place`` draws the sprite into its box with the project's sprite sampling (bilinear, zero
   outside the sprite; :func:`spair.ops.render.sprite_grid`) — the "inverse spatial transformer".
6. **Objective** (per image, the negative ELBO): Bernoulli cross-entropy of the image under the
   canvas, plus ``KL(where)`` (scale logits against ``N(scale_prior_mean, scale_prior_std)``,
   shift pre-tanh values against ``N(shift_prior_mean, shift_prior_std)``) and ``KL(what)``
   (against ``N(0, 1)``) of every step that draws an object, plus (halting variant only) the
   presence KL.

**Number of steps.** As in the paper's comparison, the number of steps of an image is its true
number of objects and every step draws an object (``z_pres ≡ 1``, no presence KL): AIR is *told*
how many objects there are, at training and at test time. ``forward`` and :class:`AirDetector`
therefore take ``n_steps`` per image.

**Learned halting** (``halting=True``, the original AIR). Each step samples a presence
``z_pres_t`` (a relaxed Bernoulli of temperature ``pres_temperature`` during training, rounded at
evaluation). As in the authors' code, the running sum ``S_t = Σ_{s ≤ t} (1 − z_pres_s)`` decides
which steps are taken: step t is *reached* while ``S_{t−1} < stopping_threshold`` and it *draws*
(is "on") while ``S_t < stopping_threshold``. So with hard samples the first ``z_pres = 0`` stops
the image. ``max_steps`` (or a per-image ``n_steps``) bounds the number of steps. The presence
prior is Bernoulli with log-odds ``κ`` given to ``forward`` (the trainer anneals it as the authors
did: ``κ_t = log(odds_t + 1e−6)`` with odds ``1e4 → 1e−9``, ×0.1 per 3000 steps). The presence KL
is the analytic ``KL(Bernoulli(q_t) ‖ Bernoulli(σ(κ)))`` of every *reached* step (including the
step that decides to stop; the authors used a single-sample relaxed KL of the steps that draw).

Where and what KLs are weighted by whether the step draws (a hard 0/1 mask, as in the authors'
code), not by the relaxed presence. Every log-std is clipped to ±10 before ``exp`` and every
logit to ±10 before a sigmoid/tanh (numerical safety; inactive in normal training).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import from_dict, param
from ..errors import CheckpointError, ConfigError, DataError
from ..io import load_torch_file
from ..ops.distributions import LOGIT_CLIP, bernoulli_kl, clipped_sigmoid, gaussian_kl, relaxed_bernoulli
from ..ops.render import extract_glimpses, mask_extents, sprite_grid
from .detector import Detections, register_detector
from .networks import MLP
from .spair_detector import CLAIM_THRESHOLD  # segment boxes use SPAIR's rule and threshold

Variant = Literal["air", "dair"]
SampleMode = Literal["relaxed", "hard", "mean"]
BoxMode = Literal["window", "ink", "segment"]
BOX_MODES = ("window", "ink", "segment")

INK_THRESHOLD = 0.1
"""A pixel belongs to an object's visible ink when the object alone changes it by more than this."""

CHECKPOINT_FORMAT = "spair-air-train-1"
"""``format`` of the training checkpoints of :mod:`spair.training.air_trainer`."""

#: Priors (scale logit mean, scale logit std, shift std) per number of digits that the authors chose
#: by search for the comparison experiment (spec section 10).
PAPER_WHERE_PRIORS: dict[str, dict[int, tuple[float, float, float]]] = {
    "air": {1: (-2.944, 0.2, 1.0), 3: (-2.197, 0.2, 1.0), 5: (-2.197, 0.2, 2.0), 7: (-1.386, 0.4, 4.0),
            9: (-0.405, 0.2, 1.0)},
    "dair": {1: (-2.944, 0.25, 2.0), 3: (-2.944, 0.5, 1.0), 5: (-2.197, 0.25, 1.0), 7: (-2.944, 0.75, 1.0),
             9: (-0.405, 0.25, 2.0)},
}


def paper_where_prior(variant: str, n: int) -> tuple[float, float, float]:
    """``(scale_prior_mean, scale_prior_std, shift_prior_std)`` of the authors for ``n`` digits.

    For an ``n`` outside {1, 3, 5, 7, 9} the row of the nearest tabulated ``n`` is used (ties go to
    the smaller one).
    """
    if variant not in PAPER_WHERE_PRIORS:
        raise ConfigError(f"unknown AIR variant '{variant}' (use 'air' or 'dair')")
    table = PAPER_WHERE_PRIORS[variant]
    nearest = min(table, key=lambda k: (abs(k - n), k))
    return table[nearest]


@dataclass
class AirConfig:
    """Architecture and prior of AIR / DAIR. Defaults: the authors' AIR at 5 digits per image."""

    variant: Variant = param("air", help="'air' (LSTM core over the image) or 'dair' (feed-forward core "
                                         "over image − canvas)")
    image_size: tuple[int, int] = param((48, 48), lo=2, hi=4096, help="(H, W) of the images: the core reads "
                                                                       "the whole flattened image")
    object_shape: tuple[int, int] = param((14, 14), lo=2, hi=128, help="glimpse and sprite size (H_obj, W_obj)")
    A: int = param(50, lo=1, hi=4096, help="dimension of z_what")
    core_size: int = param(256, lo=1, hi=8192, help="LSTM units (air) / output size of the feed-forward core (dair)")
    lstm_forget_bias: float = param(1.0, help="constant added to the LSTM forget gate (the TF default)")
    dair_hidden: tuple[int, ...] = param((256, 256, 256, 256), lo=1, help="hidden layers of DAIR's core")
    output_hidden: tuple[int, ...] = param((128,), lo=1, help="hidden layers of the output net (core → where, presence)")
    encoder_hidden: tuple[int, ...] = param((512, 256), lo=1, help="hidden layers of the object encoder (softplus)")
    decoder_hidden: tuple[int, ...] = param((256, 512), lo=1, help="hidden layers of the object decoder (softplus)")
    scale_prior_mean: float = param(-2.197, help="prior mean of the scale logits (logit 0.1 = −2.197)")
    scale_prior_std: float = param(0.2, lo=0.0, lo_open=True, help="prior std of the scale logits")
    shift_prior_mean: float = param(0.0, help="prior mean of the shift pre-tanh values")
    shift_prior_std: float = param(2.0, lo=0.0, lo_open=True, help="prior std of the shift pre-tanh values")
    attr_prior_mean: float = param(0.0, help="prior mean of z_what")
    attr_prior_std: float = param(1.0, lo=0.0, lo_open=True, help="prior std of z_what")
    halting: bool = param(False, help="learn when to stop (z_pres with a prior) instead of running the given "
                                      "number of steps with z_pres = 1")
    max_steps: int = param(9, lo=1, hi=1000, help="halting variant: most steps per image")
    stopping_threshold: float = param(0.99, lo=0.0, lo_open=True, help="halting variant: stop once Σ(1 − z_pres) "
                                                                       "reaches this")
    pres_temperature: float = param(1.0, lo=0.0, lo_open=True, help="halting variant: temperature of the relaxed "
                                                                    "Bernoulli z_pres")

    @classmethod
    def for_comparison(cls, variant: str, n: int, **kw: Any) -> "AirConfig":
        """The config of the paper's comparison for ``n`` digits: the authors' priors for that ``n``."""
        mean, std, shift_std = paper_where_prior(variant, n)
        return cls(variant=variant, scale_prior_mean=mean, scale_prior_std=std,  # type: ignore[arg-type]
                   shift_prior_std=shift_std, **kw)


# --------------------------------------------------------------------------------------------
# Outputs


@dataclass
class AirNoise:
    """All randomness of one forward pass, drawn up front per step, (B, T, ·)."""

    scale: torch.Tensor   # (B, T, 2) standard normal
    shift: torch.Tensor   # (B, T, 2) standard normal
    what: torch.Tensor    # (B, T, A) standard normal
    pres: torch.Tensor    # (B, T) uniform(0, 1)

    @staticmethod
    def sample(B: int, T: int, A: int, device: torch.device | str = "cpu",
               generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> "AirNoise":
        g = dict(generator=generator, device=device, dtype=dtype)
        return AirNoise(torch.randn(B, T, 2, **g), torch.randn(B, T, 2, **g), torch.randn(B, T, A, **g),
                        torch.rand(B, T, **g))


@dataclass
class AirLossTerms:
    """Per-image loss terms, each (B,). ``total`` = the negative ELBO."""

    recon: torch.Tensor      # −log p(x | z): Bernoulli cross-entropy summed over pixels and channels
    kl_where: torch.Tensor   # Σ_steps on_t · KL(scale, shift)
    kl_what: torch.Tensor    # Σ_steps on_t · KL(z_what)
    kl_pres: torch.Tensor    # Σ_reached steps KL(z_pres) (0 without halting)

    @property
    def kl(self) -> torch.Tensor:
        return self.kl_where + self.kl_what + self.kl_pres

    @property
    def total(self) -> torch.Tensor:
        return self.recon + self.kl

    def means(self) -> dict[str, float]:
        d = {k: float(getattr(self, k).detach().mean()) for k in ("recon", "kl_where", "kl_what", "kl_pres")}
        d["kl"] = float(self.kl.detach().mean())
        d["total"] = float(self.total.detach().mean())
        return d


@dataclass
class AirOutput:
    """Everything one forward pass produces; per-step tensors are (B, T, ·), T = the most steps."""

    image_hw: tuple[int, int]
    scale: torch.Tensor          # (B, T, 2) (s_y, s_x) in (0, 1): box size / image size
    shift: torch.Tensor          # (B, T, 2) (t_y, t_x) in (−1, 1): box centre, −1 = top/left edge
    boxes: torch.Tensor          # (B, T, 4) normalized (y_top, x_left, height, width)
    z_what: torch.Tensor         # (B, T, A)
    z_pres: torch.Tensor         # (B, T) presence used to draw (1 without halting; 0 on steps not taken)
    pres_prob: torch.Tensor      # (B, T) sigmoid of the presence logit (1 without halting)
    reached: torch.Tensor        # (B, T) bool: the step was computed for this image
    on: torch.Tensor             # (B, T) bool: the step draws an object (= a detection)
    glimpses: torch.Tensor       # (B, T, 3, gh, gw)
    sprites: torch.Tensor        # (B, T, 3, gh, gw) in [0, 1]
    params: dict[str, torch.Tensor] = field(default_factory=dict)  # distribution parameters
    recon: torch.Tensor | None = None                 # (B, 3, H, W) canvas clipped to [0, 1]
    sprite_images: torch.Tensor | None = None         # (B, T, 3, H, W) each object alone (keep_sprites)
    losses: AirLossTerms | None = None

    @property
    def counts(self) -> torch.Tensor:
        """(B,) number of objects drawn per image."""
        return self.on.sum(1)


# --------------------------------------------------------------------------------------------
# Building blocks


class LstmCore(nn.Module):
    """An LSTM cell whose input projection can be computed once for a constant input.

    gates = W_x x + W_h h + b, split into (i, j, f, o); c' = σ(f + forget_bias)·c + σ(i)·tanh(j),
    h' = σ(o)·tanh(c'). Weights are Glorot-uniform over the stacked kernel [W_x; W_h] of shape
    (n_in + H, 4H), as TensorFlow initializes an LSTM cell; biases are zero.
    """

    def __init__(self, n_in: int, hidden: int, forget_bias: float = 1.0):
        super().__init__()
        self.hidden = hidden
        self.forget_bias = forget_bias
        self.input_proj = nn.Linear(n_in, 4 * hidden)
        self.hidden_proj = nn.Linear(hidden, 4 * hidden, bias=False)
        bound = math.sqrt(6.0 / (n_in + hidden + 4 * hidden))
        for lin in (self.input_proj, self.hidden_proj):
            nn.init.uniform_(lin.weight, -bound, bound)
        nn.init.zeros_(self.input_proj.bias)

    def step(self, x_proj: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step from the projected input ``x_proj = input_proj(x)`` (B, 4H); returns (h, c)."""
        h, c = state
        i, j, f, o = (x_proj + self.hidden_proj(h)).chunk(4, -1)
        c = torch.sigmoid(f + self.forget_bias) * c + torch.sigmoid(i) * torch.tanh(j)
        return torch.sigmoid(o) * torch.tanh(c), c


def place_sprites(sprites: torch.Tensor, boxes: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Draw each sprite into its box over an empty (zero) image: the inverse spatial transformer.

    sprites (B, N, C, sh, sw); boxes (B, N, 4) normalized (y_top, x_left, height, width). Output
    pixel p samples the sprite bilinearly at the sprite-frame position of p (eq. R1 of
    :mod:`spair.ops.render`), zero outside the sprite. Returns (B, N, C, H, W).
    """
    B, N, C, sh, sw = sprites.shape
    H, W = out_hw
    if N == 0:
        return sprites.new_zeros(B, 0, C, H, W)
    gy, gx = sprite_grid(boxes, out_hw)                                       # (B,N,H), (B,N,W)
    grid = torch.stack(torch.broadcast_tensors(gx[..., None, :, None], gy[..., :, None, None]), -1)
    out = F.grid_sample(sprites.reshape(B * N, C, sh, sw), grid.reshape(B * N, H, W, 2), mode="bilinear",
                        padding_mode="zeros", align_corners=False)
    return out.reshape(B, N, C, H, W)


def where_to_boxes(scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """(s_y, s_x), (t_y, t_x) → normalized boxes (y_top, x_left, height, width): centre (t + 1)/2."""
    centre = (shift + 1.0) / 2.0
    top_left = centre - scale / 2.0
    return torch.cat([top_left, scale], -1)


def _bounded_exp(log_std: torch.Tensor) -> torch.Tensor:
    return torch.exp(log_std.clamp(-LOGIT_CLIP, LOGIT_CLIP))


# --------------------------------------------------------------------------------------------
# The model


class Air(nn.Module):
    """AIR / DAIR (module docstring). ``forward(x, n_steps)`` returns an :class:`AirOutput`."""

    def __init__(self, cfg: AirConfig | None = None):
        super().__init__()
        cfg = cfg or AirConfig()
        if cfg.variant not in ("air", "dair"):
            raise ConfigError(f"model.variant: unknown AIR variant '{cfg.variant}' (use 'air' or 'dair')")
        self.cfg = cfg
        H, W = cfg.image_size
        gh, gw = cfg.object_shape
        n_image = 3 * H * W
        if cfg.variant == "air":
            self.core: nn.Module = LstmCore(n_image, cfg.core_size, cfg.lstm_forget_bias)
        else:
            self.core = MLP(n_image, cfg.dair_hidden, cfg.core_size)
        self.output_net = MLP(cfg.core_size, cfg.output_hidden, 9)
        self.obj_encoder = MLP(3 * gh * gw, cfg.encoder_hidden, 2 * cfg.A, activation=nn.Softplus)
        self.obj_decoder = MLP(cfg.A, cfg.decoder_hidden, 3 * gh * gw, activation=nn.Softplus)
        self.register_buffer("where_prior_mean", torch.tensor([cfg.scale_prior_mean] * 2 + [cfg.shift_prior_mean] * 2),
                             persistent=False)
        self.register_buffer("where_prior_std", torch.tensor([cfg.scale_prior_std] * 2 + [cfg.shift_prior_std] * 2),
                             persistent=False)

    # -- helpers ------------------------------------------------------------------------------

    def steps_per_image(self, n_steps: int | Sequence[int] | np.ndarray | torch.Tensor | None, B: int,
                        device: torch.device) -> torch.Tensor:
        """(B,) long: the steps each image runs. ``None`` means ``max_steps`` (halting variant only)."""
        if n_steps is None:
            if not self.cfg.halting:
                raise ConfigError("AIR without halting runs the true number of objects: pass n_steps "
                                  "(an int or one count per image)")
            return torch.full((B,), self.cfg.max_steps, dtype=torch.long, device=device)
        steps = torch.as_tensor(n_steps, device=device).to(torch.long)
        if steps.ndim == 0:
            steps = steps.expand(B)
        if steps.shape != (B,):
            raise ConfigError(f"n_steps: expected one count per image ({B}), got shape {tuple(steps.shape)}")
        if B and int(steps.min()) < 0:
            raise ConfigError("n_steps: counts must not be negative")
        if self.cfg.halting:
            steps = steps.clamp(max=self.cfg.max_steps)
        return steps

    def decode_sprites(self, z_what: torch.Tensor) -> torch.Tensor:
        """z_what (..., A) → RGB sprites (..., 3, gh, gw) in (0, 1)."""
        gh, gw = self.cfg.object_shape
        return clipped_sigmoid(self.obj_decoder(z_what)).unflatten(-1, (3, gh, gw))

    def _objects(self, x: torch.Tensor, boxes: torch.Tensor, noise_what: torch.Tensor, stochastic: bool
                 ) -> dict[str, torch.Tensor]:
        """Glimpse → z_what → sprite → sprite drawn over the image, for boxes (B, n, 4)."""
        A = self.cfg.A
        B, n = boxes.shape[:2]
        if n == 0:
            glimpses = x.new_zeros(B, 0, 3, *self.cfg.object_shape)
        else:
            glimpses = extract_glimpses(x, boxes, self.cfg.object_shape)        # (B, n, 3, gh, gw)
        e = self.obj_encoder(glimpses.flatten(2))
        mean, std = e[..., :A], _bounded_exp(e[..., A:])
        z_what = mean + std * noise_what if stochastic else mean
        sprites = self.decode_sprites(z_what)
        images = place_sprites(sprites, boxes, tuple(x.shape[-2:]))             # (B, n, 3, H, W)
        return {"glimpses": glimpses, "what_mean": mean, "what_std": std, "z_what": z_what, "sprites": sprites,
                "images": images}

    def _where(self, h: torch.Tensor, noise: AirNoise, t: int | slice, stochastic: bool) -> dict[str, torch.Tensor]:
        """Output net on core outputs h (..., core_size) → where parameters, samples and boxes."""
        o = self.output_net(h)
        s_mean, s_std = o[..., 0:2], _bounded_exp(o[..., 2:4])
        t_mean, t_std = o[..., 4:6], _bounded_exp(o[..., 6:8])
        logit = o[..., 8].clamp(-LOGIT_CLIP, LOGIT_CLIP)
        s_logit = s_mean + s_std * noise.scale[:, t] if stochastic else s_mean
        t_pre = t_mean + t_std * noise.shift[:, t] if stochastic else t_mean
        scale = clipped_sigmoid(s_logit)
        shift = torch.tanh(t_pre.clamp(-LOGIT_CLIP, LOGIT_CLIP))
        return {"scale_mean": s_mean, "scale_std": s_std, "shift_mean": t_mean, "shift_std": t_std,
                "pres_logit": logit, "scale": scale, "shift": shift, "boxes": where_to_boxes(scale, shift)}

    def _presence(self, logit: torch.Tensor, u: torch.Tensor, active: torch.Tensor, stop_sum: torch.Tensor,
                  sample: SampleMode) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step's presence: (reached, on, z_pres, new stop_sum), each (B,).

        Without halting every active step is reached and draws with z_pres = 1. With halting,
        z_pres is sampled ("relaxed": a relaxed Bernoulli; "hard": rounded; "mean": 1[logit > 0]),
        the step is reached while ``stop_sum < stopping_threshold`` and draws while that still
        holds after adding ``1 − z_pres`` (module docstring, "Learned halting").
        """
        if not self.cfg.halting:
            return active, active, active.to(logit.dtype), stop_sum
        if sample == "mean":
            z = (logit > 0).to(logit.dtype)
        else:
            z = relaxed_bernoulli(logit, u, self.cfg.pres_temperature)
            if sample == "hard":
                z = torch.round(z)
        thr = self.cfg.stopping_threshold
        reached = active & (stop_sum < thr)
        new_sum = torch.where(reached, stop_sum + (1.0 - z.detach()), stop_sum)
        on = reached & (new_sum < thr)
        return reached, on, torch.where(on, z, torch.zeros_like(z)), new_sum

    def _run_air(self, x: torch.Tensor, steps: torch.Tensor, T: int, noise: AirNoise, sample: SampleMode
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[tuple[torch.Tensor, ...]]]:
        """AIR's T steps. The LSTM reads the same image every step and never sees the latents, so
        its input projection is computed once and the objects of all steps are computed together."""
        B = x.shape[0]
        x_proj = self.core.input_proj(x.flatten(1))
        state = (x.new_zeros(B, self.cfg.core_size), x.new_zeros(B, self.cfg.core_size))
        hs = []
        for _ in range(T):
            state = self.core.step(x_proj, state)
            hs.append(state[0])
        h = torch.stack(hs, 1) if hs else x.new_zeros(B, 0, self.cfg.core_size)
        where = self._where(h, noise, slice(0, T), sample != "mean")
        objs = self._objects(x, where["boxes"], noise.what[:, :T], sample != "mean")
        stop_sum, per_step = x.new_zeros(B), []
        for t in range(T):
            reached, on, z, stop_sum = self._presence(where["pres_logit"][:, t], noise.pres[:, t], t < steps,
                                                      stop_sum, sample)
            per_step.append((reached, on, z))
        return where, objs, per_step

    def _run_dair(self, x: torch.Tensor, steps: torch.Tensor, T: int, noise: AirNoise, sample: SampleMode
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[tuple[torch.Tensor, ...]]]:
        """DAIR's T steps: the core reads image − canvas, so each step waits for the previous one."""
        B = x.shape[0]
        stochastic = sample != "mean"
        if T == 0:
            where = self._where(x.new_zeros(B, 0, self.cfg.core_size), noise, slice(0, 0), stochastic)
            return where, self._objects(x, where["boxes"], noise.what[:, :0], stochastic), []
        flat = x.flatten(1)
        canvas = torch.zeros_like(x)
        stop_sum, per_step, wheres, objects = x.new_zeros(B), [], [], []
        for t in range(T):
            h = self.core(flat - canvas.clamp(0.0, 1.0).flatten(1))
            where = self._where(h[:, None], noise, slice(t, t + 1), stochastic)
            objs = self._objects(x, where["boxes"], noise.what[:, t:t + 1], stochastic)
            reached, on, z, stop_sum = self._presence(where["pres_logit"][:, 0], noise.pres[:, t], t < steps,
                                                      stop_sum, sample)
            canvas = canvas + z[:, None, None, None] * objs["images"][:, 0]
            per_step.append((reached, on, z))
            wheres.append(where)
            objects.append(objs)
        where = {k: torch.cat([w[k] for w in wheres], 1) for k in wheres[0]}
        objs = {k: torch.cat([o[k] for o in objects], 1) for k in objects[0]}
        return where, objs, per_step

    # -- forward ------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, n_steps: int | Sequence[int] | np.ndarray | torch.Tensor | None = None, *,
                sample: SampleMode = "relaxed", pres_prior_log_odds: float = math.log(1e-9 + 1e-6),
                noise: AirNoise | None = None, generator: torch.Generator | None = None,
                keep_sprites: bool = False) -> AirOutput:
        """Encode, draw and score a batch ``x`` (B, 3, H, W) in [0, 1].

        ``n_steps``: steps per image (an int for all, or one per image): the true number of objects
        (without halting), or an upper bound (halting; default ``max_steps``). ``sample``:
        "relaxed" (training: reparameterized Gaussians, relaxed z_pres), "hard" (samples, z_pres
        rounded; the paper's evaluation), "mean" (deterministic: means, z_pres = 1[logit > 0]).
        ``pres_prior_log_odds``: log-odds of the presence prior (halting only; the trainer's
        schedule). ``noise``: the randomness to use (at least T steps), else drawn from
        ``generator``. ``keep_sprites`` keeps each object's image (B, T, 3, H, W) in the output.
        """
        cfg = self.cfg
        B, C, H, W = x.shape
        if (H, W) != tuple(cfg.image_size) or C != 3:
            raise DataError(f"AIR model for {cfg.image_size[0]}x{cfg.image_size[1]} RGB images got input of "
                            f"shape {tuple(x.shape[1:])}")
        steps = self.steps_per_image(n_steps, B, x.device)
        T = int(steps.max()) if B else 0
        if noise is None:
            noise = AirNoise.sample(B, T, cfg.A, x.device, generator, x.dtype)
        run = self._run_air if cfg.variant == "air" else self._run_dair
        where, objs, per_step = run(x, steps, T, noise, sample)
        if per_step:
            reached, on, z_pres = (torch.stack(v, 1) for v in zip(*per_step))
        else:
            reached = on = torch.zeros(B, 0, dtype=torch.bool, device=x.device)
            z_pres = x.new_zeros(B, 0)
        recon = (z_pres[..., None, None, None] * objs["images"]).sum(1).clamp(0.0, 1.0)
        params = {k: where[k] for k in ("scale_mean", "scale_std", "shift_mean", "shift_std", "pres_logit")}
        params.update(what_mean=objs["what_mean"], what_std=objs["what_std"])
        out = AirOutput(image_hw=(H, W), scale=where["scale"], shift=where["shift"], boxes=where["boxes"],
                        z_what=objs["z_what"], z_pres=z_pres,
                        pres_prob=torch.sigmoid(where["pres_logit"]) if cfg.halting else on.to(x.dtype),
                        reached=reached, on=on, glimpses=objs["glimpses"], sprites=objs["sprites"], params=params,
                        recon=recon, sprite_images=objs["images"] if keep_sprites else None)
        xent = -(x * torch.log(recon + 1e-9) + (1 - x) * torch.log(1 - recon + 1e-9)).flatten(1).sum(1)
        out.losses = AirLossTerms(xent, *self.kl_terms(out, pres_prior_log_odds))
        return out

    def kl_terms(self, out: AirOutput, pres_prior_log_odds: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(kl_where, kl_what, kl_pres), each (B,), from the distribution parameters of ``out``."""
        p = out.params
        on = out.on.to(out.z_what.dtype)
        mean = torch.cat([p["scale_mean"], p["shift_mean"]], -1)
        std = torch.cat([p["scale_std"], p["shift_std"]], -1)
        kl_where = gaussian_kl(mean, std, self.where_prior_mean, self.where_prior_std).sum(-1)
        kl_what = gaussian_kl(p["what_mean"], p["what_std"], self.cfg.attr_prior_mean, self.cfg.attr_prior_std).sum(-1)
        if self.cfg.halting:
            q = torch.sigmoid(p["pres_logit"])
            prior = torch.sigmoid(torch.full_like(q, float(pres_prior_log_odds)))
            kl_pres = (bernoulli_kl(q, prior) * out.reached.to(q.dtype)).sum(1)
        else:
            kl_pres = on.new_zeros(on.shape[0])
        return (on * kl_where).sum(1), (on * kl_what).sum(1), kl_pres


# --------------------------------------------------------------------------------------------
# Loading


def read_air_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read an AIR training checkpoint with ``weights_only=True``; every failure is one CheckpointError."""
    p = Path(path)
    ckpt = load_torch_file(p, "checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{p} is not an AIR/DAIR checkpoint (format '{CHECKPOINT_FORMAT}')")
    for key in ("model", "model_config"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {p} is incomplete (no '{key}')")
    for k, v in ckpt["model"].items():
        if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"checkpoint {p} holds non-finite weights in {k}")
    return ckpt


def load_air_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> Air:
    """An AIR/DAIR model from a training checkpoint (``best.pt`` / ``last.pt``), in eval mode."""
    ckpt = read_air_checkpoint(path)
    try:
        cfg = from_dict(AirConfig, ckpt["model_config"], prefix="model.")
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path} has an invalid model config: {e}") from None
    model = Air(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {path} does not fit the AIR architecture of its config ({first[:200]})") from None
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------
# Detector


def window_boxes_px(out: AirOutput) -> torch.Tensor:
    """Each step's box in pixels (B, T, 4) (x0, y0, x1, y1), clipped to the image:
    centre = (shift + 1)/2 · size, extent = scale · size."""
    H, W = out.image_hw
    yt, xt, ys, xs = out.boxes.unbind(-1)
    b = torch.stack([xt * W, yt * H, (xt + xs) * W, (yt + ys) * H], -1)
    lim = torch.tensor([W, H, W, H], dtype=b.dtype, device=b.device)
    return torch.minimum(b.clamp(min=0), lim)


def ink_boxes_px(out: AirOutput, ink_threshold: float = INK_THRESHOLD) -> tuple[torch.Tensor, torch.Tensor]:
    """Extent of each object's visible ink: pixels where the object alone (over the black canvas)
    is brighter than ``ink_threshold`` in some channel. Returns boxes (B, T, 4) and a bool (B, T)
    telling which objects have any such pixel. Needs ``forward(..., keep_sprites=True)``."""
    if out.sprite_images is None:
        raise ValueError("ink boxes need the objects' images: run the model with keep_sprites=True")
    visible = out.sprite_images.amax(2) > ink_threshold                       # (B, T, H, W)
    zero = torch.zeros(visible.shape[:2], dtype=torch.long, device=visible.device)
    return mask_extents(visible, zero, zero, out.image_hw)


def segment_boxes_px(out: AirOutput, x: torch.Tensor, ink_threshold: float = INK_THRESHOLD,
                     claim_threshold: float = CLAIM_THRESHOLD) -> tuple[torch.Tensor, torch.Tensor]:
    """Extent of the image pixels each drawn object explains (its segment), (B, T, 4) and (B, T).

    SPAIR's first ``segment`` rule (``spair.models.spair_detector.segment_boxes_px`` without its sharing
    of overlaps and dropping of minor parts, which came after the AIR results), for AIR's black
    background: pixel p belongs to object i when the input ``x`` (B, 3, H, W) is
    brighter than ``ink_threshold`` there (max over channels), object i alone is brighter than
    ``claim_threshold``, and no other drawn object is brighter at p. The extent comes from the
    input's own pixels, so it is as sharp as the image where the decoded sprite is blurry.
    Needs ``forward(..., keep_sprites=True)``.
    """
    if out.sprite_images is None:
        raise ValueError("segment boxes need the objects' images: run the model with keep_sprites=True")
    s = out.sprite_images.amax(2) * out.on[..., None, None].to(out.sprite_images.dtype)   # (B, T, H, W)
    best = s.amax(1, keepdim=True)
    ink = x.amax(1, keepdim=True) > ink_threshold                                          # (B, 1, H, W)
    mask = ink & (s > claim_threshold) & (s >= best)
    zero = torch.zeros(mask.shape[:2], dtype=torch.long, device=mask.device)
    return mask_extents(mask, zero, zero, out.image_hw)


def detections_from_output(out: AirOutput, box_mode: BoxMode = "window",
                           ink_threshold: float = INK_THRESHOLD, x: torch.Tensor | None = None) -> list[Detections]:
    """One detection per step that draws an object; score 1 (fixed steps) or its presence probability.

    ``box_mode``: "window" (the step's box), "ink" (the extent of the object's visible ink, else its
    window) or "segment" (the extent of its segment of the input ``x``, else its ink, else its window)."""
    if box_mode not in BOX_MODES:
        raise ConfigError(f"unknown box mode '{box_mode}' (use 'segment', 'ink' or 'window')")
    boxes = window_boxes_px(out)
    if box_mode in ("ink", "segment"):
        ink, found = ink_boxes_px(out, ink_threshold)
        boxes = torch.where(found[..., None], ink.to(boxes.dtype), boxes)
    if box_mode == "segment":
        if x is None:
            raise ValueError("segment boxes need the input images x")
        seg, found = segment_boxes_px(out, x, ink_threshold)
        boxes = torch.where(found[..., None], seg.to(boxes.dtype), boxes)
    b, s, keep = boxes.cpu().numpy(), out.pres_prob.cpu().numpy(), out.on.cpu().numpy()
    return [Detections(b[i][keep[i]], s[i][keep[i]]) for i in range(len(b))]


@register_detector("air")
class AirDetector:
    """AIR or DAIR (whichever the checkpoint holds) as a detector.

    Without halting the model runs exactly ``n_steps`` steps per image and reports one box per
    step with score 1: it must be *told* the number of objects of each image, as in the paper's
    comparison. Give ``n_steps`` to the constructor (the same count for every image) or per call
    to :meth:`detect` (an int or one count per image). A halting model stops by itself
    (``n_steps`` then caps the steps, default ``max_steps``) and scores boxes by their presence
    probability. The model has no background: ``backgrounds`` are ignored (the comparison scenes
    are black). ``box_mode``: "window" (the step's box), "ink" (the extent of its visible ink) or
    "segment" (the extent of the input pixels it explains; :func:`segment_boxes_px`).
    """

    name = "air"

    def __init__(self, checkpoint: str | os.PathLike | None = None, n_steps: int | None = None,
                 box_mode: BoxMode = "ink", batch_size: int = 64, sample: SampleMode = "mean", seed: int = 0,
                 device: str = "cpu", ink_threshold: float = INK_THRESHOLD, model: Air | None = None):
        if model is None and checkpoint is None:
            raise ConfigError("method 'air' needs a checkpoint (an AIR/DAIR training checkpoint)")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        if n_steps is not None and n_steps < 0:
            raise ConfigError(f"n_steps must not be negative, got {n_steps}")
        if box_mode not in BOX_MODES:
            raise ConfigError(f"unknown box mode '{box_mode}' (use 'segment', 'ink' or 'window')")
        if sample not in ("mean", "hard"):
            raise ConfigError(f"sample must be 'mean' or 'hard', got '{sample}'")
        self.model = model if model is not None else load_air_model(checkpoint, device)  # type: ignore[arg-type]
        self.model.eval()
        self.n_steps, self.box_mode, self.batch_size = n_steps, box_mode, batch_size
        self.sample, self.device, self.ink_threshold = sample, device, ink_threshold
        self.generator = torch.Generator(device=device).manual_seed(seed)

    @torch.no_grad()
    def detect(self, images: Sequence[np.ndarray] | np.ndarray, backgrounds: Sequence[np.ndarray] | None = None,
               n_steps: int | Sequence[int] | np.ndarray | None = None) -> list[Detections]:
        """Detections for uint8 images (H, W, 3) of the model's size; ``n_steps`` as in the class doc."""
        n = len(images)
        counts = n_steps if n_steps is not None else self.n_steps
        if counts is None and not self.model.cfg.halting:
            raise ConfigError("AIR without halting must be told the number of objects: pass n_steps")
        if counts is not None:
            counts = np.array(np.broadcast_to(np.asarray(counts, dtype=np.int64), (n,)))
        H, W = self.model.cfg.image_size
        was_training = self.model.training
        self.model.eval()
        dets: list[Detections] = []
        for start in range(0, n, self.batch_size):
            chunk = np.stack([np.asarray(im) for im in images[start:start + self.batch_size]])
            if chunk.dtype != np.uint8 or chunk.shape[1:] != (H, W, 3):
                raise DataError(f"AIR model expects uint8 images of {H}x{W}x3, got {chunk.dtype} {chunk.shape[1:]}")
            x = torch.from_numpy(chunk).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
            steps = None if counts is None else torch.from_numpy(np.ascontiguousarray(counts[start:start + len(chunk)]))
            out = self.model(x, steps, sample=self.sample, generator=self.generator,
                             keep_sprites=self.box_mode != "window")
            dets += detections_from_output(out, self.box_mode, self.ink_threshold, x=x)
        self.model.train(was_training)
        return dets
