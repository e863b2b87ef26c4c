"""Gaussian test log-likelihood per pixel against scipy.stats oracles."""
import numpy as np
import pytest
import torch
from scipy.linalg import block_diag
from scipy.stats import multivariate_normal, norm

from bayes_dip.metrics import (
    image_patches,
    log_likelihood_diagonal,
    log_likelihood_full,
    log_likelihood_patchwise,
    patch_covariances_from_samples,
)
from bayes_dip.metrics.log_likelihood import _sample_covariances


def _random_spd(n: int, gen: torch.Generator) -> torch.Tensor:
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    return a @ a.T / n + 0.1 * torch.eye(n, dtype=torch.float64)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def test_diagonal_matches_scipy(gen):
    mean = torch.randn(2, 1, 6, 5, generator=gen)
    std = 0.1 + torch.rand(2, 1, 6, 5, generator=gen)
    gt = mean + std * torch.randn(2, 1, 6, 5, generator=gen)
    expected = norm.logpdf(gt.numpy(), loc=mean.numpy(), scale=std.numpy()).mean()
    assert log_likelihood_diagonal(mean, std, gt) == pytest.approx(expected, rel=1e-6)
    assert log_likelihood_diagonal(mean.numpy(), std.numpy(), gt.numpy()) == \
        pytest.approx(expected, rel=1e-6)


def test_full_matches_scipy(gen):
    h, w = 4, 5
    cov = _random_spd(h * w, gen)
    mean = torch.randn(1, 1, h, w, generator=gen, dtype=torch.float64)
    gt = torch.randn(h, w, generator=gen, dtype=torch.float64)
    expected = multivariate_normal.logpdf(gt.numpy().ravel(), mean.numpy().ravel(), cov.numpy())
    result = log_likelihood_full(mean, cov, gt)
    assert result.per_pixel == pytest.approx(expected / (h * w), rel=1e-10)
    assert result.jitter == 0.0


def test_full_singular_covariance_reports_jitter(gen):
    n = 9
    v = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    cov = v @ v.T  # rank 3: Cholesky fails without jitter
    mean = torch.zeros(3, 3, dtype=torch.float64)
    gt = (v @ torch.randn(3, generator=gen, dtype=torch.float64)).reshape(3, 3)  # in the range
    result = log_likelihood_full(mean, cov, gt)
    assert result.jitter > 0
    jittered = cov.numpy() + result.jitter * np.eye(n)
    r = gt.numpy().ravel()
    expected = -0.5 * (n * np.log(2 * np.pi) + np.linalg.slogdet(jittered)[1]
                       + r @ np.linalg.solve(jittered, r))
    assert result.per_pixel == pytest.approx(expected / n, rel=1e-5)


def test_image_patches_partition_with_enlarged_edge_patches():
    patches = image_patches((5, 7), 2)
    # rows split 2 + 3, columns 2 + 2 + 3
    assert [p.numel() for p in patches] == [4, 4, 6, 6, 6, 9]
    assert torch.equal(torch.sort(torch.cat(patches)).values, torch.arange(35))
    assert patches[1].tolist() == [2, 3, 9, 10]
    assert len(image_patches((4, 4), 10)) == 1  # clipped to the image


def test_patchwise_p1_equals_diagonal(gen):
    mean = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    std = 0.2 + torch.rand(5, 6, generator=gen, dtype=torch.float64)
    gt = mean + torch.randn(5, 6, generator=gen, dtype=torch.float64)
    covs = std.reshape(-1, 1, 1) ** 2
    result = log_likelihood_patchwise(mean, gt, 1, covariances=covs)
    assert result.per_pixel == pytest.approx(log_likelihood_diagonal(mean, std, gt), rel=1e-12)
    inflated = log_likelihood_patchwise(mean, gt, 1, covariances=covs, added_variance=0.3)
    assert inflated.per_pixel == pytest.approx(
        log_likelihood_diagonal(mean, (std**2 + 0.3).sqrt(), gt), rel=1e-12)


def test_patchwise_p_equals_h_is_full(gen):
    cov = _random_spd(36, gen)
    mean = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    gt = torch.randn(1, 1, 6, 6, generator=gen, dtype=torch.float64)
    patchwise = log_likelihood_patchwise(mean, gt, 6, covariances=cov[None])
    assert patchwise.per_pixel == pytest.approx(log_likelihood_full(mean, cov, gt).per_pixel,
                                                rel=1e-12)


