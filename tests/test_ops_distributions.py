"""Gaussian and Bernoulli KLs against torch.distributions; the relaxed Bernoulli sample."""

import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from spair.ops.distributions import bernoulli_kl, bounded_std, gaussian_kl, relaxed_bernoulli


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(100, generator=g, dtype=torch.float64) * 3
    std = torch.rand(100, generator=g, dtype=torch.float64) * 2 + 0.01
    for pm, ps in [(0.0, 1.0), (-2.197, 0.5), (1.5, 2.0)]:
        ours = gaussian_kl(mean, std, pm, ps)
        ref = kl_divergence(Normal(mean, std), Normal(torch.full_like(mean, pm), torch.full_like(mean, ps)))
        torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-10)


def test_gaussian_kl_with_tensor_prior():
    mean = torch.zeros(3, 4, dtype=torch.float64)
    std = torch.ones(3, 4, dtype=torch.float64)
    pm = torch.tensor([0.0, 0.0, -2.197, -2.197], dtype=torch.float64)
    ps = torch.tensor([1.0, 1.0, 0.5, 0.5], dtype=torch.float64)
    ref = kl_divergence(Normal(mean, std), Normal(pm.expand(3, 4), ps.expand(3, 4)))
    torch.testing.assert_close(gaussian_kl(mean, std, pm, ps), ref)


def test_bernoulli_kl_matches_torch_distributions():
    q = torch.tensor([0.01, 0.3, 0.5, 0.99], dtype=torch.float64)
    p = torch.tensor([0.2, 0.3, 0.9, 0.05], dtype=torch.float64)
    ref = kl_divergence(Bernoulli(probs=q), Bernoulli(probs=p))
    torch.testing.assert_close(bernoulli_kl(q, p), ref, atol=1e-9, rtol=1e-9)


def test_bounded_std_range():
    s = bounded_std(torch.tensor([-100.0, 0.0, 100.0]))
    assert 0 < s[0] < 1e-4 and s[1] == 1.0 and 1.9999 < s[2] <= 2.0


def test_relaxed_bernoulli_frequency_matches_probability():
    g = torch.Generator().manual_seed(1)
    alpha = torch.full((200000,), 0.8473)  # sigmoid = 0.7
    u = torch.rand(200000, generator=g)
    sample = relaxed_bernoulli(alpha, u, 1.0)
    assert abs((sample > 0.5).float().mean().item() - 0.7) < 0.005
