"""Dense GGN and its diagonal from per-example square-root rows ``M_b = L₀_bᵀ J_b``.

``GGN₀ = Σ_b M_bᵀ M_b`` (``M_b`` is ``(R, P)``, one VJP per factor column), so the full
matrix is a sum of outer products and the diagonal a sum of squares — exact for every
layer type ``torch.func`` can differentiate.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.func import vjp, vmap
from tqdm.auto import tqdm

from ..data import Batches
from ..functional import ModelFunction
from .output import OutputCurvature

__all__ = ["factor_rows", "dense_ggn"]

#: Elements of per-example rows (chunk × R × P) held at once.
ROW_BUDGET = 2**24


def factor_rows(fn: ModelFunction, theta: Tensor, inputs: Tensor, factor: Tensor) -> Tensor:
    """Rows ``L₀_bᵀ J_b`` for every example -> ``(B, R, P)``.

    Args:
        fn: model function; theta: ``(P,)``; inputs: ``(B, ...)``;
        factor: ``(B, n_out, R)`` output-space factors.
    """
    def rows(x_b: Tensor, l_b: Tensor) -> Tensor:
        out, pullback = vjp(lambda t: fn.single(t, x_b), theta)
        return vmap(pullback)(l_b.T.reshape(-1, *out.shape))[0]

    return vmap(rows)(inputs, factor)


def dense_ggn(fn: ModelFunction, curv: OutputCurvature, batches: Batches, theta: Tensor,
              diagonal: bool, progress: bool = False) -> Tensor:
    """Unit-noise GGN ``(P, P)`` (or its diagonal ``(P,)``) summed over the data, in float64."""
    n = theta.numel()
    acc = torch.zeros(n if diagonal else (n, n), dtype=torch.float64, device=theta.device)
    for x, y in tqdm(batches, total=batches.num_batches(), disable=not progress, desc="GGN"):
        inputs = fn.prepare(x)
        with torch.no_grad():
            f = fn(theta, inputs)
        factor = curv.factor(f, y)
        factor = factor.expand(f.shape[0], *factor.shape[1:])
        chunk = max(1, ROW_BUDGET // max(1, factor.shape[2] * n))
        for start in range(0, f.shape[0], chunk):
            sl = slice(start, start + chunk)
            m = factor_rows(fn, theta, inputs[sl], factor[sl]).reshape(-1, n).to(torch.float64)
            if diagonal:
                acc += (m * m).sum(0)
            else:
                acc += m.T @ m
    return acc
