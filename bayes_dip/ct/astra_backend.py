"""astra-toolbox glue: geometry conversion, the sparse system matrix, matrix-free projections.

astra works in float32 and in the physical units of :mod:`bayes_dip.ct.geometry` (its CPU
projectors honour the volume window, so values are line integrals in length units).
"""
from __future__ import annotations

import astra
import numpy as np
import scipy.sparse

from bayes_dip.ct.geometry import FanBeamGeometry, Geometry, ParallelBeamGeometry

__all__ = ["PARALLEL_PROJECTORS", "FAN_PROJECTORS", "default_projector", "astra_geometries",
           "system_matrix", "AstraProjector", "cuda_available"]

#: CPU projectors with an exactly matched (transpose) back-projection.
PARALLEL_PROJECTORS = ("linear", "strip", "line")
FAN_PROJECTORS = ("line_fanflat", "strip_fanflat")


def cuda_available() -> bool:
    """Whether astra was built with CUDA and sees a GPU."""
    try:
        return bool(astra.use_cuda())
    except Exception:  # astra raises various errors when no driver is present
        return False


def default_projector(geometry: Geometry) -> str:
    """Joseph's ``linear`` projector for parallel beam, ``line_fanflat`` for fan beam."""
    return "linear" if isinstance(geometry, ParallelBeamGeometry) else "line_fanflat"


def check_projector(geometry: Geometry, projector: str | None) -> str:
    """Validate a CPU projector name for ``geometry``; ``None`` gives the default."""
    if projector is None:
        return default_projector(geometry)
    allowed = PARALLEL_PROJECTORS if isinstance(geometry, ParallelBeamGeometry) else FAN_PROJECTORS
    if projector not in allowed:
        raise ValueError(f"projector must be one of {allowed} for {type(geometry).__name__}, "
                         f"got {projector!r}")
    return projector


def astra_geometries(geometry: Geometry) -> tuple[dict, dict]:
    """astra ``(vol_geom, proj_geom)`` in the geometry's length units."""
    if not isinstance(geometry, (ParallelBeamGeometry, FanBeamGeometry)):
        raise TypeError(f"geometry must be ParallelBeamGeometry or FanBeamGeometry, "
                        f"got {type(geometry).__name__}")
    h, w = geometry.im_shape
    ext_y, ext_x = geometry.image_extent
    vol = astra.create_vol_geom(h, w, -ext_x / 2, ext_x / 2, -ext_y / 2, ext_y / 2)
    angles = np.asarray(geometry.angles, dtype=np.float64)
    if isinstance(geometry, ParallelBeamGeometry):
        proj = astra.create_proj_geom("parallel", geometry.det_spacing, geometry.num_detectors,
                                      angles)
    else:
        proj = astra.create_proj_geom("fanflat", geometry.det_pixel_size, geometry.num_detectors,
                                      angles, geometry.src_origin_dist, geometry.origin_det_dist)
    return vol, proj


def system_matrix(geometry: Geometry, projector: str | None = None) -> scipy.sparse.csr_matrix:
    """The ray transform as a scipy CSR matrix ``(n_angles * n_det, H * W)``, float64.

    Rows are ordered (angle, detector), columns are the row-major pixels of the ``(H, W)``
    image. Entries are astra's float32 weights stored in float64.
    """
    projector = check_projector(geometry, projector)
    vol, proj = astra_geometries(geometry)
    pid = astra.create_projector(projector, proj, vol)
    try:
        mid = astra.projector.matrix(pid)
        try:
            mat = astra.matrix.get(mid)
        finally:
            astra.matrix.delete(mid)
    finally:
        astra.projector.delete(pid)
    return scipy.sparse.csr_matrix(mat, dtype=np.float64)


class AstraProjector:
    """Matrix-free forward and back projection of float32 image/sinogram stacks.

    ``use_cuda=True`` runs astra's ``FP_CUDA``/``BP_CUDA`` (only approximately matched);
    otherwise the CPU ``projector`` (exactly matched, single-threaded).
    """

    def __init__(self, geometry: Geometry, projector: str | None = None,
                 use_cuda: bool = False) -> None:
        self.geometry = geometry
        self.use_cuda = bool(use_cuda)
        self.projector = "cuda" if self.use_cuda else check_projector(geometry, projector)
        self._vol_geom, self._proj_geom = astra_geometries(geometry)
        self._pid = astra.create_projector(self.projector, self._proj_geom, self._vol_geom)
        self._vol_id = astra.data2d.create("-vol", self._vol_geom, 0.0)
        self._sino_id = astra.data2d.create("-sino", self._proj_geom, 0.0)
        suffix = "_CUDA" if self.use_cuda else ""
        self._fp_id = self._algorithm("FP" + suffix, "VolumeDataId", "ProjectionDataId")
        self._bp_id = self._algorithm("BP" + suffix, "ReconstructionDataId", "ProjectionDataId")

    def __reduce__(self):
        # astra object ids must never be shared: copies and pickles rebuild their own
        return (type(self), (self.geometry, None if self.use_cuda else self.projector, self.use_cuda))

    def _algorithm(self, kind: str, vol_key: str, sino_key: str) -> int:
        cfg = astra.astra_dict(kind)
        cfg["ProjectorId"] = self._pid
        cfg[vol_key] = self._vol_id
        cfg[sino_key] = self._sino_id
        return astra.algorithm.create(cfg)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``(B, H, W)`` float32 -> ``(B, n_angles, n_det)`` float32."""
        out = np.empty((x.shape[0], *self.geometry.obs_shape), dtype=np.float32)
        for i in range(x.shape[0]):
            astra.data2d.store(self._vol_id, x[i])
            astra.algorithm.run(self._fp_id)
            out[i] = astra.data2d.get_shared(self._sino_id)
        return out

    def adjoint(self, y: np.ndarray) -> np.ndarray:
        """``(B, n_angles, n_det)`` float32 -> ``(B, H, W)`` float32."""
        out = np.empty((y.shape[0], *self.geometry.im_shape), dtype=np.float32)
        for i in range(y.shape[0]):
            astra.data2d.store(self._sino_id, y[i])
            astra.algorithm.run(self._bp_id)
            out[i] = astra.data2d.get_shared(self._vol_id)
        return out

    def __del__(self) -> None:
        for ids, delete in ((("_fp_id", "_bp_id"), astra.algorithm.delete),
                            (("_vol_id", "_sino_id"), astra.data2d.delete),
                            (("_pid",), astra.projector.delete)):
            for name in ids:
                if hasattr(self, name):
                    try:
                        delete(getattr(self, name))
                    except Exception:
                        pass
