"""The ``Laplace`` API: subsets, persistence and input validation (float64)."""
from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from bayes_dip.laplace import (Laplace, LowRank, MatrixFree, WeightSubset, from_names, largest_variance,
                               last_layer)

DT = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def problem(n: int = 24):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)).to(DT)
    x = torch.randn(n, 3, generator=gen(1), dtype=DT)
    y = torch.randint(0, 3, (n,), generator=gen(2))
    return model, x, y


def _unflatten(model: nn.Module, theta: torch.Tensor) -> dict[str, torch.Tensor]:
    out, start = {}, 0
    for name, p in model.named_parameters():
        out[name] = theta[start:start + p.numel()].view(p.shape)
        start += p.numel()
    return out


def test_largest_variance_subnetwork_picks_top_weights_and_restricts_the_ggn():
    model, x, y = problem()
    diag = Laplace(model, "classification", structure="diag", prior_precision=0.7).fit((x, y))
    var = diag.posterior_variance
    sub = largest_variance(diag, 9)
    assert sub.n_params == 9
    # map the selected (parameter, entry) pairs back to positions of the all-weights vector
    offsets = dict(zip(diag.subset.names, diag.subset.offsets))
    chosen = torch.cat([offsets[n] + (torch.arange(s.numel()) if i is None else i)
                        for n, s, i in zip(sub.names, sub.shapes, sub.indices)])
    assert set(chosen.tolist()) == set(torch.topk(var, 9).indices.tolist())
    # the full Laplace over the subnetwork has the all-weights GGN restricted to it
    full = Laplace(model, "classification", structure="full", prior_precision=0.7).fit((x, y))
    subnet = Laplace(model, "classification", subset=sub, structure="full", prior_precision=0.7).fit((x, y))
    eye = torch.eye(9, dtype=DT)
    all_prec = full.posterior_precision_matmul(torch.eye(full.n_params, dtype=DT))
    torch.testing.assert_close(subnet.posterior_precision_matmul(eye), all_prec[chosen][:, chosen],
                               rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(subnet.mean, full.mean[chosen])
    sub_diag = Laplace(model, "classification", subset=sub, structure="diag", prior_precision=0.7).fit((x, y))
    torch.testing.assert_close(1 / sub_diag.posterior_variance, all_prec.diagonal()[chosen], rtol=1e-10, atol=1e-12)
    # GLM predictive with the Jacobian columns of the subnetwork
    jac = torch.autograd.functional.jacobian(
        lambda t: torch.func.functional_call(model, _unflatten(model, t), (x[:4],)),
        torch.cat([p.detach().reshape(-1) for p in model.parameters()]))[:, :, chosen]
    for la in (subnet, sub_diag):
        _, cov = la.glm_predictive(x[:4])
        torch.testing.assert_close(cov, jac @ la.posterior_covariance @ jac.mT, rtol=1e-8, atol=1e-12)
    probs = subnet.predict(x[:4])
    assert probs.shape == (4, 3) and not probs.requires_grad


def test_last_layer_uses_cached_features_and_matches_named_subset():
    model, x, y = problem()
    ll = Laplace(model, "classification", subset="last_layer", structure="full").fit((x, y), batch_size=7)
    named = Laplace(model, "classification", subset=["2"], structure="full").fit((x, y), batch_size=7)
    assert ll.subset.head == "2" and named.subset.head is None
    assert ll.subset.names == named.subset.names == ("2.weight", "2.bias")
    eye = torch.eye(18, dtype=DT)
    torch.testing.assert_close(ll.posterior_precision_matmul(eye), named.posterior_precision_matmul(eye))
    torch.testing.assert_close(ll.predict(x), named.predict(x))
    torch.testing.assert_close(ll.log_marginal_likelihood(), named.log_marginal_likelihood())
    # a model whose last module's output is post-processed has no usable last layer
    post = nn.Sequential(nn.Linear(3, 3), nn.Tanh()).to(DT)
    with pytest.raises(ValueError, match="not the model output"):
        last_layer(post, x)


@pytest.mark.parametrize("structure", ["full", "diag", "kfac", "lowrank", "matrix_free"])
def test_state_dict_round_trip(structure):
    model, x, y = problem()
    spec = {"lowrank": lambda: LowRank(rank=6), "matrix_free": lambda: MatrixFree(n_probes=4)}.get(
        structure, lambda: structure)
    la = Laplace(model, "classification", subset="last_layer", structure=spec(),
                 prior_precision=torch.tensor([0.5, 2.0])).fit((x, y))
    buffer = io.BytesIO()
    torch.save(la.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer)  # plain tensors and containers: loads with weights_only=True
    restored = Laplace(model, "classification", subset="last_layer", structure=spec())
    restored.load_state_dict(state, data=(x, y) if structure == "matrix_free" else None)
    torch.testing.assert_close(restored.prior_precision, la.prior_precision)
    torch.testing.assert_close(restored.log_marginal_likelihood(), la.log_marginal_likelihood())
    torch.testing.assert_close(restored.predict(x[:5]), la.predict(x[:5]))
    torch.testing.assert_close(restored.sample(3, gen(1)), la.sample(3, gen(1)))


def test_state_dict_rejects_mismatches():
    model, x, y = problem()
    state = Laplace(model, "classification", structure="diag").fit((x, y)).state_dict()
    with pytest.raises(ValueError, match="structure"):
        Laplace(model, "classification", structure="full").load_state_dict(state)
    with pytest.raises(ValueError, match="likelihood"):
        Laplace(model, "regression", structure="diag").load_state_dict(state)
    other = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).to(DT)
    with pytest.raises(ValueError, match="shape"):
        Laplace(other, "classification", structure="diag").load_state_dict(state)
    mf = Laplace(model, "classification", structure="matrix_free").fit((x, y)).state_dict()
    with pytest.raises(ValueError, match="data"):
        Laplace(model, "classification", structure="matrix_free").load_state_dict(mf)


