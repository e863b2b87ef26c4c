"""Full and diagonal GGN posteriors (dense in float64)."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..curvature.dense import dense_ggn
from ..curvature.layers import JacobianTerm
from ..curvature.output import OutputCurvature
from ..batches import Batches
from ..functional import ModelFunction
from .base import Scale, Structure, as_float64, as_number

__all__ = ["Full", "Diag"]


def _term_size(term: JacobianTerm) -> int:
    return term.g.shape[2] * (1 if term.a is None else term.a.shape[1])


def _require(tensor: Tensor | None, what: str) -> Tensor:
    if tensor is None:
        raise RuntimeError(f"{what} posterior is not fitted: call fit() first")
    return tensor


class Full(Structure):
    """Full ``P × P`` GGN.

    With an isotropic prior (all ``δ_j`` equal) everything goes through one cached
    eigendecomposition ``GGN₀ = Q diag(λ) Qᵀ``, so evidence optimisation costs ``O(P)`` per
    step; otherwise ``K`` is factorised by Cholesky (cached while ``s`` and ``δ`` are unchanged).
    The eigenvalues alone (:meth:`spectrum`, ~5× cheaper than with eigenvectors) serve the
    closed-form evidence optimisation, and the predictive's square root ``Σ = R Rᵀ`` comes from
    a Cholesky factor unless the eigenvectors are at hand.
    """

    name = "full"

    def __init__(self) -> None:
        self.ggn: Tensor | None = None
        self._cache: tuple[float, Tensor, Tensor] | None = None
        self._root_cache: tuple[float, Tensor, Tensor] | None = None
        self._eig: tuple[Tensor, Tensor] | None = None
        self._evals: Tensor | None = None

    def fit(self, fn: ModelFunction, curv: OutputCurvature, batches: Batches, theta: Tensor,
            progress: bool = False) -> None:
        self._set(dense_ggn(fn, curv, batches, theta, diagonal=False, progress=progress))

    def _set(self, ggn: Tensor) -> None:
        self.ggn, self._cache, self._root_cache, self._eig, self._evals = ggn, None, None, None, None

    def _eigh(self) -> tuple[Tensor, Tensor]:
        if self._eig is None:
            evals, evecs = torch.linalg.eigh(_require(self.ggn, "full"))
            self._eig = (evals.clamp_min(0), evecs)
        return self._eig

    @staticmethod
    def _isotropic(delta: Tensor) -> bool:
        d = delta.detach()
        return bool((d == d[0]).all())

    def _inverse_eigvals(self, scale: Scale, delta: Tensor) -> Tensor:
        """``1 / (s λ + δ)`` for an isotropic ``δ`` (detached)."""
        evals, _ = self._eigh()
        s = as_number(scale)
        return 1 / (s * evals + float(delta.detach()[0]))

    def _cholesky(self, scale: Scale, delta: Tensor) -> Tensor:
        ggn = _require(self.ggn, "full")
        tracked = (isinstance(scale, Tensor) and scale.requires_grad) or delta.requires_grad
        if not tracked and self._cache is not None:
            s, d, chol = self._cache
            if s == as_number(scale) and torch.equal(d, delta):
                return chol
        prec = as_float64(scale) * ggn + torch.diag(delta.to(torch.float64))
        chol, info = torch.linalg.cholesky_ex(prec)
        if int(info) != 0:
            raise ValueError("posterior precision is not positive definite (Cholesky failed); "
                             "increase the prior precision")
        if not tracked:
            self._cache = (as_number(scale), delta.detach().clone(), chol)
        return chol

    def curvature_matmul(self, v: Tensor) -> Tensor:
        return (_require(self.ggn, "full") @ v.to(torch.float64)).to(v.dtype)

    def covariance_matmul(self, v: Tensor, scale: Scale, delta: Tensor) -> Tensor:
        if self._isotropic(delta):
            _, q = self._eigh()
            w = self._inverse_eigvals(scale, delta)
            return (q @ (w.unsqueeze(1) * (q.T @ v.to(torch.float64)))).to(v.dtype)
        chol = self._cholesky(scale, delta)
        return torch.cholesky_solve(v.to(torch.float64), chol).to(v.dtype)

    def _root(self, scale: Scale, delta: Tensor) -> Tensor:
        """``R (P, P)`` with ``Σ = R Rᵀ`` (``Q W^{1/2}`` or ``L⁻ᵀ``), cached for unchanged ``s``, ``δ``."""
        if self._root_cache is not None:
            s, d, root = self._root_cache
            if s == as_number(scale) and torch.equal(d, delta.detach()):
                return root
        if self._eig is not None and self._isotropic(delta):
            _, q = self._eigh()
            root = q * self._inverse_eigvals(scale, delta).sqrt()
        else:
            chol = self._cholesky(as_number(scale), delta.detach())
            eye = torch.eye(chol.shape[0], dtype=chol.dtype, device=chol.device)
            root = torch.linalg.solve_triangular(chol, eye, upper=False).T
        self._root_cache = (as_number(scale), delta.detach().clone(), root)
        return root

    def output_covariance(self, terms: list[JacobianTerm], scale: Scale, delta: Tensor,
                          diagonal: bool = False) -> Tensor:
        root = self._root(scale, delta)
        jr, offset = None, 0
        for term in terms:
            size = _term_size(term)
            r = root[offset:offset + size]
            g = term.g.to(torch.float64)
            if term.a is None:
                part = g @ r
            else:  # J R = g (a ⊗ I)ᵀ R, contracting a first
                d_out, d_in = g.shape[2], term.a.shape[1]
                ar = term.a.to(torch.float64) @ r.reshape(d_out, d_in, -1).transpose(0, 1).reshape(d_in, -1)
                part = g @ ar.reshape(g.shape[0], d_out, -1)
            jr = part if jr is None else jr + part
            offset += size
        out = (jr**2).sum(-1) if diagonal else jr @ jr.mT
        return out.to(terms[0].g.dtype)

    def logdet(self, scale: Scale, delta: Tensor) -> Tensor:
        if not self._isotropic(delta):
            return 2 * self._cholesky(scale, delta).diagonal().log().sum()
        evals, q = self._eigh()
        d0 = delta.detach()[0].to(torch.float64)
        value = (as_float64(scale) * evals + d0).log().sum()
        if not delta.requires_grad:
            return value
        # exact gradient in every δ_j: ∂ log|K| / ∂δ_j = Σ_jj
        var = (q**2) @ self._inverse_eigvals(scale, delta)
        return value + ((delta.to(torch.float64) - delta.detach().to(torch.float64)) * var).sum()

    def spectrum(self, kind: str) -> Tensor | None:
        if kind != "scalar":
            return None
        if self._eig is not None:
            return self._eig[0]
        if self._evals is None:
            self._evals = torch.linalg.eigvalsh(_require(self.ggn, "full")).clamp_min(0)
        return self._evals

    def variance(self, scale: Scale, delta: Tensor) -> Tensor:
        if self._isotropic(delta):
            _, q = self._eigh()
            return ((q**2) @ self._inverse_eigvals(scale, delta)).to(delta.dtype)
        return torch.cholesky_inverse(self._cholesky(scale, delta)).diagonal().to(delta.dtype)

    def sample(self, n: int, scale: Scale, delta: Tensor, generator: torch.Generator | None) -> Tensor:
        ggn = _require(self.ggn, "full")
        z = torch.randn(ggn.shape[0], n, generator=generator, dtype=torch.float64, device=ggn.device)
        if self._isotropic(delta):
            _, q = self._eigh()
            return (q @ (self._inverse_eigvals(scale, delta).sqrt().unsqueeze(1) * z)).T.to(delta.dtype)
        # K = L Lᵀ  ⇒  L⁻ᵀ z ~ N(0, K⁻¹)
        chol = self._cholesky(scale, delta)
        return torch.linalg.solve_triangular(chol.mT, z, upper=True).T.to(delta.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {"ggn": _require(self.ggn, "full")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._set(state["ggn"].to(torch.float64))


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

    def spectrum(self, kind: str) -> Tensor | None:
        return _require(self.ggn_diag, "diag").to(torch.float64)

    def variance(self, scale: Scale, delta: Tensor) -> Tensor:
        return (1 / self._prec(scale, delta)).to(delta.dtype)

    def output_covariance(self, terms: list[JacobianTerm], scale: Scale, delta: Tensor,
                          diagonal: bool = False) -> Tensor:
        var = 1 / self._prec(scale, delta)
        out = None
        for term, v in zip(terms, var.split([_term_size(t) for t in terms])):
            g = term.g.to(torch.float64)
            if term.a is None:
                part = (g**2 * v).sum(-1) if diagonal else (g * v) @ g.mT
            else:
                # J[b, c] = g[b, c] ⊗ a[b]:  Σ_{o,i} g_co v_oi a_i² g_c'o
                w = (term.a.to(torch.float64) ** 2) @ v.reshape(g.shape[2], -1).T  # (B, d_out)
                part = (g**2 * w.unsqueeze(1)).sum(-1) if diagonal else (g * w.unsqueeze(1)) @ g.mT
            out = part if out is None else out + part
        return out.to(terms[0].g.dtype)

    def sample(self, n: int, scale: Scale, delta: Tensor, generator: torch.Generator | None) -> Tensor:
        std = self._prec(scale, delta).rsqrt()
        z = torch.randn(n, std.shape[0], generator=generator, dtype=torch.float64, device=std.device)
        return (z * std).to(delta.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {"ggn_diag": _require(self.ggn_diag, "diag")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ggn_diag = state["ggn_diag"].to(torch.float64)
