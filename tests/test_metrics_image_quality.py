"""PSNR / SSIM against scikit-image applied image by image."""
import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from bayes_dip.metrics import psnr, ssim


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0.0, 1.0, size=(3, 1, 28, 28))
    recon = gt + 0.1 * rng.standard_normal(gt.shape)
    return gt, recon


@pytest.mark.parametrize("metric, oracle", [(psnr, peak_signal_noise_ratio),
                                            (ssim, structural_similarity)])
def test_matches_skimage_per_image(images, metric, oracle):
    gt, recon = images
    explicit = [oracle(g[0], r[0], data_range=1.0) for g, r in zip(gt, recon)]
    from_gt = [oracle(g[0], r[0], data_range=g.max() - g.min()) for g, r in zip(gt, recon)]
    np.testing.assert_allclose(metric(recon, gt, data_range=1.0, reduction="none"), explicit)
    assert metric(torch.from_numpy(recon), torch.from_numpy(gt), data_range=1.0) == \
        pytest.approx(np.mean(explicit))
    assert metric(recon, gt) == pytest.approx(np.mean(from_gt))
    assert metric(recon[0, 0], gt[0, 0], data_range=1.0) == pytest.approx(explicit[0])


def test_psnr_closed_form():
    gt = np.zeros((8, 8))
    gt[0, 0] = 2.0
    recon = gt + 0.1  # MSE = 0.01, data range 2 -> 10 log10(4 / 0.01)
    assert psnr(recon, gt) == pytest.approx(10 * np.log10(400.0))


def test_validation(images):
    gt, recon = images
    with pytest.raises(ValueError, match="recon"):
        psnr(recon[:, :, :10], gt)
    with pytest.raises(ValueError, match="data_range"):
        ssim(recon, gt, data_range=0.0)
    with pytest.raises(ValueError, match="reduction"):
        psnr(recon, gt, reduction="sum")
    with pytest.raises(ValueError, match="data_range"):
        psnr(np.ones((4, 4)), np.ones((4, 4)))
    with pytest.raises(TypeError, match="ground_truth"):
        psnr(recon, gt.tolist())
