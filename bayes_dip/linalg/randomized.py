"""Randomized low-rank factorizations from matrix-vector products.

* :func:`randomized_svd` — Halko, Martinsson & Tropp (2011), Alg. 4.4 (power iterations with
  re-orthonormalisation) + 5.1.
* :func:`randomized_eigh` — the symmetric variant: ``K ≈ Q (Qᵀ K Q) Qᵀ``.
* :func:`nystrom` — stable Nyström approximation of a PSD matrix (Tropp et al. 2017;
  Frangella, Tropp & Udell 2021, Alg. 2.1): ``K ≈ (KΩ)(ΩᵀKΩ)⁺(KΩ)ᵀ = U Λ Uᵀ``.

All take ``matmul: V (n, k) -> (n, k)`` callables, operators or dense tensors. dtype and
device come from the keyword arguments or from an operator / tensor; a plain callable needs
``dtype=`` (``device`` then defaults to the CPU).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor

from ._checks import as_matmul, check_int, dtype_device, orthonormalize, randn

__all__ = ["LowRankEigh", "SVDResult", "randomized_svd", "randomized_eigh", "nystrom"]


class LowRankEigh(NamedTuple):
    """``K ≈ eigvecs · diag(eigvals) · eigvecsᵀ``; eigvals ``(r,)`` descending, eigvecs ``(n, r)`` orthonormal."""

    eigvals: Tensor
    eigvecs: Tensor


class SVDResult(NamedTuple):
    """``A ≈ U · diag(S) · Vᵀ``; U ``(m, r)``, S ``(r,)`` descending, V ``(n, r)``."""

    U: Tensor
    S: Tensor
    V: Tensor


def _sketch_size(rank: int, oversample: int, limit: int) -> int:
    check_int(rank, "rank", 1)
    check_int(oversample, "oversample", 0)
    if rank > limit:
        raise ValueError(f"rank must be <= {limit}, got {rank}")
    return min(rank + oversample, limit)


def randomized_svd(matmul: Callable[[Tensor], Tensor], rmatmul: Callable[[Tensor], Tensor],
                   shape: Sequence[int], rank: int, oversample: int = 10, power_iters: int = 2,
                   generator: torch.Generator | None = None, *, dtype: torch.dtype | None = None,
                   device: torch.device | str | None = None) -> SVDResult:
    """Rank-``rank`` truncated SVD of ``A (m, n)`` given ``matmul = A @ ·`` and ``rmatmul = Aᵀ @ ·``.

    Uses ``2 (power_iters + 1)`` passes over ``A`` with blocks of ``rank + oversample``
    columns. Exact (to rounding) when ``rank(A) <= rank + oversample``.
    """
    if not callable(matmul) or not callable(rmatmul):
        raise TypeError("matmul and rmatmul must be callable")
    if len(shape) != 2:
        raise ValueError(f"shape must be (m, n), got {tuple(shape)}")
    m, n = check_int(shape[0], "shape[0]", 1), check_int(shape[1], "shape[1]", 1)
    ell = _sketch_size(rank, oversample, min(m, n))
    check_int(power_iters, "power_iters", 0)
    dtype, device = dtype_device(matmul, dtype, device)

    q = orthonormalize(matmul(randn((n, ell), generator, dtype, device)))
    for _ in range(power_iters):
        q = orthonormalize(matmul(orthonormalize(rmatmul(q))))
    bt = rmatmul(q)  # (n, ell) = (Qᵀ A)ᵀ
    v, s, uh_t = torch.linalg.svd(bt, full_matrices=False)  # Bᵀ = V S Ũᵀ
    u = q @ uh_t.mT
    return SVDResult(u[:, :rank], s[:rank], v[:, :rank])


def randomized_eigh(matmul: Callable[[Tensor], Tensor] | Tensor, n: int, rank: int,
                    oversample: int = 10, power_iters: int = 2,
                    generator: torch.Generator | None = None, *, dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None) -> LowRankEigh:
    """Top-``rank`` eigenpairs (largest ``|λ|``) of a symmetric ``K (n, n)`` from products with ``K``.

    Range finder with ``power_iters`` power iterations, then ``eigh(Qᵀ K Q)``; eigenvalues
    sorted by decreasing magnitude. Exact when ``rank(K) <= rank + oversample``.
    """
    check_int(n, "n", 1)
    dtype, device = dtype_device(matmul, dtype, device)
    apply_k = as_matmul(matmul, "matmul", n)
    ell = _sketch_size(rank, oversample, n)
    check_int(power_iters, "power_iters", 0)

    q = orthonormalize(apply_k(randn((n, ell), generator, dtype, device)))
    for _ in range(power_iters):
        q = orthonormalize(apply_k(q))
    t = q.mT @ apply_k(q)
    evals, evecs = torch.linalg.eigh((t + t.mT) / 2)
    order = evals.abs().argsort(descending=True)[:rank]
    return LowRankEigh(evals[order], q @ evecs[:, order])


def nystrom(matmul: Callable[[Tensor], Tensor] | Tensor, n: int, rank: int, oversample: int = 10,
            power_iters: int = 0, generator: torch.Generator | None = None, *,
            dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> LowRankEigh:
    """Stable randomized Nyström approximation ``K ≈ U Λ Uᵀ`` of a PSD ``K (n, n)``, truncated to ``rank``.

    Sketch ``Ω`` of ``rank + oversample`` orthonormalised Gaussian columns (optionally
    refined by ``power_iters`` products with ``K``), ``Y = K Ω``, a tiny shift
    ``ν = √n · eps · ‖Y‖_F`` for stability (Frangella et al. 2021), core factorisation in
    float64. ``K − U Λ Uᵀ`` is PSD up to rounding; exact when ``rank(K) <= rank + oversample``.
    Raises ValueError if ``K`` is detectably not PSD.
    """
    check_int(n, "n", 1)
    dtype, device = dtype_device(matmul, dtype, device)
    apply_k = as_matmul(matmul, "matmul", n)
    ell = _sketch_size(rank, oversample, n)
    check_int(power_iters, "power_iters", 0)

    omega = orthonormalize(randn((n, ell), generator, dtype, device))
    for _ in range(power_iters):
        omega = orthonormalize(apply_k(omega))
    y = apply_k(omega).to(torch.float64)
    omega = omega.to(torch.float64)
    nu = n ** 0.5 * torch.finfo(dtype).eps * torch.linalg.matrix_norm(y)
    y_nu = y + nu * omega
    core = omega.mT @ y_nu
    chol, info = torch.linalg.cholesky_ex((core + core.mT) / 2)
    if int(info) != 0:
        raise ValueError("nystrom: matmul is not positive semi-definite (Cholesky of ΩᵀKΩ failed)")
    b = torch.linalg.solve_triangular(chol, y_nu.mT, upper=False).mT  # Y_ν C⁻ᵀ
    u, s, _ = torch.linalg.svd(b, full_matrices=False)
    eigvals = (s[:rank] ** 2 - nu).clamp_min(0)
    return LowRankEigh(eigvals.to(dtype), u[:, :rank].to(dtype))
