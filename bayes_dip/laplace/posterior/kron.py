"""Kronecker-factored (KFAC) posterior: one eigendecomposed Kronecker block per parameter tensor.

Block ``b`` is ``s · c_b · (G_b ⊗ A_b) + δ_b I`` (or ``s · B_b + δ_b I`` for biases). With
``G = Q_G Λ_G Q_Gᵀ`` and ``A = Q_A Λ_A Q_Aᵀ`` its eigenvectors are ``Q_G ⊗ Q_A`` and its
eigenvalues ``s c λ_G λ_Aᵀ + δ_b``, so solves, log-determinants, variances and samples are
exact for the Kronecker approximation in ``O(d_out³ + d_in³)`` per block. ``δ`` must be
constant on each parameter tensor (scalar or per-group prior precision).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..curvature.kfac import kfac_blocks
from ..curvature.layers import JacobianTerm
from ..curvature.output import OutputCurvature
from ..batches import Batches
from ..functional import ModelFunction
from .base import Scale, Structure, as_float64

__all__ = ["KFAC"]


class KFAC(Structure):
    """KFAC for ``nn.Linear`` / ``nn.Conv2d`` weights and biases (see :mod:`..curvature.kfac`)."""

    name = "kfac"
    supports_parameter_prior = False

    def __init__(self) -> None:
        self.blocks: list[dict[str, Any]] | None = None

    def fit(self, fn: ModelFunction, curv: OutputCurvature, batches: Batches, theta: Tensor,
            progress: bool = False) -> None:
        blocks = kfac_blocks(fn, curv, batches, theta, progress=progress)
        self._set([{"name": b.name, "factors": b.factors, "coef": b.coef} for b in blocks],
                  fn.subset.offsets, fn.subset.sizes)

    def _set(self, blocks: list[dict[str, Any]], offsets: tuple[int, ...], sizes: tuple[int, ...]) -> None:
        for block, offset, size in zip(blocks, offsets, sizes):
            eig = [torch.linalg.eigh(f) for f in block["factors"]]
            block["Q"] = [e.eigenvectors for e in eig]
            block["lam"] = [e.eigenvalues.clamp_min(0) for e in eig]
            block["dims"] = [f.shape[0] for f in block["factors"]]
            block["offset"], block["size"] = offset, size
        self.blocks = blocks

    def _blocks(self) -> list[dict[str, Any]]:
        if self.blocks is None:
            raise RuntimeError("kfac posterior is not fitted: call fit() first")
        return self.blocks

    @staticmethod
    def _eigvals(block: dict[str, Any]) -> Tensor:
        lam = block["lam"]
        vals = lam[0] if len(lam) == 1 else torch.outer(lam[0], lam[1])
        return block["coef"] * vals.reshape(-1)

    @staticmethod
    def _to_eig(block: dict[str, Any], v: Tensor) -> Tensor:
        q = block["Q"]
        if len(q) == 1:
            return q[0].T @ v
        d_out, d_in = block["dims"]
        w = (q[0].T @ v.reshape(d_out, -1)).reshape(d_out, d_in, -1)  # Q_Gᵀ V
        return (w.transpose(1, 2) @ q[1]).transpose(1, 2).reshape(v.shape)  # … Q_A

    @staticmethod
    def _from_eig(block: dict[str, Any], w: Tensor) -> Tensor:
        q = block["Q"]
        if len(q) == 1:
            return q[0] @ w
        d_out, d_in = block["dims"]
        v = (q[0] @ w.reshape(d_out, -1)).reshape(d_out, d_in, -1)  # Q_G W
        return (v.transpose(1, 2) @ q[1].T).transpose(1, 2).reshape(w.shape)  # … Q_Aᵀ

    def _spectral(self, v: Tensor, scale: Scale | None, delta: Tensor | None, power: float) -> Tensor:
        """Apply ``K^power`` (or ``GGN₀`` when ``scale`` is None) blockwise to ``v (P, k)``."""
        v64 = v.to(torch.float64)
        out = []
        for block in self._blocks():
            part = v64[block["offset"]:block["offset"] + block["size"]]
            eig = self._eigvals(block)
            if scale is not None:
                eig = as_float64(scale) * eig + delta[block["offset"]].to(torch.float64)
            out.append(self._from_eig(block, (eig**power).unsqueeze(1) * self._to_eig(block, part)))
        return torch.cat(out).to(v.dtype)

    def curvature_matmul(self, v: Tensor) -> Tensor:
        return self._spectral(v, None, None, 1.0)

    def covariance_matmul(self, v: Tensor, scale: Scale, delta: Tensor) -> Tensor:
        return self._spectral(v, scale, delta, -1.0)

    def output_covariance(self, terms: list[JacobianTerm], scale: Scale, delta: Tensor,
                          diagonal: bool = False) -> Tensor:
        out = None
        for block, term in zip(self._blocks(), terms):
            inv = 1 / (as_float64(scale) * self._eigvals(block) + delta[block["offset"]].to(torch.float64))
            g = term.g.to(torch.float64)
            if term.a is not None:
                # J[b, c] = g ⊗ a  ⇒  (Q_G ⊗ Q_A)ᵀ J = (Q_Gᵀ g) ⊗ (Q_Aᵀ a): no Kronecker products formed
                mg = g @ block["Q"][0]
                w = ((term.a.to(torch.float64) @ block["Q"][1]) ** 2) @ inv.reshape(block["dims"]).T
                w = w.unsqueeze(1)  # (B, 1, d_out): Σ_j (Q_Aᵀ a)_j² / E_ij
            else:
                b, n_out, size = g.shape
                mg = self._to_eig(block, g.reshape(-1, size).T).T.reshape(b, n_out, size)
                w = inv
            part = (mg**2 * w).sum(-1) if diagonal else (mg * w) @ mg.mT
            out = part if out is None else out + part
        return out.to(terms[0].g.dtype)

    def logdet(self, scale: Scale, delta: Tensor) -> Tensor:
        total = 0.0
        for block in self._blocks():
            eig = as_float64(scale) * self._eigvals(block) + delta[block["offset"]].to(torch.float64)
            total = total + eig.log().sum()
        return total

    def spectrum(self, kind: str) -> Tensor | None:
        # δ is constant on each block, whose eigenvalues sit at the block's weights
        if kind == "parameter":
            return None
        return torch.cat([self._eigvals(b) for b in self._blocks()]).to(torch.float64)

    def variance(self, scale: Scale, delta: Tensor) -> Tensor:
        out = []
        for block in self._blocks():
            inv = 1 / (as_float64(scale) * self._eigvals(block) + delta[block["offset"]].to(torch.float64))
            q = block["Q"]
            if len(q) == 1:
                out.append(q[0] ** 2 @ inv)
            else:
                out.append((q[0] ** 2 @ inv.reshape(block["dims"]) @ (q[1] ** 2).T).reshape(-1))
        return torch.cat(out).to(delta.dtype)

    def sample(self, n: int, scale: Scale, delta: Tensor, generator: torch.Generator | None) -> Tensor:
        size = sum(b["size"] for b in self._blocks())
        z = torch.randn(size, n, generator=generator, dtype=torch.float64, device=delta.device)
        return self._spectral(z, scale, delta, -0.5).T.to(delta.dtype)

    def state_dict(self) -> dict[str, Any]:
        keep = ("name", "factors", "coef", "offset", "size")
        return {"blocks": [{k: b[k] for k in keep} for b in self._blocks()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        blocks = [{"name": b["name"], "factors": [f.to(torch.float64) for f in b["factors"]],
                   "coef": float(b["coef"])} for b in state["blocks"]]
        self._set(blocks, tuple(b["offset"] for b in state["blocks"]),
                  tuple(b["size"] for b in state["blocks"]))
