"""Preconditioned conjugate gradients for SPD systems with many right-hand sides.

Unlike ``linear_operator.utils.linear_cg`` (see DESIGN.md §4) :func:`pcg` honours its
tolerance, reports iterations and per-column relative residuals, and its reported
residuals are true residuals ``‖b − K x‖ / ‖b‖`` (one extra product at the end).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..checks import check_number
from ._checks import as_matmul, as_solve, check_block, check_int, col_dot

__all__ = ["CGInfo", "pcg", "inv_quad"]

# A column whose true residual shrank by less than this factor since the previous
# residual replacement has stagnated at the floating-point floor and is frozen.
_STAGNATION = 0.5


@dataclass(frozen=True)
class CGInfo:
    """Diagnostics of :func:`pcg`.

    Attributes:
        iterations: CG iterations run (products with ``K`` in the loop).
        residual_norms: ``(k,)`` true relative residuals ``‖b − K x‖ / ‖b‖`` of the result
            (absolute for zero columns of ``b``).
        converged: every column reached ``tol``.
        residual_history: ``(iterations + 1, k)`` recursive relative residuals, when
            recorded.
    """

    iterations: int
    residual_norms: Tensor
    converged: bool
    residual_history: Tensor | None = None


def pcg(matmul: Callable[[Tensor], Tensor] | Tensor, rhs: Tensor, precond: object = None,
        tol: float = 1e-6, max_iter: int | None = None, x0: Tensor | None = None, *,
        callback: Callable[[int, Tensor, Tensor], None] | None = None,
        record_history: bool = False) -> tuple[Tensor, CGInfo]:
    """Solve ``K X = rhs`` for SPD ``K`` by (preconditioned) CG, column by column in one batch.

    Args:
        matmul: ``V (n, k) -> K V``; a callable, an object with ``shape`` and ``matmul``
            (e.g. a ``linear_operator`` ``LinearOperator``) or a dense ``(n, n)`` tensor.
        rhs: ``(n, k)`` right-hand sides (or ``(n,)``).
        precond: ``None``, an object with ``.solve(V) ≈ K⁻¹ V`` (SPD), or such a callable.
        tol: relative residual ``‖b − K x‖ / ‖b‖`` every column must reach (> 0).
        max_iter: iteration cap; ``None`` means ``10 n`` (scipy's convention).
        x0: initial guess shaped like ``rhs``.
        callback: called as ``callback(iteration, X, rel_residuals)`` after each iteration
            (recursive relative residuals ``(k,)``).
        record_history: keep the recursive relative residuals of every iteration.

    Returns:
        ``X`` shaped like ``rhs`` (detached: the solve is not differentiated; see
        :func:`inv_quad` for a differentiable quadratic form) and :class:`CGInfo`.

    Converged columns are frozen and dropped from the products. When the recursive
    residuals all meet ``tol`` the true residual is checked; columns that fail it are
    restarted from their current iterate (residual replacement) unless they stagnate.
    Columns with ``pᵀ K p <= 0`` (``K`` not SPD there) stop and report non-convergence.
    """
    vector = isinstance(rhs, Tensor) and rhs.dim() == 1
    b = check_block(rhs.unsqueeze(1) if vector else rhs, "rhs")
    n, k = b.shape
    apply_k = as_matmul(matmul, "matmul", n)
    apply_m = None if precond is None else as_solve(precond, "precond")
    check_number(tol, "tol", gt=0)
    max_iter = 10 * n if max_iter is None else check_int(max_iter, "max_iter", 0)
    if x0 is not None:
        x0 = check_block(x0.unsqueeze(1) if x0.dim() == 1 else x0, "x0", n)
        if x0.shape != b.shape:
            raise ValueError(f"x0 must have the shape of rhs {tuple(b.shape)}, got {tuple(x0.shape)}")

    with torch.no_grad():
        b = b.detach()
        b_norm = torch.linalg.vector_norm(b, dim=0)
        scale = torch.where(b_norm > 0, b_norm, torch.ones_like(b_norm))
        x = torch.zeros_like(b) if x0 is None else x0.detach().to(b).clone()
        r = b - apply_k(x) if x0 is not None else b.clone()
        rel = torch.linalg.vector_norm(r, dim=0) / scale
        history = [rel] if record_history else None

        z = r if apply_m is None else apply_m(r)
        p = z.clone()
        rz = col_dot(r, z)
        active = rel > tol
        frozen = torch.zeros_like(active)  # broken down or stagnated
        last_true = torch.full_like(rel, float("inf"))
        true_rel: Tensor | None = None
        iterations = 0

        while True:
            n_active = int(active.sum())  # the one host sync per iteration
            if n_active == 0:
                # every column met tol recursively (or is frozen): check the true residual
                r_true = b - apply_k(x)
                true_rel = torch.linalg.vector_norm(r_true, dim=0) / scale
                redo = (true_rel > tol) & ~frozen
                stagnant = redo & (true_rel > _STAGNATION * last_true)
                frozen |= stagnant
                redo &= ~stagnant
                if iterations >= max_iter or not bool(redo.any()):
                    break
                last_true = torch.where(redo, true_rel, last_true)
                r = torch.where(redo, r_true, r)
                z = r if apply_m is None else apply_m(r)
                p = torch.where(redo, z, p)
                rz = torch.where(redo, col_dot(r, z), rz)
                active = redo
                n_active = int(active.sum())
                true_rel = None
            if iterations >= max_iter:
                break
            cols = None if n_active == k else active.nonzero().squeeze(1)

            if cols is None:
                kp = apply_k(p)
            else:
                kp = torch.zeros_like(p)
                kp[:, cols] = apply_k(p[:, cols])
            pkp = col_dot(p, kp)
            step = active & (pkp > 0)
            frozen |= active & ~step
            alpha = torch.where(step, rz / torch.where(step, pkp, torch.ones_like(pkp)),
                                torch.zeros_like(pkp))
            x = x + alpha * p
            r = r - alpha * kp
            rel = torch.linalg.vector_norm(r, dim=0) / scale
            active = step & (rel > tol)
            z = r if apply_m is None else apply_m(r)
            rz_new = col_dot(r, z)
            beta = torch.where(active, rz_new / torch.where(rz != 0, rz, torch.ones_like(rz)),
                               torch.zeros_like(rz))
            p = z + beta * p
            rz = rz_new
            iterations += 1
            if history is not None:
                history.append(rel)
            if callback is not None:
                callback(iterations, x.squeeze(1) if vector else x, rel)

        if true_rel is None:
            true_rel = torch.linalg.vector_norm(b - apply_k(x), dim=0) / scale
        info = CGInfo(iterations=iterations, residual_norms=true_rel,
                      converged=bool((true_rel <= tol).all()),
                      residual_history=torch.stack(history) if history is not None else None)
    return (x.squeeze(1) if vector else x), info


def inv_quad(matmul: Callable[[Tensor], Tensor] | Tensor, rhs: Tensor, precond: object = None,
             tol: float = 1e-6, max_iter: int | None = None) -> tuple[Tensor, CGInfo]:
    """Differentiable ``bᵀ K⁻¹ b`` per column of ``rhs (n, k)`` -> ``(k,)``, via one CG solve.

    With ``x = K⁻¹ b`` from :func:`pcg` (detached) the value ``2 bᵀx − xᵀ K x`` equals
    ``bᵀ K⁻¹ b`` up to the CG error, and its gradients are ``2 K⁻¹ b`` w.r.t. ``b`` and
    ``−xᵀ (∂K) x`` w.r.t. anything ``matmul`` depends on — those of ``bᵀ K⁻¹ b``.
    Costs the solve plus one product with ``K`` that is tracked by autograd.
    """
    vector = isinstance(rhs, Tensor) and rhs.dim() == 1
    b = check_block(rhs.unsqueeze(1) if vector else rhs, "rhs")
    apply_k = as_matmul(matmul, "matmul", b.shape[0])
    x, info = pcg(apply_k, b, precond=precond, tol=tol, max_iter=max_iter)
    value = 2 * col_dot(b, x) - col_dot(x, apply_k(x))
    return (value.squeeze(0) if vector else value), info
