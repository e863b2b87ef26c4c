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
import torch
from torch import Tensor

from bayes_dip.metrics import (ause, coverage_curve, coverage_ece, log_likelihood_diagonal,
                               log_likelihood_full, log_likelihood_patchwise, miscalibration_area,
                               psnr, sparsification_curve, ssim, std_error_correlation,
                               uncertainty_calibration_error)
from bayes_dip.studies.config import MetricsOptions
from bayes_dip.studies.prediction import Prediction

SAMPLES_PER_PIXEL_FOR_FULL = 10
"""A full sample covariance is used only from this many samples per pixel on (with fewer it
is near-singular and its log-likelihood meaningless)."""

__all__ = ["predictive_log_likelihood", "evaluate_prediction", "gallery_samples"]


def predictive_log_likelihood(pred: Prediction, ground_truth: Tensor, options: MetricsOptions,
                        ) -> tuple[float, str, float]:
    """``(log-likelihood per pixel, kind, jitter)`` of ``ground_truth`` under ``pred``."""
    if pred.covariance is not None:
        ll = log_likelihood_full(pred.mean, pred.covariance, ground_truth)
        return ll.per_pixel, "full", ll.jitter
    if options.patch_size in pred.patch_covariances:
        ll = log_likelihood_patchwise(pred.mean, ground_truth, options.patch_size,
                                      covariances=pred.patch_covariances[options.patch_size])
        return ll.per_pixel, f"patchwise-{options.patch_size}", ll.jitter
    if pred.independent_pixels or pred.samples is None:
        kind = "full" if pred.independent_pixels else "diagonal"
        return log_likelihood_diagonal(pred.mean, pred.std, ground_truth), kind, 0.0
    h, w = pred.mean.shape[-2:]
    full = (h * w <= options.full_covariance_max_pixels
            and pred.samples.shape[0] >= SAMPLES_PER_PIXEL_FOR_FULL * h * w)
    patch = max(h, w) if full else options.patch_size
    ll = log_likelihood_patchwise(pred.mean, ground_truth, patch, samples=pred.samples,
                                  added_variance=pred.added_variance)
    return ll.per_pixel, "full (sample covariance)" if full else f"patchwise-{patch}", ll.jitter


def gallery_samples(pred: Prediction, count: int, seed: int) -> Tensor | None:
    """Up to ``count`` predictive samples ``(k, 1, H, W)``: the method's gallery or samples,
    else drawn from its full covariance; ``None`` for methods with none of these."""
    if count == 0:
        return None
    if pred.gallery is not None:
        return pred.gallery[:count]
    if pred.samples is not None:
        return pred.samples[:count]
    if pred.covariance is None:
        return None
    cov = pred.covariance.double()
    n = cov.shape[0]
    chol, info = torch.linalg.cholesky_ex(cov)
    if info != 0:
        chol = torch.linalg.cholesky(cov + 1e-10 * cov.diagonal().mean() * torch.eye(
            n, dtype=cov.dtype, device=cov.device))
    gen = torch.Generator(device=cov.device).manual_seed(seed)
    noise = torch.randn(n, count, generator=gen, dtype=cov.dtype, device=cov.device)
    draws = (chol @ noise).T.reshape(count, *pred.mean.shape[1:])
    return (draws + pred.mean.double()).to(pred.mean.dtype)


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
    ll, kind, jitter = predictive_log_likelihood(pred, ground_truth.to(pred.mean.device), options)
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
