"""The function-space (GP) view of linearised Laplace vs the weight-space Laplace and dense algebra."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bayes_dip.laplace import (DiagonalCovariance, Laplace, LinearGaussianLikelihood, ModelFunction,
                               ModelJacobian, ObservationKernel, OutputKernel, WeightCovariance,
                               all_weights, gaussian_log_evidence)
from bayes_dip.laplace.priors import expand_prior_precision
from bayes_dip.linearized import kernel_lengthscale_derivative, kernel_values

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def problem():
    """A small conv net on one 3×3 image, observed through a random 7×9 operator."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 1, 1)).to(F64)
    mat = torch.randn(7, 9, generator=_gen(1), dtype=F64)
    lik = LinearGaussianLikelihood(lambda f: (f.reshape(f.shape[0], 9) @ mat.T).reshape(-1, 1, 7),
                                   lambda o: (o.reshape(o.shape[0], 7) @ mat).reshape(-1, 1, 3, 3),
                                   out_shape=(1, 3, 3), obs_shape=(1, 7))
    x = torch.randn(1, 1, 3, 3, generator=_gen(2), dtype=F64)
    y = torch.randn(1, 1, 7, generator=_gen(3), dtype=F64)
    jac = ModelJacobian(ModelFunction(model, all_weights(model)), x)
    return model, mat, lik, x, y, jac


def test_kernels_match_dense_algebra(problem):
    _, mat, lik, _, _, jac = problem
    delta = torch.rand(jac.num_params, generator=_gen(4), dtype=F64) + 0.5
    prior = DiagonalCovariance(delta)
    j = jac.dense()
    k_ff = j @ torch.diag(1 / delta) @ j.T
    obs = ObservationKernel(OutputKernel(jac, prior), lik, torch.tensor(0.2, dtype=F64).log())
    dense = mat @ k_ff @ mat.T + 0.2 * torch.eye(7, dtype=F64)
    torch.testing.assert_close(obs.to_dense(batch_size=3), dense, rtol=0, atol=1e-12)
    u = torch.randn(7, 2, generator=_gen(5), dtype=F64)
    torch.testing.assert_close(obs.cross_matmul(u), k_ff @ mat.T @ u, rtol=0, atol=1e-12)
    torch.testing.assert_close(lik.matmul(torch.eye(9, dtype=F64)), mat, rtol=0, atol=0)
    torch.testing.assert_close(lik.rmatmul(torch.eye(7, dtype=F64)), mat.T, rtol=0, atol=0)
    draws = OutputKernel(jac, prior).sample(20000, _gen(6))
    torch.testing.assert_close(draws @ draws.T / 20000, k_ff, rtol=0, atol=0.06 * float(k_ff.abs().max()))


@pytest.mark.parametrize("per_group", [False, True])
def test_function_space_evidence_equals_weight_space_laplace(problem, per_group):
    """The GP evidence log N(y − A(f̂ − J θ̂); 0, K_yy) is the weight-space Laplace evidence at the
    linearised mode (full GGN), and so are its gradients in the prior precisions and the noise."""
    model, _, lik, x, y, jac = problem
    sizes = [p.numel() for p in model.parameters()]
    prec0 = torch.tensor([0.7, 2.0, 1.3, 0.4], dtype=F64) if per_group else torch.tensor(0.9, dtype=F64)
    sigma0 = torch.tensor(0.3, dtype=F64)
    la = Laplace(model, lik, structure="full", prior_precision=prec0, sigma_noise=sigma0).fit((x, y))
    log_prec = prec0.log().requires_grad_(True)
    log_sigma = sigma0.log().requires_grad_(True)
    weight_space = la.log_marginal_likelihood(log_prec.exp(), log_sigma.exp(), at="linearized")
    g_weight = torch.autograd.grad(weight_space, (log_prec, log_sigma))

    log_prec2 = prec0.log().requires_grad_(True)
    log_sigma2 = sigma0.log().requires_grad_(True)
    prior = DiagonalCovariance(expand_prior_precision(log_prec2.exp(), sizes))
    obs = ObservationKernel(OutputKernel(jac, prior), lik, 2 * log_sigma2)
    prior_mean_output = jac.output.reshape(-1) - jac.jvp(jac.theta)  # f(θ̂) + J (0 − θ̂)
    residual = y.reshape(-1) - lik.matmul(prior_mean_output.unsqueeze(1)).reshape(-1)
    function_space = gaussian_log_evidence(obs.to_dense(), residual)
    g_function = torch.autograd.grad(function_space, (log_prec2, log_sigma2))
    torch.testing.assert_close(function_space, weight_space, rtol=1e-10, atol=1e-10)
    for a, b in zip(g_function, g_weight):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_function_space_posterior_covariance_equals_glm_predictive(problem):
    model, mat, lik, x, y, jac = problem
    la = Laplace(model, lik, structure="full", prior_precision=1.5, sigma_noise=0.2).fit((x, y))
    _, glm_cov = la.predict(x)
    obs = ObservationKernel(OutputKernel(jac, DiagonalCovariance(torch.full((jac.num_params,), 1.5,
                                                                            dtype=F64))),
                            lik, torch.tensor(0.04, dtype=F64).log())
    k_ff = obs.kernel.matmul(torch.eye(9, dtype=F64))
    cross = obs.cross_matmul(torch.eye(7, dtype=F64))  # K_ff Aᵀ
    post = k_ff - cross @ torch.linalg.solve(obs.to_dense(), cross.T)
    torch.testing.assert_close(post, glm_cov[0], rtol=1e-8, atol=1e-12)


