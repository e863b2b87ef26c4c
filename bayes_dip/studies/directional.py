"""Direction-resolved uncertainty: is the posterior uncertain where the scan saw nothing?

In a limited-angle scan the measured projections fix the Fourier coefficients of the image
only along the measured directions (Fourier slice theorem); image edges whose normal lies
outside that range are invisible to the data. Everything here works in the image's own
array coordinates (``axis 0`` = rows = ``y``, ``axis 1`` = columns = ``x``), so no
geometry convention is needed: the measured directions are read off the spectrum of
back-projected white noise ``Aᵀε``.

* :func:`direction_spectrum` — mean Fourier power of images per direction ``φ ∈ [0, π)``
  (``φ = atan2(f_y, f_x)``), over an annulus of frequencies.
* :func:`sensitivity_spectrum` — that spectrum for ``Aᵀε``: how strongly the data constrain
  each direction; :func:`measured_directions` thresholds it.
* :func:`sector_ratio` — mean power over the unmeasured directions / over the measured ones.
* :func:`edge_std_by_visibility` — mean predicted std at ground-truth edges whose normal lies
  in the measured vs the unmeasured directions.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from bayes_dip.checks import check_int

__all__ = ["DirectionSpectrum", "direction_spectrum", "sensitivity_spectrum",
           "measured_directions", "sector_ratio", "EdgeVisibility", "edge_std_by_visibility"]


class DirectionSpectrum(NamedTuple):
    """Mean power per direction bin: bin centres ``angles`` (rad, ``(n_bins,)``) and ``power``."""

    angles: np.ndarray
    power: np.ndarray


def _bins(n_bins: int) -> np.ndarray:
    check_int(n_bins, "n_bins", 2)
    return np.linspace(0.0, np.pi, n_bins + 1)


def _direction_index(angle: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each angle, taken modulo π."""
    return np.minimum((np.mod(angle, np.pi) / np.pi * n_bins).astype(np.int64), n_bins - 1)


def direction_spectrum(images: np.ndarray, n_bins: int = 36, r_min: float = 2.0,
                       r_max: float | None = None) -> DirectionSpectrum:
    """Mean ``|FFT2(image)|²`` over ``images`` ``(S, H, W)`` (or one ``(H, W)``) per direction.

    Frequencies ``(f_y, f_x)`` in cycles per image with radius in ``[r_min, r_max]``
    (default ``r_max``: half the smaller side) are binned by ``atan2(f_y, f_x) mod π`` into
    ``n_bins`` equal sectors; each bin reports the mean power of its frequencies.
    """
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[0] == 0:
        raise ValueError(f"images must have shape (S, H, W) or (H, W), got {x.shape}")
    edges = _bins(n_bins)
    h, w = x.shape[-2:]
    fy = np.fft.fftfreq(h) * h
    fx = np.fft.fftfreq(w) * w
    fy, fx = np.meshgrid(fy, fx, indexing="ij")
    radius = np.hypot(fy, fx)
    r_max = min(h, w) / 2 if r_max is None else r_max
    if not 0 <= r_min < r_max:
        raise ValueError(f"need 0 <= r_min < r_max, got r_min={r_min}, r_max={r_max}")
    keep = (radius >= r_min) & (radius <= r_max)
    power = (np.abs(np.fft.fft2(x)) ** 2).mean(0)
    idx = _direction_index(np.arctan2(fy, fx)[keep], n_bins)
    sums = np.bincount(idx, weights=power[keep], minlength=n_bins)
    counts = np.bincount(idx, minlength=n_bins)
    if np.any(counts == 0):
        raise ValueError(f"some of the {n_bins} direction bins hold no frequency in the annulus; "
                         "use fewer bins or a wider annulus")
    return DirectionSpectrum(0.5 * (edges[:-1] + edges[1:]), sums / counts)


def sensitivity_spectrum(ray_trafo, n_probes: int = 16, seed: int = 0, n_bins: int = 36,
                         r_min: float = 2.0, r_max: float | None = None) -> DirectionSpectrum:
    """:func:`direction_spectrum` of ``Aᵀε`` for ``n_probes`` white-noise sinograms ``ε``."""
    gen = torch.Generator().manual_seed(seed)
    eps = torch.randn(n_probes, 1, *ray_trafo.obs_shape, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        back = ray_trafo.A_adjoint(eps)
    return direction_spectrum(back[:, 0].cpu().numpy(), n_bins, r_min, r_max)


def measured_directions(sensitivity: DirectionSpectrum, threshold: float = 0.5) -> np.ndarray:
    """Boolean ``(n_bins,)``: directions whose sensitivity is at least ``threshold`` × its
    maximum (the data constrain them); the rest count as unmeasured."""
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    mask = sensitivity.power >= threshold * sensitivity.power.max()
    if mask.all():
        raise ValueError("every direction is measured (full-angle scan?): no unmeasured sector")
    return mask


def sector_ratio(spectrum: DirectionSpectrum, measured: np.ndarray) -> float:
    """Mean power over unmeasured directions / mean power over measured ones."""
    measured = np.asarray(measured, dtype=bool)
    if measured.shape != spectrum.power.shape or measured.all() or not measured.any():
        raise ValueError("measured must be a boolean mask over the bins with both classes present")
    return float(spectrum.power[~measured].mean() / spectrum.power[measured].mean())


class EdgeVisibility(NamedTuple):
    """Mean of a pixel map at edges with a measured / unmeasured normal, and their counts."""

    measured_mean: float
    unmeasured_mean: float
    measured_count: int
    unmeasured_count: int

    @property
    def ratio(self) -> float:
        """``unmeasured_mean / measured_mean``."""
        return self.unmeasured_mean / self.measured_mean


def edge_std_by_visibility(values: np.ndarray, ground_truth: np.ndarray, measured: np.ndarray,
                           edge_threshold: float = 0.3) -> EdgeVisibility:
    """Mean of ``values`` ``(H, W)`` (e.g. the std map) at the ground truth's edges, split by
    whether the edge normal ``atan2(∂_y gt, ∂_x gt) mod π`` falls in a measured direction bin.

    Edges: pixels with ``|∇gt| ≥ edge_threshold · max |∇gt|`` (central differences).
    ``measured``: boolean mask over ``n_bins`` equal direction sectors of ``[0, π)``.
    """
    v = np.asarray(values, dtype=np.float64)
    gt = np.asarray(ground_truth, dtype=np.float64)
    if v.ndim != 2 or v.shape != gt.shape:
        raise ValueError(f"values and ground_truth must be (H, W) of one shape, got {v.shape}, {gt.shape}")
    measured = np.asarray(measured, dtype=bool)
    gy, gx = np.gradient(gt)
    magnitude = np.hypot(gy, gx)
    if magnitude.max() == 0:
        raise ValueError("ground_truth is constant: it has no edges")
    edges = magnitude >= edge_threshold * magnitude.max()
    visible = measured[_direction_index(np.arctan2(gy, gx), measured.size)]
    a, b = edges & visible, edges & ~visible
    mean = lambda m: float(v[m].mean()) if m.any() else float("nan")  # noqa: E731
    return EdgeVisibility(mean(a), mean(b), int(a.sum()), int(b.sum()))
