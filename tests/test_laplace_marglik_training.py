"""Online marginal-likelihood training (float64).

Oracle: Bayesian linear regression ``y = X w + ε``, ``w ~ N(0, α⁻¹ I)``, ``ε ~ N(0, σ² I)``: the
Laplace evidence is exact, and the evidence maximiser is MacKay's fixed point
``α = γ / ‖m‖²``, ``σ² = ‖y − X m‖² / (N − γ)`` with ``m`` the posterior mean and
``γ = Σ_i λ_i / (λ_i + α)`` (``λ_i`` the eigenvalues of ``XᵀX/σ²``).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bayes_dip.laplace.marglik_training import MarglikConfig, train_marglik

DT = torch.float64


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=g, dtype=DT)
    y = x @ torch.tensor([[1.0], [-0.5], [0.25]], dtype=DT) + 0.3 * torch.randn(40, 1, generator=g, dtype=DT)
    return x, y


def mackay_optimum(x, y):
    alpha, sigma2 = 1.0, 1.0
    for _ in range(1000):
        a = x.T @ x / sigma2 + alpha * torch.eye(3, dtype=DT)
        m = torch.linalg.solve(a, x.T @ y / sigma2).squeeze(1)
        lam = torch.linalg.eigvalsh(x.T @ x / sigma2)
        gamma = (lam / (lam + alpha)).sum()
        alpha = float(gamma / (m**2).sum())
        sigma2 = float(((y.squeeze(1) - x @ m) ** 2).sum() / (x.shape[0] - gamma))
    return alpha, sigma2**0.5, m


def linear() -> nn.Module:
    torch.manual_seed(1)
    return nn.Linear(3, 1, bias=False).to(DT)


def test_linear_regression_reaches_the_mackay_fixed_point():
    x, y = data()
    alpha, sigma, mean = mackay_optimum(x, y)
    config = MarglikConfig(epochs=400, lr=0.02, lr_hyper=0.05, batch_size=40, structure="full", prior="scalar",
                           n_hyper_steps=20, burn_in=50, frequency=2)
    result = train_marglik(linear(), "regression", (x, y), config, progress=False)
    assert result.prior_precision.shape == ()
    assert abs(float(result.prior_precision) / alpha - 1) < 0.02
    assert abs(float(result.sigma_noise) / sigma - 1) < 0.01
    torch.testing.assert_close(result.model.weight.detach().reshape(-1), mean, rtol=0, atol=1e-3)
    assert result.history["updates"][0]["epoch"] == 52 and len(result.history["loss"]) == 400
    assert abs(result.history["updates"][-1]["log_evidence"] - float(result.laplace.log_marginal_likelihood())) < 1e-2


def test_classification_layerwise_precisions_and_checkpoint_resume(tmp_path):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 4, generator=g, dtype=DT)
    y = (x[:, 0] + x[:, 1] > 0).long()

    def net() -> nn.Module:
        torch.manual_seed(3)
        return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).to(DT)

    config = dict(lr=0.01, batch_size=16, structure="kfac", n_hyper_steps=10, burn_in=1, frequency=2)
    full = train_marglik(net(), "classification", (x, y), MarglikConfig(epochs=6, **config), progress=False)
    assert full.prior_precision.shape == (4,) and len(full.history["updates"]) == 2
    path = tmp_path / "run.pt"
    train_marglik(net(), "classification", (x, y), MarglikConfig(epochs=3, **config), checkpoint=path,
                  progress=False)
    resumed = train_marglik(net(), "classification", (x, y), MarglikConfig(epochs=6, **config), checkpoint=path,
                            progress=False)
    torch.testing.assert_close(resumed.prior_precision, full.prior_precision, rtol=0, atol=0)
    for a, b in zip(resumed.model.parameters(), full.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert resumed.history == full.history
    with pytest.raises(ValueError, match="another config"):
        train_marglik(net(), "classification", (x, y), MarglikConfig(epochs=6, **{**config, "lr": 0.1}),
                      checkpoint=path, progress=False)
    with pytest.raises(ValueError, match="optimize_noise"):
        train_marglik(net(), "classification", (x, y), MarglikConfig(optimize_noise=True), progress=False)
    with pytest.raises(ValueError, match="frequency"):
        MarglikConfig(frequency=0)
    with pytest.raises(TypeError, match="tuple"):
        train_marglik(net(), "classification", [x, y], progress=False)
