"""Constrained Laplace: Jacobian corrections, exactness through the change of variables, and the
"weight example" (μ, σ with σ ~ Uniform(0.5, 5.5)) against the exact grid posterior."""
from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate

from repo_scripts import load_script
from bayes_dip.laplace.transforms import (
    IdentityTransform,
    LogitTransform,
    LogTransform,
    ParameterTransform,
    fit_constrained_laplace,
)

DT = torch.float64


@pytest.fixture(scope="module")
def weight_example():
    return load_script("experiments/weight_example.py")


@pytest.mark.parametrize("transform", [IdentityTransform(), LogTransform(), LogTransform(low=-2.0),
                                       LogitTransform(0.5, 5.5), LogitTransform(-1.0, 3.0)])
def test_log_abs_det_jacobian_matches_autograd_and_round_trip(transform):
    u = torch.linspace(-15, 15, 61, dtype=DT).requires_grad_(True)  # away from float64 saturation of σ
    x = transform.to_constrained(u)
    (dx_du,) = torch.autograd.grad(x.sum(), u)
    u, x = u.detach(), x.detach()
    assert torch.allclose(transform.log_abs_det_jacobian(u), dx_du.abs().log(), atol=1e-8)
    assert transform.in_support(x).all()
    assert torch.allclose(transform.to_unconstrained(x), u, atol=1e-8)
    far = torch.tensor([-200.0, 200.0], dtype=DT)  # stable log-Jacobian far out: finite, no log(0)
    assert torch.isfinite(transform.log_abs_det_jacobian(far)).all()


def test_jacobian_corrected_density_integrates_to_one():
    """A normalised density on the constrained space (Gamma on (0, ∞), scaled Beta on (a, b)) stays
    normalised in u-space only with the log-Jacobian term."""
    gamma = torch.distributions.Gamma(torch.tensor(3.5, dtype=DT), torch.tensor(1.5, dtype=DT))
    beta = torch.distributions.Beta(torch.tensor(2.0, dtype=DT), torch.tensor(5.0, dtype=DT))
    a, b = 0.5, 5.5
    cases = [
        (LogTransform(), lambda x: gamma.log_prob(x[0])),
        (LogitTransform(a, b), lambda x: beta.log_prob((x[0] - a) / (b - a)) - math.log(b - a)),
    ]
    for t, log_density in cases:
        pt = ParameterTransform([t])
        log_fu = pt.unconstrained_log_density(log_density)
        mass, _ = integrate.quad(lambda u: math.exp(log_fu(torch.tensor([u], dtype=DT)).item()), -40, 40,
                                 limit=200)
        assert abs(mass - 1.0) < 1e-7
        no_jacobian, _ = integrate.quad(
            lambda u: math.exp(log_density(pt.to_constrained(torch.tensor([u], dtype=DT))).item()), -40, 40,
            limit=200)
        assert abs(no_jacobian - 1.0) > 0.1  # the correction matters


def test_laplace_exact_for_gaussian_in_unconstrained_space():
    """x = (exp u₁, a + (b − a) σ(u₂)) with u ~ N(m, S): the corrected u-density is exactly Gaussian, so
    the constrained Laplace recovers m, S and evidence log 1 = 0; back-transformed marginals integrate
    to 1 on the support and agree with their CDF and quantiles."""
    a, b = -1.0, 3.0
    m = torch.tensor([0.3, -0.8], dtype=DT)
    S = torch.tensor([[0.4, 0.15], [0.15, 0.6]], dtype=DT)
    gauss = torch.distributions.MultivariateNormal(m, S)
    pt = ParameterTransform([LogTransform(), LogitTransform(a, b)])

    def log_density(x):  # normalised density of x: Gaussian in u minus the log-Jacobian
        u = pt.to_unconstrained(x)
        return gauss.log_prob(u) - pt.log_abs_det_jacobian(u)

    fit = fit_constrained_laplace(log_density, torch.tensor([1.0, 1.0], dtype=DT), pt)
    assert torch.allclose(fit.laplace.mode, m, atol=1e-10)
    assert torch.allclose(fit.laplace.covariance, S, atol=1e-10)
    assert abs(fit.log_evidence.item()) < 1e-10

    for index, (lo, hi) in enumerate([(0.0, math.inf), (a, b)]):
        def dens(x, i=index):
            return math.exp(fit.marginal_log_prob(i, torch.tensor(x, dtype=DT)).item())

        mass, _ = integrate.quad(dens, lo, hi, limit=200)
        assert abs(mass - 1.0) < 1e-8
        x_q = fit.marginal_quantile(index, torch.tensor([0.1, 0.5, 0.9], dtype=DT))
        assert torch.allclose(fit.marginal_cdf(index, x_q), torch.tensor([0.1, 0.5, 0.9], dtype=DT), atol=1e-10)
        partial, _ = integrate.quad(dens, lo, x_q[0].item(), limit=200)
        assert abs(partial - 0.1) < 1e-8
    outside = torch.tensor([-1.5, 4.0], dtype=DT)
    assert torch.isneginf(fit.marginal_log_prob(1, outside)).all()
    assert torch.equal(fit.marginal_cdf(1, outside), torch.tensor([0.0, 1.0], dtype=DT))
    samples = fit.sample(5000, torch.Generator().manual_seed(0))
    assert (samples[:, 0] > 0).all() and ((samples[:, 1] > a) & (samples[:, 1] < b)).all()
    median = fit.marginal_quantile(1, torch.tensor(0.5, dtype=DT))
    assert abs((samples[:, 1] < median).to(DT).mean().item() - 0.5) < 5 * 0.5 / math.sqrt(5000)


