"""Calibration of a pixelwise Gaussian predictive ``N(mean, std²)`` against a ground truth.

Every function takes ``mean``, ``std``, ``ground_truth`` of one shape (any shape, e.g.
``(B, 1, H, W)`` or ``(H, W)``; torch or numpy) and pools all pixels. Results are floats
or small numpy arrays (NamedTuples for curves).

- coverage of central credible intervals, regression ECE and miscalibration area;
- UCE: binned predicted variance vs mean squared error (Laves et al., 2020);
- sparsification curve and AUSE (Ilg et al., 2018);
- Pearson / Spearman correlation of std and |error|;
- z-scores, their histogram and normal QQ data.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.special import ndtri
from scipy.stats import norm, rankdata

from bayes_dip.checks import check_choice
from bayes_dip.metrics._inputs import ArrayLike, as_float64_array, check_finite, predictive_arrays

__all__ = ["DEFAULT_LEVELS", "CoverageCurve", "coverage_curve", "coverage_ece",
           "miscalibration_area", "VarianceCalibrationBins", "variance_calibration_bins",
           "uncertainty_calibration_error", "SparsificationCurve", "sparsification_curve",
           "ause", "StdErrorCorrelation", "std_error_correlation", "z_scores",
           "ZScoreHistogram", "z_score_histogram", "QQData", "qq_data"]

DEFAULT_LEVELS = np.round(np.linspace(0.5, 0.99, 50), 2)
"""Credible levels 0.50, 0.51, …, 0.99."""


class CoverageCurve(NamedTuple):
    """Empirical coverage of the central credible interval at each level, both ``(L,)``."""

    levels: np.ndarray
    coverage: np.ndarray


def coverage_curve(mean: ArrayLike, std: ArrayLike, ground_truth: ArrayLike,
                   levels: np.ndarray | tuple[float, ...] = DEFAULT_LEVELS) -> CoverageCurve:
    """Fraction of pixels with ``|gt − mean| ≤ z_α · std``, ``z_α = Φ⁻¹((1 + α)/2)``.

    A calibrated predictive has coverage ≈ level; below the diagonal it is over-confident.
    """
    mu, sd, gt = predictive_arrays(mean, std, ground_truth)
    lv = np.asarray(levels, dtype=np.float64)
    if lv.ndim != 1 or lv.size == 0 or np.any((lv <= 0) | (lv >= 1)):
        raise ValueError("levels must be a non-empty 1D sequence of values in (0, 1)")
    if np.any(np.diff(lv) <= 0):
        raise ValueError("levels must be strictly increasing")
    abs_z = np.sort(np.abs(gt - mu) / sd)
    half_widths = ndtri((1.0 + lv) / 2.0)
    coverage = np.searchsorted(abs_z, half_widths, side="right") / abs_z.size
    return CoverageCurve(lv, coverage)


def coverage_ece(curve: CoverageCurve) -> float:
    """Regression ECE: mean over levels of ``|coverage − level|``."""
    return float(np.mean(np.abs(curve.coverage - curve.levels)))


def miscalibration_area(curve: CoverageCurve) -> float:
    """Area between the coverage curve and the diagonal (trapezoid rule over the levels).

    Not normalised: for equally spaced levels it is close to
    ``(levels[-1] − levels[0]) · coverage_ece(curve)``.
    """
    if curve.levels.size < 2:
        raise ValueError("curve must have at least 2 levels to measure an area")
    return float(np.trapezoid(np.abs(curve.coverage - curve.levels), curve.levels))


class VarianceCalibrationBins(NamedTuple):
    """Per bin of predicted variance: its mean, the pixels' MSE and count; bin ``edges``."""

    mean_variance: np.ndarray
    mean_squared_error: np.ndarray
    counts: np.ndarray
    edges: np.ndarray


