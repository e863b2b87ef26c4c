"""Evidence of neural-network Laplace: closed forms, finite differences, MacKay's fixed point (float64).

Oracle: Bayesian linear regression ``y = X w + ε``, ``w ~ N(0, α⁻¹ I)``, ``ε ~ N(0, σ² I)``:
posterior ``N(A⁻¹ Xᵀy/σ², A⁻¹)`` with ``A = XᵀX/σ² + α I`` and evidence
``log N(y; 0, X Xᵀ/α + σ² I)``; there the Laplace approximation is exact.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bayes_dip.laplace import Laplace, LowRank, MatrixFree

DT = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def regression_data(n: int = 25, d: int = 4):
    x = torch.randn(n, d, generator=gen(0), dtype=DT)
    y = x @ torch.randn(d, 1, generator=gen(1), dtype=DT) + 0.3 * torch.randn(n, 1, generator=gen(2), dtype=DT)
    return x, y


def closed_form(x, y, alpha, sigma):
    """Posterior mean, covariance and log evidence of Bayesian linear regression."""
    n, d = x.shape
    a = x.T @ x / sigma**2 + alpha * torch.eye(d, dtype=DT)
    mean = torch.linalg.solve(a, x.T @ y / sigma**2).squeeze(1)
    cov = x @ x.T / alpha + sigma**2 * torch.eye(n, dtype=DT)
    log_z = torch.distributions.MultivariateNormal(torch.zeros(n, dtype=DT), cov).log_prob(y.squeeze(1))
    return mean, torch.linalg.inv(a), log_z


def linear_model(d: int, weights: torch.Tensor | None = None) -> nn.Module:
    torch.manual_seed(3)
    model = nn.Linear(d, 1, bias=False).to(DT)
    if weights is not None:
        with torch.no_grad():
            model.weight.copy_(weights.reshape(1, -1))
    return model


@pytest.mark.parametrize("structure", ["full", "kfac", "lowrank"])
def test_linear_regression_laplace_is_exact(structure):
    x, y = regression_data()
    alpha, sigma = 2.0, 0.5
    mean, cov, log_z = closed_form(x, y, alpha, sigma)
    spec = LowRank(rank=4) if structure == "lowrank" else structure
    la = Laplace(linear_model(4, mean), "regression", structure=spec, prior_precision=alpha,
                 sigma_noise=sigma).fit((x, y), batch_size=10)
    torch.testing.assert_close(la.mean, mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(la.posterior_covariance, cov, rtol=1e-8, atol=1e-10)
    assert abs(float(la.log_marginal_likelihood()) - float(log_z)) < 1e-8
    # away from the MAP, the evidence at the linearised model's mode is still exact
    la = Laplace(linear_model(4), "regression", structure=spec, prior_precision=alpha,
                 sigma_noise=sigma).fit((x, y), batch_size=10)
    torch.testing.assert_close(la.linearized_mode(), mean, rtol=0, atol=1e-10)
    assert abs(float(la.log_marginal_likelihood(at="linearized")) - float(log_z)) < 1e-8
    assert float(la.log_marginal_likelihood()) < float(log_z) - 1.0


def _closed_form_gradient(x, y, alpha, sigma):
    a = torch.tensor(alpha, dtype=DT, requires_grad=True)
    s = torch.tensor(sigma, dtype=DT, requires_grad=True)
    log_z = closed_form(x, y, a, s)[2]
    return torch.autograd.grad(log_z, (a, s)), float(log_z.detach())


@pytest.mark.parametrize("method", ["mackay", "marglik"])
def test_type2_ml_reaches_closed_form_optimum(method):
    x, y = regression_data()
    la = Laplace(linear_model(4), "regression", prior_precision=1.0, sigma_noise=1.0).fit((x, y))
    if method == "mackay":
        history = la.optimize_prior_precision("mackay", at="linearized", max_iter=200, tol=1e-12)
        assert len(history) < 200
    else:
        la.optimize_prior_precision("marglik", at="linearized", n_steps=200, lr=0.1)
    alpha, sigma = float(la.prior_precision), float(la.sigma_noise)
    (g_alpha, g_sigma), log_z = _closed_form_gradient(x, y, alpha, sigma)
    # stationary point of the closed-form evidence (in log-parameters); Adam only gets close
    tol = 1e-8 if method == "mackay" else 2e-3
    assert abs(float(g_alpha) * alpha) < tol and abs(float(g_sigma) * sigma) < tol
    assert abs(float(la.log_marginal_likelihood(at="linearized")) - log_z) < 1e-8
    for da, ds in ((1.1, 1.0), (0.9, 1.0), (1.0, 1.05), (1.0, 0.95)):
        assert _closed_form_gradient(x, y, alpha * da, sigma * ds)[1] < log_z


def mlp_problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(DT)
    x = torch.randn(20, 3, generator=gen(4), dtype=DT)
    y = torch.randn(20, 2, generator=gen(5), dtype=DT)
    return model, x, y


@pytest.mark.parametrize("structure,at,groups", [
    ("full", "map", 4), ("full", "map", 0), ("diag", "map", 4), ("kfac", "map", 4), ("lowrank", "map", 4),
    ("full", "linearized", 4), ("full", "linearized", 0), ("kfac", "linearized", 4), ("lowrank", "linearized", 4)])
def test_evidence_gradients_match_finite_differences(structure, at, groups):
    model, x, y = mlp_problem()
    spec = LowRank(rank=8) if structure == "lowrank" else structure
    la = Laplace(model, "regression", structure=spec).fit((x, y), batch_size=8)
    # one precision per parameter tensor, or a scalar (groups == 0)
    log_prec = torch.tensor([0.1, -0.4, 0.3, 0.2][:groups] if groups else 0.1, dtype=DT, requires_grad=True)
    log_sigma = torch.tensor(-0.2, dtype=DT, requires_grad=True)

    def evidence(lp, ls):
        return la.log_marginal_likelihood(lp.exp(), ls.exp(), at=at)

    grads = torch.autograd.grad(evidence(log_prec, log_sigma), (log_prec, log_sigma))
    eps = 1e-5
    with torch.no_grad():
        for i in range(max(groups, 1)):
            e = torch.zeros(groups, dtype=DT) if groups else torch.tensor(0.0, dtype=DT)
            e[i if groups else ()] = eps
            fd = (evidence(log_prec + e, log_sigma) - evidence(log_prec - e, log_sigma)) / (2 * eps)
            assert abs(float(fd) - float(grads[0].reshape(-1)[i])) < 1e-6 * max(1.0, abs(float(fd)))
        fd = (evidence(log_prec, log_sigma + eps) - evidence(log_prec, log_sigma - eps)) / (2 * eps)
        assert abs(float(fd) - float(grads[1])) < 1e-6 * max(1.0, abs(float(fd)))


def test_classification_evidence_gradient_and_per_parameter_prior():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).to(DT)
    x = torch.randn(15, 3, generator=gen(6), dtype=DT)
    y = torch.randint(0, 3, (15,), generator=gen(7))
    la = Laplace(model, "classification", structure="full").fit((x, y))
    # random per-weight precisions (Cholesky path) and equal ones (eigendecomposition path,
    # whose finite differences leave it for the Cholesky path)
    for log_prec in (0.1 * torch.randn(la.n_params, generator=gen(8), dtype=DT),
                     torch.full((la.n_params,), -0.3, dtype=DT)):
        log_prec.requires_grad_(True)
        (grad,) = torch.autograd.grad(la.log_marginal_likelihood(log_prec.exp()), log_prec)
        eps = 1e-5
        with torch.no_grad():
            for i in (0, 7, la.n_params - 1):
                e = torch.zeros(la.n_params, dtype=DT)
                e[i] = eps
                fd = (la.log_marginal_likelihood((log_prec + e).exp())
                      - la.log_marginal_likelihood((log_prec - e).exp())) / (2 * eps)
                assert abs(float(fd) - float(grad[i])) < 1e-7


def test_matrix_free_log_determinant_and_gradient_estimates():
    model, x, y = mlp_problem()
    dense = Laplace(model, "regression", structure="full", prior_precision=0.5).fit((x, y))
    n_probes = 100
    mf = Laplace(model, "regression", structure=MatrixFree(n_probes=n_probes, lanczos_steps=40, seed=1),
                 prior_precision=0.5).fit((x, y))
    exact = float(dense.log_det_posterior_precision())
    # SLQ with 40 >= P = 32 Lanczos steps is exact per probe: what is left is Hutchinson's
    # error on log K, of variance 2 (‖log K‖_F² − Σ_i (log K)_ii²) / s for Rademacher probes
    prec = dense.posterior_precision_matmul(torch.eye(32, dtype=DT))
    evals, evecs = torch.linalg.eigh(prec)
    log_k = evecs @ torch.diag(evals.log()) @ evecs.T
    std = float((2 * ((log_k**2).sum() - (log_k.diagonal() ** 2).sum()) / n_probes).sqrt())
    assert abs(float(mf.log_det_posterior_precision()) - exact) < 4 * std
    # gradient w.r.t. a scalar prior precision: tr(K⁻¹) by Hutchinson with CG solves
    prec = torch.tensor(0.5, dtype=DT, requires_grad=True)
    (g_dense,) = torch.autograd.grad(dense.log_marginal_likelihood(prec), prec)
    (g_mf,) = torch.autograd.grad(mf.log_marginal_likelihood(prec), prec)
    cov = torch.linalg.inv(dense.posterior_precision_matmul(torch.eye(32, dtype=DT)))
    std = float((2 * ((cov**2).sum() - (cov.diagonal() ** 2).sum()) / n_probes).sqrt())
    assert abs(float(g_mf) - float(g_dense)) < 0.5 * 4 * std  # d/dδ of −½ log|K| is −½ tr(K⁻¹)
    # with a preconditioner of full rank the estimate is exact (P⁻¹ᐟ² K P⁻¹ᐟ² = I)
    exact_pc = Laplace(model, "regression", structure=MatrixFree(precond_rank=32, n_probes=2),
                       prior_precision=0.5).fit((x, y))
    assert abs(float(exact_pc.log_det_posterior_precision()) - exact) < 1e-6
    torch.testing.assert_close(exact_pc.posterior_variance, dense.posterior_variance, rtol=1e-5, atol=1e-9)


def test_grid_search_picks_best_evidence_and_validation_nll():
    model, x, y = mlp_problem()
    la = Laplace(model, "regression", structure="kfac").fit((x, y))
    grid = torch.logspace(-2, 2, 9, dtype=DT)
    scores = la.optimize_prior_precision("grid", grid=grid)
    values = torch.stack([la.log_marginal_likelihood(g) for g in grid])
    torch.testing.assert_close(scores, values)
    assert float(la.prior_precision) == float(grid[values.argmax()])
    nll = la.optimize_prior_precision("grid", grid=grid, val_data=(x[:10], y[:10]))
    assert float(la.prior_precision) == float(grid[nll.argmin()])
    assert nll.shape == (9,) and bool(torch.isfinite(nll).all())


_SPECTRAL = [("full", "scalar"), ("diag", "scalar"), ("diag", "group"), ("diag", "parameter"),
             ("kfac", "scalar"), ("kfac", "group"), ("lowrank", "scalar")]


def _prior(kind: str, la: Laplace) -> torch.Tensor:
    if kind == "scalar":
        return torch.tensor(0.7, dtype=DT)
    n = la.subset.n_groups if kind == "group" else la.n_params
    return 0.3 + torch.rand(n, generator=gen(9), dtype=DT)


@pytest.mark.parametrize("structure,kind", _SPECTRAL)
def test_structure_spectrum_gives_its_log_determinant(structure, kind):
    model, x, y = mlp_problem()
    la = Laplace(model, "regression", structure=LowRank(rank=8) if structure == "lowrank" else structure,
                 sigma_noise=0.7).fit((x, y), batch_size=8)
    lam = la.structure.spectrum(kind)
    assert lam is not None and lam.shape == (la.n_params,) and lam.dtype == DT
    la.prior_precision = _prior(kind, la)
    s = 1 / 0.7**2
    torch.testing.assert_close((s * lam + la.prior_precision_diag).log().sum(), la.log_det_posterior_precision(),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("structure,kind", _SPECTRAL + [("full", "group"), ("kfac_linearized", "group")])
@pytest.mark.parametrize("likelihood", ["regression", "classification"])
def test_closed_form_marglik_steps_are_the_autograd_ones(structure, kind, likelihood):
    """The O(P) spectral evidence optimisation (δ alone, at θ̂) takes the steps of Adam on the autograd
    evidence; where it does not apply (full with a per-group δ, at θ*) the autograd path runs."""
    model, x, y = mlp_problem()
    at = "linearized" if structure.endswith("_linearized") else "map"
    structure = structure.removesuffix("_linearized")
    if likelihood == "classification":
        model[2] = nn.Linear(5, 3).to(DT)
        y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    runs = []
    for spectral in (True, False):
        spec = LowRank(rank=8) if structure == "lowrank" else structure
        la = Laplace(model, likelihood, structure=spec).fit((x, y), batch_size=8)
        la.prior_precision = _prior(kind, la)
        if not spectral:
            la.structure.spectrum = lambda kind: None
        calls, logdet = [], la.structure.logdet
        la.structure.logdet = lambda *args: calls.append(1) or logdet(*args)
        history = la.optimize_prior_precision("marglik", at=at, optimize_noise=False, n_steps=40, lr=0.1)
        # the closed form never forms log|K|; it applies at θ̂ where the spectrum exists
        assert (not calls) == (spectral and at == "map" and (structure, kind) != ("full", "group"))
        runs.append((history, la.prior_precision))
    (h_fast, p_fast), (h_slow, p_slow) = runs
    assert h_fast.shape == (40,) and h_fast.dtype == DT and bool(h_fast[-1] > h_fast[0])
    torch.testing.assert_close(h_fast, h_slow, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(p_fast, p_slow, rtol=1e-9, atol=0)
    assert p_fast.shape == _prior(kind, la).shape
