"""Textbook Laplace approximation of an explicit (unnormalised) log density.

For ``f(θ)`` known up to nothing (e.g. likelihood × prior), find the mode ``θ̂``
(damped Newton or gradient ascent), take ``A = −∇² log f(θ̂)`` by autograd and use

    q(θ) = N(θ̂, A⁻¹),   log ∫ f ≈ log f(θ̂) + d/2 log 2π − ½ log|A|.

``log_density`` is any callable mapping a parameter vector ``(d,)`` to a scalar
tensor, differentiable by torch autograd. Work in float64: the Cholesky factor,
log-determinant and evidence are always computed in float64.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..checks import check_choice

__all__ = [
    "LogDensity",
    "MAPResult",
    "LaplaceApproximation",
    "gradient_ascent_map",
    "newton_map",
    "log_density_hessian",
    "laplace_at_mode",
    "fit_laplace",
]

LogDensity = Callable[[Tensor], Tensor]
_METHODS = ("newton", "gradient")


@dataclass(frozen=True)
class MAPResult:
    """Outcome of a mode search: ``theta`` (d,), ``log_density`` (), last gradient and step norms."""

    theta: Tensor
    log_density: Tensor
    grad_norm: float
    step_norm: float
    iterations: int
    converged: bool


def _check_theta(theta: Tensor, name: str) -> None:
    if not isinstance(theta, Tensor) or not theta.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor")
    if theta.dim() != 1 or theta.numel() == 0:
        raise ValueError(f"{name} must have shape (d,) with d >= 1, got {tuple(theta.shape)}")
    if not torch.isfinite(theta).all():
        raise ValueError(f"{name} must be finite")


def _check_tolerances(grad_tol: float, step_tol: float, max_iter: int) -> None:
    if not grad_tol > 0:
        raise ValueError(f"grad_tol must be > 0, got {grad_tol}")
    if not step_tol > 0:
        raise ValueError(f"step_tol must be > 0, got {step_tol}")
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")


def _value_and_grad(log_density: LogDensity, theta: Tensor, where: str) -> tuple[Tensor, Tensor]:
    theta = theta.detach().requires_grad_(True)
    value = log_density(theta)
    if not isinstance(value, Tensor) or value.numel() != 1:
        raise ValueError("log_density must return a scalar tensor")
    value = value.reshape(())
    if not torch.isfinite(value):
        raise ValueError(f"log_density is not finite ({value.item()}) at {where}")
    (grad,) = torch.autograd.grad(value, theta, allow_unused=True)
    if grad is None:
        raise ValueError("log_density does not depend on theta (no gradient)")
    if not torch.isfinite(grad).all():
        raise ValueError(f"gradient of log_density is not finite at {where}")
    return value.detach(), grad.detach()


def log_density_hessian(log_density: LogDensity, theta: Tensor) -> Tensor:
    """Hessian ``∇² log f(θ)`` by autograd, symmetrised, shape (d, d)."""
    _check_theta(theta, "theta")
    hess = torch.autograd.functional.hessian(log_density, theta.detach())
    hess = hess.reshape(theta.numel(), theta.numel())
    if not torch.isfinite(hess).all():
        raise ValueError("Hessian of log_density is not finite")
    return 0.5 * (hess + hess.T)


def gradient_ascent_map(
    log_density: LogDensity,
    theta0: Tensor,
    lr: float = 1e-2,
    grad_tol: float = 1e-6,
    step_tol: float = 1e-10,
    max_iter: int = 10_000,
    progress: bool = False,
) -> MAPResult:
    """Mode of ``log_density`` by gradient ascent ``θ ← θ + lr ∇ log f(θ)``.

    Stops when ``‖∇ log f‖ ≤ grad_tol`` and ``‖step‖ ≤ step_tol``, or after ``max_iter`` steps.
    """
    _check_theta(theta0, "theta0")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    _check_tolerances(grad_tol, step_tol, max_iter)
    theta = theta0.detach().clone()
    value, grad = _value_and_grad(log_density, theta, "theta0")
    grad_norm, step_norm = grad.norm().item(), math.inf
    for it in tqdm(range(1, max_iter + 1), disable=not progress, desc="gradient ascent"):
        step = lr * grad
        theta = theta + step
        step_norm = step.norm().item()
        value, grad = _value_and_grad(log_density, theta, f"gradient-ascent iterate {it} (try a smaller lr)")
        grad_norm = grad.norm().item()
        if grad_norm <= grad_tol and step_norm <= step_tol:
            return MAPResult(theta, value, grad_norm, step_norm, it, True)
    return MAPResult(theta, value, grad_norm, step_norm, max_iter, False)


def newton_map(
    log_density: LogDensity,
    theta0: Tensor,
    alpha: float = 1.0,
    grad_tol: float = 1e-8,
    step_tol: float = 1e-10,
    max_iter: int = 100,
    progress: bool = False,
) -> MAPResult:
    """Mode of ``log_density`` by damped Newton ``θ ← θ + α (−∇² log f)⁻¹ ∇ log f``.

    ``α ∈ (0, 1]``. Every iterate must lie where ``−∇² log f`` is positive definite
    (a concave region), else ValueError. Stops when ``‖∇ log f‖ ≤ grad_tol`` and
    ``‖step‖ ≤ step_tol``, or after ``max_iter`` steps.
    """
    _check_theta(theta0, "theta0")
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must lie in (0, 1], got {alpha}")
    _check_tolerances(grad_tol, step_tol, max_iter)
    theta = theta0.detach().clone()
    value, grad = _value_and_grad(log_density, theta, "theta0")
    grad_norm, step_norm = grad.norm().item(), math.inf
    for it in tqdm(range(1, max_iter + 1), disable=not progress, desc="Newton"):
        neg_hess = -log_density_hessian(log_density, theta)
        chol, info = torch.linalg.cholesky_ex(neg_hess.double())
        if info.item() != 0:
            raise ValueError(
                f"−∇² log_density is not positive definite at Newton iterate {it - 1}: Newton needs a "
                "concave region; start closer to the mode or use gradient_ascent_map"
            )
        step = alpha * torch.cholesky_solve(grad.double().unsqueeze(-1), chol).squeeze(-1).to(theta.dtype)
        theta = theta + step
        step_norm = step.norm().item()
        value, grad = _value_and_grad(log_density, theta, f"Newton iterate {it} (try a smaller alpha)")
        grad_norm = grad.norm().item()
        if grad_norm <= grad_tol and step_norm <= step_tol:
            return MAPResult(theta, value, grad_norm, step_norm, it, True)
    return MAPResult(theta, value, grad_norm, step_norm, max_iter, False)


@dataclass(frozen=True)
class LaplaceApproximation:
    """Gaussian ``q(θ) = N(mode, precision⁻¹)`` from a Laplace approximation.

    Attributes:
        mode: θ̂, (d,).
        precision: A = −∇² log f(θ̂), (d, d).
        log_density_at_mode: log f(θ̂), () float64.
        precision_cholesky: lower Cholesky factor L of A (A = L Lᵀ), (d, d) float64.
        map_result: the mode search that produced ``mode`` (None if the mode was given).
    """

    mode: Tensor
    precision: Tensor
    log_density_at_mode: Tensor
    precision_cholesky: Tensor
    map_result: MAPResult | None = None

    @property
    def dim(self) -> int:
        return self.mode.numel()

    @property
    def covariance(self) -> Tensor:
        """A⁻¹, (d, d)."""
        return torch.cholesky_inverse(self.precision_cholesky).to(self.mode.dtype)

    @property
    def marginal_std(self) -> Tensor:
        """Standard deviations sqrt(diag A⁻¹), (d,)."""
        return torch.diagonal(self.covariance).sqrt()

    @property
    def log_det_precision(self) -> Tensor:
        """log|A| in float64, ()."""
        return 2.0 * torch.diagonal(self.precision_cholesky).log().sum()

    @property
    def log_evidence(self) -> Tensor:
        """Laplace estimate of log ∫ f(θ) dθ = log f(θ̂) + d/2 log 2π − ½ log|A|, float64 ()."""
        return self.log_density_at_mode + 0.5 * self.dim * math.log(2 * math.pi) - 0.5 * self.log_det_precision

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Draws θ = θ̂ + L⁻ᵀ z, z ~ N(0, I): shape (num_samples, d)."""
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        z = torch.randn(num_samples, self.dim, generator=generator, dtype=torch.float64, device=self.mode.device)
        delta = torch.linalg.solve_triangular(self.precision_cholesky.T, z.T, upper=True).T
        return self.mode + delta.to(self.mode.dtype)

    def log_prob(self, theta: Tensor) -> Tensor:
        """log q(θ) for θ of shape (..., d): shape (...)."""
        if theta.shape[-1:] != self.mode.shape:
            raise ValueError(f"theta must have shape (..., {self.dim}), got {tuple(theta.shape)}")
        delta = (theta - self.mode).double()
        white = delta @ self.precision_cholesky  # Lᵀ δ as row vectors
        return (-0.5 * (white**2).sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)
                + 0.5 * self.log_det_precision)

    def _marginal(self, index: int) -> torch.distributions.Normal:
        if not 0 <= index < self.dim:
            raise ValueError(f"index must lie in [0, {self.dim}), got {index}")
        return torch.distributions.Normal(self.mode[index], self.marginal_std[index])

    def marginal_log_prob(self, index: int, x: Tensor) -> Tensor:
        """log density of the Gaussian marginal of θ_index at x (any shape)."""
        return self._marginal(index).log_prob(x)

    def marginal_cdf(self, index: int, x: Tensor) -> Tensor:
        """q(θ_index ≤ x) for x of any shape."""
        return self._marginal(index).cdf(x)


