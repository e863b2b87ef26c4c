"""Curvature of neural-network Laplace against dense oracles (float64).

GGN = Hessian for networks linear in θ; KFAC = GGN where it is exact; diag = diagonal of
the full GGN; matrix-free GGN·v = dense GGN·v; linear-operator likelihood GGN = Jᵀ AᵀA J / σ²;
empirical Fisher = Σ per-example gradient outer products.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from bayes_dip.laplace import Laplace, LinearGaussianLikelihood, MatrixFree
from bayes_dip.laplace.curvature import GGNOperator, OutputCurvature
from bayes_dip.laplace.batches import Batches
from bayes_dip.laplace.functional import ModelFunction
from bayes_dip.laplace.subsets import all_weights

DT = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def as_function(model: nn.Module):
    """``θ ↦ model(x; θ)`` for the flat vector of all parameters (for dense oracles)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def f(theta, x):
        parts = theta.split([s.numel() for s in shapes])
        return functional_call(model, {n: t.view(s) for n, t, s in zip(names, parts, shapes)}, (x,))
    return f


def ggn(la: Laplace) -> torch.Tensor:
    """``s · GGN`` of a fitted Laplace as a dense matrix (precision minus prior)."""
    eye = torch.eye(la.n_params, dtype=DT)
    return la.posterior_precision_matmul(eye) - torch.diag(la.prior_precision_diag.to(DT))


def mlp(seed: int = 0, sizes=(4, 6, 3)) -> nn.Module:
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers).to(DT)


def cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Conv2d(2, 2, 3, stride=2),
                         nn.Flatten(), nn.Linear(8, 3)).to(DT)


@pytest.mark.parametrize("likelihood", ["regression", "classification", "binary"])
def test_ggn_equals_hessian_for_network_linear_in_weights(likelihood):
    x = torch.randn(12, 5, generator=gen(1), dtype=DT)
    out = {"regression": 2, "classification": 3, "binary": 1}[likelihood]
    torch.manual_seed(0)
    model = nn.Linear(5, out).to(DT)
    if likelihood == "regression":
        y = torch.randn(12, 2, generator=gen(2), dtype=DT)
    elif likelihood == "classification":
        y = torch.randint(0, 3, (12,), generator=gen(2))
    else:
        y = torch.randint(0, 2, (12, 1), generator=gen(2)).to(DT)
    sigma = 0.7 if likelihood == "regression" else 1.0
    la = Laplace(model, likelihood, sigma_noise=sigma).fit((x, y), batch_size=5)
    f = as_function(model)

    def nll(theta):
        return -la.likelihood.log_prob(f(theta, x), y, sigma).sum()

    hess = torch.autograd.functional.hessian(nll, flat_params(model))
    torch.testing.assert_close(ggn(la), hess, rtol=1e-10, atol=1e-10)


def test_kfac_exact_for_one_example_linear_layers():
    model = mlp(0, (4, 5, 3))
    x = torch.randn(1, 4, generator=gen(1), dtype=DT)
    y = torch.tensor([2])
    full = ggn(Laplace(model, "classification", structure="full").fit((x, y)))
    kfac = ggn(Laplace(model, "classification", structure="kfac").fit((x, y)))
    # KFAC keeps one block per parameter tensor; for one example each block is exact
    start = 0
    for p in model.parameters():
        sl = slice(start, start + p.numel())
        torch.testing.assert_close(kfac[sl, sl], full[sl, sl], rtol=1e-10, atol=1e-12)
        start += p.numel()
    # ...and for one bias-free layer the whole matrix is exact
    torch.manual_seed(1)
    single = nn.Linear(4, 3, bias=False).to(DT)
    full = ggn(Laplace(single, "classification", structure="full").fit((x, y)))
    kfac = ggn(Laplace(single, "classification", structure="kfac").fit((x, y)))
    torch.testing.assert_close(kfac, full, rtol=1e-10, atol=1e-12)


def test_kfac_exact_for_conv_at_one_position():
    # a 3x3 kernel on a 3x3 input: one output position, so the conv is a linear layer
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3, 4)).to(DT)
    x = torch.randn(1, 2, 3, 3, generator=gen(1), dtype=DT)
    y = torch.tensor([1])
    full = ggn(Laplace(model, "classification", structure="full").fit((x, y)))
    kfac = ggn(Laplace(model, "classification", structure="kfac").fit((x, y)))
    start = 0
    for p in model.parameters():
        sl = slice(start, start + p.numel())
        torch.testing.assert_close(kfac[sl, sl], full[sl, sl], rtol=1e-10, atol=1e-12)
        start += p.numel()


