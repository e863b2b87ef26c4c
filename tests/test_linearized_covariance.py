"""Image/observation covariances: matrix-free and structured (DESIGN.md §7) vs dense A J Σ Jᵀ Aᵀ."""
from __future__ import annotations

import math

import pytest
import torch

from bayes_dip.ct import ParallelBeamGeometry, RayTransform
from bayes_dip.dip import UNet
from bayes_dip.laplace import ObservationKernel
from bayes_dip.linearized import (ImageCovariance, NetworkJacobian, ray_likelihood,
                                  StructuredCovariance, WeightLayout, WeightPrior, distance_classes,
                                  gprior_layout, joint_block_basis)

F64 = torch.float64


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    net = UNet(channels=(3, 4), skip_channels=(0, 2)).double()
    x = torch.rand(1, 1, 8, 8, dtype=F64)
    rt = RayTransform(ParallelBeamGeometry((8, 8), num_angles=5))
    jac = NetworkJacobian(net, x)
    return jac, rt, jac.dense(), rt.matrix().to_dense()


def _random_prior(layout, seed, weight_scale=None):
    gen = torch.Generator().manual_seed(seed)
    prior = WeightPrior(layout, weight_scale=weight_scale)
    with torch.no_grad():
        prior.log_variance.copy_(torch.randn(len(layout.blocks), generator=gen, dtype=F64) * 0.5)
        prior.log_lengthscale.copy_(torch.randn(len(layout.gp_indices), generator=gen, dtype=F64))
    return prior


def _dense_sigma(prior):
    return prior.matmul(torch.eye(prior.layout.num_params, dtype=F64)).detach()


