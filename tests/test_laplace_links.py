"""Predictive links against exact Gauss–Hermite quadrature of E[link(f)], f ~ N(m, S)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bayes_dip.laplace.links import (
    laplace_bridge,
    laplace_bridge_predictive,
    mc_predictive,
    probit_binary,
    probit_multiclass,
)

DT = torch.float64


def _gauss_hermite(order: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensor-product nodes (K, dim) and weights (K,) for E_{z ~ N(0, I)}[g(z)]."""
    x, w = np.polynomial.hermite_e.hermegauss(order)
    nodes = np.stack(np.meshgrid(*[x] * dim, indexing="ij"), -1).reshape(-1, dim)
    weights = np.prod(np.stack(np.meshgrid(*[w] * dim, indexing="ij"), -1).reshape(-1, dim), 1)
    return torch.tensor(nodes, dtype=DT), torch.tensor(weights / weights.sum(), dtype=DT)


def _exact_softmax(mean: torch.Tensor, cov: torch.Tensor, order: int = 20) -> torch.Tensor:
    z, w = _gauss_hermite(order, mean.shape[1])
    f = mean[:, None, :] + torch.einsum("nij,kj->nki", torch.linalg.cholesky(cov), z)
    return (torch.softmax(f, -1) * w[None, :, None]).sum(1)


def _exact_sigmoid(mean: torch.Tensor, var: torch.Tensor, order: int = 80) -> torch.Tensor:
    z, w = _gauss_hermite(order, 1)
    return (torch.sigmoid(mean[:, None] + var.sqrt()[:, None] * z[:, 0]) * w).sum(1)


