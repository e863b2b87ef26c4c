"""Low-rank GGN posterior: ``K = s U diag(λ) Uᵀ + diag(δ)`` with the top-``rank`` eigenpairs of the GGN.

The eigenpairs come from a randomized Nyström sketch of the matrix-free GGN (so the GGN
is never formed). With ``W = D^{-1/2} U diag(√(sλ))`` (``D = diag(δ)``),
``K = D^{1/2} (I + W Wᵀ) D^{1/2}`` and everything reduces to ``r × r`` algebra:
``log|K| = Σ log δ + log|I_r + WᵀW|`` and ``K⁻¹ = D^{-1/2} (I − W (I + WᵀW)⁻¹ Wᵀ) D^{-1/2}``
(Woodbury), valid for any per-weight ``δ``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ...checks import check_int
from ...linalg import nystrom
from ..curvature.operator import GGNOperator
from ..curvature.output import OutputCurvature
from ..batches import Batches
from ..functional import ModelFunction
from .base import Scale, Structure, as_float64

__all__ = ["LowRank"]


class LowRank(Structure):
    """Top-``rank`` eigenpairs of the GGN from a Nyström sketch.

    Args:
        rank: number of eigenpairs kept.
        oversample: extra sketch columns; power_iters: sketch refinement passes
            (each costs ``rank + oversample`` GGN-vector products, i.e. data passes in blocks).
        seed: seed of the sketch.
        chunk_size: columns per vmapped JVP/VJP in the GGN products.
    """

    name = "lowrank"

    def __init__(self, rank: int = 20, oversample: int = 10, power_iters: int = 1, seed: int = 0,
                 chunk_size: int | None = None):
        for value, what, low in ((rank, "rank", 1), (oversample, "oversample", 0),
                                 (power_iters, "power_iters", 0)):
            check_int(value, what, low)
        self.rank, self.oversample, self.power_iters, self.seed = rank, oversample, power_iters, seed
        self.chunk_size = chunk_size
        self.eigvecs: Tensor | None = None
        self.eigvals: Tensor | None = None

    def __repr__(self) -> str:
        return f"LowRank(rank={self.rank})"

    def fit(self, fn: ModelFunction, curv: OutputCurvature, batches: Batches, theta: Tensor,
            progress: bool = False) -> None:
        n = theta.numel()
        if self.rank > n:
            raise ValueError(f"lowrank rank {self.rank} exceeds the number of weights {n}")
        op = GGNOperator(fn, curv, batches, theta, chunk_size=self.chunk_size, progress=progress)
        gen = torch.Generator(device=theta.device).manual_seed(self.seed)
        with torch.no_grad():
            eig = nystrom(op, n, self.rank, oversample=self.oversample, power_iters=self.power_iters,
                          generator=gen, dtype=theta.dtype, device=theta.device)
        self.eigvecs = eig.eigvecs.to(torch.float64)
        self.eigvals = eig.eigvals.to(torch.float64).clamp_min(0)

    def _factors(self, scale: Scale, delta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``D^{-1/2}`` ``(P,)``, ``W (P, r)`` and ``C = I + WᵀW (r, r)``."""
        if self.eigvecs is None or self.eigvals is None:
            raise RuntimeError("lowrank posterior is not fitted: call fit() first")
        d_isqrt = delta.to(torch.float64).rsqrt()
        w = d_isqrt.unsqueeze(1) * self.eigvecs * (as_float64(scale) * self.eigvals).sqrt()
        c = torch.eye(w.shape[1], dtype=w.dtype, device=w.device) + w.T @ w
        return d_isqrt, w, c

    def curvature_matmul(self, v: Tensor) -> Tensor:
        u = self.eigvecs
        return (u @ (self.eigvals.unsqueeze(1) * (u.T @ v.to(torch.float64)))).to(v.dtype)

    def covariance_matmul(self, v: Tensor, scale: Scale, delta: Tensor) -> Tensor:
        d_isqrt, w, c = self._factors(scale, delta)
        x = d_isqrt.unsqueeze(1) * v.to(torch.float64)
        x = x - w @ torch.linalg.solve(c, w.T @ x)
        return (d_isqrt.unsqueeze(1) * x).to(v.dtype)

    def logdet(self, scale: Scale, delta: Tensor) -> Tensor:
        d_isqrt, _, c = self._factors(scale, delta)
        return -2 * d_isqrt.log().sum() + torch.linalg.slogdet(c).logabsdet

    def spectrum(self, kind: str) -> Tensor | None:
        if kind != "scalar" or self.eigvals is None or self.eigvecs is None:
            return None
        rest = self.eigvecs.shape[0] - self.eigvals.shape[0]  # orthonormal U: the others are 0
        return torch.cat([self.eigvals, self.eigvals.new_zeros(rest)])

    def variance(self, scale: Scale, delta: Tensor) -> Tensor:
        d_isqrt, w, c = self._factors(scale, delta)
        inner = (w * torch.linalg.solve(c, w.T).T).sum(1)
        return (d_isqrt**2 * (1 - inner)).to(delta.dtype)

    def sample(self, n: int, scale: Scale, delta: Tensor, generator: torch.Generator | None) -> Tensor:
        d_isqrt, w, _ = self._factors(scale, delta)
        z = torch.randn(w.shape[0], n, generator=generator, dtype=torch.float64, device=w.device)
        # (I + W Wᵀ)^{-1/2} = I + Q((1 + s²)^{-1/2} − 1)Qᵀ with W = Q S Rᵀ
        q, s, _ = torch.linalg.svd(w, full_matrices=False)
        x = z + q @ (((1 + s**2).rsqrt() - 1).unsqueeze(1) * (q.T @ z))
        return (d_isqrt.unsqueeze(1) * x).T.to(delta.dtype)

    def state_dict(self) -> dict[str, Any]:
        if self.eigvecs is None:
            raise RuntimeError("lowrank posterior is not fitted: call fit() first")
        return {"eigvecs": self.eigvecs, "eigvals": self.eigvals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.eigvecs = state["eigvecs"].to(torch.float64)
        self.eigvals = state["eigvals"].to(torch.float64)
