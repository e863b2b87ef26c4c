"""Filtered back-projection in torch for parallel and flat-detector fan-beam geometries.

``x(r) = Σ_i w_i / U_i(r)² · q_i(s_i(r))`` with, per angle ``θ_i``:

* ``q_i``: the sinogram row (fan beam: rescaled to a virtual detector through the rotation
  axis, spacing ``det_pixel_size / magnification``, and pre-weighted by ``D / sqrt(D² + s²)``)
  convolved with the discrete ramp filter of Kak & Slaney (``h(0) = 1/(4Δs²)``,
  ``h(odd n) = -1/(n π Δs)²``), times a frequency window (ODL's filter definitions);
* ``s_i(r)``: the detector coordinate of the ray through pixel ``r`` (linear interpolation);
* ``U_i(r) = (D - r·e_i) / D`` the fan-beam distance weight (1 for parallel beam);
* ``w_i``: the angular cell of ``θ_i`` (half the gap to each neighbour); if the angles cover
  more than ``π`` the weights are scaled to sum to ``π`` (full-circle data is redundant).

Limited-angle scans keep their true weights (no normalisation to a full scan) and no Parker
weighting is applied to short fan-beam scans. The result is pixel-driven, so it does not
depend on the ray-transform backend, works for any angle set (unsorted, non-uniform,
clockwise) and keeps the input's dtype and device (differentiable in ``y``).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from bayes_dip.ct.geometry import FanBeamGeometry, Geometry, ParallelBeamGeometry
from bayes_dip.ct.ray_transform import RayTransform
from bayes_dip.ct.validation import check_batch, check_finite

__all__ = ["fbp", "FBP_FILTERS", "angle_weights"]

#: accepted ``filter_type`` values (case-insensitive) -> canonical (ODL) names
FBP_FILTERS = {"ram-lak": "Ram-Lak", "ramlak": "Ram-Lak", "shepp-logan": "Shepp-Logan",
               "cosine": "Cosine", "hamming": "Hamming", "hann": "Hann"}

_MAX_CHUNK_ELEMENTS = 2 ** 24  # batch * angles * pixels per back-projection chunk


def angle_weights(angles: np.ndarray) -> np.ndarray:
    """Quadrature weights ``w_i`` of the angles (see module docs), shape ``(n_angles,)``."""
    angles = np.asarray(angles, dtype=np.float64)
    if angles.size == 1:
        return np.array([np.pi])
    order = np.argsort(angles)
    s = angles[order]
    gaps = np.diff(s)
    cells = np.empty_like(s)
    cells[1:-1] = (gaps[:-1] + gaps[1:]) / 2
    cells[0], cells[-1] = gaps[0], gaps[-1]
    total = cells.sum()
    if total > np.pi:
        cells *= np.pi / total
    weights = np.empty_like(cells)
    weights[order] = cells
    return weights


def _window(norm_freq: Tensor, name: str, scaling: float) -> Tensor:
    if name == "Ram-Lak":
        win = torch.ones_like(norm_freq)
    elif name == "Shepp-Logan":
        win = torch.sinc(norm_freq / (2 * scaling))
    elif name == "Cosine":
        win = torch.cos(norm_freq * math.pi / (2 * scaling))
    elif name == "Hamming":
        win = 0.54 + 0.46 * torch.cos(norm_freq * math.pi / scaling)
    else:  # Hann
        win = torch.cos(norm_freq * math.pi / (2 * scaling)) ** 2
    return win * (norm_freq <= scaling)


def _ramp_filter(p: Tensor, spacing: float, name: str, scaling: float) -> Tensor:
    """Filter rows ``(..., n)`` with the windowed Kak–Slaney ramp (zero padded, linear conv)."""
    n = p.shape[-1]
    size = 2 ** math.ceil(math.log2(2 * n))
    k = torch.arange(size, dtype=p.dtype, device=p.device)
    k = torch.minimum(k, size - k)  # circular distance
    h = torch.where(k % 2 == 1, -1.0 / (math.pi * k.clamp_min(1) * spacing) ** 2,
                    torch.zeros_like(k))
    h[0] = 1.0 / (4 * spacing ** 2)
    response = torch.fft.rfft(h).real * spacing  # h is even: real response; spacing = dx of conv
    norm_freq = torch.linspace(0, 1, response.shape[0], dtype=p.dtype, device=p.device)
    response = response * _window(norm_freq, name, scaling)
    return torch.fft.irfft(torch.fft.rfft(p, n=size) * response, n=size)[..., :n]


def _pixel_centres(geometry: Geometry, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    h, w = geometry.im_shape
    ps = geometry.pixel_size
    xs = (torch.arange(w, dtype=dtype, device=device) + 0.5 - w / 2) * ps
    ys = (h / 2 - 0.5 - torch.arange(h, dtype=dtype, device=device)) * ps
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return xx.reshape(-1), yy.reshape(-1)


def _backproject(q: Tensor, geometry: Geometry, spacing: float) -> Tensor:
    """Pixel-driven weighted back-projection of filtered rows ``q (B, n_angles, n_det)``."""
    batch, n_angles, n_det = q.shape
    dtype, device = q.dtype, q.device
    xx, yy = _pixel_centres(geometry, dtype, device)
    theta = torch.tensor(np.array(geometry.angles), dtype=dtype, device=device)
    weights = torch.as_tensor(angle_weights(geometry.angles), dtype=dtype, device=device)
    q_pad = torch.nn.functional.pad(q, (1, 1))  # zero outside the detector
    out = torch.zeros(batch, xx.numel(), dtype=dtype, device=device)
    chunk = max(1, _MAX_CHUNK_ELEMENTS // (batch * xx.numel()))
    for start in range(0, n_angles, chunk):
        th = theta[start:start + chunk, None]
        along_det = xx * torch.cos(th) + yy * torch.sin(th)  # r · t_i
        if isinstance(geometry, FanBeamGeometry):
            d = geometry.src_origin_dist
            u = (d - (xx * torch.sin(th) - yy * torch.cos(th))) / d  # U_i(r); r·e_i, e = (sin, -cos)
            s = along_det / u
            wgt = weights[start:start + chunk, None] / u ** 2
        else:
            s = along_det
            wgt = weights[start:start + chunk, None].expand_as(s)
        pos = (s / spacing + n_det / 2 - 0.5).clamp(-1.0, float(n_det)) + 1.0  # index into q_pad
        i0 = pos.floor().clamp(max=n_det)
        frac = pos - i0
        i0 = i0.long()
        rows = q_pad[:, start:start + chunk]
        idx = i0.unsqueeze(0).expand(batch, -1, -1)
        v0 = torch.gather(rows, 2, idx)
        v1 = torch.gather(rows, 2, (idx + 1).clamp(max=n_det + 1))
        out = out + (wgt * ((1 - frac) * v0 + frac * v1)).sum(dim=1)
    return out


def fbp(ray_trafo: RayTransform | Geometry, y: Tensor, filter_type: str = "hann",
        frequency_scaling: float = 1.0) -> Tensor:
    """Filtered back-projection of a batch of sinograms.

    Args:
        ray_trafo: the :class:`RayTransform` (or its geometry) that produced ``y``.
        y: sinograms ``(B, 1, n_angles, n_det)``, float32/float64, any device.
        filter_type: ``"ram-lak"``, ``"shepp-logan"``, ``"cosine"``, ``"hamming"`` or
            ``"hann"`` (case-insensitive; ODL's spellings accepted).
        frequency_scaling: relative cut-off frequency in ``(0, 1]`` (window as in ODL).

    Returns:
        Images ``(B, 1, H, W)`` in ``y``'s dtype and device with ``fbp(A x) ≈ x`` in the
        units of :mod:`bayes_dip.ct.geometry`.
    """
    geometry = ray_trafo.geometry if isinstance(ray_trafo, RayTransform) else ray_trafo
    if not isinstance(geometry, (ParallelBeamGeometry, FanBeamGeometry)):
        raise TypeError(f"ray_trafo must be a RayTransform or a geometry, got {type(ray_trafo).__name__}")
    check_batch(y, "y", geometry.obs_shape, "n_angles, n_detectors")
    check_finite(y, "y")
    if not isinstance(filter_type, str) or filter_type.lower() not in FBP_FILTERS:
        raise ValueError(f"filter_type must be one of {sorted(set(FBP_FILTERS.values()))}, got {filter_type!r}")
    scaling = float(frequency_scaling)
    if not (math.isfinite(scaling) and 0 < scaling <= 1):
        raise ValueError(f"frequency_scaling must lie in (0, 1], got {frequency_scaling!r}")
    p = y[:, 0]
    n_det = geometry.num_detectors
    if isinstance(geometry, FanBeamGeometry):
        spacing = geometry.det_pixel_size_at_origin
        d = geometry.src_origin_dist
        s = (torch.arange(n_det, dtype=y.dtype, device=y.device) + 0.5 - n_det / 2) * spacing
        p = p * (d / torch.sqrt(d ** 2 + s ** 2))
    else:
        spacing = geometry.det_spacing
    q = _ramp_filter(p, spacing, FBP_FILTERS[filter_type.lower()], scaling)
    return _backproject(q, geometry, spacing).reshape(y.shape[0], 1, *geometry.im_shape)
