"""Laplace approximation for constrained parameters through a change of variables.

Each coordinate ``x_i`` of the constrained parameter is ``x_i = g_i(u_i)`` for an
unconstrained ``u_i ∈ ℝ``: identity, ``low + exp(u)`` (positive, "log" transform)
or ``low + (high − low) σ(u)`` (interval, scaled logit). The density in u-space
carries the Jacobian correction

    log f_u(u) = log f(g(u)) + Σ_i log |g_i'(u_i)|,

so that ∫ f_u du = ∫ f dx; the Gaussian Laplace approximation is made there and
mapped back: samples ``g(u)``, exact marginal densities of the back-transformed
Gaussian ``q(x_i) = N(g_i⁻¹(x_i); m_i, s_i²) / |g_i'(g_i⁻¹(x_i))|`` and quantiles.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor
from torch.nn.functional import softplus

from .explicit import LaplaceApproximation, LogDensity, fit_laplace

__all__ = [
    "Transform",
    "IdentityTransform",
    "LogTransform",
    "LogitTransform",
    "ParameterTransform",
    "ConstrainedLaplace",
    "fit_constrained_laplace",
]


class Transform(ABC):
    """Elementwise bijection ``x = g(u)`` from ℝ onto a support interval ``(low, high)``."""

    low: float = -math.inf
    high: float = math.inf

    @abstractmethod
    def to_constrained(self, u: Tensor) -> Tensor:
        """x = g(u) elementwise."""

    @abstractmethod
    def to_unconstrained(self, x: Tensor) -> Tensor:
        """u = g⁻¹(x) elementwise."""

    @abstractmethod
    def log_abs_det_jacobian(self, u: Tensor) -> Tensor:
        """``log |g'(u)|`` elementwise."""

    def in_support(self, x: Tensor) -> Tensor:
        """Boolean mask of x strictly inside (low, high)."""
        return (x > self.low) & (x < self.high)


class IdentityTransform(Transform):
    """x = u on ℝ."""

    def to_constrained(self, u: Tensor) -> Tensor:
        return u

    def to_unconstrained(self, x: Tensor) -> Tensor:
        return x

    def log_abs_det_jacobian(self, u: Tensor) -> Tensor:
        return torch.zeros_like(u)

    def __repr__(self) -> str:
        return "IdentityTransform()"


class LogTransform(Transform):
    """x = low + exp(u) on (low, ∞); u = log(x − low). Default low = 0 (positive parameters)."""

    def __init__(self, low: float = 0.0):
        if not math.isfinite(low):
            raise ValueError(f"low must be finite, got {low}")
        self.low = float(low)

    def to_constrained(self, u: Tensor) -> Tensor:
        return self.low + torch.exp(u)

    def to_unconstrained(self, x: Tensor) -> Tensor:
        return torch.log(x - self.low)

    def log_abs_det_jacobian(self, u: Tensor) -> Tensor:
        return u

    def __repr__(self) -> str:
        return f"LogTransform(low={self.low})"


class LogitTransform(Transform):
    """x = low + (high − low) σ(u) on (low, high); u = log((x − low) / (high − x))."""

    def __init__(self, low: float, high: float):
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"need finite low < high, got low={low}, high={high}")
        self.low, self.high = float(low), float(high)

    def to_constrained(self, u: Tensor) -> Tensor:
        return self.low + (self.high - self.low) * torch.sigmoid(u)

    def to_unconstrained(self, x: Tensor) -> Tensor:
        return torch.log(x - self.low) - torch.log(self.high - x)

    def log_abs_det_jacobian(self, u: Tensor) -> Tensor:
        # log[(high − low) σ(u) σ(−u)]
        return math.log(self.high - self.low) - softplus(u) - softplus(-u)

    def __repr__(self) -> str:
        return f"LogitTransform(low={self.low}, high={self.high})"