def laplace_at_mode(log_density: LogDensity, mode: Tensor, map_result: MAPResult | None = None) -> LaplaceApproximation:
    """Laplace approximation around a given mode (no search).

    Raises ValueError if log f(mode) is not finite or ``A = −∇² log f(mode)`` is not
    positive definite (then ``mode`` is not a strict local maximum).
    """
    _check_theta(mode, "mode")
    value, _ = _value_and_grad(log_density, mode, "the mode")
    precision = -log_density_hessian(log_density, mode)
    chol, info = torch.linalg.cholesky_ex(precision.double())
    if info.item() != 0:
        min_eig = torch.linalg.eigvalsh(precision.double()).min().item()
        raise ValueError(
            "precision A = −∇² log_density(mode) is not positive definite "
            f"(smallest eigenvalue {min_eig:.3e}): the mode is not a strict local maximum"
        )
    return LaplaceApproximation(mode.detach().clone(), precision, value.double(), chol, map_result)


def fit_laplace(
    log_density: LogDensity,
    theta0: Tensor,
    method: str = "newton",
    **optimizer_kwargs,
) -> LaplaceApproximation:
    """Find the mode from ``theta0`` and build the Laplace approximation there.

    Args:
        log_density: θ (d,) ↦ log f(θ) ().
        theta0: starting point (d,).
        method: ``"newton"`` (:func:`newton_map`) or ``"gradient"`` (:func:`gradient_ascent_map`).
        optimizer_kwargs: passed to the optimiser (alpha / lr, grad_tol, step_tol, max_iter, progress).
    Warns (RuntimeWarning) if the mode search did not meet its tolerances.
    """
    check_choice(method, "method", _METHODS)
    search = newton_map if method == "newton" else gradient_ascent_map
    result = search(log_density, theta0, **optimizer_kwargs)
    if not result.converged:
        warnings.warn(
            f"{method} mode search stopped after {result.iterations} iterations without meeting its "
            f"tolerances (|grad| = {result.grad_norm:.3e}, |step| = {result.step_norm:.3e})",
            RuntimeWarning,
            stacklevel=2,
        )
    return laplace_at_mode(log_density, result.theta, result)
