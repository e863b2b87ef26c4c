"""Metrics of one prediction against its ground truth, as a flat record plus arrays.

Test log-likelihood per pixel, in order of preference: the method's full covariance; its
patch covariances of size ``patch_size``; from its samples, the full sample covariance for
small images (``H·W ≤ full_covariance_max_pixels`` and at least 10 samples per pixel), else
patch covariances (``patch_size``); the diagonal (exact for independent pixels). The
record names the variant used (``ll_kind``); ``ll_diagonal`` is always reported too.
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from torch import Tensor

from bayes_dip.metrics import (ause, coverage_curve, coverage_ece, log_likelihood_diagonal,
                               miscalibration_area, psnr, sparsification_curve, ssim, std_error_correlation,
                               uncertainty_calibration_error)
from bayes_dip.studies.config import MetricsOptions
from bayes_dip.metrics import Prediction

__all__ = ["evaluate_prediction"]


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def evaluate_prediction(pred: Prediction, ground_truth: Tensor | None, options: MetricsOptions,
                        ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metrics record (plain floats) and arrays (coverage and sparsification curves).

    Without a ground truth only summary statistics of the std are reported.
    """
    start = time.perf_counter()
    mean = pred.mean.detach().cpu().double()
    std = pred.std.detach().cpu().double()
    record: dict[str, Any] = {"mean_std": float(std.mean())}
    arrays: dict[str, np.ndarray] = {}
    if ground_truth is None:
        return record, arrays
    gt = ground_truth.detach().cpu().double()
    data_range = float(gt.max() - gt.min()) or 1.0
    ll, kind, jitter = pred.log_likelihood(ground_truth, options.patch_size,
                                           options.full_covariance_max_pixels)
    curve = coverage_curve(mean, std, gt)
    spars = sparsification_curve(mean, std, gt)
    corr = std_error_correlation(mean, std, gt)
    record.update(
        test_ll=ll, ll_kind=kind, ll_jitter=jitter,
        ll_diagonal=log_likelihood_diagonal(mean, std, gt),
        psnr=psnr(mean, gt, data_range=data_range), ssim=ssim(mean, gt, data_range=data_range),
        rmse=float((mean - gt).pow(2).mean().sqrt()),
        coverage_ece=coverage_ece(curve), miscalibration_area=miscalibration_area(curve),
        uce=uncertainty_calibration_error(mean, std, gt), ause=ause(spars),
        pearson=_finite_or_none(corr.pearson), spearman=_finite_or_none(corr.spearman),
        coverage_68=float(np.mean(np.abs((gt - mean) / std).numpy() <= 1.0)),
        coverage_95=float(np.mean(np.abs((gt - mean) / std).numpy() <= 1.959964)))
    arrays.update(coverage_levels=curve.levels, coverage=curve.coverage,
                  sparsification_fractions=spars.fractions,
                  sparsification_by_std=spars.by_uncertainty,
                  sparsification_oracle=spars.oracle)
    record["seconds_metrics"] = time.perf_counter() - start
    return record, arrays