def test_weight_example_grid_is_converged(weight_example):
    """The grid oracle: halving the resolution changes log p(y) by < 1e-6 and σ-marginal means by < 1e-5."""
    y = weight_example.simulate_weights(35)[:5]
    fine = weight_example.grid_posterior(y)
    coarse = weight_example.grid_posterior(y, num_mu=1200, num_sigma=1000)
    assert abs(fine.log_evidence.item() - coarse.log_evidence.item()) < 1e-6
    mean = lambda g: ((g.sigma * g.sigma_marginal).sum() * (g.sigma[1] - g.sigma[0])).item()  # noqa: E731
    assert abs(mean(fine) - mean(coarse)) < 1e-5


def test_weight_example_laplace_vs_grid(weight_example):
    """N = 35: both Laplace approximations are close to the exact posterior — posterior means within
    0.5 sd, sds within 15 %, total-variation distances of marginals < 0.15 (logit σ: < 0.08), log
    evidence within 0.1. N = 5: the plain Gaussian puts > 1 % mass on σ < 0.5 (4.6 % for seed 0),
    the logit-transformed one none, and it is closer to the exact σ marginal."""
    y_all = weight_example.simulate_weights(35, seed=0)
    results = {}
    for n in (35, 5):
        y = y_all[:n]
        plain, constrained = weight_example.fit_weight_laplace(y)
        assert plain.map_result.converged and constrained.laplace.map_result.converged
        results[n] = (weight_example.compare(weight_example.grid_posterior(y), plain, constrained), constrained)

    exact, plain, logit = results[35][0]
    for approx in (plain, logit):
        assert abs(approx.mu_mean - exact.mu_mean) < 0.5 * exact.mu_std
        assert abs(approx.sigma_mean - exact.sigma_mean) < 0.5 * exact.sigma_std
        assert abs(approx.mu_std / exact.mu_std - 1) < 0.15
        assert abs(approx.sigma_std / exact.sigma_std - 1) < 0.15
        assert approx.mu_tv < 0.05 and approx.sigma_tv < 0.15
        assert abs(approx.log_evidence - exact.log_evidence) < 0.1
        assert approx.mass_sigma_below_low < 1e-4  # plain: 6e-6 for N = 35
    assert logit.sigma_tv < 0.08

    (exact, plain, logit), constrained = results[5]
    assert plain.mass_sigma_below_low > 0.01
    assert logit.mass_sigma_below_low == 0.0
    assert logit.sigma_tv < plain.sigma_tv
    samples = constrained.sample(20_000, torch.Generator().manual_seed(0))
    assert (samples[:, 1] > 0.5).all() and (samples[:, 1] < 5.5).all()


def test_transform_bad_inputs():
    with pytest.raises(ValueError, match="low < high"):
        LogitTransform(2.0, 1.0)
    with pytest.raises(ValueError, match="low"):
        LogTransform(low=math.inf)
    with pytest.raises(TypeError, match="transforms"):
        ParameterTransform([LogTransform(), "logit"])
    pt = ParameterTransform([LogTransform(), LogitTransform(0.0, 1.0)])
    with pytest.raises(ValueError, match="support"):
        pt.to_unconstrained(torch.tensor([1.0, 1.5], dtype=DT))
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        pt.to_constrained(torch.zeros(3, dtype=DT))
    with pytest.raises(TypeError, match="ParameterTransform"):
        fit_constrained_laplace(lambda x: -(x**2).sum(), torch.ones(2, dtype=DT), [LogTransform()])
