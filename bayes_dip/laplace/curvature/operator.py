"""Matrix-free GGN: ``GGN₀ V = Σ_batches Jᵀ Λ₀ J V`` by JVP → output Hessian → VJP.

Nothing of size ``P × P`` or ``n_out × P`` is formed: one product costs, per batch, a
forward pass, ``k`` batched JVPs and ``k`` batched VJPs (``V`` has ``k`` columns). Batches
are processed jointly (no per-example Jacobians), so this also serves CT, where one
"example" is a whole image and ``Λ₀ = Aᵀ A``.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.func import vjp
from tqdm.auto import tqdm

from ..batches import Batches
from ..functional import ModelFunction, jvp_rows, vjp_rows
from .output import OutputCurvature

__all__ = ["GGNOperator"]


class GGNOperator:
    """The unit-noise GGN as a callable ``V (P, k) -> GGN₀ V (P, k)`` over a data set.

    Args:
        fn: model function; curv: output-space curvature; batches: the data;
        theta: linearisation point ``(P,)``;
        chunk_size: columns per vmapped JVP/VJP (``None``: all ``k`` at once).
        progress: tqdm bar over batches for every product.
    """

    def __init__(self, fn: ModelFunction, curv: OutputCurvature, batches: Batches, theta: Tensor,
                 chunk_size: int | None = None, progress: bool = False):
        self.fn, self.curv, self.batches = fn, curv, batches
        self.theta = theta.detach()
        self.chunk_size = chunk_size
        self.progress = progress
        self.n = theta.numel()

    def _passes(self):
        for x, y in tqdm(self.batches, total=self.batches.num_batches(), disable=not self.progress,
                         desc="GGN·v", leave=False):
            inputs = self.fn.prepare(x)
            yield (lambda t, inputs=inputs: self.fn(t, inputs)), y

    def __call__(self, v: Tensor) -> Tensor:
        vector = v.dim() == 1
        block = (v.unsqueeze(1) if vector else v).to(self.theta.dtype)
        out = torch.zeros_like(block)
        for f_of, y in self._passes():
            f, pullback = vjp(f_of, self.theta)
            jv = jvp_rows(f_of, self.theta, block.T, self.chunk_size)
            hjv = self.curv.matmul(f.detach(), y, jv)
            out += vjp_rows(pullback, hjv, self.chunk_size).T
        out = out.to(v.dtype)
        return out.squeeze(1) if vector else out

    def sample_root(self, n_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """``Σ_b J_bᵀ L₀_b ε_b`` with ``ε ~ N(0, I)``: columns ``(P, n_samples)`` distributed as ``N(0, GGN₀)``."""
        out = torch.zeros(self.n, n_samples, dtype=self.theta.dtype, device=self.theta.device)
        for f_of, y in self._passes():
            f, pullback = vjp(f_of, self.theta)
            f = f.detach()
            eps = torch.randn(n_samples, f.shape[0], self.curv.rank(f), generator=generator,
                              dtype=f.dtype, device=f.device)
            cot = self.curv.factor_matmul(f, y, eps)
            out += vjp_rows(pullback, cot, self.chunk_size).T
        return out
