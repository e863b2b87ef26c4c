"""SPD preconditioners ``P ≈ K`` for :func:`~bayes_dip.linalg.pcg` and the estimators.

Every preconditioner offers, on ``(n, k)`` blocks:

* ``solve(V) = P⁻¹ V`` (what :func:`pcg` uses), ``matmul(V) = P V``;
* ``inv_sqrt_apply(V) = P^{-1/2} V`` (symmetric root; preconditioned SLQ);
* ``logdet()`` = ``log |P|`` (float64);
* ``sample_probes(num, generator)`` = ``(n, num)`` draws from ``N(0, P)`` (preconditioned
  Hutchinson probes, see :func:`~bayes_dip.linalg.logdet_grad_probes`).

Low-rank preconditioners are ``P = U Λ Uᵀ + μ I`` with orthonormal ``U (n, r)``, applied by
Woodbury in ``O(n r)`` per column: :class:`LowRankPreconditioner` and its constructors
:class:`NystromPreconditioner`, :class:`RandomizedEighPreconditioner`,
:class:`PivotedCholeskyPreconditioner`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from ..checks import check_number
from ._checks import check_block, check_int, check_positive, randn
from .randomized import nystrom, randomized_eigh

__all__ = [
    "Preconditioner", "JacobiPreconditioner", "LowRankPreconditioner", "NystromPreconditioner",
    "RandomizedEighPreconditioner", "PivotedCholeskyPreconditioner", "PivotedCholesky",
    "pivoted_cholesky",
]


class Preconditioner(ABC):
    """Base class: an SPD ``P`` of shape ``(n, n)``; see the module docstring for the methods."""

    shape: tuple[int, int]
    dtype: torch.dtype
    device: torch.device

    @abstractmethod
    def solve(self, v: Tensor) -> Tensor:
        """``P⁻¹ v`` for ``v (n, k)``."""

    @abstractmethod
    def matmul(self, v: Tensor) -> Tensor:
        """``P v``."""

    @abstractmethod
    def inv_sqrt_apply(self, v: Tensor) -> Tensor:
        """``P^{-1/2} v`` (symmetric root)."""

    @abstractmethod
    def sqrt_apply(self, v: Tensor) -> Tensor:
        """``P^{1/2} v`` (symmetric root)."""

    @abstractmethod
    def logdet(self) -> Tensor:
        """``log |P|`` in float64."""

    def sample_probes(self, num: int, generator: torch.Generator | None = None) -> Tensor:
        """``(n, num)`` Gaussian probes with covariance ``P``: ``P^{1/2} ε``, ``ε ~ N(0, I)``."""
        check_int(num, "num", 1)
        eps = randn((self.shape[0], num), generator, self.dtype, self.device)
        return self.sqrt_apply(eps)

    def __call__(self, v: Tensor) -> Tensor:
        return self.solve(v)

    def _check(self, v: Tensor) -> Tensor:
        return check_block(v, "v", self.shape[0])


class JacobiPreconditioner(Preconditioner):
    """``P = diag(d)`` for a positive diagonal ``d (n,)`` (usually ``K``'s diagonal)."""

    def __init__(self, diag: Tensor):
        if not isinstance(diag, Tensor) or diag.dim() != 1 or diag.numel() == 0:
            raise ValueError("diag must be a non-empty 1-D tensor")
        if not bool((diag > 0).all()):
            raise ValueError("diag must be strictly positive")
        self.diag = diag.detach()
        self.shape = (diag.shape[0], diag.shape[0])
        self.dtype, self.device = diag.dtype, diag.device

    def solve(self, v: Tensor) -> Tensor:
        return self._check(v) / self.diag.unsqueeze(1)

    def matmul(self, v: Tensor) -> Tensor:
        return self._check(v) * self.diag.unsqueeze(1)

    def inv_sqrt_apply(self, v: Tensor) -> Tensor:
        return self._check(v) * self.diag.rsqrt().unsqueeze(1)

    def sqrt_apply(self, v: Tensor) -> Tensor:
        return self._check(v) * self.diag.sqrt().unsqueeze(1)

    def logdet(self) -> Tensor:
        return self.diag.to(torch.float64).log().sum()


class LowRankPreconditioner(Preconditioner):
    """``P = U diag(λ) Uᵀ + μ I``: ``eigvecs = U (n, r)`` orthonormal, ``eigvals = λ (r,) >= 0``, ``shift = μ > 0``."""

    def __init__(self, eigvecs: Tensor, eigvals: Tensor, shift: float | Tensor):
        if not isinstance(eigvecs, Tensor) or eigvecs.dim() != 2:
            raise ValueError("eigvecs must be a 2-D tensor (n, r)")
        if not isinstance(eigvals, Tensor) or eigvals.shape != (eigvecs.shape[1],):
            raise ValueError(f"eigvals must have shape ({eigvecs.shape[1]},), "
                             f"got {tuple(getattr(eigvals, 'shape', ()))}")
        if not bool((eigvals >= 0).all()):
            raise ValueError("eigvals must be >= 0")
        self.shift = check_positive(shift, "shift")
        self.eigvecs = eigvecs.detach()
        self.eigvals = eigvals.detach().to(eigvecs.dtype)
        self.shape = (eigvecs.shape[0], eigvecs.shape[0])
        self.dtype, self.device = eigvecs.dtype, eigvecs.device

    @property
    def rank(self) -> int:
        return self.eigvecs.shape[1]

    def _spectral(self, v: Tensor, f_low: Tensor, f_shift: float) -> Tensor:
        """``U diag(f_low − f_shift) Uᵀ v + f_shift v``: applies ``f(P)``."""
        v = self._check(v)
        u = self.eigvecs
        return u @ ((f_low - f_shift).unsqueeze(1) * (u.mT @ v)) + f_shift * v

    def solve(self, v: Tensor) -> Tensor:
        # (λ+μ)⁻¹ − μ⁻¹ = −λ / (μ (λ+μ)), written without cancellation
        lam, mu = self.eigvals, self.shift
        v = self._check(v)
        u = self.eigvecs
        return v / mu - u @ ((lam / (mu * (lam + mu))).unsqueeze(1) * (u.mT @ v))

    def matmul(self, v: Tensor) -> Tensor:
        return self._spectral(v, self.eigvals + self.shift, self.shift)

    def inv_sqrt_apply(self, v: Tensor) -> Tensor:
        return self._spectral(v, (self.eigvals + self.shift).rsqrt(), self.shift ** -0.5)

    def sqrt_apply(self, v: Tensor) -> Tensor:
        return self._spectral(v, (self.eigvals + self.shift).sqrt(), self.shift ** 0.5)

    def logdet(self) -> Tensor:
        lam = self.eigvals.to(torch.float64)
        n = self.shape[0]
        return torch.log1p(lam / self.shift).sum() + n * torch.log(
            torch.tensor(self.shift, dtype=torch.float64, device=lam.device))


class NystromPreconditioner(LowRankPreconditioner):
    """Randomized Nyström preconditioner ``P = U Λ Uᵀ + shift · I`` (Frangella, Tropp & Udell 2021).

    ``matmul`` applies the PSD part ``K₀`` being approximated (e.g. ``A J Σ Jᵀ Aᵀ``, without
    the noise); ``shift`` is the diagonal added to it (e.g. ``σ²``). See
    :func:`~bayes_dip.linalg.nystrom` for the sketch; ``rank + oversample`` products with ``K₀``.
    A plain-callable ``matmul`` needs ``dtype=`` (and ``device=`` off the CPU).
    """

    def __init__(self, matmul: Callable[[Tensor], Tensor] | Tensor, n: int, rank: int,
                 shift: float | Tensor, generator: torch.Generator | None = None, *,
                 oversample: int = 10, power_iters: int = 0, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None):
        shift = check_positive(shift, "shift")
        with torch.no_grad():
            eig = nystrom(matmul, n, rank, oversample=oversample, power_iters=power_iters,
                          generator=generator, dtype=dtype, device=device)
        super().__init__(eig.eigvecs, eig.eigvals, shift)


class RandomizedEighPreconditioner(LowRankPreconditioner):
    """``P = U Λ Uᵀ + shift · I`` from :func:`~bayes_dip.linalg.randomized_eigh` of the PSD part ``K₀``.

    Negative Ritz values (rounding) are clipped to 0. ``(power_iters + 1)(rank + oversample)``
    products with ``K₀`` plus ``rank + oversample`` for the Rayleigh–Ritz step.
    """

    def __init__(self, matmul: Callable[[Tensor], Tensor] | Tensor, n: int, rank: int,
                 shift: float | Tensor, generator: torch.Generator | None = None, *,
                 oversample: int = 10, power_iters: int = 2, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None):
        shift = check_positive(shift, "shift")
        with torch.no_grad():
            eig = randomized_eigh(matmul, n, rank, oversample=oversample, power_iters=power_iters,
                                  generator=generator, dtype=dtype, device=device)
        super().__init__(eig.eigvecs, eig.eigvals.clamp_min(0), shift)


class PivotedCholesky(NamedTuple):
    """``K ≈ L Lᵀ`` with ``L (n, r)``; ``pivots (r,)``; ``residual_trace = tr(K − L Lᵀ)`` (float64)."""

    L: Tensor
    pivots: Tensor
    residual_trace: Tensor


def pivoted_cholesky(diag: Tensor, row: Callable[[int], Tensor], rank: int,
                     tol: float = 0.0) -> PivotedCholesky:
    """Greedy partial pivoted Cholesky of a PSD ``K (n, n)`` from its diagonal and a row oracle.

    ``diag (n,)`` is ``K``'s diagonal, ``row(i) -> (n,)`` its ``i``-th row. Each step pivots on
    the largest remaining Schur-complement diagonal (Harbrecht, Peters & Schneider 2012);
    stops after ``rank`` steps or once ``tr(K − L Lᵀ) <= tol · tr(K)``. The residual
    ``K − L Lᵀ`` is PSD and vanishes on the pivot rows and columns. ``rank`` row evaluations.
    """
    if not isinstance(diag, Tensor) or diag.dim() != 1 or diag.numel() == 0:
        raise ValueError("diag must be a non-empty 1-D tensor")
    if not callable(row):
        raise TypeError("row must be a callable i -> (n,) tensor")
    n = diag.shape[0]
    check_int(rank, "rank", 1)
    if rank > n:
        raise ValueError(f"rank must be <= n = {n}, got {rank}")
    check_number(tol, "tol", ge=0)

    with torch.no_grad():
        d = diag.detach().to(torch.float64).clone()
        total = d.sum()
        factors = torch.zeros(rank, n, dtype=torch.float64, device=diag.device)
        pivots: list[int] = []
        remaining = torch.ones(n, dtype=torch.bool, device=diag.device)
        for m in range(rank):
            residual = d[remaining].clamp_min(0).sum()
            if float(residual) <= tol * float(total):
                break
            i = int(torch.where(remaining, d, torch.full_like(d, -torch.inf)).argmax())
            pivot = d[i]
            if float(pivot) <= 0:
                break
            k_row = row(i)
            if not isinstance(k_row, Tensor) or k_row.shape != (n,):
                raise ValueError(f"row({i}) must return a tensor of shape ({n},)")
            col = (k_row.to(torch.float64) - factors[:m].mT @ factors[:m, i]) / pivot.sqrt()
            remaining[i] = False
            col = torch.where(remaining, col, torch.zeros_like(col))
            col[i] = pivot.sqrt()
            factors[m] = col
            d = d - col ** 2
            pivots.append(i)
        r = len(pivots)
        residual = d[remaining].clamp_min(0).sum()
    return PivotedCholesky(factors[:r].mT.to(diag.dtype).contiguous(),
                           torch.tensor(pivots, dtype=torch.long, device=diag.device), residual)


class PivotedCholeskyPreconditioner(LowRankPreconditioner):
    """``P = L Lᵀ + shift · I`` with ``L`` from :func:`pivoted_cholesky` of the PSD part ``K₀``.

    ``diag``/``row`` describe ``K₀`` (without the shift). ``L`` is turned into orthonormal
    form by a thin SVD so the Woodbury solve is stable; ``.factor`` keeps the Cholesky result.
    """

    def __init__(self, diag: Tensor, row: Callable[[int], Tensor], rank: int,
                 shift: float | Tensor, *, tol: float = 0.0):
        shift = check_positive(shift, "shift")
        self.factor = pivoted_cholesky(diag, row, rank, tol=tol)
        u, s, _ = torch.linalg.svd(self.factor.L.to(torch.float64), full_matrices=False)
        super().__init__(u.to(diag.dtype), (s ** 2).to(diag.dtype), shift)
