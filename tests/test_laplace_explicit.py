"""Textbook Laplace approximation: exact oracles (Gaussian posterior, Stirling), MAP search, errors."""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn.functional import logsigmoid

from bayes_dip.laplace.explicit import (
    fit_laplace,
    gradient_ascent_map,
    laplace_at_mode,
    log_density_hessian,
    newton_map,
)

DT = torch.float64


def _linear_regression_problem():
    """y = X w + ε, ε ~ N(0, s² I), prior w ~ N(m0, S0) with a dense SPD S0."""
    g = torch.Generator().manual_seed(0)
    n, d, noise_std = 20, 4, 0.5
    X = torch.randn(n, d, generator=g, dtype=DT)
    y = X @ torch.randn(d, generator=g, dtype=DT) + noise_std * torch.randn(n, generator=g, dtype=DT)
    m0 = torch.randn(d, generator=g, dtype=DT)
    B = torch.randn(d, d, generator=g, dtype=DT)
    S0 = B @ B.T + 0.5 * torch.eye(d, dtype=DT)
    lik = torch.distributions.MultivariateNormal(torch.zeros(n, dtype=DT), noise_std**2 * torch.eye(n, dtype=DT))
    prior = torch.distributions.MultivariateNormal(m0, S0)

    def log_f(w):
        return lik.log_prob(y - X @ w) + prior.log_prob(w)

    # closed form: S = (XᵀX/s² + S0⁻¹)⁻¹, m = S (Xᵀy/s² + S0⁻¹ m0), p(y) = N(y; X m0, s² I + X S0 Xᵀ)
    S0_inv = torch.linalg.inv(S0)
    post_cov = torch.linalg.inv(X.T @ X / noise_std**2 + S0_inv)
    post_mean = post_cov @ (X.T @ y / noise_std**2 + S0_inv @ m0)
    evidence = torch.distributions.MultivariateNormal(
        X @ m0, noise_std**2 * torch.eye(n, dtype=DT) + X @ S0 @ X.T).log_prob(y)
    return log_f, d, post_mean, post_cov, evidence


def test_linear_regression_laplace_is_exact():
    """Gaussian posterior: mean, covariance, log evidence and log q match the closed form to 1e-8."""
    log_f, d, post_mean, post_cov, evidence = _linear_regression_problem()
    lap = fit_laplace(log_f, torch.zeros(d, dtype=DT), method="newton")
    assert lap.map_result.converged and lap.map_result.iterations <= 2  # one full Newton step is exact
    assert torch.allclose(lap.mode, post_mean, atol=1e-8, rtol=0)
    assert torch.allclose(lap.covariance, post_cov, atol=1e-8, rtol=0)
    assert abs(lap.log_evidence.item() - evidence.item()) < 1e-8
    theta = post_mean + torch.randn(5, d, generator=torch.Generator().manual_seed(1), dtype=DT)
    exact_log_post = torch.stack([log_f(t) for t in theta]) - evidence
    assert torch.allclose(lap.log_prob(theta), exact_log_post, atol=1e-8, rtol=0)
    gaussian = torch.distributions.Normal(post_mean, post_cov.diagonal().sqrt())
    x = torch.tensor(0.3, dtype=DT)
    assert torch.allclose(lap.marginal_cdf(2, x), gaussian.cdf(x)[2], atol=1e-12)


def test_sampling_matches_mean_and_covariance():
    log_f, d, post_mean, post_cov, _ = _linear_regression_problem()
    lap = fit_laplace(log_f, torch.zeros(d, dtype=DT))
    n = 40_000
    s = lap.sample(n, torch.Generator().manual_seed(2))
    assert s.shape == (n, d)
    std = post_cov.diagonal().sqrt()
    assert ((s.mean(0) - post_mean).abs() < 5 * std / math.sqrt(n)).all()
    corr_err = (torch.cov(s.T) - post_cov) / (std[:, None] * std[None, :])
    assert corr_err.abs().max() < 5 * math.sqrt(2 / n)  # sd of a sample covariance/(s_i s_j) ≤ sqrt(2/n)
    assert torch.equal(lap.sample(n, torch.Generator().manual_seed(2)), s)


def test_laplace_evidence_is_stirling_for_gamma_integrand():
    """∫ θ^{a−1} e^{−bθ} dθ = Γ(a)/b^a; Laplace gives Stirling's formula for Γ(a) = (a−1)!, whose
    relative error is ≈ 1/(12(a−1))."""
    a, b = 12.0, 3.0
    lap = fit_laplace(lambda t: (a - 1) * torch.log(t[0]) - b * t[0], torch.tensor([1.0], dtype=DT))
    k = a - 1
    stirling = k * math.log(k) - k + 0.5 * math.log(2 * math.pi * k) - a * math.log(b)
    assert abs(lap.log_evidence.item() - stirling) < 1e-10
    assert abs(lap.mode.item() - k / b) < 1e-10
    exact = math.lgamma(a) - a * math.log(b)
    assert 0 < exact - lap.log_evidence.item() < 1.05 / (12 * k)


