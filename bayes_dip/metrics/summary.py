"""One-call summary of a pixelwise Gaussian predictive against the ground truth."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from bayes_dip.metrics.calibration import coverage_curve
from bayes_dip.metrics.log_likelihood import log_likelihood_diagonal

__all__ = ["pixel_calibration"]


def pixel_calibration(mean: Tensor, std: Tensor, ground_truth: Tensor) -> dict:
    """Pixelwise Gaussian test log-likelihood of ``N(mean, std²)``, the oracle homoscedastic
    ``N(mean, RMSE²)``'s, and the coverage of the 68 % / 95 % intervals (all of one shape)."""
    mean, std, gt = (torch.as_tensor(t).double() for t in (mean, std, ground_truth))
    rmse = float((mean - gt).square().mean().sqrt())
    curve = coverage_curve(mean, std, gt, levels=(0.68, 0.95))
    return dict(pixel_log_likelihood=log_likelihood_diagonal(mean, std, gt),
                oracle_log_likelihood_per_pixel=-0.5 * math.log(2 * math.pi * rmse ** 2) - 0.5,
                coverage={f"{lvl:.2f}": float(c) for lvl, c in zip(curve.levels, curve.coverage)})
