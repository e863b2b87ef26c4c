"""Calibration metrics on Gaussian data with known calibration.

Pixels: predicted std ``s_i ~ U(0.5, 2)``, ground truth ``gt_i = mean_i + c s_i ε_i`` with
``ε_i ~ N(0, 1)``. ``c = 1`` is calibrated, ``c > 1`` over-confident, ``c < 1``
under-confident; then the central α-interval covers ``2Φ(z_α / c) − 1`` of the pixels,
``z_α = Φ⁻¹((1 + α)/2)``, and the squared error in every variance bin is ``c²`` times
the predicted variance.
"""
import numpy as np
import pytest
import torch
from scipy.stats import norm, pearsonr, spearmanr

from bayes_dip.metrics import (
    DEFAULT_LEVELS,
    ause,
    coverage_curve,
    coverage_ece,
    miscalibration_area,
    qq_data,
    sparsification_curve,
    std_error_correlation,
    uncertainty_calibration_error,
    variance_calibration_bins,
    z_score_histogram,
    z_scores,
)

N = 200_000


def gaussian_case(c: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal(N)
    std = rng.uniform(0.5, 2.0, N)
    gt = mean + c * std * rng.standard_normal(N)
    return mean.reshape(8, 1, 125, 200), std.reshape(8, 1, 125, 200), gt.reshape(8, 1, 125, 200)


def closed_form_coverage(levels: np.ndarray, c: float) -> np.ndarray:
    return 2.0 * norm.cdf(norm.ppf((1.0 + levels) / 2.0) / c) - 1.0


@pytest.mark.parametrize("c", [1.0, 2.0, 0.5, 1.3])
def test_coverage_matches_closed_form(c):
    curve = coverage_curve(*gaussian_case(c))
    expected = closed_form_coverage(curve.levels, c)
    mc_std = np.sqrt(expected * (1 - expected) / N)
    assert np.all(np.abs(curve.coverage - expected) <= 5 * mc_std + 1e-12)
    gap = np.abs(expected - curve.levels)
    assert coverage_ece(curve) == pytest.approx(gap.mean(), abs=2e-3)
    assert miscalibration_area(curve) == pytest.approx(np.trapezoid(gap, curve.levels), abs=2e-3)


def test_calibrated_ece_near_zero_and_miscalibration_ordered():
    ece = {c: coverage_ece(coverage_curve(*gaussian_case(c))) for c in (1.0, 1.3, 2.0)}
    assert ece[1.0] < 3e-3
    assert ece[1.0] < ece[1.3] < ece[2.0]


def test_coverage_accepts_torch_and_validates():
    mean, std, gt = (torch.from_numpy(a) for a in gaussian_case(1.0))
    curve = coverage_curve(mean, std, gt, levels=(0.5, 0.9))
    np.testing.assert_allclose(curve.coverage, [0.5, 0.9], atol=5e-3)
    with pytest.raises(ValueError, match="std"):
        coverage_curve(mean, -std, gt)
    with pytest.raises(ValueError, match="ground_truth"):
        coverage_curve(mean, std, gt[:1])
    with pytest.raises(ValueError, match="levels"):
        coverage_curve(mean, std, gt, levels=(0.9, 1.0))
    assert DEFAULT_LEVELS[0] == 0.5 and DEFAULT_LEVELS[-1] == 0.99


@pytest.mark.parametrize("binning", ["uniform", "quantile"])
@pytest.mark.parametrize("c", [1.0, 2.0, 0.5])
def test_uce_equals_scale_error(c, binning):
    mean, std, gt = gaussian_case(c)
    mean_var = np.mean(std**2)
    # E[MSE_m] = c² · meanvar_m in every bin, so UCE = |c² − 1| · mean(std²) up to MC error
    uce = uncertainty_calibration_error(mean, std, gt, n_bins=20, binning=binning)
    assert uce == pytest.approx(abs(c**2 - 1) * mean_var, abs=0.03 * c**2 * mean_var)
    bins = variance_calibration_bins(mean, std, gt, n_bins=20, binning=binning)
    assert bins.counts.sum() == N
    np.testing.assert_allclose(bins.mean_squared_error, c**2 * bins.mean_variance, rtol=0.1)


def test_sparsification_matches_brute_force():
    rng = np.random.default_rng(1)
    mean, std, gt = rng.standard_normal(50), rng.uniform(0.1, 1, 50), rng.standard_normal(50)
    curve = sparsification_curve(mean, std, gt, n_fractions=10, error="rmse", normalize=False)
    err = gt - mean
    for f, by_std, oracle in zip(curve.fractions, curve.by_uncertainty, curve.oracle):
        keep = 50 - int(np.floor(f * 50))
        assert by_std == pytest.approx(np.sqrt(np.mean(err[np.argsort(std)[:keep]] ** 2)))
        assert oracle == pytest.approx(np.sqrt(np.mean(np.sort(err**2)[:keep])))


@pytest.mark.parametrize("error", ["mae", "mse", "rmse"])
def test_ause_zero_for_std_proportional_to_error(error):
    mean, _, gt = gaussian_case(1.0)
    std = 3.0 * np.abs(gt - mean)
    curve = sparsification_curve(mean, std, gt, error=error)
    assert curve.by_uncertainty[0] == pytest.approx(1.0)
    np.testing.assert_allclose(curve.by_uncertainty, curve.oracle, rtol=1e-12)
    assert ause(curve) == pytest.approx(0.0, abs=1e-12)
    assert np.all(np.diff(curve.oracle) <= 1e-12)


def test_ause_ordered_by_informativeness():
    mean, std, gt = gaussian_case(1.0)
    rng = np.random.default_rng(2)
    informative = ause(sparsification_curve(mean, std, gt))
    uninformative = ause(sparsification_curve(mean, rng.permutation(std.ravel()).reshape(std.shape),
                                              gt))
    assert 0 < informative < uninformative


def test_correlation_matches_scipy():
    mean, std, gt = gaussian_case(1.0)
    std = np.round(std, 1)  # ties exercise the average ranks of Spearman
    abs_err = np.abs(gt - mean).ravel()
    result = std_error_correlation(mean, std, gt)
    assert result.pearson == pytest.approx(pearsonr(std.ravel(), abs_err).statistic, rel=1e-10)
    assert result.spearman == pytest.approx(spearmanr(std.ravel(), abs_err).statistic, rel=1e-10)
    perfect = std_error_correlation(mean, 2 * np.abs(gt - mean) + 1e-3, gt)
    assert perfect.pearson == pytest.approx(1.0) and perfect.spearman == pytest.approx(1.0)
    homoscedastic = std_error_correlation(mean, np.ones_like(std), gt)
    assert np.isnan(homoscedastic.pearson) and np.isnan(homoscedastic.spearman)


def test_z_score_histogram_is_standard_normal_when_calibrated():
    z = z_scores(*gaussian_case(1.0))
    assert z.shape == (N,)
    hist = z_score_histogram(z, n_bins=40, range=(-4.0, 4.0))
    np.testing.assert_allclose(hist.density, hist.standard_normal, atol=0.01)
    assert hist.outside == pytest.approx(2 * norm.cdf(-4.0), abs=1e-4)


@pytest.mark.parametrize("c", [1.0, 2.0, 0.5])
def test_qq_slope_is_miscalibration_factor(c):
    qq = qq_data(z_scores(*gaussian_case(c)), n_quantiles=49)
    slope = np.dot(qq.theoretical, qq.empirical) / np.dot(qq.theoretical, qq.theoretical)
    assert slope == pytest.approx(c, rel=0.02)
    hist = z_score_histogram(z_scores(*gaussian_case(c)), range=(-3.0, 3.0))
    assert hist.outside == pytest.approx(2 * norm.cdf(-3.0 / c), abs=3e-3)