def test_patchwise_uneven_patches_equal_block_diagonal_full(gen):
    h, w = 5, 7
    patches = image_patches((h, w), 2)
    covs = [_random_spd(p.numel(), gen) for p in patches]
    mean = torch.randn(h, w, generator=gen, dtype=torch.float64)
    gt = torch.randn(h, w, generator=gen, dtype=torch.float64)
    # oracle: dense block-diagonal covariance in patch order, permuted back to pixel order
    order = torch.cat(patches).numpy()
    dense = np.empty((h * w, h * w))
    dense[np.ix_(order, order)] = block_diag(*[c.numpy() for c in covs])
    expected = multivariate_normal.logpdf(gt.numpy().ravel(), mean.numpy().ravel(), dense)
    result = log_likelihood_patchwise(mean, gt, 2, covariances=covs)
    assert result.per_pixel == pytest.approx(expected / (h * w), rel=1e-10)


def test_patch_covariances_from_samples_match_numpy_cov(gen):
    samples = torch.randn(50, 1, 4, 6, generator=gen, dtype=torch.float64)
    covs = patch_covariances_from_samples(samples, 2)
    flat = samples.reshape(50, -1).numpy()
    for c, idx in zip(covs, image_patches((4, 6), 2)):
        np.testing.assert_allclose(c.numpy(), np.cov(flat[:, idx.numpy()], rowvar=False),
                                   atol=1e-12)
    mean = samples.mean(0, keepdim=True)  # (1, 1, H, W)
    gt = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    from_samples = log_likelihood_patchwise(mean, gt, 2, samples=samples)
    from_covs = log_likelihood_patchwise(mean, gt, 2, covariances=covs)
    assert from_samples == from_covs


def test_uneven_patches_from_float32_samples_in_chunks(gen):
    samples = torch.randn(30, 5, 7, generator=gen)  # float32, (S, H, W)
    covs = patch_covariances_from_samples(samples, 2)
    flat = samples.reshape(30, -1).double().numpy()
    patches = image_patches((5, 7), 2)
    assert isinstance(covs, list) and len(covs) == len(patches)
    for c, idx in zip(covs, patches):
        assert c.dtype == torch.float64
        np.testing.assert_allclose(c.numpy(), np.cov(flat[:, idx.numpy()], rowvar=False),
                                   rtol=1e-10, atol=1e-12)
    pixels = torch.stack(patches[:2])  # two 2x2 patches, one per chunk
    chunked = _sample_covariances(samples.reshape(30, -1), pixels, max_elements=1)
    np.testing.assert_allclose(chunked.numpy(), torch.stack(covs[:2]).numpy(), rtol=1e-12)
    mean, gt = samples.mean(0).double(), torch.randn(5, 7, generator=gen, dtype=torch.float64)
    assert log_likelihood_patchwise(mean, gt, 2, samples=samples[:, None]).per_pixel == \
        pytest.approx(log_likelihood_patchwise(mean, gt, 2, covariances=covs).per_pixel, rel=1e-12)


def test_validation(gen):
    mean = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="std"):
        log_likelihood_diagonal(mean, torch.zeros(3, 3), mean)
    with pytest.raises(ValueError, match="covariance"):
        log_likelihood_full(mean, torch.eye(8), mean)
    with pytest.raises(ValueError, match="symmetric"):
        log_likelihood_full(mean, torch.eye(9) + torch.triu(torch.ones(9, 9), 1), mean)
    with pytest.raises(ValueError, match="mean"):
        log_likelihood_full(torch.zeros(2, 1, 3, 3), torch.eye(9), torch.zeros(2, 1, 3, 3))
    with pytest.raises(ValueError, match="exactly one"):
        log_likelihood_patchwise(mean, mean, 1)
    with pytest.raises(ValueError, match="covariances"):
        log_likelihood_patchwise(mean, mean, 1, covariances=torch.ones(4, 1, 1))
    with pytest.raises(ValueError, match="covariances as a tensor"):
        log_likelihood_patchwise(torch.zeros(5, 5), torch.zeros(5, 5), 2,
                                 covariances=torch.eye(4).repeat(4, 1, 1))
    with pytest.raises(TypeError, match="samples"):
        log_likelihood_patchwise(mean, mean, 1, samples=np.zeros((4, 3, 3), dtype=int))
    with pytest.raises(TypeError, match="covariance"):
        log_likelihood_full(mean, np.eye(9).tolist(), mean)
