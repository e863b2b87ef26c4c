"""Posterior-precision structures: ``K = s · GGN₀ + diag(δ)`` and what a Laplace posterior needs.

A structure fits (an approximation of) the unit-noise curvature ``GGN₀`` once and then,
for any curvature scale ``s`` (``1/σ²`` or 1) and per-weight prior precision ``δ (P,)``,
applies ``K``, solves with it (``Σ = K⁻¹``), returns ``log|K|`` (differentiable in ``s`` and
``δ``), the marginal variances ``diag Σ`` and samples from ``N(0, Σ)``. Blocks of vectors
are ``(P, k)``; results come back in the dtype of the input block.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..curvature.layers import JacobianTerm
from ..curvature.output import OutputCurvature
from ..batches import Batches
from ..functional import ModelFunction

__all__ = ["Structure", "Scale"]

Scale = Tensor | float


class Structure(ABC):
    """Base class of the curvature structures (``full``, ``diag``, ``kfac``, ``lowrank``, ``matrix_free``)."""

    name: ClassVar[str]
    #: False where ``δ`` must be constant on each parameter tensor (Kronecker blocks).
    supports_parameter_prior: ClassVar[bool] = True

    @abstractmethod
    def fit(self, fn: ModelFunction, curv: OutputCurvature, batches: Batches, theta: Tensor,
            progress: bool = False) -> None:
        """Compute the curvature at ``theta`` over the data."""

    @abstractmethod
    def curvature_matmul(self, v: Tensor) -> Tensor:
        """``GGN₀ v`` with the structure's approximation of the unit-noise GGN."""

    @abstractmethod
    def covariance_matmul(self, v: Tensor, scale: Scale, delta: Tensor) -> Tensor:
        """``Σ v = K⁻¹ v``."""

    @abstractmethod
    def logdet(self, scale: Scale, delta: Tensor) -> Tensor:
        """``log|K|`` in float64, differentiable in ``scale`` and ``delta``."""

    @abstractmethod
    def variance(self, scale: Scale, delta: Tensor) -> Tensor:
        """Marginal posterior variances ``diag Σ`` ``(P,)``."""

    @abstractmethod
    def sample(self, n: int, scale: Scale, delta: Tensor, generator: torch.Generator | None) -> Tensor:
        """``n`` draws from ``N(0, Σ)`` -> ``(n, P)``."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Tensors of the fitted curvature."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def output_covariance(self, terms: list[JacobianTerm], scale: Scale, delta: Tensor,
                          diagonal: bool = False) -> Tensor:
        """``J Σ Jᵀ`` per example ``(B, n_out, n_out)`` (or its diagonal ``(B, n_out)``) from the
        per-parameter-tensor Jacobian terms (together ``J (B, n_out, P)``)."""
        jac = torch.cat([t.dense() for t in terms], 2)
        b, n_out, n = jac.shape
        sj = self.covariance_matmul(jac.reshape(-1, n).T, scale, delta).T.reshape(b, n_out, n)
        return (jac * sj).sum(-1) if diagonal else jac @ sj.mT

    def spectrum(self, kind: str) -> Tensor | None:
        """Eigenvalues ``λ (P,)`` of ``GGN₀`` (float64), ordered so that ``log|s GGN₀ + diag(δ)| =
        Σ_i log(s λ_i + δ_i)`` for every per-weight ``δ`` expanded from a prior precision of
        ``kind`` (``"scalar" | "group" | "parameter"``); ``None`` where there is no such spectrum.
        With it the evidence and its gradient in ``δ`` cost ``O(P)`` without autograd
        (``Laplace.optimize_prior_precision("marglik")``)."""
        return None

    def precision_matmul(self, v: Tensor, scale: Scale, delta: Tensor) -> Tensor:
        """``K v = s GGN₀ v + δ ⊙ v``."""
        return scale * self.curvature_matmul(v) + delta.to(v.dtype).unsqueeze(1) * v

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def as_number(x: Scale) -> float:
    """A scale as a plain (detached) float."""
    return float(x.detach()) if isinstance(x, Tensor) else float(x)


def as_float64(x: Scale) -> Tensor | float:
    """Float64 view of a scale or prior tensor (numbers stay numbers)."""
    return x.to(torch.float64) if isinstance(x, Tensor) else float(x)
