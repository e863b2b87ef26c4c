"""TV-PredCP: exact Gaussian-edge form vs brute force and Monte Carlo; the sampled estimator."""
from __future__ import annotations

import math

import pytest
import torch

from linearized_problem import tiny_jacobian_and_ray_trafo

from bayes_dip.dip import tv_loss
from bayes_dip.linearized import (ExactTVPredCP, SampledTVPredCP, StructuredCovariance,
                                  WeightPrior, predcp_rate)

F64 = torch.float64


@pytest.fixture(scope="module")
def parts():
    jac, rt = tiny_jacobian_and_ray_trafo()
    sc = StructuredCovariance.build(jac, rt, WeightPrior(jac.layout))
    return jac, sc, jac.dense()


def _prior(jac, seed=1):
    prior = WeightPrior(jac.layout)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        prior.log_variance.copy_(torch.randn(5, generator=gen, dtype=F64) * 0.3)
        prior.log_lengthscale.copy_(torch.randn(3, generator=gen, dtype=F64) * 0.5)
    return prior


def _block_samples(jac, j, prior, d, num, seed):
    """Images J_d θ_d with only block d random (brute force from the dense Jacobian)."""
    block = jac.layout.blocks[d]
    root = prior.block_factors("sqrt")[d].detach()
    eps = torch.randn(block.num_filters, block.filter_numel, num,
                      generator=torch.Generator().manual_seed(seed), dtype=F64)
    theta = torch.einsum("pq,fqk->fpk", root, eps).reshape(block.size, num)
    return (j[:, block.start:block.stop] @ theta).T.reshape(num, 1, 8, 8)


def test_exact_kappa_matches_gaussian_identity_and_monte_carlo(parts):
    jac, sc, j = parts
    prior = _prior(jac)
    predcp = ExactTVPredCP(sc, prior, rate=1.0)
    kappa, _ = predcp.kappa(prior)
    sigma = prior.matmul(torch.eye(jac.num_params, dtype=F64)).detach()
    for g, d in enumerate(jac.layout.gp_indices):
        block = jac.layout.blocks[d]
        jd = j[:, block.start:block.stop]
        c = jd @ sigma[block.start:block.stop, block.start:block.stop] @ jd.T
        img = c.diagonal().reshape(8, 8)
        cc = c.reshape(8, 8, 8, 8)
        var_v = img[1:, :] + img[:-1, :] - 2 * torch.stack(
            [cc[i + 1, k, i, k] for i in range(7) for k in range(8)]).reshape(7, 8)
        var_h = img[:, 1:] + img[:, :-1] - 2 * torch.stack(
            [cc[i, k + 1, i, k] for i in range(8) for k in range(7)]).reshape(8, 7)
        brute = math.sqrt(2 / math.pi) * (var_v.sqrt().sum() + var_h.sqrt().sum())
        assert float(kappa[g].detach()) == pytest.approx(float(brute), rel=1e-10)
        mc = tv_loss(_block_samples(jac, j, prior, d, 20000, seed=g)).mean()
        assert float(kappa[g].detach()) == pytest.approx(float(mc), rel=0.02)


def test_exact_derivatives_match_finite_differences(parts):
    jac, sc, _ = parts
    prior = _prior(jac)
    predcp = ExactTVPredCP(sc, prior, rate=3.0)
    _, dkappa = predcp.kappa(prior)
    h = 1e-6
    for g in range(3):
        with torch.no_grad():
            ell = float(prior.lengthscales[g])
            prior.log_lengthscale[g] = math.log(ell + h)
            up = predcp.kappa(prior)[0][g]
            prior.log_lengthscale[g] = math.log(ell - h)
            down = predcp.kappa(prior)[0][g]
            prior.log_lengthscale[g] = math.log(ell)
        assert float(dkappa[g].detach()) == pytest.approx(float((up - down) / (2 * h)), rel=1e-6)
    # gradient of Σ_d [λκ_d − log|∂κ_d/∂ℓ_d|] w.r.t. the log-hyperparameters
    value = predcp(prior)
    value.backward()
    grads = torch.cat([prior.log_variance.grad, prior.log_lengthscale.grad])
    params = torch.cat([prior.log_variance.detach(), prior.log_lengthscale.detach()])
    fd = torch.zeros_like(params)
    for i in range(params.numel()):
        for sign in (1, -1):
            shifted = params.clone()
            shifted[i] += sign * 1e-6
            with torch.no_grad():
                prior.log_variance.copy_(shifted[:5])
                prior.log_lengthscale.copy_(shifted[5:])
                fd[i] += sign * float(predcp(prior)) / 2e-6
    with torch.no_grad():
        prior.log_variance.copy_(params[:5])
        prior.log_lengthscale.copy_(params[5:])
    torch.testing.assert_close(grads, fd, rtol=1e-5, atol=1e-6)
    # the variance enters κ_d as σ_d: ∂/∂log σ_d² = λ κ_d / 2 − 1/2 for GP blocks, 0 otherwise
    kappa = predcp.kappa(prior)[0].detach()
    torch.testing.assert_close(prior.log_variance.grad[list(jac.layout.gp_indices)],
                               3.0 * kappa / 2 - 0.5)
    assert float(prior.log_variance.grad[3:].abs().max()) == 0.0