def test_matrix_free_kyy_matches_dense(setup):
    jac, rt, j, a = setup
    prior = _random_prior(jac.layout, 1)
    noise = torch.tensor(0.3, dtype=F64)
    obs = ObservationKernel(ImageCovariance(jac, prior), ray_likelihood(rt), noise.log())
    dense = a @ j @ _dense_sigma(prior) @ j.T @ a.T + noise * torch.eye(a.shape[0], dtype=F64)
    v = torch.randn(a.shape[0], 4, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(obs.matmul(v), dense @ v, rtol=0, atol=1e-10)
        torch.testing.assert_close(obs.to_dense(batch_size=17), dense, rtol=0, atol=1e-10)
        img = ImageCovariance(jac, prior)
        u = torch.randn(64, 2, dtype=F64)
        torch.testing.assert_close(img.matmul(u), j @ _dense_sigma(prior) @ j.T @ u,
                                   rtol=0, atol=1e-10)


@pytest.mark.parametrize("variant", ["blocks", "weight_scale", "gprior"])
def test_structured_assembly_matches_brute_force(setup, variant):
    jac, rt, j, a = setup
    layout = gprior_layout(jac.layout) if variant == "gprior" else jac.layout
    scale = None if variant == "blocks" else torch.rand(jac.num_params, dtype=F64) + 0.5
    build_prior = _random_prior(layout, 2, scale)
    sc = StructuredCovariance.build(jac, rt, build_prior, batch_size=24)
    for seed in (3, 4):  # the Grams do not depend on the hyperparameters
        prior = _random_prior(layout, seed, scale)
        sigma = _dense_sigma(prior)
        c = j @ sigma @ j.T
        with torch.no_grad():
            torch.testing.assert_close(sc.image_covariance(prior), c, rtol=0, atol=1e-12)
            torch.testing.assert_close(sc.cross_covariance(prior), c @ a.T, rtol=0, atol=1e-12)
            k = sc.observation_covariance(prior, 0.2)
            torch.testing.assert_close(k, a @ c @ a.T + 0.2 * torch.eye(a.shape[0], dtype=F64),
                                       rtol=0, atol=1e-12)


def test_gaussian_nll_value_and_gradients(setup):
    jac, rt, _, _ = setup
    prior = _random_prior(jac.layout, 5)
    sc = StructuredCovariance.build(jac, rt, prior)
    log_noise = torch.tensor(-1.5, dtype=F64, requires_grad=True)
    r = torch.randn(sc.n_obs, dtype=F64)
    for residual in (None, r):
        prior.zero_grad()
        log_noise.grad = None
        value = sc.gaussian_nll(prior, log_noise.exp(), residual)
        value.backward()
        fast = [prior.log_variance.grad.clone(), prior.log_lengthscale.grad.clone(),
                log_noise.grad.clone()]
        prior.zero_grad()
        log_noise.grad = None
        k = sc.observation_covariance(prior, log_noise.exp())
        ref = 0.5 * torch.logdet(k)
        if residual is not None:
            ref = ref + 0.5 * r @ torch.linalg.solve(k, r)
        ref.backward()
        torch.testing.assert_close(value, ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(fast[0], prior.log_variance.grad, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(fast[1], prior.log_lengthscale.grad, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(fast[2], log_noise.grad, rtol=1e-9, atol=1e-11)


def test_edge_variance_terms(setup):
    jac, rt, j, _ = setup
    prior = _random_prior(jac.layout, 6)
    sc = StructuredCovariance.build(jac, rt, prior)
    q = sc.edge_variance_terms()
    h = w = 8
    idx = torch.arange(64).reshape(h, w)
    grad = torch.zeros(2 * h * (w - 1), 64, dtype=F64)  # vertical then horizontal differences
    pairs = list(zip(idx[1:, :].reshape(-1), idx[:-1, :].reshape(-1))) + \
        list(zip(idx[:, 1:].reshape(-1), idx[:, :-1].reshape(-1)))
    for e, (p1, p0) in enumerate(pairs):
        grad[e, p1], grad[e, p0] = 1.0, -1.0
    for t in (0, 3, len(sc.terms) - 1):
        torch.testing.assert_close(q[t], (grad @ sc.image_grams[t] @ grad.T).diagonal())


def test_joint_block_basis():
    for k in (3, 5):
        _, mats = distance_classes(k)
        basis, groups = joint_block_basis(mats)
        torch.testing.assert_close(basis.T @ basis, torch.eye(k * k, dtype=F64))
        rotated = basis.T @ mats @ basis
        mask = torch.ones(k * k, k * k, dtype=torch.bool)
        for g in groups:
            mask[g[0]:g[-1] + 1, g[0]:g[-1] + 1] = False
        assert float(rotated[:, mask].abs().max()) < 1e-12
        assert sum(len(g) for g in groups) == k * k
    assert sorted(len(g) for g in joint_block_basis(distance_classes(3)[1])[1]) == [1, 1, 2, 2, 3]


def test_nystrom_preconditioner(setup):
    jac, rt, j, a = setup
    prior = _random_prior(jac.layout, 7)
    obs = ObservationKernel(ImageCovariance(jac, prior), ray_likelihood(rt), torch.tensor(0.1, dtype=F64).log())
    n = math.prod(rt.obs_shape)
    p = obs.preconditioner(rank=n - 1, generator=torch.Generator().manual_seed(0))
    k0 = (a @ j @ _dense_sigma(prior) @ j.T @ a.T)
    dense = k0 + 0.1 * torch.eye(n, dtype=F64)
    # rank(A J Σ Jᵀ Aᵀ) <= 64 < n - 1: the Nyström approximation is exact
    torch.testing.assert_close(p.matmul(torch.eye(n, dtype=F64)), dense, rtol=0, atol=1e-8)


def test_bad_inputs(setup):
    jac, rt, _, _ = setup
    prior = WeightPrior(jac.layout)
    with pytest.raises(TypeError, match="jac"):
        ImageCovariance("jac", prior)
    with pytest.raises(ValueError, match="same weights"):
        ImageCovariance(jac, WeightPrior(WeightLayout(jac.layout.blocks[:2])))
    img = ImageCovariance(jac, prior)
    with pytest.raises(ValueError, match="scalar"):
        ObservationKernel(img, ray_likelihood(rt), torch.zeros(2, dtype=F64))
    other = RayTransform(ParallelBeamGeometry((6, 6), num_angles=5))
    with pytest.raises(ValueError, match="out_shape"):
        ObservationKernel(img, ray_likelihood(other), torch.tensor(0.0, dtype=F64))
    obs = ObservationKernel(img, ray_likelihood(rt), torch.tensor(0.0, dtype=F64))
    with pytest.raises(ValueError, match="shape"):
        obs.matmul(torch.zeros(3, 1, dtype=F64))
    sc = StructuredCovariance.build(jac, rt, prior)
    with pytest.raises(ValueError, match="residual"):
        sc.gaussian_nll(prior, torch.tensor(1.0, dtype=F64), torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="positive definite"):
        sc.gaussian_nll(prior, torch.tensor(-1e3, dtype=F64))


def test_term_grams_in_passes_are_identical(setup, monkeypatch):
    """A byte budget below the size of ``Uᵀ J`` splits the blocks into passes of VJPs: the
    same Grams bit for bit, no buffer above the budget's share."""
    from bayes_dip.linearized import covariance
    jac, *_ = setup
    prior = _random_prior(jac.layout, 5)
    u = torch.randn(jac.num_pixels, 10, dtype=F64, generator=torch.Generator().manual_seed(6))
    calls = []
    real = covariance._jacobian_blocks

    def spy(*args, **kwargs):
        bufs = real(*args, **kwargs)
        calls.append(sum(b.numel() * b.element_size() for b in bufs.values()))
        return bufs

    monkeypatch.setattr(covariance, "_jacobian_blocks", spy)
    ref = covariance.term_grams(jac, prior, u, batch_size=4, max_bytes=None)
    assert len(calls) == 1
    total = calls.pop()
    split = covariance.term_grams(jac, prior, u, batch_size=4, max_bytes=total // 2)
    assert len(calls) >= 2 and max(calls) < total
    assert split[0] == ref[0] and split[1] == ref[1]
    assert all(torch.equal(a, b) for a, b in zip(split[2], ref[2]))