def variance_calibration_bins(mean: ArrayLike, std: ArrayLike, ground_truth: ArrayLike,
                              n_bins: int = 20, binning: str = "uniform",
                              ) -> VarianceCalibrationBins:
    """Bin pixels by predicted variance ``std²``; empty bins are dropped.

    ``binning="uniform"``: equal-width bins between min and max variance (Laves et al.);
    ``"quantile"``: bins with equal pixel counts.
    """
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    mu, sd, gt = predictive_arrays(mean, std, ground_truth)
    var, sq_err = sd**2, (gt - mu) ** 2
    if binning == "uniform":
        edges = np.linspace(var.min(), var.max(), n_bins + 1)
    elif binning == "quantile":
        edges = np.quantile(var, np.linspace(0.0, 1.0, n_bins + 1))
    else:
        raise ValueError(f"binning must be 'uniform' or 'quantile', got {binning!r}")
    which = np.clip(np.searchsorted(edges, var, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(which, minlength=n_bins)
    keep = counts > 0
    mean_var = np.bincount(which, weights=var, minlength=n_bins)[keep] / counts[keep]
    mse = np.bincount(which, weights=sq_err, minlength=n_bins)[keep] / counts[keep]
    return VarianceCalibrationBins(mean_var, mse, counts[keep], edges)


def uncertainty_calibration_error(mean: ArrayLike, std: ArrayLike, ground_truth: ArrayLike,
                                  n_bins: int = 20, binning: str = "uniform") -> float:
    """UCE ``= Σ_m (N_m / N) |mean var_m − MSE_m|`` over variance bins (units of variance)."""
    bins = variance_calibration_bins(mean, std, ground_truth, n_bins, binning)
    weights = bins.counts / bins.counts.sum()
    return float(np.sum(weights * np.abs(bins.mean_variance - bins.mean_squared_error)))


class SparsificationCurve(NamedTuple):
    """Error of the kept pixels after removing a fraction of them, all ``(F,)``.

    ``by_uncertainty`` removes the largest-std pixels first, ``oracle`` the largest-error ones.
    """

    fractions: np.ndarray
    by_uncertainty: np.ndarray
    oracle: np.ndarray


def _kept_error(errors_in_removal_order: np.ndarray, n_keep: np.ndarray, error: str,
                ) -> np.ndarray:
    """Error over the last ``n_keep`` entries (the pixels not yet removed), vectorised."""
    values = np.abs(errors_in_removal_order) if error == "mae" else errors_in_removal_order**2
    tail_sums = np.cumsum(values[::-1])[n_keep - 1]
    out = tail_sums / n_keep
    return np.sqrt(out) if error == "rmse" else out


def sparsification_curve(mean: ArrayLike, std: ArrayLike, ground_truth: ArrayLike,
                         n_fractions: int = 100, error: str = "mae", normalize: bool = True,
                         ) -> SparsificationCurve:
    """Sparsification curve at removed fractions ``k / n_fractions``, ``k = 0 … n_fractions−1``.

    ``error`` is ``"mae"``, ``"mse"`` or ``"rmse"`` of the kept pixels; with ``normalize``
    both curves are divided by the error of all pixels (so they start at 1). Ties in
    ``std`` are removed in pixel order (so a constant std ranks pixels arbitrarily).
    """
    check_choice(error, "error", ("mae", "mse", "rmse"))
    if not isinstance(n_fractions, int) or n_fractions < 2:
        raise ValueError(f"n_fractions must be an int >= 2, got {n_fractions!r}")
    mu, sd, gt = predictive_arrays(mean, std, ground_truth)
    err = gt - mu
    n = err.size
    fractions = np.arange(n_fractions) / n_fractions
    n_keep = np.maximum(n - np.floor(fractions * n).astype(np.int64), 1)
    by_std = _kept_error(err[np.argsort(-sd, kind="stable")], n_keep, error)
    oracle = _kept_error(err[np.argsort(-np.abs(err), kind="stable")], n_keep, error)
    if normalize:
        full = by_std[0]
        if full == 0:
            raise ValueError("ground_truth equals mean everywhere: cannot normalize the curve")
        by_std, oracle = by_std / full, oracle / full
    return SparsificationCurve(fractions, by_std, oracle)


def ause(curve: SparsificationCurve) -> float:
    """Area under the sparsification error ``by_uncertainty − oracle`` (trapezoid rule)."""
    return float(np.trapezoid(curve.by_uncertainty - curve.oracle, curve.fractions))


class StdErrorCorrelation(NamedTuple):
    """Correlation coefficients of pixel std and absolute error."""

    pearson: float
    spearman: float


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt(np.dot(a, a) * np.dot(b, b))
    if denom == 0:
        return float("nan")
    return float(np.clip(np.dot(a, b) / denom, -1.0, 1.0))


def std_error_correlation(mean: ArrayLike, std: ArrayLike, ground_truth: ArrayLike,
                          ) -> StdErrorCorrelation:
    """Pearson and Spearman (rank, ties averaged) correlation of ``std`` and ``|gt − mean|``.

    Both are NaN when ``std`` or the error is constant (e.g. a homoscedastic predictive).
    """
    mu, sd, gt = predictive_arrays(mean, std, ground_truth)
    abs_err = np.abs(gt - mu)
    return StdErrorCorrelation(_pearson(sd, abs_err), _pearson(rankdata(sd), rankdata(abs_err)))


def z_scores(mean: ArrayLike, std: ArrayLike, ground_truth: ArrayLike) -> np.ndarray:
    """Flattened ``(gt − mean) / std``; ``N(0, 1)`` distributed for a calibrated predictive."""
    mu, sd, gt = predictive_arrays(mean, std, ground_truth)
    return (gt - mu) / sd


def _as_z(z: ArrayLike) -> np.ndarray:
    out = as_float64_array(z, "z").reshape(-1)
    check_finite(out, "z")
    if out.size == 0:
        raise ValueError("z must not be empty")
    return out


class ZScoreHistogram(NamedTuple):
    """Density histogram of z-scores (``(n_bins,)``, ``edges`` ``(n_bins + 1,)``) and the
    standard normal density at the bin centres; ``outside`` is the fraction beyond ``range``."""

    density: np.ndarray
    edges: np.ndarray
    standard_normal: np.ndarray
    outside: float


def z_score_histogram(z: ArrayLike, n_bins: int = 60,
                      range: tuple[float, float] = (-6.0, 6.0)) -> ZScoreHistogram:  # noqa: A002
    """Histogram normalised by *all* z-scores, so the density integrates to ``1 − outside``."""
    values = _as_z(z)
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    lo, hi = range
    if not lo < hi:
        raise ValueError(f"range must be (low, high) with low < high, got {range}")
    counts, edges = np.histogram(values, bins=n_bins, range=(lo, hi))
    density = counts / (values.size * np.diff(edges))
    centres = 0.5 * (edges[:-1] + edges[1:])
    outside = float(1.0 - counts.sum() / values.size)
    return ZScoreHistogram(density, edges, norm.pdf(centres), outside)


class QQData(NamedTuple):
    """Standard normal quantiles and the matching empirical z-score quantiles, ``(Q,)``."""

    theoretical: np.ndarray
    empirical: np.ndarray


def qq_data(z: ArrayLike, n_quantiles: int = 99) -> QQData:
    """Quantiles at probabilities ``k / (n_quantiles + 1)``, ``k = 1 … n_quantiles``.

    For ``z ~ N(0, c²)`` the points lie on the line of slope ``c`` through the origin.
    """
    values = _as_z(z)
    if not isinstance(n_quantiles, int) or n_quantiles < 1:
        raise ValueError(f"n_quantiles must be a positive int, got {n_quantiles!r}")
    probs = np.arange(1, n_quantiles + 1) / (n_quantiles + 1)
    return QQData(norm.ppf(probs), np.quantile(values, probs))
