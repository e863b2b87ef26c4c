"""Filtered back-projection through ODL's ``fbp_op`` on an ODL operator equal to our geometry.

Parallel beam: the standard (exact in the continuum) FBP. Fan beam (flat detector): ODL's
FBP, approximate for wide fans (no 1/U² distance weighting); for small fan angles such as the
HTC2022 scanner (~±6°) the error is negligible for full scans. No Parker weighting is applied:
short and limited-angle scans give the usual streaky FBPs.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from odl.applications import tomo
from torch import Tensor

from bayes_dip.ct.geometry import FanBeamGeometry, Geometry, ParallelBeamGeometry
from bayes_dip.ct.odl_backend import image_from_odl, odl_ray_transform
from bayes_dip.ct.ray_transform import RayTransform
from bayes_dip.ct.validation import check_batch, check_finite

__all__ = ["fbp", "FBP_FILTERS"]

#: accepted ``filter_type`` values (case-insensitive) -> ODL's names
FBP_FILTERS = {"ram-lak": "Ram-Lak", "ramlak": "Ram-Lak", "shepp-logan": "Shepp-Logan",
               "cosine": "Cosine", "hamming": "Hamming", "hann": "Hann"}


@lru_cache(maxsize=8)
def _fbp_operator(geometry: Geometry, filter_type: str, frequency_scaling: float):
    return tomo.fbp_op(odl_ray_transform(geometry), padding=True, filter_type=filter_type,
                       frequency_scaling=frequency_scaling)


def fbp(ray_trafo: RayTransform | Geometry, y: Tensor, filter_type: str = "hann",
        frequency_scaling: float = 1.0) -> Tensor:
    """Filtered back-projection of a batch of sinograms.

    Args:
        ray_trafo: the :class:`RayTransform` (or its geometry) that produced ``y``.
        y: sinograms ``(B, 1, n_angles, n_det)``, float32/float64, any device.
        filter_type: ``"ram-lak"``, ``"shepp-logan"``, ``"cosine"``, ``"hamming"`` or
            ``"hann"`` (case-insensitive; ODL's spellings accepted).
        frequency_scaling: relative cut-off frequency in ``(0, 1]``.

    Returns:
        Images ``(B, 1, H, W)`` with ``y``'s dtype and device; ``fbp(A x) ≈ x`` in the units of
        :mod:`bayes_dip.ct.geometry`. Computed in float32 on CPU (not differentiable).
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
    op = _fbp_operator(geometry, FBP_FILTERS[filter_type.lower()], scaling)
    sinos = y.detach()[:, 0].to("cpu", torch.float32).numpy()
    recos = np.stack([image_from_odl(np.asarray(op(s).asarray())) for s in sinos])
    return torch.from_numpy(np.ascontiguousarray(recos)).to(device=y.device, dtype=y.dtype).unsqueeze(1)
