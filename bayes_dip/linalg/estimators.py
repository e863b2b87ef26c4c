"""Stochastic estimators from matrix-vector products with a square ``K (n, n)``.

All take ``matmul`` (callable / operator / dense tensor) and explicit ``probes (n, s)`` —
draw them with :func:`sample_probes` or a preconditioner's ``sample_probes`` — and return
an :class:`Estimate` ``(value, std_error)``, the standard error being the sample standard
deviation over probes divided by ``√s`` (NaN for one probe).

* :func:`hutchinson_trace`, :func:`hutchpp_trace` (Meyer et al. 2021), :func:`hutchinson_diagonal`;
* :func:`lanczos_tridiag` and :func:`slq_logdet` (stochastic Lanczos quadrature, Ubaru et al. 2017);
* :func:`logdet_grad_probes` and :func:`logdet_surrogate`: ``∂ log|K| / ∂h = tr(K⁻¹ ∂K/∂h)``
  estimated by ``mean_i (K⁻¹ z_i)ᵀ (∂K/∂h) w_i`` with CG solves, where ``w_i = z_i`` for
  probes with ``E[z zᵀ] = I`` and ``w_i = P⁻¹ z_i`` for probes ``z ~ N(0, P)`` drawn from a
  preconditioner (``E[zᵀ K⁻¹ ∂K P⁻¹ z] = tr(K⁻¹ ∂K P⁻¹ P)``; Wenger et al. 2022).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor

from ._checks import as_matmul, as_solve, check_block, check_int, col_dot, dtype_device
from .cg import CGInfo, pcg

__all__ = [
    "Estimate", "sample_probes", "hutchinson_trace", "hutchpp_trace", "hutchinson_diagonal",
    "lanczos_tridiag", "slq_logdet", "logdet_grad_probes", "logdet_surrogate",
]

MatmulLike = Callable[[Tensor], Tensor] | Tensor


class Estimate(NamedTuple):
    """A Monte Carlo estimate and its standard error (same shape)."""

    value: Tensor
    std_error: Tensor


def _estimate(samples: Tensor) -> Estimate:
    """Mean and standard error over the first dimension of per-probe samples."""
    s = samples.shape[0]
    if s < 2:
        return Estimate(samples.mean(0), torch.full_like(samples[0], float("nan")))
    return Estimate(samples.mean(0), samples.std(0) / s ** 0.5)


def _products(apply_k: Callable[[Tensor], Tensor], z: Tensor, batch_size: int | None) -> Tensor:
    if batch_size is None or batch_size >= z.shape[1]:
        return apply_k(z)
    check_int(batch_size, "batch_size", 1)
    return torch.cat([apply_k(c) for c in z.split(batch_size, dim=1)], dim=1)


def sample_probes(n: int, num: int, distribution: str = "rademacher",
                  generator: torch.Generator | None = None, *, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None) -> Tensor:
    """``(n, num)`` probes with ``E[z zᵀ] = I``: ``"rademacher"`` (±1) or ``"gaussian"``."""
    check_int(n, "n", 1)
    check_int(num, "num", 1)
    dtype, device = dtype_device(None, dtype, device)
    gen_device = generator.device if generator is not None else device
    if distribution == "rademacher":
        bits = torch.randint(0, 2, (n, num), generator=generator, device=gen_device)
        return (2 * bits - 1).to(dtype=dtype, device=device)
    if distribution == "gaussian":
        return torch.randn((n, num), generator=generator, dtype=dtype, device=gen_device).to(device)
    raise ValueError(f"distribution must be 'rademacher' or 'gaussian', got {distribution!r}")


def hutchinson_trace(matmul: MatmulLike, probes: Tensor, *, batch_size: int | None = None) -> Estimate:
    """``tr(K) ≈ mean_i z_iᵀ K z_i`` (unbiased for probes with ``E[z zᵀ] = I``).

    Variance per probe: ``2 (‖K‖_F² − Σ K_ii²)`` for Rademacher, ``2 ‖K‖_F²`` for Gaussian
    (symmetric ``K``). ``batch_size`` limits the columns per product.
    """
    z = check_block(probes, "probes")
    apply_k = as_matmul(matmul, "matmul", z.shape[0])
    return _estimate(col_dot(z, _products(apply_k, z, batch_size)))


def hutchpp_trace(matmul: MatmulLike, probes: Tensor, *, batch_size: int | None = None) -> Estimate:
    """Hutch++ trace estimate: exact trace on a sketched range plus Hutchinson on the rest.

    The first ``s // 2`` probe columns sketch ``Q = orth(K S)``; the remaining ones ``G``
    estimate ``tr((I − QQᵀ) K (I − QQᵀ))``. Unbiased; exact if ``rank(K) <= s // 2``.
    Uses ``2 (s // 2) + (s − s // 2)`` products. ``std_error`` is that of the Hutchinson part.
    """
    z = check_block(probes, "probes")
    if z.shape[1] < 2:
        raise ValueError(f"probes must have at least 2 columns for Hutch++, got {z.shape[1]}")
    apply_k = as_matmul(matmul, "matmul", z.shape[0])
    k = z.shape[1] // 2
    sketch, g = z[:, :k], z[:, k:]
    q = torch.linalg.qr(_products(apply_k, sketch, batch_size), mode="reduced").Q
    low = (q * _products(apply_k, q, batch_size)).sum()
    g_perp = g - q @ (q.mT @ g)
    rest = _estimate(col_dot(g_perp, _products(apply_k, g_perp, batch_size)))
    return Estimate(low + rest.value, rest.std_error)


def hutchinson_diagonal(matmul: MatmulLike, probes: Tensor, *,
                        batch_size: int | None = None) -> Estimate:
    """``diag(K) ≈ mean_i z_i ⊙ K z_i`` (Bekas et al. 2007); value and std_error ``(n,)``.

    Unbiased for probes with ``E[z zᵀ] = I``; with Rademacher probes the error of entry
    ``j`` comes only from the off-diagonal row ``K_{j,·}``.
    """
    z = check_block(probes, "probes")
    apply_k = as_matmul(matmul, "matmul", z.shape[0])
    return _estimate((z * _products(apply_k, z, batch_size)).mT)


def lanczos_tridiag(matmul: MatmulLike, start: Tensor, num_steps: int,
                    reorthogonalize: bool = True) -> Tensor:
    """Lanczos tridiagonal matrices ``T (k, m, m)`` of symmetric ``K`` for each start column of ``start (n, k)``.

    One independent Lanczos run per column, batched. With ``reorthogonalize`` every new
    vector is orthogonalised twice against all previous ones (``O(m n k)`` memory).
    After a breakdown (invariant Krylov subspace, ``β ≈ 0``) the rest of that ``T`` is
    padded with an identity block (zero first eigenvector components, so quadratures ignore it).
    """
    q = check_block(start, "start")
    n, k = q.shape
    apply_k = as_matmul(matmul, "matmul", n)
    check_int(num_steps, "num_steps", 1)
    m = min(num_steps, n)
    norms = torch.linalg.vector_norm(q, dim=0)
    if not bool((norms > 0).all()):
        raise ValueError("start columns must be non-zero")
    q = q / norms
    basis = q.new_zeros(m, n, k) if reorthogonalize else None
    alphas, betas = [], []
    alive = torch.ones(k, dtype=torch.bool, device=q.device)
    scale = q.new_zeros(k)
    q_prev, b_prev = torch.zeros_like(q), q.new_zeros(k)
    threshold = torch.finfo(q.dtype).eps ** 0.5
    for j in range(m):
        if basis is not None:
            basis[j] = q
        w = apply_k(q)
        a = col_dot(q, w)
        w = w - a * q - b_prev * q_prev
        if basis is not None:
            for _ in range(2):
                w = w - torch.einsum("jnk,jk->nk", basis[: j + 1],
                                     torch.einsum("jnk,nk->jk", basis[: j + 1], w))
        b = torch.linalg.vector_norm(w, dim=0)
        alphas.append(torch.where(alive, a, torch.ones_like(a)))
        scale = torch.maximum(scale, a.abs() + b)
        alive = alive & (b > threshold * scale)
        b = torch.where(alive, b, torch.zeros_like(b))
        betas.append(b)
        q_prev, b_prev = q, b
        q = torch.where(alive, w / torch.where(alive, b, torch.ones_like(b)), torch.zeros_like(w))
    t = torch.diag_embed(torch.stack(alphas, dim=1))
    if m > 1:
        off = torch.stack(betas[:-1], dim=1)
        t = t + torch.diag_embed(off, offset=1) + torch.diag_embed(off, offset=-1)
    return t


def slq_logdet(matmul: MatmulLike, probes: Tensor, num_steps: int = 50, *, precond: object = None,
               reorthogonalize: bool = True) -> Estimate:
    """``log|K|`` for SPD ``K`` by stochastic Lanczos quadrature: ``mean_i ‖z_i‖² e₁ᵀ log(T_i) e₁``.

    Each probe's Gauss quadrature with ``num_steps`` Lanczos steps (``<= n``) is exact for
    ``zᵀ p(K) z`` with ``deg p <= 2 num_steps − 1``; unbiased as that error vanishes. With a
    ``precond`` (needs ``inv_sqrt_apply`` and ``logdet``): ``log|P| + log|P^{-1/2} K P^{-1/2}|``,
    better conditioned and so fewer steps. Quadrature in float64. Raises ValueError if a
    Ritz value is ``<= 0`` (``K`` not positive definite).
    """
    z = check_block(probes, "probes")
    apply_k = as_matmul(matmul, "matmul", z.shape[0])
    offset = None
    if precond is not None:
        if not (hasattr(precond, "inv_sqrt_apply") and hasattr(precond, "logdet")):
            raise TypeError("precond must provide inv_sqrt_apply(V) and logdet()")
        inner = apply_k

        def apply_k(v: Tensor) -> Tensor:
            return precond.inv_sqrt_apply(inner(precond.inv_sqrt_apply(v)))

        offset = precond.logdet()
    with torch.no_grad():
        t = lanczos_tridiag(apply_k, z, num_steps, reorthogonalize).to(torch.float64)
        evals, evecs = torch.linalg.eigh(t)
        if not bool((evals > 0).all()):
            raise ValueError("slq_logdet: matmul is not positive definite (Ritz value <= 0)")
        weights = evecs[:, 0, :] ** 2
        norms2 = (z.to(torch.float64) ** 2).sum(0)
        samples = norms2 * (weights * evals.log()).sum(1)
        est = _estimate(samples)
    if offset is not None:
        est = Estimate(est.value + offset, est.std_error)
    return est


def _probe_solves(apply_k: Callable[[Tensor], Tensor], z: Tensor, precond: object,
                  probes_from_precond: bool, tol: float,
                  max_iter: int | None) -> tuple[Tensor, Tensor, CGInfo]:
    """``V = K⁻¹ Z`` by PCG and ``W = P⁻¹ Z`` (preconditioned probes) or ``W = Z``."""
    if probes_from_precond and precond is None:
        raise ValueError("probes_from_precond=True needs precond")
    with torch.no_grad():
        v, info = pcg(apply_k, z, precond=precond, tol=tol, max_iter=max_iter)
        w = as_solve(precond, "precond")(z) if probes_from_precond else z
    return v, w, info


def logdet_grad_probes(matmul: MatmulLike, dmatmuls: Sequence[Callable[[Tensor], Tensor]],
                       probes: Tensor, *, precond: object = None, probes_from_precond: bool = False,
                       tol: float = 1e-6, max_iter: int | None = None) -> tuple[Estimate, CGInfo]:
    """Estimate ``tr(K⁻¹ ∂K/∂h_j)`` for each ``dmatmuls[j]: V -> (∂K/∂h_j) V``; value ``(p,)``.

    ``probes (n, s)``: ``E[z zᵀ] = I`` (:func:`sample_probes`), or draws from ``N(0, P)``
    (``precond.sample_probes``) with ``probes_from_precond=True``. One batched PCG solve
    ``K⁻¹ Z`` (``precond`` used for it in both cases) and one product per ``dmatmuls[j]``.
    Returns the (detached) estimate and the CG diagnostics.
    """
    z = check_block(probes, "probes")
    apply_k = as_matmul(matmul, "matmul", z.shape[0])
    if not dmatmuls or not all(callable(d) for d in dmatmuls):
        raise TypeError("dmatmuls must be a non-empty sequence of callables")
    v, w, info = _probe_solves(apply_k, z, precond, probes_from_precond, tol, max_iter)
    with torch.no_grad():
        samples = torch.stack([col_dot(v, d(w)) for d in dmatmuls], dim=1)
    return _estimate(samples), info


def logdet_surrogate(matmul: MatmulLike, probes: Tensor, *, precond: object = None,
                     probes_from_precond: bool = False, tol: float = 1e-6,
                     max_iter: int | None = None) -> tuple[Tensor, CGInfo]:
    """Scalar whose autograd gradient estimates ``∂ log|K| / ∂h`` for everything ``matmul`` depends on.

    ``surrogate = mean_i (K⁻¹ z_i)ᵀ K(h) w_i − (same, detached)``: its value is exactly 0,
    its gradient ``mean_i (K⁻¹ z_i)ᵀ (∂K/∂h) w_i`` (see :func:`logdet_grad_probes` for the
    probes). Add it to a (detached) log-det value to get a loss with the right gradient.
    Costs one PCG solve plus one product with ``K`` tracked by autograd.
    """
    z = check_block(probes, "probes")
    apply_k = as_matmul(matmul, "matmul", z.shape[0])
    v, w, info = _probe_solves(apply_k, z, precond, probes_from_precond, tol, max_iter)
    value = col_dot(v, apply_k(w)).mean()
    return value - value.detach(), info
