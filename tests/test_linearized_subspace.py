"""Low-rank mode: subspace K_yy (exact at full rank, a log-det upper bound below it) and the
fixed-sample TV-PredCP, against the exact structured covariance of a tiny problem."""
from __future__ import annotations

import pytest
import torch

from bayes_dip.linearized import (ExactTVPredCP, FixedSampleTVPredCP, StructuredCovariance,
                                  SubspaceCovariance, WeightPrior)

from linearized_problem import tiny_jacobian_and_ray_trafo

F64 = torch.float64


@pytest.fixture(scope="module")
def parts():
    jac, rt = tiny_jacobian_and_ray_trafo()
    prior = WeightPrior(jac.layout, 0.5, 0.3)
    return jac, rt, prior, StructuredCovariance.build(jac, rt, prior)


def _nv(value=0.01):
    return torch.tensor(value, dtype=F64, requires_grad=True)


def test_full_rank_is_exact_value_and_gradient(parts):
    jac, rt, prior, exact = parts
    sub = SubspaceCovariance.build(jac, rt, prior, rank=10 ** 6)
    assert sub.rank == exact.n_obs and float(sub.tail.abs().max()) == 0.0
    r = torch.randn(exact.n_obs, generator=torch.Generator().manual_seed(1), dtype=F64)
    grads = []
    for cov in (exact, sub):
        nv = _nv()
        value = cov.gaussian_nll(prior, nv, r)
        grads.append(torch.autograd.grad(value, [prior.log_variance, prior.log_lengthscale, nv]))
        grads[-1] = (float(value.detach()),) + grads[-1]
    assert grads[1][0] == pytest.approx(grads[0][0], rel=1e-10)
    for a, b in zip(grads[0][1:], grads[1][1:]):
        torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-10)


def test_log_det_bound_tightens_with_rank(parts):
    jac, rt, prior, exact = parts
    nv = _nv()
    exact_half_logdet = float(exact.gaussian_nll(prior, nv).detach())
    gaps = []
    for rank in (5, 20, 40):
        sub = SubspaceCovariance.build(jac, rt, prior, rank, tail_probes=4000,
                                       generator=torch.Generator().manual_seed(0))
        gaps.append(float(sub.gaussian_nll(prior, nv).detach()) - exact_half_logdet)
    # Fischer + Jensen: an upper bound (up to the Hutchinson error of the remainder's trace)
    assert all(g > -1e-3 for g in gaps)
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-3 < gaps[0]


def test_gradient_matches_finite_differences(parts):
    jac, rt, prior, _ = parts
    sub = SubspaceCovariance.build(jac, rt, prior, 12, generator=torch.Generator().manual_seed(0))
    r = torch.randn(sub.n_obs, generator=torch.Generator().manual_seed(2), dtype=F64)
    nv = _nv(0.05)
    value = sub.gaussian_nll(prior, nv, r)
    g_var, g_nv = torch.autograd.grad(value, [prior.log_variance, nv])
    eps = 1e-6
    with torch.no_grad():
        for d in range(prior.log_variance.numel()):
            prior.log_variance[d] += eps
            up = float(sub.gaussian_nll(prior, nv, r))
            prior.log_variance[d] -= 2 * eps
            down = float(sub.gaussian_nll(prior, nv, r))
            prior.log_variance[d] += eps
            assert (up - down) / (2 * eps) == pytest.approx(float(g_var[d]), rel=1e-5, abs=1e-6)
        up = float(sub.gaussian_nll(prior, nv + eps, r))
        down = float(sub.gaussian_nll(prior, nv - eps, r))
    assert (up - down) / (2 * eps) == pytest.approx(float(g_nv), rel=1e-5)


def test_preconditioner_is_the_subspace_covariance(parts):
    jac, rt, prior, exact = parts
    nv = torch.tensor(0.01, dtype=F64)
    full = SubspaceCovariance.build(jac, rt, prior, 10 ** 6).preconditioner(prior, nv)
    kyy = exact.observation_covariance(prior, nv).detach()
    eye = torch.eye(exact.n_obs, dtype=F64)
    torch.testing.assert_close(full.matmul(eye), kyy, rtol=1e-8, atol=1e-10)
    # below full rank: a good preconditioner (P⁻¹K well conditioned)
    low = SubspaceCovariance.build(jac, rt, prior, 30, generator=torch.Generator().manual_seed(0))
    pk = low.preconditioner(prior, nv).solve(kyy)
    evals = torch.linalg.eigvals(pk).real
    assert float(evals.max() / evals.min()) < float(torch.linalg.cond(kyy)) / 10


def test_fixed_sample_predcp_matches_exact_expectation(parts):
    jac, rt, prior, exact = parts
    fixed = FixedSampleTVPredCP(jac, prior, rate=1.0, num_samples=400,
                                generator=torch.Generator().manual_seed(0))
    truth = ExactTVPredCP(exact, prior, rate=1.0).kappa(prior)[0].detach()
    torch.testing.assert_close(fixed.kappa(prior).detach(), truth, rtol=0.05, atol=0.0)


def test_fixed_sample_predcp_is_deterministic_and_differentiable(parts):
    jac, rt, prior, _ = parts
    fixed = FixedSampleTVPredCP(jac, prior, rate=2.0, num_samples=3,
                                generator=torch.Generator().manual_seed(0))
    value = fixed(prior)
    assert float(fixed(prior).detach()) == float(value.detach())
    g_ell, = torch.autograd.grad(value, prior.log_lengthscale)
    eps, ell = 1e-6, prior.log_lengthscale.data  # the PredCP needs autograd inside
    for g in range(ell.numel()):
        ell[g] += eps
        up = float(fixed(prior).detach())
        ell[g] -= 2 * eps
        down = float(fixed(prior).detach())
        ell[g] += eps
        assert (up - down) / (2 * eps) == pytest.approx(float(g_ell[g]), rel=1e-4, abs=1e-6)


def test_bad_inputs(parts):
    jac, rt, prior, _ = parts
    with pytest.raises(ValueError, match="rank"):
        SubspaceCovariance.build(jac, rt, prior, 0)
    with pytest.raises(ValueError, match="tail_probes"):
        SubspaceCovariance.build(jac, rt, prior, 5, tail_probes=0)
    with pytest.raises(ValueError, match="num_samples"):
        FixedSampleTVPredCP(jac, prior, 1.0, num_samples=0)
    with pytest.raises(ValueError, match="rate"):
        FixedSampleTVPredCP(jac, prior, -1.0)
