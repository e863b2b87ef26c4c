"""Light composable linear operators acting on column blocks ``V (n, k) -> (m, k)``.

An :class:`Operator` is callable (``op(V) == op.matmul(V)``), so it can be passed
wherever a ``matmul`` callable is expected (:func:`~bayes_dip.linalg.pcg`, the
estimators, the randomized factorizations). Operators compose like matrices::

    K = (A @ J @ S @ J.T @ A.T).shift(noise_var)     # K_yy = A J Σ Jᵀ Aᵀ + σ² I

Scales and shifts may be tensors that require grad: products stay differentiable.
:meth:`Operator.to_linear_operator` adapts an operator to ``linear_operator``;
:func:`as_operator` wraps tensors, callables and ``linear_operator`` objects.
"""
from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from typing import Callable, Sequence

import torch
from linear_operator.operators import LinearOperator
from torch import Tensor

from ._checks import check_block, check_int, dtype_device

__all__ = [
    "Operator", "DenseOperator", "MatmulOperator", "DiagonalOperator", "SumOperator",
    "ProductOperator", "ScaledOperator", "TransposeOperator", "LinearOperatorAdapter",
    "as_operator",
]


class Operator(ABC):
    """Abstract linear map of shape ``(m, n)``; subclasses implement ``_matmul`` (and ``_rmatmul``)."""

    shape: tuple[int, int]
    dtype: torch.dtype
    device: torch.device

    @abstractmethod
    def _matmul(self, v: Tensor) -> Tensor:
        """``(n, k) -> (m, k)`` on a validated block."""

    def _rmatmul(self, u: Tensor) -> Tensor:  # (m, k) -> (n, k)
        raise TypeError(f"{type(self).__name__} has no transpose product: give it an rmatmul")

    # -- products ----------------------------------------------------------------------
    def matmul(self, v: Tensor) -> Tensor:
        """``self @ v`` for ``v`` of shape ``(n, k)`` or ``(n,)``."""
        return _apply(self._matmul, v, self.shape[1], "v")

    def rmatmul(self, u: Tensor) -> Tensor:
        """``selfᵀ @ u`` for ``u`` of shape ``(m, k)`` or ``(m,)``."""
        return _apply(self._rmatmul, u, self.shape[0], "u")

    __call__ = matmul

    def __matmul__(self, other: "Operator | Tensor") -> "Operator | Tensor":
        if isinstance(other, Operator):
            return ProductOperator(self, other)
        if isinstance(other, Tensor):
            return self.matmul(other)
        return NotImplemented

    @property
    def T(self) -> "Operator":
        return TransposeOperator(self)

    # -- algebra -----------------------------------------------------------------------
    def __add__(self, other: "Operator") -> "Operator":
        if not isinstance(other, Operator):
            return NotImplemented
        return SumOperator([self, other])

    def __sub__(self, other: "Operator") -> "Operator":
        if not isinstance(other, Operator):
            return NotImplemented
        return SumOperator([self, ScaledOperator(other, -1.0)])

    def __mul__(self, scale: float | Tensor) -> "Operator":
        if isinstance(scale, Operator):
            return NotImplemented
        return ScaledOperator(self, scale)

    __rmul__ = __mul__

    def __neg__(self) -> "Operator":
        return ScaledOperator(self, -1.0)

    def shift(self, value: float | Tensor) -> "Operator":
        """``self + value · I`` (square operators); ``value`` may be a differentiable scalar tensor."""
        if self.shape[0] != self.shape[1]:
            raise ValueError(f"shift needs a square operator, got shape {self.shape}")
        ones = torch.ones(self.shape[0], dtype=self.dtype, device=self.device)
        return SumOperator([self, DiagonalOperator(ones * value)])

    # -- dense / diagonal --------------------------------------------------------------
    def to_dense(self, batch_size: int | None = None) -> Tensor:
        """The dense ``(m, n)`` matrix, from products with identity columns (small sizes only)."""
        eye = torch.eye(self.shape[1], dtype=self.dtype, device=self.device)
        return _chunked(self._matmul, eye, batch_size)

    def diagonal(self, batch_size: int | None = None) -> Tensor:
        """Exact diagonal ``(n,)`` of a square operator (``n`` products unless overridden)."""
        self._require_square("diagonal")
        eye = torch.eye(self.shape[0], dtype=self.dtype, device=self.device)
        cols = _chunked(self._matmul, eye, batch_size)
        return cols.diagonal()

    def diagonal_estimate(self, num_probes: int, generator: torch.Generator | None = None,
                          distribution: str = "rademacher", batch_size: int | None = None):
        """Hutchinson estimate of the diagonal; returns ``Estimate(value (n,), std_error (n,))``."""
        from .estimators import hutchinson_diagonal, sample_probes

        self._require_square("diagonal_estimate")
        probes = sample_probes(self.shape[0], num_probes, distribution, generator,
                               dtype=self.dtype, device=self.device)
        return hutchinson_diagonal(self, probes, batch_size=batch_size)

    def to_linear_operator(self, *, cg_tol: float = 1e-6,
                           cg_max_iter: int | None = None) -> "LinearOperatorAdapter":
        """This operator as a ``linear_operator.LinearOperator`` (see :class:`LinearOperatorAdapter`)."""
        return LinearOperatorAdapter(self, cg_tol=cg_tol, cg_max_iter=cg_max_iter)

    def _require_square(self, what: str) -> None:
        if self.shape[0] != self.shape[1]:
            raise ValueError(f"{what} needs a square operator, got shape {self.shape}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype}, device={self.device})"


def _apply(fn: Callable[[Tensor], Tensor], v: Tensor, n: int, name: str) -> Tensor:
    if isinstance(v, Tensor) and v.dim() == 1:
        return _apply(fn, v.unsqueeze(1), n, name).squeeze(1)
    return fn(check_block(v, name, n))


def _chunked(fn: Callable[[Tensor], Tensor], v: Tensor, batch_size: int | None) -> Tensor:
    """``fn`` applied to column chunks of ``v`` (``batch_size`` columns at a time)."""
    if batch_size is None or batch_size >= v.shape[1]:
        return fn(v)
    check_int(batch_size, "batch_size", 1)
    return torch.cat([fn(c) for c in v.split(batch_size, dim=1)], dim=1)


class DenseOperator(Operator):
    """A dense matrix ``(m, n)`` as an operator."""

    def __init__(self, matrix: Tensor):
        if not isinstance(matrix, Tensor) or matrix.dim() != 2:
            raise ValueError("matrix must be a 2-D tensor")
        self.matrix = matrix
        self.shape = (matrix.shape[0], matrix.shape[1])
        self.dtype, self.device = matrix.dtype, matrix.device

    def _matmul(self, v: Tensor) -> Tensor:
        return self.matrix @ v

    def _rmatmul(self, u: Tensor) -> Tensor:
        return self.matrix.mT @ u

    def to_dense(self, batch_size: int | None = None) -> Tensor:
        return self.matrix

    def diagonal(self, batch_size: int | None = None) -> Tensor:
        self._require_square("diagonal")
        return self.matrix.diagonal()


class MatmulOperator(Operator):
    """A callable ``matmul(V (n, k)) -> (m, k)`` (and optional ``rmatmul``) as an operator.

    ``symmetric=True`` uses ``matmul`` for the transpose. dtype/device default to the torch
    default dtype and the CPU when not given.
    """

    def __init__(self, matmul: Callable[[Tensor], Tensor], shape: Sequence[int], *,
                 rmatmul: Callable[[Tensor], Tensor] | None = None, symmetric: bool = False,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        if not callable(matmul):
            raise TypeError("matmul must be callable")
        if rmatmul is not None and not callable(rmatmul):
            raise TypeError("rmatmul must be callable or None")
        if len(shape) != 2:
            raise ValueError(f"shape must be (m, n), got {tuple(shape)}")
        m, n = check_int(shape[0], "shape[0]", 1), check_int(shape[1], "shape[1]", 1)
        if symmetric and m != n:
            raise ValueError(f"a symmetric operator must be square, got shape {(m, n)}")
        self.shape = (m, n)
        self.dtype, self.device = dtype_device(None, dtype, device)
        self._fn = matmul
        self._rfn = matmul if symmetric else rmatmul

    def _matmul(self, v: Tensor) -> Tensor:
        return self._fn(v)

    def _rmatmul(self, u: Tensor) -> Tensor:
        if self._rfn is None:
            return super()._rmatmul(u)
        return self._rfn(u)


class DiagonalOperator(Operator):
    """``diag(d)`` for ``d (n,)``."""

    def __init__(self, diag: Tensor):
        if not isinstance(diag, Tensor) or diag.dim() != 1:
            raise ValueError("diag must be a 1-D tensor")
        self.diag = diag
        self.shape = (diag.shape[0], diag.shape[0])
        self.dtype, self.device = diag.dtype, diag.device

    def _matmul(self, v: Tensor) -> Tensor:
        return self.diag.unsqueeze(1) * v

    _rmatmul = _matmul

    def diagonal(self, batch_size: int | None = None) -> Tensor:
        return self.diag


def _check_same(ops: Sequence[Operator], what: str) -> None:
    first = ops[0]
    for op in ops[1:]:
        if op.dtype != first.dtype or op.device != first.device:
            raise ValueError(f"{what}: operators differ in dtype/device "
                             f"({first.dtype}, {first.device}) vs ({op.dtype}, {op.device})")


class SumOperator(Operator):
    """``Σ_i ops[i]`` (same shape, dtype and device)."""

    def __init__(self, ops: Sequence[Operator]):
        flat: list[Operator] = []
        for op in ops:
            if not isinstance(op, Operator):
                raise TypeError(f"ops must be Operators, got {type(op).__name__}")
            flat.extend(op.ops if isinstance(op, SumOperator) else [op])
        if any(op.shape != flat[0].shape for op in flat):
            raise ValueError(f"cannot add operators of shapes {[op.shape for op in flat]}")
        _check_same(flat, "sum")
        self.ops = flat
        self.shape = flat[0].shape
        self.dtype, self.device = flat[0].dtype, flat[0].device

    def _matmul(self, v: Tensor) -> Tensor:
        return sum(op._matmul(v) for op in self.ops)

    def _rmatmul(self, u: Tensor) -> Tensor:
        return sum(op._rmatmul(u) for op in self.ops)

    def diagonal(self, batch_size: int | None = None) -> Tensor:
        return sum(op.diagonal(batch_size) for op in self.ops)


class ProductOperator(Operator):
    """Composition ``left @ right``: shape ``(left.shape[0], right.shape[1])``."""

    def __init__(self, left: Operator, right: Operator):
        if left.shape[1] != right.shape[0]:
            raise ValueError(f"cannot compose shapes {left.shape} @ {right.shape}")
        _check_same([left, right], "product")
        self.left, self.right = left, right
        self.shape = (left.shape[0], right.shape[1])
        self.dtype, self.device = left.dtype, left.device

    def _matmul(self, v: Tensor) -> Tensor:
        return self.left._matmul(self.right._matmul(v))

    def _rmatmul(self, u: Tensor) -> Tensor:
        return self.right._rmatmul(self.left._rmatmul(u))


class ScaledOperator(Operator):
    """``scale · op``; ``scale`` a number or a scalar tensor (may require grad)."""

    def __init__(self, op: Operator, scale: float | Tensor):
        if isinstance(scale, Tensor) and scale.numel() != 1:
            raise ValueError(f"scale must be a scalar, got shape {tuple(scale.shape)}")
        if not isinstance(scale, (Tensor, int, float)) or isinstance(scale, bool):
            raise TypeError(f"scale must be a number or a scalar tensor, got {type(scale).__name__}")
        self.op = op
        self.scale = scale.reshape(()) if isinstance(scale, Tensor) else scale
        self.shape, self.dtype, self.device = op.shape, op.dtype, op.device

    def _matmul(self, v: Tensor) -> Tensor:
        return self.scale * self.op._matmul(v)

    def _rmatmul(self, u: Tensor) -> Tensor:
        return self.scale * self.op._rmatmul(u)

    def diagonal(self, batch_size: int | None = None) -> Tensor:
        return self.scale * self.op.diagonal(batch_size)


class TransposeOperator(Operator):
    """``opᵀ`` (needs ``op._rmatmul``)."""

    def __init__(self, op: Operator):
        self.op = op
        self.shape = (op.shape[1], op.shape[0])
        self.dtype, self.device = op.dtype, op.device

    def _matmul(self, v: Tensor) -> Tensor:
        return self.op._rmatmul(v)

    def _rmatmul(self, u: Tensor) -> Tensor:
        return self.op._matmul(u)

    @property
    def T(self) -> Operator:
        return self.op

    def diagonal(self, batch_size: int | None = None) -> Tensor:
        return self.op.diagonal(batch_size)


class LinearOperatorAdapter(LinearOperator):
    """A :class:`Operator` seen as a ``linear_operator.LinearOperator``.

    Supports ``matmul`` (also batched right-hand sides ``(*batch, n, k)``), ``mT``,
    ``to_dense``, ``diagonal`` and everything ``linear_operator`` builds on them. Its
    iterative solves (``solve`` above ``settings.max_cholesky_size``) run our
    :func:`~bayes_dip.linalg.pcg` with ``cg_tol`` / ``cg_max_iter`` instead of
    ``linear_cg``'s loose defaults, and warn when not converged. The wrapped operator is not
    part of the ``linear_operator`` representation, so autograd through ``linear_operator``
    reaches the right-hand side only.
    """

    def __init__(self, operator: Operator, *, cg_tol: float = 1e-6, cg_max_iter: int | None = None):
        if not isinstance(operator, Operator):
            raise TypeError(f"operator must be an Operator, got {type(operator).__name__}")
        super().__init__(operator=operator, cg_tol=cg_tol, cg_max_iter=cg_max_iter)
        self.operator = operator
        self.cg_tol, self.cg_max_iter = cg_tol, cg_max_iter

    def _solve(self, rhs: Tensor, preconditioner: Callable[[Tensor], Tensor] | None = None,
               num_tridiag: int | None = 0) -> Tensor:
        from .cg import pcg

        if num_tridiag:
            raise NotImplementedError("Lanczos log-dets through linear_operator are not supported: "
                                      "use bayes_dip.linalg.slq_logdet")
        if rhs.dim() > 2:
            n, k = rhs.shape[-2:]
            sol = self._solve(rhs.movedim(-2, 0).reshape(n, -1), preconditioner)
            return sol.reshape(n, *rhs.shape[:-2], k).movedim(0, -2)
        x, info = pcg(self.operator, rhs, precond=preconditioner, tol=self.cg_tol,
                      max_iter=self.cg_max_iter)
        if not info.converged:
            warnings.warn(f"pcg did not converge in {info.iterations} iterations: max relative "
                          f"residual {float(info.residual_norms.max()):.2e} > {self.cg_tol:g}",
                          RuntimeWarning, stacklevel=2)
        return x

    def _matmul(self, rhs: Tensor) -> Tensor:
        if rhs.dim() <= 2:
            return self.operator.matmul(rhs)
        n, k = rhs.shape[-2:]
        batch = rhs.shape[:-2]
        cols = rhs.movedim(-2, 0).reshape(n, -1)
        out = self.operator.matmul(cols)
        return out.reshape(out.shape[0], *batch, k).movedim(0, -2)

    def _size(self) -> torch.Size:
        return torch.Size(self.operator.shape)

    def _transpose_nonbatch(self) -> "LinearOperatorAdapter":
        return LinearOperatorAdapter(self.operator.T, cg_tol=self.cg_tol, cg_max_iter=self.cg_max_iter)

    def _diagonal(self) -> Tensor:
        return self.operator.diagonal()

    @property
    def dtype(self) -> torch.dtype:
        return self.operator.dtype

    @property
    def device(self) -> torch.device:
        return self.operator.device

    def to_dense(self) -> Tensor:
        return self.operator.to_dense()


def as_operator(obj: object, shape: Sequence[int] | None = None, *, symmetric: bool = False,
                dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Operator:
    """Wrap ``obj`` as an :class:`Operator`.

    Tensor (m, n) -> :class:`DenseOperator`; ``linear_operator.LinearOperator`` -> its
    ``matmul`` / ``mT.matmul`` (differentiable through its representation); callable ->
    :class:`MatmulOperator` (needs ``shape``); an :class:`Operator` is returned unchanged.
    """
    if isinstance(obj, Operator):
        return obj
    if isinstance(obj, Tensor):
        return DenseOperator(obj)
    if isinstance(obj, LinearOperatorAdapter):
        return obj.operator
    if isinstance(obj, LinearOperator):
        if obj.dim() != 2:
            raise ValueError(f"batched LinearOperators are not supported, got shape {tuple(obj.shape)}")
        return MatmulOperator(obj.matmul, tuple(obj.shape), rmatmul=obj.mT.matmul,
                              dtype=obj.dtype, device=obj.device)
    if callable(obj):
        if shape is None:
            raise ValueError("shape is required to wrap a callable")
        return MatmulOperator(obj, shape, symmetric=symmetric, dtype=dtype, device=device)
    raise TypeError(f"cannot make an Operator from {type(obj).__name__}")