class ParameterTransform:
    """One :class:`Transform` per coordinate of a parameter vector; acts on (..., d)."""

    def __init__(self, transforms: Sequence[Transform]):
        transforms = list(transforms)
        if not transforms or not all(isinstance(t, Transform) for t in transforms):
            raise TypeError("transforms must be a non-empty sequence of Transform objects")
        self.transforms = transforms

    @property
    def dim(self) -> int:
        return len(self.transforms)

    def _check(self, v: Tensor, name: str) -> None:
        if not isinstance(v, Tensor) or not v.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor")
        if v.dim() == 0 or v.shape[-1] != self.dim:
            raise ValueError(f"{name} must have shape (..., {self.dim}), got {tuple(v.shape)}")

    def _apply(self, method: str, v: Tensor) -> Tensor:
        return torch.stack([getattr(t, method)(v[..., i]) for i, t in enumerate(self.transforms)], -1)

    def to_constrained(self, u: Tensor) -> Tensor:
        """x = g(u), (..., d)."""
        self._check(u, "u")
        return self._apply("to_constrained", u)

    def to_unconstrained(self, x: Tensor) -> Tensor:
        """u = g⁻¹(x), (..., d); ValueError if x is outside the support."""
        self._check(x, "x")
        if not self.in_support(x).all():
            raise ValueError("x must lie strictly inside the support of every transform")
        return self._apply("to_unconstrained", x)

    def log_abs_det_jacobian(self, u: Tensor) -> Tensor:
        """``Σ_i log |g_i'(u_i)|``, (...)."""
        self._check(u, "u")
        return self._apply("log_abs_det_jacobian", u).sum(-1)

    def in_support(self, x: Tensor) -> Tensor:
        """Mask (..., d) of coordinates inside their supports."""
        self._check(x, "x")
        return self._apply("in_support", x)

    def unconstrained_log_density(self, log_density: LogDensity) -> LogDensity:
        """u ↦ log f(g(u)) + log|det ∂g/∂u|: the density of u when x ~ f."""

        def log_density_u(u: Tensor) -> Tensor:
            return log_density(self.to_constrained(u)) + self.log_abs_det_jacobian(u)

        return log_density_u

    def __repr__(self) -> str:
        return f"ParameterTransform({self.transforms})"


@dataclass(frozen=True)
class ConstrainedLaplace:
    """Gaussian Laplace approximation in u-space, pushed through ``x = g(u)``.

    ``laplace`` is the approximation of the Jacobian-corrected density in u-space; its
    ``log_evidence`` estimates log ∫ f(x) dx.
    """

    laplace: LaplaceApproximation
    transform: ParameterTransform

    @property
    def mode(self) -> Tensor:
        """g(û): the image of the u-space mode (not the mode of f in x-space), (d,)."""
        return self.transform.to_constrained(self.laplace.mode)

    @property
    def log_evidence(self) -> Tensor:
        return self.laplace.log_evidence

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Back-transformed samples g(u), u ~ N(û, A⁻¹): (num_samples, d), inside the support."""
        return self.transform.to_constrained(self.laplace.sample(num_samples, generator))

    def marginal_log_prob(self, index: int, x: Tensor) -> Tensor:
        """log q(x_index = x) of the back-transformed marginal; −inf outside the support."""
        t = self._transform(index)
        inside = t.in_support(x)
        x_safe = torch.where(inside, x, torch.full_like(x, self.mode[index].item()))
        u = t.to_unconstrained(x_safe)
        log_q = self.laplace.marginal_log_prob(index, u) - t.log_abs_det_jacobian(u)
        return torch.where(inside, log_q, torch.full_like(log_q, -math.inf))

    def marginal_cdf(self, index: int, x: Tensor) -> Tensor:
        """q(x_index ≤ x): 0 below and 1 above the support (g is increasing)."""
        t = self._transform(index)
        x_safe = x.clamp(t.low, t.high)
        inside = t.in_support(x_safe)
        x_mid = torch.where(inside, x_safe, torch.full_like(x, self.mode[index].item()))
        cdf = self.laplace.marginal_cdf(index, t.to_unconstrained(x_mid))
        return torch.where(inside, cdf, (x_safe >= t.high).to(cdf.dtype))

    def marginal_quantile(self, index: int, q: Tensor) -> Tensor:
        """Quantiles g(m + s Φ⁻¹(q)) of the back-transformed marginal, q ∈ (0, 1)."""
        t = self._transform(index)
        u = self.laplace._marginal(index).icdf(q)
        return t.to_constrained(u)

    def _transform(self, index: int) -> Transform:
        if not 0 <= index < self.transform.dim:
            raise ValueError(f"index must lie in [0, {self.transform.dim}), got {index}")
        return self.transform.transforms[index]


def fit_constrained_laplace(
    log_density: LogDensity,
    x0: Tensor,
    transform: ParameterTransform,
    method: str = "newton",
    **optimizer_kwargs,
) -> ConstrainedLaplace:
    """Laplace approximation of ``f(x)`` on a constrained space via ``x = g(u)``.

    Args:
        log_density: x (d,) ↦ log f(x) (), evaluated only inside the support.
        x0: starting point (d,) strictly inside the support.
        transform: per-coordinate transforms g.
        method, optimizer_kwargs: as in :func:`~bayes_dip.laplace.explicit.fit_laplace`.
    """
    if not isinstance(transform, ParameterTransform):
        raise TypeError("transform must be a ParameterTransform")
    u0 = transform.to_unconstrained(x0)
    laplace = fit_laplace(transform.unconstrained_log_density(log_density), u0, method, **optimizer_kwargs)
    return ConstrainedLaplace(laplace, transform)