def test_gaussian_log_evidence_is_the_normal_log_density():
    a = torch.randn(5, 5, generator=_gen(7), dtype=F64)
    cov = a @ a.T + torch.eye(5, dtype=F64)
    r = torch.randn(5, generator=_gen(8), dtype=F64)
    ref = torch.distributions.MultivariateNormal(torch.zeros(5, dtype=F64), cov).log_prob(r)
    torch.testing.assert_close(gaussian_log_evidence(cov, r), ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="square"):
        gaussian_log_evidence(cov[:4], r)
    with pytest.raises(ValueError, match="residual"):
        gaussian_log_evidence(cov, r[:4])


def test_weight_covariance_interface_and_bad_inputs(problem):
    _, _, lik, _, _, jac = problem
    prec = torch.rand(jac.num_params, generator=_gen(9), dtype=F64) + 0.5
    prior = DiagonalCovariance(prec)
    assert isinstance(prior, WeightCovariance)
    theta = torch.randn(jac.num_params, generator=_gen(10), dtype=F64)
    torch.testing.assert_close(prior.quadratic(theta), (prec * theta ** 2).sum())
    torch.testing.assert_close(prior.logdet(), -prec.log().sum())
    draws = prior.sample(40000, _gen(11))
    torch.testing.assert_close(draws.var(1), 1 / prec, rtol=0.05, atol=0)
    with pytest.raises(ValueError, match="precision"):
        DiagonalCovariance(-prec)
    with pytest.raises(TypeError, match="WeightCovariance"):
        OutputKernel(jac, "prior")
    with pytest.raises(ValueError, match="weights"):
        OutputKernel(jac, DiagonalCovariance(prec[:-1]))
    kernel = OutputKernel(jac, prior)
    with pytest.raises(ValueError, match="scalar"):
        ObservationKernel(kernel, lik, torch.zeros(2, dtype=F64))
    no_shapes = LinearGaussianLikelihood(lik.A, lik.A_adjoint)
    with pytest.raises(ValueError, match="out_shape"):
        ObservationKernel(kernel, no_shapes, torch.tensor(0.0, dtype=F64))
    with pytest.raises(ValueError, match="both"):
        LinearGaussianLikelihood(lik.A, lik.A_adjoint, out_shape=(1, 3, 3))


def test_kernel_derivative_matches_autograd():
    r = torch.tensor([0.0, 1.0, math.sqrt(2), 2.0], dtype=F64)
    ell = torch.tensor(0.7, dtype=F64, requires_grad=True)
    vals = kernel_values(r, ell)
    grads = torch.stack([torch.autograd.grad(v, ell, retain_graph=True)[0] for v in vals])
    torch.testing.assert_close(grads, kernel_lengthscale_derivative(r, ell.detach()))
    assert float(vals[0].detach()) == pytest.approx(1 + 1e-6)


def test_bilinear_form_and_its_hyperparameter_gradient_match_dense(problem):
    """aᵀ K_yy(h) b and its gradient in log δ and log σ² (what stochastic evidence uses)."""
    model, mat, lik, _, _, jac = problem
    sizes = [p.numel() for p in model.parameters()]
    log_prec = torch.tensor([0.1, -0.3, 0.5, 0.2], dtype=F64, requires_grad=True)
    log_noise = torch.tensor(-1.0, dtype=F64, requires_grad=True)
    a = torch.randn(7, 3, generator=_gen(12), dtype=F64)
    b = torch.randn(7, 3, generator=_gen(13), dtype=F64)

    def kernel():
        prior = DiagonalCovariance(expand_prior_precision(log_prec.exp(), sizes))
        return ObservationKernel(OutputKernel(jac, prior), lik, log_noise)

    value = kernel().bilinear(a, b)
    grads = torch.autograd.grad(value, (log_prec, log_noise))
    j = jac.dense()
    dense = (mat @ j @ torch.diag(1 / expand_prior_precision(log_prec.exp(), sizes)) @ j.T @ mat.T
             + log_noise.exp() * torch.eye(7, dtype=F64))
    ref = (a * (dense @ b)).sum()
    torch.testing.assert_close(value, ref, rtol=1e-10, atol=1e-12)
    for g, r in zip(grads, torch.autograd.grad(ref, (log_prec, log_noise))):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)
