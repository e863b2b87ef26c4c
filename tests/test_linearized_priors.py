"""Weight prior against its dense block-diagonal covariance."""
from __future__ import annotations

import math

import pytest
import torch

from bayes_dip.dip import UNet
from bayes_dip.linearized import (KERNEL_JITTER, WeightPrior, distance_classes, gprior_layout,
                                  weight_layout)

F64 = torch.float64


def _prior(weight_scale=False, gprior=False):
    torch.manual_seed(0)
    layout = weight_layout(UNet(channels=(3, 4), skip_channels=(0, 2)))
    if gprior:
        layout = gprior_layout(layout)
    scale = torch.rand(layout.num_params, dtype=F64) + 0.5 if weight_scale else None
    prior = WeightPrior(layout, variance=1.0, lengthscale=0.1, weight_scale=scale)
    with torch.no_grad():
        prior.log_variance.copy_(torch.randn(len(layout.blocks), dtype=F64) * 0.5)
        prior.log_lengthscale.copy_(torch.randn(len(layout.gp_indices), dtype=F64) * 0.5)
    return prior


def _dense(prior):
    """Σ_θ assembled block by block from its definition."""
    blocks = []
    gp = {d: i for i, d in enumerate(prior.layout.gp_indices)}
    for d, block in enumerate(prior.layout.blocks):
        var = prior.variances[d]
        if d in gp:
            k = block.kernel_size
            coords = torch.tensor([[i, j] for i in range(k) for j in range(k)], dtype=F64)
            kern = torch.exp(-torch.cdist(coords, coords) / prior.lengthscales[gp[d]])
            kern = kern + KERNEL_JITTER * torch.eye(k * k, dtype=F64)
            blocks.append(torch.kron(torch.eye(block.num_filters, dtype=F64), var * kern))
        else:
            blocks.append(var * torch.eye(block.size, dtype=F64))
    cov = torch.block_diag(*blocks)
    if prior.weight_scale is not None:
        cov = prior.weight_scale[:, None] * cov * prior.weight_scale[None, :]
    return cov.detach()


@pytest.mark.parametrize("weight_scale,gprior", [(False, False), (True, False), (True, True)])
def test_products_match_dense(weight_scale, gprior):
    prior = _prior(weight_scale, gprior)
    cov = _dense(prior)
    p = cov.shape[0]
    v = torch.randn(p, 3, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(prior.matmul(v), cov @ v)
        torch.testing.assert_close(prior.inv_matmul(v), torch.linalg.solve(cov, v))
        eye = torch.eye(p, dtype=F64)
        root = prior.sqrt_matmul(eye)
        torch.testing.assert_close(root @ root.T, cov)
        torch.testing.assert_close(prior.sqrt_rmatmul(v), root.T @ v)
        theta = torch.randn(p, dtype=F64)
        torch.testing.assert_close(prior.quadratic(theta), theta @ torch.linalg.solve(cov, theta))
        torch.testing.assert_close(prior.logdet(), torch.logdet(cov))


def test_quadratic_gradient_and_samples():
    prior = _prior()
    theta = torch.randn(prior.layout.num_params, dtype=F64)
    value = prior.quadratic(theta)
    value.backward()
    # d/d log σ_d² of θ_dᵀ Σ_d⁻¹ θ_d = −(block term)
    with torch.no_grad():
        for d, (block, part) in enumerate(zip(prior.layout.blocks, prior.layout.split(theta))):
            single = WeightPrior(weight_layout(UNet(channels=(3, 4), skip_channels=(0, 2))))
            single.load_state_dict(prior.state_dict())
            t = torch.zeros_like(theta)
            t[block.start:block.stop] = part
            assert math.isclose(float(prior.log_variance.grad[d]), -float(single.quadratic(t)),
                                rel_tol=1e-10)
    samples = prior.sample(20000, torch.Generator().manual_seed(0))
    block = prior.layout.blocks[1]  # down_0: 3x3 GP block
    filt = samples[block.start:block.stop].reshape(block.num_filters, 9, -1)
    emp = torch.einsum("fpk,fqk->pq", filt, filt) / (filt.shape[0] * filt.shape[2])
    expected = prior.block_factors("cov")[1].detach()
    emp = emp.detach()
    assert float((emp - expected).abs().max()) < 0.02 * float(expected.abs().max())


def test_distance_classes_and_kernel():
    radii, mats = distance_classes(3)
    assert radii.tolist() == pytest.approx([0, 1, math.sqrt(2), 2, math.sqrt(5), math.sqrt(8)])
    torch.testing.assert_close(mats.sum(0), torch.ones(9, 9, dtype=F64))
    torch.testing.assert_close(mats[0], torch.eye(9, dtype=F64))
    prior = _prior()
    kern = prior.kernel(0)
    weights = prior.class_weights(0)
    torch.testing.assert_close(kern, (weights[:, None, None] * mats).sum(0))
    assert prior.hyperparameters()["inc"].keys() == {"variance", "lengthscale"}
    assert prior.hyperparameters()["outc"].keys() == {"variance"}


def test_bad_inputs():
    layout = weight_layout(UNet(channels=(3, 4), skip_channels=(0, 2)))
    with pytest.raises(ValueError, match="variance"):
        WeightPrior(layout, variance=0.0)
    with pytest.raises(ValueError, match="lengthscale"):
        WeightPrior(layout, lengthscale=-1.0)
    with pytest.raises(ValueError, match="weight_scale"):
        WeightPrior(layout, weight_scale=torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match="positive"):
        WeightPrior(layout, weight_scale=torch.zeros(layout.num_params, dtype=F64))
    with pytest.raises(TypeError, match="layout"):
        WeightPrior("layout")
    prior = WeightPrior(layout)
    with pytest.raises(ValueError, match="shape"):
        prior.matmul(torch.zeros(5, 1, dtype=F64))
    with pytest.raises(ValueError, match="theta"):
        prior.quadratic(torch.zeros(5, dtype=F64))
    with pytest.raises(ValueError, match="num"):
        prior.sample(0)
    with pytest.raises(ValueError, match="kind"):
        prior.block_factors("chol")