def _dirichlet_laplace_softmax_basis(alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Laplace approximation of Dir(α) in the softmax basis (the map the bridge inverts)."""
    k = alpha.shape[-1]
    log_a = alpha.log()
    mean = log_a - log_a.mean(-1, keepdim=True)
    inv = 1.0 / alpha
    cov = torch.diag_embed(inv) - (inv[:, :, None] + inv[:, None, :]) / k + inv.sum(-1)[:, None, None] / k**2
    return mean, cov


def test_probit_binary_matches_quadrature_and_mc():
    """MacKay's probit approximation is within 0.02 of E[σ(f)] (measured max error 0.012 over
    means in [-6, 6] and variances up to 100); the MC estimate is within 5 standard errors."""
    m = torch.linspace(-6, 6, 25, dtype=DT).repeat(5)
    v = torch.tensor([0.1, 1.0, 4.0, 16.0, 100.0], dtype=DT).repeat_interleave(25)
    exact = _exact_sigmoid(m, v)
    assert (probit_binary(m, v) - exact).abs().max() < 0.02
    assert torch.allclose(probit_binary(m, torch.zeros_like(v)), torch.sigmoid(m), atol=1e-15)
    n = 20_000
    mc = mc_predictive(m[:, None], v[:, None, None], link="sigmoid", num_samples=n,
                       generator=torch.Generator().manual_seed(0))
    assert mc.shape == (125, 1)
    std_err = (exact * (1 - exact) / n).sqrt()  # Var σ(f) ≤ p(1 − p) since σ ∈ [0, 1]
    assert ((mc[:, 0] - exact).abs() <= 5 * std_err + 1e-12).all()


def test_probit_multiclass_matches_quadrature_and_mc():
    """Per-class scaling is within 0.04 of E[softmax(f)] for variances ≤ 0.2 (measured 0.025);
    MC with full covariances is within 5 standard errors of the exact integral."""
    g = torch.Generator().manual_seed(1)
    n_pts, c = 40, 3
    m = 2 * torch.randn(n_pts, c, generator=g, dtype=DT)
    v = 0.2 * torch.rand(n_pts, c, generator=g, dtype=DT)
    exact_diag = _exact_softmax(m, torch.diag_embed(v))
    assert (probit_multiclass(m, v) - exact_diag).abs().max() < 0.04
    assert torch.allclose(probit_multiclass(m, torch.diag_embed(v)), probit_multiclass(m, v))
    # two classes, one deterministic logit at 0: identical to the binary probit approximation
    m2 = torch.stack([torch.zeros(n_pts, dtype=DT), m[:, 0]], 1)
    v2 = torch.stack([torch.zeros(n_pts, dtype=DT), 3 * v[:, 0]], 1)
    assert torch.allclose(probit_multiclass(m2, v2)[:, 1], probit_binary(m[:, 0], 3 * v[:, 0]), atol=1e-14)

    b = torch.randn(n_pts, c, c, generator=g, dtype=DT)
    cov = b @ b.transpose(1, 2) + 0.1 * torch.eye(c, dtype=DT)
    exact = _exact_softmax(m, cov)
    n = 20_000
    mc = mc_predictive(m, cov, link="softmax", num_samples=n, generator=torch.Generator().manual_seed(2))
    assert ((mc - exact).abs() <= 5 * (exact * (1 - exact) / n).sqrt() + 1e-12).all()
    assert torch.allclose(mc.sum(-1), torch.ones(n_pts, dtype=DT))


def test_laplace_bridge_inverts_dirichlet_laplace():
    """Known case: for N(m, S) the softmax-basis Laplace approximation of Dir(α), the bridge
    returns α exactly, so its mean α/α₀ = softmax(m)."""
    g = torch.Generator().manual_seed(3)
    alpha = 0.5 + 10 * torch.rand(6, 4, generator=g, dtype=DT)
    mean, cov = _dirichlet_laplace_softmax_basis(alpha)
    # S already lives on the sum-zero plane (S 1 = 0), so the projection changes nothing;
    # the bridge itself reads only the diagonal of S.
    for correction in (True, False):
        assert torch.allclose(laplace_bridge(mean, cov, correction), alpha, rtol=1e-10)
    assert torch.allclose(laplace_bridge(mean, torch.diagonal(cov, dim1=1, dim2=2), False), alpha, rtol=1e-10)
    assert torch.allclose(laplace_bridge_predictive(mean, cov), alpha / alpha.sum(-1, keepdim=True), rtol=1e-12)
    assert torch.allclose(laplace_bridge_predictive(mean, cov), torch.softmax(mean, -1), rtol=1e-12)


def test_laplace_bridge_valid_dirichlet_and_shift_invariant():
    """Random beliefs give finite positive α; with the sum-zero projection, adding a constant
    to all logits (which leaves softmax(f) unchanged) leaves α unchanged."""
    g = torch.Generator().manual_seed(4)
    m = 3 * torch.randn(10, 5, generator=g, dtype=DT)
    b = torch.randn(10, 5, 5, generator=g, dtype=DT)
    cov = b @ b.transpose(1, 2) + 0.1 * torch.eye(5, dtype=DT)
    alpha = laplace_bridge(m, cov)
    assert alpha.shape == (10, 5) and torch.isfinite(alpha).all() and (alpha > 0).all()
    ones = torch.ones(5, 5, dtype=DT)
    shifted = laplace_bridge(m + 7.0, cov + 2.0 * ones)  # f + c·1 with c ~ N(7, 2) correlated
    assert torch.allclose(shifted, alpha, rtol=1e-10)
    probs = laplace_bridge_predictive(m, cov)
    assert torch.allclose(probs.sum(-1), torch.ones(10, dtype=DT))


def test_links_reject_bad_inputs():
    m = torch.zeros(4, 3, dtype=DT)
    with pytest.raises(ValueError, match="f_var"):
        probit_multiclass(m, torch.ones(4, 2, dtype=DT))
    with pytest.raises(ValueError, match="f_var"):
        probit_multiclass(m, -torch.ones(4, 3, dtype=DT))
    with pytest.raises(ValueError, match="f_mean"):
        probit_binary(m, torch.ones(4, 3, dtype=DT))
    with pytest.raises(ValueError, match="f_mean"):
        probit_multiclass(torch.tensor([[math.nan, 0.0]], dtype=DT), torch.ones(1, 2, dtype=DT))
    with pytest.raises(TypeError, match="f_mean"):
        probit_multiclass(torch.zeros(4, 3, dtype=torch.long), torch.ones(4, 3, dtype=DT))
    with pytest.raises(ValueError, match="link"):
        mc_predictive(m, torch.ones(4, 3, dtype=DT), link="probit")
    with pytest.raises(ValueError, match="num_samples"):
        mc_predictive(m, torch.ones(4, 3, dtype=DT), num_samples=0)
    with pytest.raises(ValueError, match="positive logit variances"):
        laplace_bridge(m, torch.zeros(4, 3, dtype=DT))