def _logistic_problem():
    g = torch.Generator().manual_seed(3)
    X = torch.cat([torch.ones(40, 1, dtype=DT), torch.randn(40, 2, generator=g, dtype=DT)], 1)
    y = (torch.rand(40, generator=g, dtype=DT) < torch.sigmoid(X @ torch.tensor([0.5, 2.0, -1.0], dtype=DT))).to(DT)

    def log_f(w):
        f = X @ w
        return (y * logsigmoid(f) + (1 - y) * logsigmoid(-f)).sum() - 0.5 * (w**2).sum()

    return log_f


def test_newton_and_gradient_ascent_reach_same_map():
    """Strictly concave log posterior (logistic likelihood + Gaussian prior): both searches stop
    with small gradient and agree; the damped Newton (α = 0.5) agrees too."""
    log_f = _logistic_problem()
    w0 = torch.zeros(3, dtype=DT)
    newton = newton_map(log_f, w0)
    damped = newton_map(log_f, w0, alpha=0.5, max_iter=200)
    ascent = gradient_ascent_map(log_f, w0, lr=0.05, grad_tol=1e-9, step_tol=1e-10, max_iter=20_000)
    for res in (newton, damped, ascent):
        assert res.converged and res.grad_norm <= 1e-8
    assert newton.iterations < damped.iterations < ascent.iterations
    assert torch.allclose(ascent.theta, newton.theta, atol=1e-8, rtol=0)
    assert torch.allclose(damped.theta, newton.theta, atol=1e-10, rtol=0)
    lap = fit_laplace(log_f, w0, method="gradient", lr=0.05, grad_tol=1e-9, max_iter=20_000)
    assert torch.allclose(lap.mode, newton.theta, atol=1e-8, rtol=0)


def test_hessian_matches_finite_differences():
    log_f = _logistic_problem()
    w = torch.tensor([0.2, -0.4, 0.9], dtype=DT)
    hess = log_density_hessian(log_f, w)

    def grad(v):
        v = v.clone().requires_grad_(True)
        return torch.autograd.grad(log_f(v), v)[0]

    h = 1e-5
    fd = torch.stack([(grad(w + h * e) - grad(w - h * e)) / (2 * h) for e in torch.eye(3, dtype=DT)], 1)
    assert torch.allclose(hess, fd, atol=1e-7)
    assert torch.equal(hess, hess.T)


def test_bad_inputs_raise_clear_errors():
    x0 = torch.zeros(2, dtype=DT)
    concave = lambda t: -(t**2).sum()  # noqa: E731
    for alpha in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            newton_map(concave, x0, alpha=alpha)
    with pytest.raises(ValueError, match="lr"):
        gradient_ascent_map(concave, x0, lr=0.0)
    with pytest.raises(ValueError, match="not finite"):
        fit_laplace(lambda t: torch.log(t).sum(), torch.tensor([-1.0, 1.0], dtype=DT))
    with pytest.raises(ValueError, match="not finite"):  # log f = −inf outside the support mid-search
        gradient_ascent_map(lambda t: torch.where(t[0] < 1, -(t**2).sum(), torch.tensor(-math.inf, dtype=DT)),
                            torch.tensor([-0.9, 0.0], dtype=DT), lr=10.0)
    with pytest.raises(ValueError, match="not positive definite"):  # flat at the mode: −θ⁴
        laplace_at_mode(lambda t: -(t**4).sum(), x0)
    with pytest.raises(ValueError, match="not positive definite"):  # saddle: Newton has no concave model
        newton_map(lambda t: -t[0] ** 2 + t[1] ** 2, torch.tensor([1.0, 1.0], dtype=DT))
    with pytest.raises(ValueError, match="theta0"):
        fit_laplace(concave, torch.zeros(2, 2, dtype=DT))
    with pytest.raises(TypeError, match="theta0"):
        fit_laplace(concave, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="method"):
        fit_laplace(concave, x0, method="bfgs")
    with pytest.raises(ValueError, match="scalar"):
        fit_laplace(lambda t: -(t**2), x0)
    with pytest.warns(RuntimeWarning, match="without meeting"):
        fit_laplace(concave, torch.ones(2, dtype=DT), method="gradient", lr=1e-3, max_iter=5)
