"""The ray transform ``A`` and its transpose as differentiable torch operations.

One module, three interchangeable backends that compute the same operator (same geometry,
same units, same astra projector):

* ``"matrix"``: astra's CPU system matrix as a torch sparse CSR matrix plus a CSR transpose
  (built on the first ``Aᵀ``); any dtype (float64 exact), any device, fastest on CPU for
  images up to ~512². Each dtype's copy is built on first use and shares the indices.
* ``"astra"``: matrix-free astra calls (CPU projector; ``FP_CUDA``/``BP_CUDA`` when astra
  sees a GPU). float32 inside astra, inputs are cast in and out.
* ``"odl"``: an ODL ``RayTransform`` (``impl='astra_cpu'``), built from the geometry or given.

``A`` and ``A_adjoint`` are each other's autograd backward *and* forward-mode derivative
(a linear map is its own JVP), so ``torch.autograd``, double backward, ``torch.func.jvp``,
``torch.func.vjp`` and ``torch.func.vmap`` all work through them.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import scipy.sparse
import torch
from torch import Tensor, nn

from bayes_dip.checks import check_choice
from bayes_dip.ct.astra_backend import (AstraProjector, check_projector, cuda_available,
                                          default_projector, system_matrix)
from bayes_dip.ct.geometry import FanBeamGeometry, Geometry, ParallelBeamGeometry
from bayes_dip.ct.validation import check_batch, check_finite
from bayes_dip.ct.variance_factor import variance_factor

__all__ = ["RayTransform", "BACKENDS"]

BACKENDS = ("matrix", "astra", "odl")


def _csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A torch sparse CSR tensor on the given tensors (no copy)."""
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size=shape)


def _numpy_to_torch_csr(mat: scipy.sparse.csr_matrix) -> Tensor:
    """``mat`` as a torch CSR tensor that shares its memory (``mat`` must be kept alive)."""
    index_dtype = np.int32 if mat.nnz < 2**31 - 1 else np.int64
    return _csr(torch.from_numpy(mat.indptr.astype(index_dtype, copy=False)),
                torch.from_numpy(mat.indices.astype(index_dtype, copy=False)),
                torch.from_numpy(mat.data), mat.shape)


class _MatrixBackend:
    """``A x`` as CSR @ (pixels, batch), from astra's float32 weights.

    Holds one float32 CSR per orientation (the transpose is built on the first ``Aᵀ``); the
    torch CSR copies are made lazily per (dtype, device, transpose) and cached: float32 on
    CPU shares the stored arrays, other dtypes on the same device share their index arrays.
    """

    def __init__(self, geometry: Geometry, projector: str) -> None:
        self.geometry = geometry
        # astra's weights are float32 (it hands them out in float64): float32 is exact; keep
        # astra's order of the entries (scipy's astype sorts them, changing the sums' rounding)
        mat = system_matrix(geometry, projector)
        self._stored = {False: scipy.sparse.csr_matrix(
            (mat.data.astype(np.float32), mat.indices, mat.indptr), shape=mat.shape)}
        self._cache: dict[tuple[torch.dtype, torch.device, bool], Tensor] = {}

    def __getstate__(self) -> dict:
        # torch sparse CSR tensors cannot be deep-copied; copies rebuild them lazily
        return {**self.__dict__, "_cache": {}}

    def csr(self, dtype: torch.dtype, device: torch.device, transpose: bool) -> Tensor:
        key = (dtype, device, transpose)
        if key not in self._cache:
            if dtype != torch.float32:  # the float32 copy's indices, values cast (exactly)
                f32 = self.csr(torch.float32, device, transpose)
                mat = _csr(f32.crow_indices(), f32.col_indices(), f32.values().to(dtype),
                           f32.shape)
            elif device != torch.device("cpu"):
                mat = self.csr(torch.float32, torch.device("cpu"), transpose).to(device)
            else:
                if transpose not in self._stored:
                    self._stored[True] = self._stored[False].T.tocsr()
                mat = _numpy_to_torch_csr(self._stored[transpose])
            self._cache[key] = mat
        return self._cache[key]

    def apply(self, x: Tensor, adjoint: bool) -> Tensor:
        out_shape = self.geometry.im_shape if adjoint else self.geometry.obs_shape
        batch = x.shape[0]
        cols = x.reshape(batch, -1).T.contiguous()
        out = self.csr(x.dtype, x.device, adjoint) @ cols
        return out.T.reshape(batch, 1, *out_shape)