def test_regression_noise_and_prior_shapes():
    model, x, _ = problem()
    y = torch.randn(24, 3, generator=gen(3), dtype=DT)
    la = Laplace(model, "regression", prior_precision=torch.full((4,), 2.0), sigma_noise=0.5).fit((x, y))
    # per-group, per-weight and scalar precisions of the same value give the same posterior
    a = la.log_marginal_likelihood()
    b = la.log_marginal_likelihood(torch.full((la.n_params,), 2.0))
    c = la.log_marginal_likelihood(2.0)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    # GGN scales as 1/σ²: σ → σ/2 equals a fourfold curvature
    sub = WeightSubset(la.subset.names, la.subset.shapes, la.subset.indices)
    other = Laplace(model, "regression", subset=sub, sigma_noise=0.25, prior_precision=2.0).fit((x, y))
    torch.testing.assert_close(other.log_det_posterior_precision(),
                               la.structure.logdet(16.0, torch.full((la.n_params,), 2.0, dtype=DT)))


def test_bad_inputs_raise_clear_errors():
    model, x, y = problem()
    with pytest.raises(ValueError, match="likelihood"):
        Laplace(model, "poisson")
    with pytest.raises(ValueError, match="structure"):
        Laplace(model, "classification", structure="block")
    with pytest.raises(TypeError, match="model"):
        Laplace(lambda t: t, "classification")
    with pytest.raises(ValueError, match="prior_precision"):
        Laplace(model, "classification", prior_precision=-1.0)
    with pytest.raises(ValueError, match="sigma_noise"):
        Laplace(model, "classification", sigma_noise=0.3)
    with pytest.raises(ValueError, match="sigma_noise"):
        Laplace(model, "regression", sigma_noise=torch.ones(2))
    with pytest.raises(ValueError, match="rank"):
        LowRank(rank=0)
    la = Laplace(model, "classification", structure="kfac")
    with pytest.raises(RuntimeError, match="fit"):
        la.predict(x)
    with pytest.raises(ValueError, match="subset name 'fc9'"):
        Laplace(model, "classification", subset=["fc9"]).fit((x, y))
    with pytest.raises(ValueError, match="subset must be"):
        Laplace(model, "classification", subset="first_layer").fit((x, y))
    with pytest.raises(ValueError, match="labels"):
        Laplace(model, "classification").fit((x, y + 5))
    with pytest.raises(ValueError, match="targets"):
        Laplace(model, "regression").fit((x, torch.randn(24, 2, dtype=DT)))
    with pytest.raises(ValueError, match="same, non-zero number of rows"):
        Laplace(model, "classification").fit((x, y[:5]))
    with pytest.raises(TypeError, match="re-iterable"):
        Laplace(model, "classification").fit(iter([(x, y)]))
    with pytest.raises(ValueError, match=r"shape \(\), \(4,\)"):
        Laplace(model, "classification", prior_precision=torch.ones(3)).fit((x, y))
    la = Laplace(model, "classification", structure="kfac").fit((x, y))
    with pytest.raises(ValueError, match="constant per parameter tensor"):
        la.prior_precision = torch.ones(la.n_params)
    with pytest.raises(ValueError, match="at must be"):
        la.log_marginal_likelihood(at="mode")
    with pytest.raises(ValueError, match="sigma_noise"):
        la.log_marginal_likelihood(sigma_noise=0.5)
    with pytest.raises(ValueError, match="link"):
        la.predict(x, link="softmax")
    with pytest.raises(ValueError, match="pred_type"):
        la.predict(x, pred_type="laplace")
    with pytest.raises(ValueError, match="method"):
        la.optimize_prior_precision("bayes")
    with pytest.raises(ValueError, match="optimize_noise"):
        la.optimize_prior_precision("marglik", optimize_noise=True)
    with pytest.raises(ValueError, match="n_params"):
        largest_variance(la, 0)
    with pytest.raises(ValueError, match="entries"):
        Laplace(model, "classification", subset=largest_variance(la, 4), structure="kfac").fit((x, y))
    with pytest.raises(TypeError, match="names"):
        from_names(model, "0.weight")
