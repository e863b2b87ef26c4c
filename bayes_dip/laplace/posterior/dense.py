"""Full and diagonal GGN posteriors (dense in float64)."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..curvature.dense import dense_ggn
from ..curvature.output import OutputCurvature
from ..data import Batches
from ..functional import ModelFunction
from .base import Scale, Structure, as_float64

__all__ = ["Full", "Diag"]


def _require(tensor: Tensor | None, what: str) -> Tensor:
    if tensor is None:
        raise RuntimeError(f"{what} posterior is not fitted: call fit() first")
    return tensor


class Full(Structure):
    """Full ``P × P`` GGN; ``K`` factorised by Cholesky (cached while ``s`` and ``δ`` are unchanged)."""

    name = "full"

    def __init__(self) -> None:
        self.ggn: Tensor | None = None
        self._cache: tuple[float, Tensor, Tensor] | None = None

    def fit(self, fn: ModelFunction, curv: OutputCurvature, batches: Batches, theta: Tensor,
            progress: bool = False) -> None:
        self.ggn = dense_ggn(fn, curv, batches, theta, diagonal=False, progress=progress)
        self._cache = None

    def _cholesky(self, scale: Scale, delta: Tensor) -> Tensor:
        ggn = _require(self.ggn, "full")
        tracked = (isinstance(scale, Tensor) and scale.requires_grad) or delta.requires_grad
        if not tracked and self._cache is not None:
            s, d, chol = self._cache
            if s == float(scale) and torch.equal(d, delta):
                return chol
        prec = as_float64(scale) * ggn + torch.diag(delta.to(torch.float64))
        chol, info = torch.linalg.cholesky_ex(prec)
        if int(info) != 0:
            raise ValueError("posterior precision is not positive definite (Cholesky failed); "
                             "increase the prior precision")
        if not tracked:
            self._cache = (float(scale), delta.detach().clone(), chol)
        return chol

    def curvature_matmul(self, v: Tensor) -> Tensor:
        return (_require(self.ggn, "full") @ v.to(torch.float64)).to(v.dtype)

    def covariance_matmul(self, v: Tensor, scale: Scale, delta: Tensor) -> Tensor:
        chol = self._cholesky(scale, delta)
        return torch.cholesky_solve(v.to(torch.float64), chol).to(v.dtype)

    def logdet(self, scale: Scale, delta: Tensor) -> Tensor:
        return 2 * self._cholesky(scale, delta).diagonal().log().sum()

    def variance(self, scale: Scale, delta: Tensor) -> Tensor:
        return torch.cholesky_inverse(self._cholesky(scale, delta)).diagonal().to(delta.dtype)

    def covariance(self, scale: Scale, delta: Tensor) -> Tensor:
        """The dense posterior covariance ``Σ (P, P)`` in float64."""
        return torch.cholesky_inverse(self._cholesky(scale, delta))

    def sample(self, n: int, scale: Scale, delta: Tensor, generator: torch.Generator | None) -> Tensor:
        chol = self._cholesky(scale, delta)
        z = torch.randn(chol.shape[0], n, generator=generator, dtype=torch.float64, device=chol.device)
        # K = L Lᵀ  ⇒  L⁻ᵀ z ~ N(0, K⁻¹)
        return torch.linalg.solve_triangular(chol.mT, z, upper=True).T.to(delta.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {"ggn": _require(self.ggn, "full")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ggn = state["ggn"].to(torch.float64)
        self._cache = None


class Diag(Structure):
    """Diagonal of the GGN (exact diagonal, computed from per-example square-root rows)."""

    name = "diag"

    def __init__(self) -> None:
        self.ggn_diag: Tensor | None = None

    def fit(self, fn: ModelFunction, curv: OutputCurvature, batches: Batches, theta: Tensor,
            progress: bool = False) -> None:
        self.ggn_diag = dense_ggn(fn, curv, batches, theta, diagonal=True, progress=progress)

    def _prec(self, scale: Scale, delta: Tensor) -> Tensor:
        return as_float64(scale) * _require(self.ggn_diag, "diag") + delta.to(torch.float64)

    def curvature_matmul(self, v: Tensor) -> Tensor:
        return (_require(self.ggn_diag, "diag").unsqueeze(1) * v.to(torch.float64)).to(v.dtype)

    def covariance_matmul(self, v: Tensor, scale: Scale, delta: Tensor) -> Tensor:
        return (v.to(torch.float64) / self._prec(scale, delta).unsqueeze(1)).to(v.dtype)

    def logdet(self, scale: Scale, delta: Tensor) -> Tensor:
        return self._prec(scale, delta).log().sum()

    def variance(self, scale: Scale, delta: Tensor) -> Tensor:
        return (1 / self._prec(scale, delta)).to(delta.dtype)

    def sample(self, n: int, scale: Scale, delta: Tensor, generator: torch.Generator | None) -> Tensor:
        std = self._prec(scale, delta).rsqrt()
        z = torch.randn(n, std.shape[0], generator=generator, dtype=torch.float64, device=std.device)
        return (z * std).to(delta.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {"ggn_diag": _require(self.ggn_diag, "diag")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ggn_diag = state["ggn_diag"].to(torch.float64)