class _NumpyBackend:
    """Wraps a float32 numpy projector (astra or ODL); casts in and out."""

    def __init__(self, projector: AstraProjector | OdlProjector) -> None:
        self.projector = projector

    def apply(self, x: Tensor, adjoint: bool) -> Tensor:
        arr = np.ascontiguousarray(x.detach()[:, 0].to("cpu", torch.float32).numpy())
        out = self.projector.adjoint(arr) if adjoint else self.projector.forward(arr)
        return torch.from_numpy(out).to(device=x.device, dtype=x.dtype).unsqueeze(1)


class _RayTransformFn(torch.autograd.Function):
    """``A x`` (``adjoint=False``) or ``Aᵀ y``; derivative of A is A (forward) / Aᵀ (backward)."""

    @staticmethod
    def forward(x: Tensor, op: "RayTransform", adjoint: bool) -> Tensor:
        if op.check_finite:
            check_finite(x, "y" if adjoint else "x")
        return op._backend.apply(x, adjoint)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        _, ctx.op, ctx.adjoint = inputs

    @staticmethod
    def backward(ctx: Any, grad: Tensor):
        return _RayTransformFn.apply(grad, ctx.op, not ctx.adjoint), None, None

    @staticmethod
    def jvp(ctx: Any, tangent: Tensor, _op: Any, _adjoint: Any) -> Tensor:
        return _RayTransformFn.apply(tangent, ctx.op, ctx.adjoint)

    @staticmethod
    def vmap(info: Any, in_dims: tuple, x: Tensor, op: "RayTransform", adjoint: bool):
        if in_dims[0] is None:
            return _RayTransformFn.apply(x, op, adjoint), None
        x = x.movedim(in_dims[0], 0)
        n_map, batch = x.shape[:2]
        out = _RayTransformFn.apply(x.reshape(n_map * batch, *x.shape[2:]), op, adjoint)
        return out.reshape(n_map, batch, *out.shape[1:]), 0


