"""Output-space curvature for the GGN or the empirical Fisher.

``"ggn"``: ``Λ₀(f)``, the likelihood's unit-noise Hessian of ``−log p(y | f)``.
``"ef"``: ``g gᵀ`` with ``g = ∇_f log p(y | f)`` at unit noise (empirical Fisher); for a
Gaussian its scale is ``1/σ⁴`` instead of ``1/σ²``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...checks import check_choice
from ..likelihoods import Likelihood

__all__ = ["OutputCurvature", "CURVATURES"]

CURVATURES = ("ggn", "ef")


class OutputCurvature:
    """``Λ₀`` of one kind, with a square-root factor; all methods take outputs ``f`` and targets ``y``."""

    def __init__(self, likelihood: Likelihood, kind: str = "ggn"):
        check_choice(kind, "curvature", CURVATURES)
        self.likelihood = likelihood
        self.kind = kind

    def _grad(self, f: Tensor, y: Tensor) -> Tensor:
        with torch.enable_grad():
            f = f.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.likelihood.log_prob(f, y).sum(), f)
        return g

    def factor(self, f: Tensor, y: Tensor) -> Tensor:
        """``L₀ (B or 1, n_out, R)`` with ``Λ₀ = L₀ L₀ᵀ`` per example."""
        if self.kind == "ggn":
            return self.likelihood.hessian_factor(f)
        return self._grad(f, y).reshape(f.shape[0], -1, 1)

    def matmul(self, f: Tensor, y: Tensor, v: Tensor) -> Tensor:
        """``Λ₀ v`` for ``v (k, B, *out)``."""
        if self.kind == "ggn":
            return self.likelihood.hessian_matmul(f, v)
        g = self._grad(f, y)
        dims = tuple(range(2, v.dim()))
        coef = (v * g).sum(dims, keepdim=True) if dims else v * g
        return coef * g

    def factor_matmul(self, f: Tensor, y: Tensor, e: Tensor) -> Tensor:
        """``L₀ e`` for ``e (k, B, R)`` -> ``(k, B, *out)``."""
        if self.kind == "ggn":
            return self.likelihood.factor_matmul(f, e)
        g = self._grad(f, y)
        return e.reshape(e.shape[0], f.shape[0], *([1] * (f.dim() - 1))) * g

    def rank(self, f: Tensor) -> int:
        return self.likelihood.factor_rank(f) if self.kind == "ggn" else 1

    def scale(self, sigma_noise: Tensor | float) -> Tensor | float:
        """Multiplier ``s`` of the unit-noise curvature at noise ``σ``."""
        s = self.likelihood.curvature_scale(sigma_noise)
        return s if self.kind == "ggn" else s * s