def test_kfac_exact_for_single_conv_with_gaussian_likelihood():
    # f = conv(x) with Λ = I/σ²: the weight block is Σ_t I ⊗ a_t a_tᵀ = I ⊗ A, which
    # KFAC-expand reproduces for any number of examples and positions; biases are exact.
    torch.manual_seed(0)
    model = nn.Conv2d(2, 3, 3, stride=2, padding=1, dilation=1).to(DT)
    x = torch.randn(3, 2, 7, 7, generator=gen(1), dtype=DT)
    y = torch.randn(3, 3, 4, 4, generator=gen(2), dtype=DT)
    full = ggn(Laplace(model, "regression", structure="full", sigma_noise=0.5).fit((x, y)))
    kfac = ggn(Laplace(model, "regression", structure="kfac", sigma_noise=0.5).fit((x, y)))
    w = model.weight.numel()
    torch.testing.assert_close(kfac[:w, :w], full[:w, :w], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(kfac[w:, w:], full[w:, w:], rtol=1e-10, atol=1e-10)


def layernorm_net(seed: int = 0) -> nn.Module:
    """Has a layer outside nn.Linear/nn.Conv2d: curvature goes through torch.func rows."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.LayerNorm(50), nn.Tanh(),
                         nn.Linear(50, 3)).to(DT)


@pytest.mark.parametrize("curvature", ["ggn", "ef"])
@pytest.mark.parametrize("net", [cnn, layernorm_net])
def test_diag_equals_diagonal_of_full(curvature, net):
    model = net(0)
    x = torch.randn(10, 1, 5, 5, generator=gen(1), dtype=DT)
    y = torch.randint(0, 3, (10,), generator=gen(2))
    full = Laplace(model, "classification", structure="full", curvature=curvature).fit((x, y), batch_size=4)
    diag = Laplace(model, "classification", structure="diag", curvature=curvature).fit((x, y), batch_size=4)
    torch.testing.assert_close(ggn(diag).diagonal(), ggn(full).diagonal(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_layer_hooks_and_torch_func_rows_agree(likelihood):
    from bayes_dip.laplace.curvature.dense import _Accumulator, _rows_by_func, _rows_by_layers
    torch.manual_seed(0)
    # Linear on 3-D inputs: a weight shared over positions, as in a convolution
    model = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.Tanh(), nn.Flatten(2),
                          nn.Linear(9, 4), nn.Tanh(), nn.Flatten(), nn.Linear(8, 3)).to(DT)
    x = torch.randn(6, 1, 5, 5, generator=gen(1), dtype=DT)
    y = (torch.randint(0, 3, (6,), generator=gen(2)) if likelihood == "classification"
         else torch.randn(6, 3, generator=gen(2), dtype=DT))
    fn = ModelFunction(model, all_weights(model))
    lik = Laplace(model, likelihood).likelihood
    batches = Batches((x, y), 4, x.device)
    results = []
    for rows in (_rows_by_func, _rows_by_layers):
        acc = _Accumulator(fn.n_params, False, x.device)
        rows(fn, OutputCurvature(lik), batches, fn.theta(), acc, False)
        results.append(acc.value)
    torch.testing.assert_close(results[0], results[1], rtol=1e-10, atol=1e-12)


def test_empirical_fisher_is_sum_of_gradient_outer_products():
    model = mlp(1)
    x = torch.randn(7, 4, generator=gen(1), dtype=DT)
    y = torch.randn(7, 3, generator=gen(2), dtype=DT)
    la = Laplace(model, "regression", structure="full", curvature="ef", sigma_noise=0.8).fit((x, y), batch_size=3)
    f = as_function(model)
    theta = flat_params(model)
    expected = torch.zeros(theta.numel(), theta.numel(), dtype=DT)
    for i in range(7):
        g = torch.func.grad(lambda t: la.likelihood.log_prob(f(t, x[i:i + 1]), y[i:i + 1], 0.8).sum())(theta)
        expected += torch.outer(g, g)
    torch.testing.assert_close(ggn(la), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_matrix_free_ggn_vector_products_match_dense(likelihood):
    model = cnn(2)
    x = torch.randn(9, 1, 5, 5, generator=gen(1), dtype=DT)
    y = (torch.randint(0, 3, (9,), generator=gen(2)) if likelihood == "classification"
         else torch.randn(9, 3, generator=gen(2), dtype=DT))
    dense = Laplace(model, likelihood, structure="full").fit((x, y), batch_size=4)
    fn = ModelFunction(model, all_weights(model))
    op = GGNOperator(fn, OutputCurvature(dense.likelihood), Batches((x, y), 4, x.device), fn.theta())
    v = torch.randn(fn.n_params, 3, generator=gen(3), dtype=DT)
    torch.testing.assert_close(op(v), ggn(dense) @ v, rtol=1e-10, atol=1e-10)
    mf = Laplace(model, likelihood, structure="matrix_free").fit((x, y), batch_size=4)
    torch.testing.assert_close(mf.posterior_precision_matmul(v), dense.posterior_precision_matmul(v),
                               rtol=1e-10, atol=1e-10)


def test_linear_operator_likelihood_ggn_is_jt_ata_j():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Conv2d(2, 1, 1)).to(DT)
    mat = torch.randn(10, 16, generator=gen(1), dtype=DT)  # 10 measurements of a 4x4 image

    def A(img):
        return (img.reshape(img.shape[0], 16) @ mat.T).reshape(img.shape[0], 1, 10)

    def A_adjoint(obs):
        return (obs.reshape(obs.shape[0], 10) @ mat).reshape(obs.shape[0], 1, 4, 4)

    x = torch.randn(2, 1, 4, 4, generator=gen(2), dtype=DT)
    y = torch.randn(2, 1, 10, generator=gen(3), dtype=DT)
    sigma = 0.3
    lik = LinearGaussianLikelihood(A, A_adjoint)
    theta = flat_params(model)
    jac = torch.autograd.functional.jacobian(lambda t: as_function(model)(t, x), theta).reshape(2, 16, -1)
    expected = sum(jac[b].T @ mat.T @ mat @ jac[b] for b in range(2)) / sigma**2
    for structure in ("full", "diag", "matrix_free"):
        la = Laplace(model, lik, structure=structure, sigma_noise=sigma).fit((x, y), batch_size=1)
        got = ggn(la)
        if structure == "diag":
            torch.testing.assert_close(got.diagonal(), expected.diagonal(), rtol=1e-10, atol=1e-10)
        else:
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    # the log-likelihood statistics use the residual y − A f
    la = Laplace(model, lik, structure="diag", sigma_noise=sigma).fit((x, y))
    sse = ((y - A(model(x))) ** 2).sum()
    torch.testing.assert_close(la._stats["sse"], sse.detach())


def test_kfac_names_unsupported_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2)).to(DT)
    x, y = torch.randn(5, 3, dtype=DT), torch.randint(0, 2, (5,))
    with pytest.raises(ValueError, match=r"'1\.weight'.*LayerNorm"):
        Laplace(model, "classification", structure="kfac").fit((x, y))
    grouped = nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.Flatten()).to(DT)
    with pytest.raises(ValueError, match="grouped"):
        Laplace(grouped, "regression", structure="kfac").fit(
            (torch.randn(2, 2, 3, 3, dtype=DT), torch.randn(2, 2, dtype=DT)))
    # layers outside the subset do not matter
    la = Laplace(model, "classification", subset=["2"], structure="kfac").fit((x, y))
    assert la.n_params == 10


def test_matrix_free_handles_models_too_big_for_dense_curvature():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 300), nn.Tanh(), nn.Linear(300, 300), nn.Tanh(), nn.Linear(300, 2)).to(DT)
    x, y = torch.randn(8, 20, dtype=DT), torch.randn(8, 2, dtype=DT)
    la = Laplace(model, "regression", structure=MatrixFree(cg_tol=1e-8), prior_precision=2.0).fit((x, y))
    assert la.n_params > 95_000  # a dense GGN would take > 70 GB
    _, var = la.predict(x[:2], diagonal=True)
    assert la.structure.last_cg_info.converged
    # 16 data directions: K = GGN + 2 I has rank-16 GGN, so with J the test Jacobian,
    # J K⁻¹ Jᵀ = (J Jᵀ − J Jᵀ_data (…)⁻¹ …)/2: strictly below the prior value J Jᵀ / 2
    jac = torch.autograd.functional.jacobian(lambda t: as_function(model)(t, x[:2]), flat_params(model))
    prior_var = (jac.reshape(4, -1) ** 2).sum(1).reshape(2, 2) / 2.0
    assert bool((var > 0).all()) and bool((var < prior_var).all())
    # and the data-informed reduction agrees with the dense formula in output space
    jd = torch.autograd.functional.jacobian(lambda t: as_function(model)(t, x), flat_params(model)).reshape(16, -1)
    jt = jac.reshape(4, -1)
    # Woodbury: J (JdᵀJd + 2I)⁻¹ Jᵀ = (J Jᵀ − J Jdᵀ (Jd Jdᵀ + 2I)⁻¹ Jd Jᵀ) / 2
    inner = torch.linalg.solve(jd @ jd.T + 2.0 * torch.eye(16, dtype=DT), jd @ jt.T)
    expected = ((jt * jt).sum(1) - ((jt @ jd.T) * inner.T).sum(1)) / 2.0
    torch.testing.assert_close(var.reshape(-1), expected, rtol=1e-6, atol=1e-10)