class RayTransform(nn.Module):
    """Ray transform ``A: (B,1,H,W) -> (B,1,n_angles,n_det)`` with exact transpose ``A_adjoint``.

    Args:
        geometry: :class:`ParallelBeamGeometry` or :class:`FanBeamGeometry`.
        backend: ``"matrix"``, ``"astra"`` or ``"odl"`` (see module docs).
        projector: astra CPU projector; parallel ``"linear"`` (default, Joseph), ``"strip"``,
            ``"line"``; fan ``"line_fanflat"`` (default), ``"strip_fanflat"``. All are matched
            pairs. Used by ``"matrix"``, ``"astra"`` and :meth:`matrix`; ODL picks its own.
        use_cuda: ``"astra"`` backend only: use astra's CUDA projectors (default: when astra
            reports a GPU and no ``projector`` is named). CUDA back-projection is only
            approximately the transpose (not verified on a GPU in this project yet).
        odl_op: ``"odl"`` backend only: an existing ODL ``RayTransform`` to wrap; its geometry
            must equal ``geometry`` (use :meth:`from_odl` to derive the geometry).
        check_finite: raise ``ValueError`` on NaN/inf inputs (one device sync per call).

    Values are line integrals in the geometry's length unit (see :mod:`bayes_dip.ct.geometry`).
    Outputs keep the input's dtype and device.
    """

    def __init__(self, geometry: Geometry, backend: str = "matrix", *, projector: str | None = None,
                 use_cuda: bool | None = None, odl_op: Any = None, check_finite: bool = True) -> None:
        super().__init__()
        if not isinstance(geometry, (ParallelBeamGeometry, FanBeamGeometry)):
            raise TypeError(f"geometry must be ParallelBeamGeometry or FanBeamGeometry, "
                            f"got {type(geometry).__name__}")
        check_choice(backend, "backend", BACKENDS)
        if use_cuda is not None and backend != "astra":
            raise ValueError("use_cuda only applies to backend='astra'")
        if odl_op is not None and backend != "odl":
            raise ValueError("odl_op only applies to backend='odl'")
        if backend == "odl" and projector not in (None, default_projector(geometry)):
            raise ValueError(f"projector: ODL's astra_cpu backend uses {default_projector(geometry)!r}, "
                             f"got {projector!r}")
        self.geometry = geometry
        self.backend = backend
        self.projector = check_projector(geometry, projector)
        self.check_finite = bool(check_finite)
        self._matrix_backend: _MatrixBackend | None = None
        self._variance_factors: dict[tuple[int, float], float] = {}
        self._backend: _MatrixBackend | _NumpyBackend
        if backend == "matrix":
            self._matrix_backend = _MatrixBackend(geometry, self.projector)
            self._backend = self._matrix_backend
        elif backend == "astra":
            cuda = (projector is None and cuda_available()) if use_cuda is None else bool(use_cuda)
            if cuda and not cuda_available():
                raise ValueError("use_cuda=True but astra reports no usable GPU")
            if cuda and projector is not None:
                raise ValueError("projector names a CPU projector; astra's CUDA path has its own")
            self._backend = _NumpyBackend(AstraProjector(geometry, self.projector, use_cuda=cuda))
        else:
            from bayes_dip.ct.odl_backend import OdlProjector, geometry_from_odl, odl_ray_transform
            if odl_op is None:
                odl_op = odl_ray_transform(geometry)
            elif not geometry_from_odl(odl_op).isclose(geometry):
                raise ValueError("odl_op's geometry does not match geometry; use RayTransform.from_odl")
            self._backend = _NumpyBackend(OdlProjector(odl_op, geometry))

    @classmethod
    def from_odl(cls, odl_op: Any, check_finite: bool = True) -> "RayTransform":
        """Wrap an ODL 2D ``RayTransform`` (parallel beam or flat fan beam) as backend ``"odl"``."""
        from bayes_dip.ct.odl_backend import geometry_from_odl  # ODL is imported only when used
        return cls(geometry_from_odl(odl_op), backend="odl", odl_op=odl_op, check_finite=check_finite)

    @property
    def im_shape(self) -> tuple[int, int]:
        return self.geometry.im_shape

    @property
    def obs_shape(self) -> tuple[int, int]:
        return self.geometry.obs_shape

    def A(self, x: Tensor) -> Tensor:
        """Forward projection ``(B, 1, H, W) -> (B, 1, n_angles, n_det)``."""
        check_batch(x, "x", self.im_shape, "H, W")
        return _RayTransformFn.apply(x, self, False)

    def A_adjoint(self, y: Tensor) -> Tensor:
        """Transpose (back projection) ``(B, 1, n_angles, n_det) -> (B, 1, H, W)``."""
        check_batch(y, "y", self.obs_shape, "n_angles, n_detectors")
        return _RayTransformFn.apply(y, self, True)

    def forward(self, x: Tensor) -> Tensor:
        return self.A(x)

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_angles * n_det, H * W)``: the operator as a matrix."""
        return (self.obs_shape[0] * self.obs_shape[1], self.im_shape[0] * self.im_shape[1])

    def matmul(self, v: Tensor) -> Tensor:
        """``A V`` on column blocks: ``(H * W, k) -> (n_angles * n_det, k)`` (row-major pixels)."""
        if not isinstance(v, Tensor) or v.ndim != 2 or v.shape[0] != self.shape[1]:
            raise ValueError(f"v must be a tensor of shape ({self.shape[1]}, k), got "
                             f"{tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__}")
        return self.A(v.T.reshape(-1, 1, *self.im_shape)).reshape(v.shape[1], -1).T

    def rmatmul(self, u: Tensor) -> Tensor:
        """``Aᵀ U`` on column blocks: ``(n_angles * n_det, k) -> (H * W, k)``."""
        if not isinstance(u, Tensor) or u.ndim != 2 or u.shape[0] != self.shape[0]:
            raise ValueError(f"u must be a tensor of shape ({self.shape[0]}, k), got "
                             f"{tuple(u.shape) if isinstance(u, Tensor) else type(u).__name__}")
        return self.A_adjoint(u.T.reshape(-1, 1, *self.obs_shape)).reshape(u.shape[1], -1).T

    def variance_factor(self, rank: int = 100, rcond: float = 1e-3) -> float:
        """``c_A``: image-space variance per unit of white measurement-noise variance
        (:mod:`bayes_dip.ct.variance_factor`); computed once per ``(rank, rcond)``."""
        key = (rank, rcond)
        if key not in self._variance_factors:
            self._variance_factors[key] = variance_factor(self, rank, rcond)
        return self._variance_factors[key]

    def matrix(self) -> Tensor:
        """The operator as a float64 torch sparse CSR ``(n_angles * n_det, H * W)`` on CPU.

        Built from astra's CPU projector ``self.projector`` (for ``"odl"``: the astra projector
        ODL uses, ``linear``/``line_fanflat``); rows ordered (angle, detector), columns the
        row-major pixels.
        """
        if self._matrix_backend is None:
            self._matrix_backend = _MatrixBackend(self.geometry, self.projector)
        return self._matrix_backend.csr(torch.float64, torch.device("cpu"), False)

    def extra_repr(self) -> str:
        return f"{self.geometry!r}, backend={self.backend!r}, projector={self.projector!r}"
