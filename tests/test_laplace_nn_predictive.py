"""Predictives and samples of neural-network Laplace against dense and Monte-Carlo oracles (float64)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from bayes_dip.laplace import Laplace, LowRank, MatrixFree

DT = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def problem(likelihood: str = "classification", n: int = 30):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).to(DT)
    x = torch.randn(n, 3, generator=gen(1), dtype=DT)
    y = (torch.randint(0, 3, (n,), generator=gen(2)) if likelihood == "classification"
         else torch.randn(n, 3, generator=gen(2), dtype=DT))
    return model, x, y


def jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(t):
        parts = t.split([s.numel() for s in shapes])
        return functional_call(model, {n: p.view(s) for n, p, s in zip(names, parts, shapes)}, (x,))
    return torch.autograd.functional.jacobian(f, theta).reshape(x.shape[0], -1, theta.numel())


STRUCTURES = ["full", "diag", "kfac", "lowrank", "matrix_free"]


def make(structure: str):
    return {"lowrank": LowRank(rank=10), "matrix_free": MatrixFree(cg_tol=1e-10)}.get(structure, structure)


@pytest.mark.parametrize("structure", ["full", "diag", "kfac"])
@pytest.mark.parametrize("net", ["cnn", "layernorm"])
def test_glm_predictive_is_j_sigma_jt_for_conv_and_other_layers(structure, net):
    torch.manual_seed(0)
    if net == "cnn":  # convolutions: per-example Jacobians from layer hooks, no outer-product form
        model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Conv2d(2, 2, 3, stride=2),
                              nn.Flatten(), nn.Linear(8, 3)).to(DT)
    else:  # a LayerNorm: Jacobians from torch.func
        if structure == "kfac":
            pytest.skip("KFAC does not support LayerNorm")
        model = nn.Sequential(nn.Flatten(), nn.Linear(25, 4), nn.LayerNorm(4), nn.Tanh(), nn.Linear(4, 3)).to(DT)
    x = torch.randn(12, 1, 5, 5, generator=gen(1), dtype=DT)
    y = torch.randint(0, 3, (12,), generator=gen(2))
    la = Laplace(model, "classification", structure=structure, prior_precision=0.8).fit((x, y))
    jac = jacobian(model, x[:4])
    expected = jac @ la.posterior_covariance @ jac.mT
    _, cov = la.glm_predictive(x[:4])
    torch.testing.assert_close(cov, expected, rtol=1e-8, atol=1e-10)
    _, var = la.glm_predictive(x[:4], diagonal=True)
    torch.testing.assert_close(var, torch.diagonal(expected, dim1=1, dim2=2), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_glm_predictive_is_j_sigma_jt(structure):
    model, x, y = problem("regression")
    la = Laplace(model, "regression", structure=make(structure), prior_precision=torch.tensor([1.0, 2.0, 0.5, 3.0]),
                 sigma_noise=0.4).fit((x, y), batch_size=30)
    sigma = la.posterior_covariance
    jac = jacobian(model, x[:4])
    mean, cov = la.predict(x[:4])
    torch.testing.assert_close(mean, model(x[:4]).detach())
    torch.testing.assert_close(cov, jac @ sigma @ jac.mT, rtol=1e-8, atol=1e-10)
    _, var = la.predict(x[:4], diagonal=True, noise=True)
    torch.testing.assert_close(var, torch.diagonal(jac @ sigma @ jac.mT, dim1=1, dim2=2) + 0.16, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_samples_have_the_posterior_covariance(structure):
    model, x, y = problem()
    la = Laplace(model, "classification", structure=make(structure), prior_precision=2.0).fit((x, y))
    n = 1500 if structure == "matrix_free" else 6000  # sample-then-solve: one CG solve per sample
    samples = la.sample(n, generator=gen(3))
    assert samples.shape == (n, la.n_params)
    cov = la.posterior_covariance
    emp = torch.cov(samples.T)
    # Monte-Carlo error of a covariance entry: sqrt((Σ_ii Σ_jj + Σ_ij²) / n)
    err = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / n).sqrt()
    assert bool(((emp - cov).abs() < 5 * err).all())
    torch.testing.assert_close(samples.mean(0), la.mean, rtol=0, atol=float(5 * (cov.diagonal().max() / n) ** 0.5))


def test_probit_and_bridge_close_to_monte_carlo():
    model, x, y = problem()
    la = Laplace(model, "classification", structure="full", prior_precision=0.5).fit((x, y))
    mc = la.predict(x, link="mc", n_samples=20000, generator=gen(4))
    probit = la.predict(x, link="probit")
    bridge = la.predict(x, link="bridge")
    torch.testing.assert_close(probit.sum(1), torch.ones(30, dtype=DT))
    # the multiclass probit ignores logit correlations: close to, not equal to, the MC value
    assert float((probit - mc).abs().max()) < 0.04
    assert float((bridge - mc).abs().max()) < 0.1
    # the predictive is less confident than the MAP where the logit variance is large
    map_probs = torch.softmax(model(x), 1).detach()
    assert float(probit.max(1).values.mean()) < float(map_probs.max(1).values.mean())


def test_binary_probit_close_to_monte_carlo():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 1)).to(DT)
    x = torch.randn(25, 2, generator=gen(5), dtype=DT)
    y = torch.randint(0, 2, (25, 1), generator=gen(6)).to(DT)
    la = Laplace(model, "binary", structure="kfac", prior_precision=0.3).fit((x, y))
    mc = la.predict(x, link="mc", n_samples=20000, generator=gen(7))
    probit = la.predict(x, link="probit")
    assert probit.shape == (25, 1)
    assert float((probit - mc).abs().max()) < 0.02


def test_sampled_weights_predictive_matches_glm_for_small_variance():
    model, x, y = problem("regression")
    la = Laplace(model, "regression", structure="full", prior_precision=1e4, sigma_noise=0.1).fit((x, y))
    glm_mean, glm_cov = la.predict(x[:5])
    nn_mean, nn_cov = la.predict(x[:5], pred_type="nn", n_samples=4000, generator=gen(8))
    sd = glm_cov.diagonal(dim1=1, dim2=2).sqrt()
    # sample mean within Monte-Carlo error (+ the tiny curvature bias) of the GLM mean
    assert bool(((nn_mean - glm_mean).abs() < 5 * sd / 4000**0.5 + 1e-3 * sd).all())
    torch.testing.assert_close(nn_cov, glm_cov, rtol=0.1, atol=float(0.1 * sd.max() ** 2))
    cls_model, xc, yc = problem()
    la = Laplace(cls_model, "classification", structure="diag", prior_precision=1e4).fit((xc, yc))
    torch.testing.assert_close(la.predict(xc[:5], pred_type="nn", n_samples=500, generator=gen(9)),
                               la.predict(xc[:5]), rtol=0, atol=2e-3)


def test_predictive_for_linear_operator_likelihood_uses_model_output_space():
    from bayes_dip.laplace import LinearGaussianLikelihood
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Conv2d(2, 1, 1)).to(DT)
    mat = torch.randn(6, 9, generator=gen(1), dtype=DT)
    lik = LinearGaussianLikelihood(lambda f: (f.reshape(f.shape[0], 9) @ mat.T).reshape(-1, 1, 6),
                                   lambda o: (o.reshape(o.shape[0], 6) @ mat).reshape(-1, 1, 3, 3))
    x = torch.randn(1, 1, 3, 3, generator=gen(2), dtype=DT)
    y = torch.randn(1, 1, 6, generator=gen(3), dtype=DT)
    la = Laplace(model, lik, structure="full", sigma_noise=0.1).fit((x, y))
    mean, cov = la.predict(x)
    assert mean.shape == (1, 1, 3, 3) and cov.shape == (1, 9, 9)
    jac = jacobian(model, x)
    torch.testing.assert_close(cov, jac @ la.posterior_covariance @ jac.mT, rtol=1e-8, atol=1e-12)


def test_full_isotropic_predictive_without_eigenvectors_is_the_eigendecomposition_one():
    model, x, y = problem("regression")
    la = Laplace(model, "regression", structure="full", prior_precision=0.7, sigma_noise=0.4).fit((x, y), batch_size=30)
    la.optimize_prior_precision("marglik", optimize_noise=False, n_steps=5)  # eigenvalues alone
    _, cov_chol = la.glm_predictive(x[:4])  # Σ = R Rᵀ from a Cholesky factor
    assert la.structure._eig is None
    sigma = la.posterior_covariance  # eigendecomposition
    la.structure._root_cache = None
    _, cov_eig = la.glm_predictive(x[:4])  # Σ = R Rᵀ from the eigenvectors
    jac = jacobian(model, x[:4])
    torch.testing.assert_close(cov_chol, jac @ sigma @ jac.mT, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(cov_eig, cov_chol, rtol=1e-8, atol=1e-10)
