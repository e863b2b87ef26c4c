"""ODL glue: our geometries <-> ODL ray transforms (``odl.applications.tomo``, ODL >= 1.0).

Array layouts differ: ODL indexes images as ``[i_x, j_y]`` with ``y`` increasing, ours as
``[row, col]`` with row 0 at the top, so ``odl = ours[::-1, :].T``. Sinograms agree
(``[angle, detector]``). ODL's ``adjoint`` is the adjoint for its *weighted* inner products
(pixel area, angle step × detector cell); :class:`OdlProjector` rescales it to the plain
transpose so that it matches the matrix backend.
"""
from __future__ import annotations

import math

import numpy as np
import odl
from odl.applications import tomo

from bayes_dip.ct.geometry import FanBeamGeometry, Geometry, ParallelBeamGeometry

__all__ = ["odl_space", "odl_ray_transform", "geometry_from_odl", "OdlProjector",
           "image_to_odl", "image_from_odl"]


def image_to_odl(x: np.ndarray) -> np.ndarray:
    """``(..., H, W)`` ours -> ``(..., W, H)`` ODL layout."""
    return np.swapaxes(x[..., ::-1, :], -1, -2)


def image_from_odl(x: np.ndarray) -> np.ndarray:
    """``(..., W, H)`` ODL layout -> ``(..., H, W)`` ours."""
    return np.swapaxes(x, -1, -2)[..., ::-1, :]


def odl_space(geometry: Geometry) -> odl.DiscretizedSpace:
    """float32 ODL image space covering the geometry's image window."""
    ext_y, ext_x = geometry.image_extent
    h, w = geometry.im_shape
    return odl.uniform_discr([-ext_x / 2, -ext_y / 2], [ext_x / 2, ext_y / 2], (w, h),
                             dtype="float32")


def _angle_partition(angles: np.ndarray):
    if angles.size > 1 and not np.all(np.diff(angles) > 0):
        raise ValueError("geometry.angles must be strictly increasing for ODL")
    if angles.size > 1 and np.allclose(np.diff(angles), angles[1] - angles[0], rtol=1e-9, atol=0):
        step = angles[1] - angles[0]
        lo, hi = sorted((angles[0] - step / 2, angles[-1] + step / 2))
        part = odl.uniform_partition(lo, hi, angles.size, nodes_on_bdry=False)
        if np.allclose(part.coord_vectors[0], angles, rtol=0, atol=1e-12):
            return part
    return odl.nonuniform_partition(angles)


def odl_ray_transform(geometry: Geometry, impl: str = "astra_cpu") -> tomo.RayTransform:
    """ODL ``RayTransform`` equivalent to ``geometry`` (float32 spaces, as astra requires)."""
    apart = _angle_partition(np.asarray(geometry.angles))
    if isinstance(geometry, ParallelBeamGeometry):
        half = geometry.num_detectors * geometry.det_spacing / 2
        dpart = odl.uniform_partition(-half, half, geometry.num_detectors)
        odl_geom = tomo.Parallel2dGeometry(apart, dpart)
    elif isinstance(geometry, FanBeamGeometry):
        half = geometry.num_detectors * geometry.det_pixel_size / 2
        dpart = odl.uniform_partition(-half, half, geometry.num_detectors)
        odl_geom = tomo.FanBeamGeometry(apart, dpart, src_radius=geometry.src_origin_dist,
                                        det_radius=geometry.origin_det_dist)
    else:
        raise TypeError(f"geometry must be ParallelBeamGeometry or FanBeamGeometry, "
                        f"got {type(geometry).__name__}")
    return tomo.RayTransform(odl_space(geometry), odl_geom, impl=impl)


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise ValueError(f"odl_op: unsupported ODL ray transform ({what})")


def geometry_from_odl(op: tomo.RayTransform) -> Geometry:
    """Our geometry for an ODL 2D parallel-beam or flat fan-beam ``RayTransform``.

    Requires a centred image window with square pixels, a centred uniform detector and ODL's
    default initial orientation; anything else raises ``ValueError``.
    """
    if not isinstance(op, tomo.RayTransform):
        raise TypeError(f"odl_op must be an odl.applications.tomo.RayTransform, got {type(op).__name__}")
    space, geom = op.domain, op.geometry
    _require(space.ndim == 2, "image space must be 2D")
    dx, dy = (float(s) for s in space.cell_sides)
    _require(math.isclose(dx, dy, rel_tol=1e-6), f"non-square pixels {dx} x {dy}")
    _require(np.allclose(space.min_pt + space.max_pt, 0, atol=1e-6 * dx), "image window not centred")
    nx, ny = space.shape
    dpart = geom.det_partition
    _require(dpart.is_uniform, "non-uniform detector")
    _require(abs(dpart.min_pt[0] + dpart.max_pt[0]) < 1e-6 * dpart.cell_sides[0], "detector not centred")
    _require(np.allclose(geom.det_axis_init, [1, 0]) and np.allclose(geom.translation, 0),
             "non-default detector axis or translation")
    det_cell, n_det = float(dpart.cell_sides[0]), int(dpart.shape[0])
    angles = np.asarray(geom.angles, dtype=np.float64)
    if isinstance(geom, tomo.Parallel2dGeometry):
        _require(np.allclose(geom.det_pos_init, [0, 1]), "non-default det_pos_init")
        return ParallelBeamGeometry((ny, nx), angles=angles, num_detectors=n_det,
                                    det_spacing=det_cell, pixel_size=dx)
    if isinstance(geom, tomo.FanBeamGeometry):
        _require(geom.det_curvature_radius is None, "curved detector")
        _require(np.allclose(geom.src_to_det_init, [0, 1]), "non-default src_to_det_init")
        _require(np.allclose(geom.src_shift_func(angles), 0) and np.allclose(geom.det_shift_func(angles), 0),
                 "source or detector shifts")
        return FanBeamGeometry((ny, nx), angles, src_origin_dist=float(geom.src_radius),
                               origin_det_dist=float(geom.det_radius), det_pixel_size=det_cell,
                               num_detectors=n_det, pixel_size=dx)
    raise ValueError(f"odl_op: geometry {type(geom).__name__} is not 2D parallel or fan beam")


def _const_weight(space) -> float:
    const = getattr(space.weighting, "const", None)
    if const is None:
        raise ValueError(f"odl_op: only constant space weightings are supported, got {space.weighting}")
    return float(const)


class OdlProjector:
    """Forward projection and plain transpose through an ODL ray transform (float32 numpy)."""

    def __init__(self, op: tomo.RayTransform, geometry: Geometry) -> None:
        self.op = op
        self.geometry = geometry
        # <A x, y>_{W_y} = <x, A* y>_{W_x}  =>  A^T = (w_x / w_y) A*
        self._adjoint_scale = _const_weight(op.domain) / _const_weight(op.range)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``(B, H, W)`` -> ``(B, n_angles, n_det)``."""
        xo = image_to_odl(x)
        return np.stack([np.asarray(self.op(xi).asarray(), dtype=np.float32) for xi in xo])

    def adjoint(self, y: np.ndarray) -> np.ndarray:
        """``(B, n_angles, n_det)`` -> ``(B, H, W)`` (the transpose of :meth:`forward`)."""
        out = np.stack([np.asarray(self.op.adjoint(yi).asarray(), dtype=np.float32) for yi in y])
        return np.ascontiguousarray(image_from_odl(out)) * np.float32(self._adjoint_scale)
