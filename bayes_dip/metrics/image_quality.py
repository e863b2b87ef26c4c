"""Image quality: PSNR and SSIM via ``skimage.metrics`` with an explicit data range.

Images are ``(H, W)`` or ``(B, 1, H, W)`` (torch or numpy); the metric is computed per
image and averaged over the batch (``reduction="mean"``) or returned per image
(``reduction="none"``).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from bayes_dip.checks import check_choice
from bayes_dip.metrics._inputs import ArrayLike, as_image_batch, check_finite, check_same_shape

__all__ = ["psnr", "ssim"]


def _per_image(metric: Callable[..., float], recon: ArrayLike, ground_truth: ArrayLike,
               data_range: float | None, reduction: str) -> float | np.ndarray:
    check_choice(reduction, "reduction", ("mean", "none"))
    x = as_image_batch(recon, "recon")
    gt = as_image_batch(ground_truth, "ground_truth")
    check_same_shape({"recon": x, "ground_truth": gt})
    check_finite(x, "recon")
    check_finite(gt, "ground_truth")
    if data_range is not None and not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    values = []
    for x_i, gt_i in zip(x, gt):
        dr = float(gt_i.max() - gt_i.min()) if data_range is None else float(data_range)
        if dr <= 0:
            raise ValueError("ground_truth is constant: pass data_range explicitly")
        values.append(metric(gt_i, x_i, data_range=dr))
    out = np.asarray(values, dtype=np.float64)
    return float(out.mean()) if reduction == "mean" else out


def psnr(recon: ArrayLike, ground_truth: ArrayLike, data_range: float | None = None,
         reduction: str = "mean") -> float | np.ndarray:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range² / MSE)``.

    ``data_range`` defaults to ``max − min`` of each ground-truth image.
    """
    return _per_image(peak_signal_noise_ratio, recon, ground_truth, data_range, reduction)


def ssim(recon: ArrayLike, ground_truth: ArrayLike, data_range: float | None = None,
         reduction: str = "mean") -> float | np.ndarray:
    """Structural similarity (skimage defaults: 7×7 uniform window) of each image.

    ``data_range`` defaults to ``max − min`` of each ground-truth image.
    """
    return _per_image(structural_similarity, recon, ground_truth, data_range, reduction)
