"""Mode of the linearised model (Antorán et al. 2022, recommendation 1), float64.

Oracles: for a Gaussian likelihood the linearised model ``f̂ + J (θ − θ̂)`` is Bayesian linear
regression with features ``J``, so ``θ*`` is its conjugate posterior mean
``θ̂ + (JᵀJ/σ² + D)⁻¹ (Jᵀ r/σ² − D (θ̂ − μ₀))`` from a dense Jacobian; for a linear classifier
the linearised model is the model itself, so ``θ*`` is the unique stationary point of the
L2-regularised log-likelihood (autograd gradient zero).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bayes_dip.laplace import Laplace
from bayes_dip.laplace.batches import Batches
from bayes_dip.laplace.linearized_mode import find_linearized_mode

DT = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mlp(n_out: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, n_out)).to(DT)


def conjugate_mean(la: Laplace, x, y, delta, sigma):
    """Posterior mean of Bayesian linear regression on the dense Jacobian features."""
    jac = la._fn.jacobian(la.theta_hat, x).reshape(-1, la.n_params)
    resid = (y - la.model(x)).detach().reshape(-1)
    prec = jac.T @ jac / sigma**2 + torch.diag(delta)
    rhs = jac.T @ resid / sigma**2 - delta * (la.theta_hat - la.prior_mean)
    return la.theta_hat + torch.linalg.solve(prec, rhs)


@pytest.mark.parametrize("structure", ["full", "diag", "kfac"])
def test_gaussian_mode_is_the_conjugate_posterior_mean(structure):
    model = mlp(2)
    x = torch.randn(30, 3, generator=gen(1), dtype=DT)
    y = torch.randn(30, 2, generator=gen(2), dtype=DT)
    sigma, prec = 0.4, torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=DT)
    la = Laplace(model, "regression", structure=structure, prior_precision=prec, sigma_noise=sigma,
                 prior_mean=0.1).fit((x, y), batch_size=7)
    delta = la.prior_precision_diag
    oracle = conjugate_mean(la, x, y, delta, sigma)
    # the Newton solver on the exact linearised likelihood, whatever structure preconditions it
    step, log_lik = find_linearized_mode(la._fn, la.likelihood, Batches((x, y), 7, x.device), la.theta_hat,
                                         la.prior_mean, la.structure, 1 / sigma**2, delta, sigma_noise=sigma,
                                         tol=1e-14, cg_iter=100)
    torch.testing.assert_close(la.theta_hat + step, oracle, rtol=0, atol=1e-6)
    f_lin = la.model(x).detach() + (la._fn.jacobian(la.theta_hat, x) @ step).reshape(y.shape)
    expected = la.likelihood.log_prob(f_lin, y, sigma).sum()
    torch.testing.assert_close(log_lik, expected, rtol=0, atol=1e-8)
    if structure == "full":  # the closed form of the Laplace object agrees
        torch.testing.assert_close(la.linearized_mode(), oracle, rtol=0, atol=1e-10)


def regularised_grad(model: nn.Module, x, y, delta):
    """∇ [Σ log softmax(f)_y − ½ Σ δ θ²] over ``model``'s weights (flat)."""
    params = list(model.parameters())
    obj = torch.log_softmax(model(x), 1).gather(1, y[:, None]).sum()
    obj = obj - 0.5 * sum((d * p.reshape(-1) ** 2).sum() for d, p in zip(delta, params))
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(obj, params)])


@pytest.mark.parametrize("structure", ["full", "diag", "kfac"])
def test_linear_classifier_mode_is_the_regularised_map(structure):
    torch.manual_seed(3)
    model = nn.Linear(3, 4).to(DT)
    x = torch.randn(40, 3, generator=gen(4), dtype=DT)
    y = torch.randint(0, 4, (40,), generator=gen(5))
    prec = torch.tensor([0.7, 2.0], dtype=DT)
    la = Laplace(model, "classification", structure=structure, prior_precision=prec).fit((x, y), batch_size=16)
    delta = la.prior_precision_diag
    step, _ = find_linearized_mode(la._fn, la.likelihood, la._batches, la.theta_hat, la.prior_mean, la.structure,
                                   1.0, delta, tol=1e-14)
    assert float(step.norm()) > 0.1  # the network is not at that MAP
    trained = nn.Linear(3, 4).to(DT)
    nn.utils.vector_to_parameters(la.theta_hat + step, trained.parameters())
    assert float(regularised_grad(trained, x, y, prec).abs().max()) < 1e-6
    # the default tolerance (Newton decrement 1e-5 nats) is close to it
    theta_star = la.linearized_mode()
    torch.testing.assert_close(theta_star, la.theta_hat + step, rtol=0, atol=1e-3)
    nn.utils.vector_to_parameters(theta_star, trained.parameters())
    # evidence at θ*: log p(D|θ*) − ½ θ*ᵀDθ* + ½ log|D| − ½ log|K|
    log_lik = torch.log_softmax(trained(x), 1).gather(1, y[:, None]).sum()
    expected = (log_lik - 0.5 * (delta * theta_star**2).sum() + 0.5 * delta.log().sum()
                - 0.5 * la.log_det_posterior_precision())
    torch.testing.assert_close(la.log_marginal_likelihood(at="linearized"), expected.detach(), rtol=0, atol=1e-6)


def test_classification_evidence_at_mode_gradient_matches_finite_differences():
    """θ* maximises the joint, so differentiating with θ* held fixed gives the total derivative."""
    model = mlp(3, seed=1)
    x = torch.randn(25, 3, generator=gen(6), dtype=DT)
    y = torch.randint(0, 3, (25,), generator=gen(7))
    la = Laplace(model, "classification", structure="kfac").fit((x, y), batch_size=10)
    log_prec = torch.tensor([0.2, -0.3, 0.5, 0.0], dtype=DT, requires_grad=True)
    (grad,) = torch.autograd.grad(la.log_marginal_likelihood(log_prec.exp(), at="linearized"), log_prec)
    eps = 1e-4
    with torch.no_grad():
        for i in range(4):
            e = torch.zeros(4, dtype=DT)
            e[i] = eps
            fd = (la.log_marginal_likelihood((log_prec + e).exp(), at="linearized")
                  - la.log_marginal_likelihood((log_prec - e).exp(), at="linearized")) / (2 * eps)
            assert abs(float(fd) - float(grad[i])) < 1e-5 * max(1.0, abs(float(fd)))


def test_linearized_mode_needs_data_after_loading():
    model = mlp(3)
    x = torch.randn(10, 3, generator=gen(8), dtype=DT)
    y = torch.randint(0, 3, (10,), generator=gen(9))
    la = Laplace(model, "classification", structure="diag").fit((x, y))
    state = la.state_dict()
    loaded = Laplace(model, "classification", structure="diag").load_state_dict(state)
    with pytest.raises(ValueError, match="training data"):
        loaded.log_marginal_likelihood(at="linearized")
    loaded = Laplace(model, "classification", structure="diag").load_state_dict(state, data=(x, y))
    torch.testing.assert_close(loaded.linearized_mode(), la.linearized_mode())
    with pytest.raises(ValueError, match="max_iter"):
        find_linearized_mode(la._fn, la.likelihood, la._batches, la.theta_hat, la.prior_mean, la.structure,
                             1.0, la.prior_precision_diag, max_iter=0)
