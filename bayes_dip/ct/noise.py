"""Simulated CT measurements: ``y = A x + noise`` (white Gaussian) or photon-count (Poisson) data."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from bayes_dip.checks import check_choice
from bayes_dip.ct.ray_transform import RayTransform
from bayes_dip.ct.validation import check_batch, check_finite

__all__ = ["simulate_measurement", "NOISE_MODELS"]

NOISE_MODELS = ("gaussian", "poisson")


def _image_seeds(seed: int | Sequence[int], batch: int) -> list[int]:
    def is_int(s: object) -> bool:
        return isinstance(s, (int, np.integer)) and not isinstance(s, bool)

    if is_int(seed):
        return [int(seed) + b for b in range(batch)]
    if not isinstance(seed, (Sequence, np.ndarray)):
        raise TypeError(f"seed must be an int or a sequence of ints, got {seed!r}")
    seeds = list(seed)
    if len(seeds) != batch or not all(is_int(s) for s in seeds):
        raise ValueError(f"seed must be an int or {batch} ints (one per image), got {seed!r}")
    return [int(s) for s in seeds]


def simulate_measurement(x: Tensor, ray_trafo: RayTransform, noise_level: float = 0.05,
                         seed: int | Sequence[int] = 0, *, noise: str = "gaussian",
                         photons_per_pixel: float | None = None,
                         min_counts: float = 0.1) -> tuple[Tensor, Tensor]:
    """Noisy sinograms of images ``x``.

    * ``noise="gaussian"`` (the paper's model): ``y = A x + σ_b ε``, ``ε ~ N(0, I)``, with
      ``σ_b = noise_level * mean|A x_b|`` for each image ``b``.
    * ``noise="poisson"``: photon counts ``N ~ Poisson(N0 exp(-A x))`` with
      ``N0 = photons_per_pixel`` per detector cell; returns the post-log data
      ``y = -log(max(N, min_counts) / N0)``. ``x`` must be attenuation in 1/(length unit of the
      geometry) so that ``A x`` is dimensionless. ``noise_level`` is ignored.

    Image ``b`` draws its noise from ``torch.Generator().manual_seed(seeds[b])`` on the CPU in
    float64 (``seeds[b] = seed + b`` for an int ``seed``), so results do not depend on the
    batch composition or the device.

    Args:
        x: images ``(B, 1, H, W)``, float32/float64, finite.
        ray_trafo: the forward operator ``A``.

    Returns:
        ``(y, noise_std)``: ``y`` ``(B, 1, n_angles, n_det)`` and ``noise_std`` ``(B,)`` in
        ``x``'s dtype/device. For Poisson data ``noise_std`` is the delta-method estimate
        ``sqrt(mean(1 / (N0 exp(-A x))))`` of the post-log noise std.
    """
    if not isinstance(ray_trafo, RayTransform):
        raise TypeError(f"ray_trafo must be a RayTransform, got {type(ray_trafo).__name__}")
    check_batch(x, "x", ray_trafo.im_shape, "H, W")
    check_finite(x, "x")
    check_choice(noise, "noise", NOISE_MODELS)
    seeds = _image_seeds(seed, x.shape[0])
    with torch.no_grad():
        clean = ray_trafo.A(x.detach()).to("cpu", torch.float64)
    if noise == "gaussian":
        level = float(noise_level)
        if not (math.isfinite(level) and level >= 0):
            raise ValueError(f"noise_level must be a finite number >= 0, got {noise_level!r}")
        std = level * clean.abs().mean(dim=(1, 2, 3))
        eps = torch.stack([torch.randn(clean.shape[1:], generator=torch.Generator().manual_seed(s),
                                       dtype=torch.float64) for s in seeds])
        y = clean + std.view(-1, 1, 1, 1) * eps
    else:
        if photons_per_pixel is None:
            raise ValueError("photons_per_pixel is required for noise='poisson'")
        n0 = float(photons_per_pixel)
        if not (math.isfinite(n0) and n0 > 0):
            raise ValueError(f"photons_per_pixel must be a positive number, got {photons_per_pixel!r}")
        if not (math.isfinite(min_counts) and 0 < min_counts <= 1):
            raise ValueError(f"min_counts must lie in (0, 1], got {min_counts!r}")
        rate = n0 * torch.exp(-clean)
        counts = torch.stack([torch.poisson(r, generator=torch.Generator().manual_seed(s))
                              for r, s in zip(rate, seeds)])
        y = -torch.log(counts.clamp_min(min_counts) / n0)
        std = (1.0 / rate).mean(dim=(1, 2, 3)).sqrt()
    return y.to(device=x.device, dtype=x.dtype), std.to(device=x.device, dtype=x.dtype)
