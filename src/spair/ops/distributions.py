"""Gaussian and relaxed-Bernoulli helpers, written as in the paper and the authors' code.

Every continuous latent of SPAIR is a diagonal Gaussian on an unconstrained ("logit") value that is
squashed afterwards; the KL to the prior is taken on the pre-squash value (spec section 2). The
standard deviation is bounded, ``std = 2 * sigmoid(clip(raw, -10, 10))`` in ``(0, 2)``.
"""

from __future__ import annotations

import math

import torch

LOGIT_CLIP = 10.0


def clipped_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """``sigmoid(clip(x, -10, 10))``: every squash in SPAIR clips its logit first (spec section 11.4)."""
    return torch.sigmoid(x.clamp(-LOGIT_CLIP, LOGIT_CLIP))


def bounded_std(raw: torch.Tensor) -> torch.Tensor:
    """``2 * sigmoid(clip(raw))``: a std in (0, 2) that equals 1 at ``raw = 0``."""
    return 2.0 * clipped_sigmoid(raw)


def gaussian_kl(mean: torch.Tensor, std: torch.Tensor, prior_mean: float | torch.Tensor,
                prior_std: float | torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mean, std²) ‖ N(prior_mean, prior_std²)).

    KL = log σp − log σ + (σ² + (μ − μp)²) / (2 σp²) − ½.
    """
    prior_std_t = torch.as_tensor(prior_std, dtype=mean.dtype, device=mean.device)
    var_ratio = (std / prior_std_t) ** 2
    diff = (mean - prior_mean) / prior_std_t
    return 0.5 * (var_ratio + diff * diff - 1.0) - torch.log(std) + torch.log(prior_std_t)


def logistic_noise(u: torch.Tensor) -> torch.Tensor:
    """Logistic noise from uniforms, ``log(u + 1e-9) − log(1 − u + 1e-9)`` (spec section 4.1)."""
    return torch.log(u + 1e-9) - torch.log(1.0 - u + 1e-9)


def relaxed_bernoulli(log_odds: torch.Tensor, u: torch.Tensor, temperature: float) -> torch.Tensor:
    """Binary-Concrete sample ``sigmoid((α + L) / λ)`` with logistic noise ``L`` built from ``u``."""
    return torch.sigmoid((log_odds + logistic_noise(u)) / temperature)


def bernoulli_kl(q: torch.Tensor, p: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Elementwise KL(Bernoulli(q) ‖ Bernoulli(p)); both clamped into ``[eps, 1 − eps]``."""
    q = q.clamp(eps, 1.0 - eps)
    p = p.clamp(eps, 1.0 - eps)
    return q * (torch.log(q) - torch.log(p)) + (1.0 - q) * (torch.log1p(-q) - torch.log1p(-p))


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))