def test_sampled_surrogate_value_and_gradient(parts):
    jac, sc, j = parts
    prior = _prior(jac)
    sampled = SampledTVPredCP(jac, rate=2.0, num_samples=8,
                              generator=torch.Generator().manual_seed(0))
    kappa = sampled.surrogates(prior)
    # the value is the mean TV of the samples; with common random numbers it is a smooth
    # function of the hyperparameters (between sign changes), so its gradient = finite differences
    def mean_tv(log_var, log_ell):
        with torch.no_grad():
            prior.log_variance.copy_(log_var)
            prior.log_lengthscale.copy_(log_ell)
            sampled.generator.manual_seed(0)
            return sampled.surrogates(prior).detach()
    lv, ll = prior.log_variance.detach().clone(), prior.log_lengthscale.detach().clone()
    torch.testing.assert_close(kappa.detach(), mean_tv(lv, ll))
    kappa.sum().backward()
    h = 1e-7
    for g, d in enumerate(jac.layout.gp_indices):
        up, down = ll.clone(), ll.clone()
        up[g] += h
        down[g] -= h
        fd = (mean_tv(lv, up) - mean_tv(lv, down))[g] / (2 * h)
        assert float(prior.log_lengthscale.grad[g]) == pytest.approx(float(fd), rel=1e-5)
        upv, downv = lv.clone(), lv.clone()
        upv[d] += h
        downv[d] -= h
        fd = (mean_tv(upv, ll) - mean_tv(downv, ll))[g] / (2 * h)
        assert float(prior.log_variance.grad[d]) == pytest.approx(float(fd), rel=1e-5)
    with torch.no_grad():
        prior.log_variance.copy_(lv)
        prior.log_lengthscale.copy_(ll)


def test_sampled_estimates_are_unbiased(parts):
    jac, sc, _ = parts
    prior = _prior(jac)
    exact_kappa, exact_dkappa = ExactTVPredCP(sc, prior, rate=1.0).kappa(prior)
    sampled = SampledTVPredCP(jac, rate=1.0, num_samples=2000,
                              generator=torch.Generator().manual_seed(1))
    kappa = sampled.surrogates(prior)
    dlog, = torch.autograd.grad(kappa.sum(), prior.log_lengthscale)
    torch.testing.assert_close(kappa.detach(), exact_kappa.detach(), rtol=0.03, atol=0)
    torch.testing.assert_close(dlog / prior.lengthscales.detach(), exact_dkappa.detach(),
                               rtol=0.07, atol=0)
    value = sampled(prior)  # the full term runs and is finite
    assert torch.isfinite(value)


def test_rate_and_bad_inputs(parts):
    jac, sc, _ = parts
    residual = torch.full((820,), 0.1, dtype=F64)
    assert predcp_rate(2.0, 1e-4, residual, "paper") == pytest.approx(0.164)
    # γ · m / (2 · mean r²): the paper's rate over 2σ̂² = 0.02
    assert predcp_rate(2.0, 1e-4, residual) == pytest.approx(0.164 / 0.02)
    # units: r → c r, γ → c² γ (the same DIP problem in other units) leave it unchanged
    assert predcp_rate(2.0, 1e-4 * 9, 3 * residual) == pytest.approx(predcp_rate(2.0, 1e-4, residual))
    with pytest.raises(ValueError, match="gamma"):
        predcp_rate(1.0, 0.0, residual)
    with pytest.raises(ValueError, match="residual"):
        predcp_rate(1.0, 1.0, torch.zeros(0))
    with pytest.raises(ValueError, match="residual"):
        predcp_rate(1.0, 1.0, torch.zeros(5))
    with pytest.raises(ValueError, match="rule"):
        predcp_rate(1.0, 1.0, residual, "noise")
    with pytest.raises(ValueError, match="rate"):
        ExactTVPredCP(sc, WeightPrior(jac.layout), rate=-1.0)
    with pytest.raises(TypeError, match="structured"):
        ExactTVPredCP("sc", WeightPrior(jac.layout), rate=1.0)
    with pytest.raises(ValueError, match="num_samples"):
        SampledTVPredCP(jac, rate=1.0, num_samples=0)
    with pytest.raises(TypeError, match="jac"):
        SampledTVPredCP("jac", rate=1.0)
