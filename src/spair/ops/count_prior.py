"""The presence prior of SPAIR: a truncated-geometric count prior and its sequential KL.

Paper section 4.2: the number of present objects C over the N = H·W cells follows a geometric
distribution truncated to {0, …, N}; given C, the presence vector z is uniform over the binom(N, C)
vectors with C ones. So the prior of a binary vector z is exchangeable:

    P(z) = P(C = Σz) / binom(N, Σz),     P(C = c) ∝ p^c,  c = 0..N,  p = sigmoid(κ).      (P1)

The authors' code (spec section 4.3) factorizes (P1) in raster order, conditioning on the hard
presence samples s_j = 1[z_j > 0.5] of the cells already visited:

    ρ_0(c) = P(C = c),   k_i = Σ_{j<i} s_j,   r_i(c) = (c − k_i) / (N − i)
    p_i = Σ_c ρ_i(c) r_i(c)                                   prior P(z_i = 1 | s_<i)
    ρ_{i+1}(c) ∝ ρ_i(c) · (s_i r_i(c) + (1 − s_i)(1 − r_i(c)))
    KL_obj = Σ_i KL(Bernoulli(π_i) ‖ Bernoulli(p_i)),   π_i = sigmoid(α_i)

The recursion has a closed form, used here so that all cells are handled at once: multiplying the
updates out, ρ_i(c) ∝ P(C = c) · [c]_{k_i} · [N − c]_{i − k_i}, with [a]_b = a! / (a − b)! the
falling factorial (zero when b > a). :func:`count_prior_kl` evaluates it with log-gamma in float64;
:func:`count_prior_kl_recursive` is the literal recursion, kept as the reference for the tests.
p_i depends only on the schedule and on stop-gradient samples: it is a constant for backprop.
"""

from __future__ import annotations

import math

import torch

from .distributions import bernoulli_kl


_BLOCK_ELEMENTS = 1 << 18
"""Values per temporary in :func:`count_prior_cell_probs` (2 MB in float64)."""


def count_prior_log_probs(log_odds: float, n_cells: int) -> torch.Tensor:
    """log P(C = c) for c = 0..N of the geometric prior with success probability sigmoid(log_odds),
    truncated to {0, …, N} and renormalized (float64)."""
    c = torch.arange(n_cells + 1, dtype=torch.float64)
    log_p = -math.log1p(math.exp(-log_odds)) if log_odds > -30 else log_odds  # log sigmoid(κ)
    logits = c * log_p
    return logits - torch.logsumexp(logits, 0)


def _check(pi: torch.Tensor, on: torch.Tensor) -> None:
    if pi.shape != on.shape or pi.dim() != 2:
        raise ValueError(f"expected presence probs and samples of shape (B, N), got {tuple(pi.shape)} "
                         f"and {tuple(on.shape)}")


@torch.no_grad()
def count_prior_cell_probs(on: torch.Tensor, log_odds: float) -> torch.Tensor:
    """Prior presence probability p_i of every cell given the hard samples of the earlier cells.

    ``on``: (B, N) hard presence samples in raster order (any dtype; > 0.5 means on).
    Returns (B, N) float64, via the closed form ρ_i(c) ∝ P(c) [c]_{k_i} [N − c]_{i − k_i}.
    """
    B, N = on.shape
    s = (on > 0.5).to(torch.float64)
    k = torch.cumsum(s, dim=1) - s                                  # on-cells before i: (B, N)
    i = torch.arange(N, dtype=torch.float64, device=on.device)      # (N,)
    off = i - k                                                     # off-cells before i
    c = torch.arange(N + 1, dtype=torch.float64, device=on.device)  # (N+1,)
    log_prior = count_prior_log_probs(log_odds, N).to(on.device)
    # log-factorials from a table: every argument below is an integer in [0, N]
    log_fact = torch.lgamma(torch.arange(N + 1, dtype=torch.float64, device=on.device) + 1)
    ci = torch.arange(N + 1, device=on.device)

    # The work is (B, N, N+1): quadratic in the number of cells. It is done a block of cells at a time
    # (each block's temporaries ≤ _BLOCK_ELEMENTS values, cache-sized) instead of in one go, which at
    # 256×256 (484 cells) would allocate and page-fault a dozen 60 MB temporaries; same numbers.
    p = torch.empty(B, N, dtype=torch.float64, device=on.device)
    step = max(1, _BLOCK_ELEMENTS // max(1, B * (N + 1)))
    for a in range(0, N, step):
        sl = slice(a, min(a + step, N))
        k_, off_ = k[:, sl, None], off[:, sl, None]
        valid = (c >= k_) & (N - c >= off_)
        ki, offi = k_.long(), off_.long()
        log_rho = (log_prior + log_fact[ci] - log_fact[(ci - ki).clamp(min=0)]
                   + log_fact[N - ci] - log_fact[(N - ci - offi).clamp(min=0)])
        log_rho = torch.where(valid, log_rho, torch.full_like(log_rho, -math.inf))
        rho = torch.softmax(log_rho, dim=-1)                        # (B, block, N+1)
        r = ((c - k_) / (N - i[sl])[None, :, None]).clamp(0.0, 1.0)
        p[:, sl] = (rho * r).sum(-1)
    return p


def count_prior_kl(pi: torch.Tensor, on: torch.Tensor, log_odds: float) -> torch.Tensor:
    """Per-cell KL(Bernoulli(π_i) ‖ Bernoulli(p_i)) of the sequential count prior, shape (B, N).

    ``pi``: (B, N) posterior presence probabilities sigmoid(α) in raster order (gradients flow
    through it); ``on``: (B, N) presence samples (thresholded at 0.5, no gradient).
    """
    _check(pi, on)
    p = count_prior_cell_probs(on.detach(), log_odds).to(pi.dtype)
    return bernoulli_kl(pi, p)


@torch.no_grad()
def count_prior_cell_probs_recursive(on: torch.Tensor, log_odds: float) -> torch.Tensor:
    """The literal recursion of spec section 4.3 (reference for tests; loops over cells)."""
    B, N = on.shape
    s = (on > 0.5).to(torch.float64)
    rho = count_prior_log_probs(log_odds, N).exp().expand(B, N + 1).clone()
    c = torch.arange(N + 1, dtype=torch.float64)
    k = torch.zeros(B, dtype=torch.float64)
    out = torch.empty(B, N, dtype=torch.float64)
    for i in range(N):
        r = ((c[None, :] - k[:, None]) / (N - i)).clamp(0.0, 1.0)
        out[:, i] = (rho * r).sum(-1)
        si = s[:, i : i + 1]
        rho = rho * (si * r + (1 - si) * (1 - r))
        rho = rho / rho.sum(-1, keepdim=True).clamp(min=1e-6)
        k = k + s[:, i]
    return out


def exponential_prior_kl(pi: torch.Tensor, log_odds: float) -> torch.Tensor:
    """The simpler alternative: every cell independently on with probability sigmoid(log_odds),
    i.e. P(z) ∝ odds^{Σz} (an exponential prior on the count). Per-cell KL, shape like ``pi``."""
    p = torch.full_like(pi, 1.0 / (1.0 + math.exp(-log_odds)) if log_odds > -30 else 0.0)
    return bernoulli_kl(pi, p)
