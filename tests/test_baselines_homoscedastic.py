"""Homoscedastic DIP baselines ``N(x̂, σ_y² c_A I)``.

Oracles: the truncated pseudo-inverse of ``AᵀA`` built from a dense eigendecomposition
(``c_A``), the closed-form Gaussian log-likelihood and the metrics functions, and a
brute-force grid over ``σ_y²`` of the dense multivariate-normal evidence.
"""
from __future__ import annotations

import math

import pytest
import torch
from bayes_dip.baselines import (dip_evidence_predictive, dip_fixed_predictive,
                                 evidence_noise_variance, homoscedastic_predictive)
from bayes_dip.baselines import homoscedastic
from bayes_dip.ct import ParallelBeamGeometry, RayTransform
from bayes_dip.metrics import log_likelihood_diagonal, log_likelihood_full


@pytest.fixture(scope="module")
def op():
    return RayTransform(ParallelBeamGeometry((8, 8), num_angles=5), backend="matrix")


def _images(seed=0):
    g = torch.Generator().manual_seed(seed)
    gt = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    gt[..., 2:6, 3:7] = 1.0
    recon = gt + 0.1 * torch.randn(gt.shape, generator=g, dtype=torch.float64)
    return gt, recon


def _problem(op, noise=0.3, seed=0):
    gt, recon = _images(seed)
    g = torch.Generator().manual_seed(seed + 1)
    y = op.A(gt) + noise * torch.randn(1, 1, *op.obs_shape, generator=g, dtype=torch.float64)
    return gt, recon, y


@pytest.mark.parametrize("rank", [10, 40])
def test_fixed_variance_is_mean_diag_of_truncated_pinv(op, rank):
    a = op.matrix().to_dense()
    evals, evecs = torch.linalg.eigh(a.T @ a)  # ascending
    top = slice(len(evals) - rank, None)
    pinv = evecs[:, top] @ torch.diag(1 / evals[top]) @ evecs[:, top].T
    _, recon = _images()
    pred = dip_fixed_predictive(recon, op, noise_variance=0.5, rank=rank)
    assert pred.info["variance_factor"] == pytest.approx(float(pinv.diagonal().mean()), rel=1e-8)
    assert pred.info["pixel_variance"] == pytest.approx(0.5 * pred.info["variance_factor"], rel=1e-12)


def test_log_likelihood_equals_closed_form_and_metrics(op):
    gt, recon = _images()
    pred = dip_fixed_predictive(recon, op, rank=10)
    c = op.variance_factor(rank=10)
    assert pred.info["noise_variance"] == 1.0 and pred.info["pixel_variance"] == pytest.approx(c)
    d2 = pred.info["pixel_variance"]
    closed = -0.5 * math.log(2 * math.pi * d2) - float((gt - recon).square().mean()) / (2 * d2)
    ll = pred.log_likelihood(gt)
    assert ll.kind == "full" and ll.per_pixel == pytest.approx(closed, abs=1e-12)
    assert pred.log_likelihood(gt, patch_size=4) == ll
    assert log_likelihood_diagonal(pred.mean, pred.std, gt) == pytest.approx(closed, abs=1e-12)
    dense = d2 * torch.eye(64, dtype=torch.float64)
    assert log_likelihood_full(pred.mean, dense, gt).per_pixel == pytest.approx(closed, abs=1e-10)


def test_given_noise_variance_scales_the_factor(op):
    _, recon, y = _problem(op)
    pred = dip_evidence_predictive(recon, op, y, noise_variance=0.04, variance_factor=0.5)
    assert pred.info["pixel_variance"] == pytest.approx(0.02) and pred.info["noise_variance"] == 0.04
    fixed = dip_fixed_predictive(recon, op, noise_variance=2.0, variance_factor=0.5)
    assert fixed.info["pixel_variance"] == pytest.approx(1.0)
    assert torch.equal(fixed.std, torch.ones_like(recon))


def test_evidence_noise_variance_equals_grid_optimum(op):
    _, recon, y = _problem(op)
    c = op.variance_factor(rank=10)
    s2 = evidence_noise_variance(op, y, recon, c)
    a = op.matrix().to_dense()
    base = torch.eye(a.shape[0], dtype=torch.float64) + c * a @ a.T
    loc, obs = op.A(recon).reshape(-1), y.reshape(-1)

    def log_evidence(v):  # dense multivariate normal, no closed form used
        return float(torch.distributions.MultivariateNormal(
            loc, covariance_matrix=v * base, validate_args=False).log_prob(obs))

    lo, hi = 1e-3, 10.0
    for _ in range(2):  # coarse grid, then a fine grid between the coarse optimum's neighbours
        grid = torch.logspace(math.log10(lo), math.log10(hi), 81, dtype=torch.float64).tolist()
        values = [log_evidence(g) for g in grid]
        best = max(range(len(grid)), key=values.__getitem__)
        assert 0 < best < len(grid) - 1
        lo, hi = grid[best - 1], grid[best + 1]
    assert lo <= s2 <= hi and hi / lo < 1.006  # within 0.6 %
    assert log_evidence(s2) >= values[best] - 1e-9
    pred = dip_evidence_predictive(recon, op, y, variance_factor=c)
    assert pred.info["noise_variance"] == pytest.approx(s2) and pred.info["pixel_variance"] == pytest.approx(s2 * c)


def test_evidence_cg_path_matches_dense(op, monkeypatch):
    _, recon, y = _problem(op, seed=3)
    dense = evidence_noise_variance(op, y, recon, 0.02)
    monkeypatch.setattr(homoscedastic, "_DENSE_MAX_ENTRIES", 0)
    assert evidence_noise_variance(op, y, recon, 0.02) == pytest.approx(dense, rel=1e-8)


def test_bad_inputs_raise(op):
    gt, recon, y = _problem(op)
    with pytest.raises(ValueError, match="noise_variance"):
        dip_fixed_predictive(recon, op, noise_variance=0.0, variance_factor=1.0)
    with pytest.raises(ValueError, match="noise_variance"):
        homoscedastic_predictive(recon, float("nan"), 1.0)
    with pytest.raises(ValueError, match="noise_variance"):
        homoscedastic_predictive(recon, True, 1.0)
    with pytest.raises(ValueError, match="variance_factor"):
        homoscedastic_predictive(recon, 1.0, -1.0)
    with pytest.raises(ValueError, match="rank"):
        dip_fixed_predictive(recon, op, rank=0)
    with pytest.raises(ValueError, match="variance_factor"):
        dip_evidence_predictive(recon, op, y, variance_factor=0.0)
    with pytest.raises(ValueError, match="recon must have shape"):
        dip_fixed_predictive(recon[0], op, variance_factor=1.0)
    with pytest.raises(ValueError, match="im_shape"):
        dip_fixed_predictive(torch.zeros(1, 1, 6, 6), op, variance_factor=1.0)
    with pytest.raises(ValueError, match="NaN"):
        dip_fixed_predictive(torch.full_like(recon, float("nan")), op, variance_factor=1.0)
    with pytest.raises(TypeError, match="recon"):
        dip_fixed_predictive(recon.long(), op, variance_factor=1.0)
    with pytest.raises(ValueError, match="y must"):
        evidence_noise_variance(op, y[0], recon, 1.0)
    with pytest.raises(ValueError, match="recon must have shape"):
        evidence_noise_variance(op, y, recon.repeat(2, 1, 1, 1), 1.0)
    with pytest.raises(ValueError, match="ground_truth"):
        dip_fixed_predictive(recon, op, variance_factor=1.0).log_likelihood(gt[0])
