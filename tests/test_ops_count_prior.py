"""The sequential count-prior KL: closed form == literal recursion == the exchangeable prior."""

import itertools
import math

import pytest
import torch

from spair.ops.count_prior import (count_prior_cell_probs, count_prior_cell_probs_recursive, count_prior_kl,
                                   count_prior_log_probs, exponential_prior_kl)


@pytest.mark.parametrize("log_odds", [-4.38, -1.0, 0.0, 2.3, 13.8])
def test_closed_form_equals_recursion(log_odds):
    g = torch.Generator().manual_seed(0)
    on = (torch.rand(64, 16, generator=g) > 0.6).float()
    on[0] = 0
    on[1] = 1
    a = count_prior_cell_probs(on, log_odds)
    b = count_prior_cell_probs_recursive(on, log_odds)
    torch.testing.assert_close(a, b, atol=1e-9, rtol=0)


@pytest.mark.parametrize("block", [1, 500, 3 * 41 * 7, 1 << 40])
def test_blocks_of_cells_give_the_same_numbers(monkeypatch, block):
    from spair.ops import count_prior

    g = torch.Generator().manual_seed(1)
    on = (torch.rand(3, 40, generator=g) > 0.7).float()
    want = count_prior_cell_probs_recursive(on, -1.5)
    monkeypatch.setattr(count_prior, "_BLOCK_ELEMENTS", 1 << 40)
    whole = count_prior_cell_probs(on, -1.5)
    monkeypatch.setattr(count_prior, "_BLOCK_ELEMENTS", block)   # 1, 4 or 7 cells (of 40) per block, or all
    got = count_prior_cell_probs(on, -1.5)
    assert torch.equal(got, whole)
    torch.testing.assert_close(got, want, atol=1e-9, rtol=0)


@pytest.mark.parametrize("N", [1, 3, 6])
@pytest.mark.parametrize("log_odds", [-2.0, 0.5, 4.0])
def test_product_of_conditionals_is_exchangeable_prior(N, log_odds):
    """Π_i p(z_i | z_<i) = P(C = Σz) / binom(N, Σz) for every binary vector z (paper 4.2)."""
    log_pc = count_prior_log_probs(log_odds, N)
    zs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=N)))
    p = count_prior_cell_probs(zs, log_odds)
    log_seq = torch.where(zs > 0.5, torch.log(p), torch.log1p(-p)).sum(1)
    k = zs.sum(1).long()
    expected = log_pc[k] - torch.tensor([math.log(math.comb(N, int(c))) for c in k], dtype=torch.float64)
    torch.testing.assert_close(log_seq, expected, atol=1e-9, rtol=0)
    assert torch.exp(log_seq).sum().item() == pytest.approx(1.0, abs=1e-9)


def test_geometric_prior_values():
    lp = count_prior_log_probs(0.0, 4)  # p = 1/2: P(c) ∝ 2^-c
    w = torch.tensor([1, 0.5, 0.25, 0.125, 0.0625], dtype=torch.float64)
    torch.testing.assert_close(lp.exp(), w / w.sum())


def test_first_cell_prior_is_expected_count_over_n():
    """p_0 = E[C]/N; with the authors' final odds 0.0125 and N = 16, p_0 ≈ 0.00078 (spec 4.2 table)."""
    on = torch.zeros(1, 16)
    p0 = count_prior_cell_probs(on, math.log(0.0125 + 1e-6))[0, 0].item()
    assert p0 == pytest.approx(0.00078, rel=0.02)


def test_kl_gradient_flows_only_through_posterior():
    pi = torch.full((2, 5), 0.3, requires_grad=True)
    on = torch.tensor([[1.0, 0, 1, 0, 0], [0, 0, 0, 0, 1]])
    kl = count_prior_kl(pi, on, -1.0)
    assert kl.shape == (2, 5) and torch.all(kl >= 0)
    kl.sum().backward()
    assert pi.grad is not None and torch.isfinite(pi.grad).all()


def test_kl_is_zero_when_posterior_equals_prior():
    on = torch.tensor([[1.0, 0, 0, 1]])
    p = count_prior_cell_probs(on, 0.7).float()
    assert count_prior_kl(p, on, 0.7).abs().max().item() < 1e-6


def test_exponential_prior():
    pi = torch.tensor([[0.5, 0.25]])
    kl = exponential_prior_kl(pi, 0.0)  # prior 0.5 per cell
    assert kl[0, 0].item() == pytest.approx(0.0, abs=1e-7)
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert kl[0, 1].item() == pytest.approx(expected, rel=1e-5)
