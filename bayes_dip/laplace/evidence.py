"""Laplace log marginal likelihood, the linearised-model mode, and MacKay's fixed-point updates.

With ``K = s GGN₀ + D``, ``D = diag(δ)`` (prior ``N(μ₀, D⁻¹)``) and weights ``θ``,

    log p(D) ≈ log p(D | θ) − ½ (θ − μ₀)ᵀ D (θ − μ₀) + ½ log|D| − ½ log|K|

(the ``(2π)^{P/2}`` factors cancel). At ``θ = θ̂`` this is the usual Laplace evidence
(Immer et al. 2021). For Gaussian likelihoods the linearised model
``f̂ + J (θ − θ̂)`` is conjugate: its log-likelihood is the quadratic
``log p(D | θ̂) + s (g₀ᵀ Δ − ½ Δᵀ GGN₀ Δ)`` in ``Δ = θ − θ̂`` (``g₀ = ∇_θ log p`` at unit
noise), its mode is ``θ* = θ̂ + K⁻¹ (s g₀ − D (θ̂ − μ₀))``, and the formula at ``θ*`` is
its exact evidence (Antorán et al. 2022, "recommendation 1"). Because ``θ*`` maximises
the joint density, the gradient of the evidence with ``θ*`` held fixed is the full gradient.

MacKay (1992): with ``γ_j = 1 − δ_j Σ_jj`` (effective number of well-determined weights;
``Σ_j γ_j = Σ_i λ_i / (λ_i + α)`` for a scalar prior), the fixed point of
``α_g = Σ_{j∈g} γ_j / Σ_{j∈g} (θ_j − μ₀_j)²`` and ``σ² = SSE / (N − Σ γ)`` is a stationary
point of the evidence (exactly, for the linearised model at ``θ*``).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .posterior.base import Scale, Structure
from .priors import prior_precision_kind

__all__ = ["log_marginal_likelihood", "linearized_step", "linearized_sse", "mackay_prior_precision"]


def log_marginal_likelihood(log_lik: Tensor, theta_dev: Tensor, delta: Tensor, logdet_precision: Tensor) -> Tensor:
    """``log p(D|θ) − ½ Σ δ (θ − μ₀)² + ½ Σ log δ − ½ log|K|`` in float64.

    Args:
        log_lik: ``log p(D | θ)``; theta_dev: ``θ − μ₀ (P,)``; delta: ``δ (P,)``;
        logdet_precision: ``log|K|``.
    """
    d = delta.to(torch.float64)
    dev = theta_dev.to(torch.float64)
    return (log_lik.to(torch.float64) - 0.5 * (d * dev**2).sum() + 0.5 * d.log().sum()
            - 0.5 * logdet_precision.to(torch.float64))


def linearized_step(structure: Structure, grad0: Tensor, theta_dev: Tensor, scale: Scale,
                    delta: Tensor) -> Tensor:
    """``Δ* = K⁻¹ (s g₀ − δ ⊙ (θ̂ − μ₀))``: the step from ``θ̂`` to the linearised model's mode (detached)."""
    with torch.no_grad():
        s = scale.detach() if isinstance(scale, Tensor) else scale
        d = delta.detach()
        rhs = (s * grad0 - d.to(theta_dev.dtype) * theta_dev).unsqueeze(1)
        return structure.covariance_matmul(rhs, s, d).squeeze(1)


def linearized_sse(structure: Structure, sse: Tensor, grad0: Tensor, step: Tensor) -> Tensor:
    """Sum of squared residuals of the linearised model at ``θ̂ + Δ``: ``SSE − 2 g₀ᵀΔ + Δᵀ GGN₀ Δ``."""
    with torch.no_grad():
        quad = step @ structure.curvature_matmul(step.unsqueeze(1)).squeeze(1)
        return sse - 2 * (grad0.to(sse.dtype) @ step.to(sse.dtype)) + quad.to(sse.dtype)


def mackay_prior_precision(prior_precision: Tensor, gamma: Tensor, theta_dev: Tensor,
                           sizes: Sequence[int]) -> Tensor:
    """MacKay's update ``α = γ / ‖θ − μ₀‖²`` per scalar / group / weight, in the shape of ``prior_precision``.

    Args:
        prior_precision: current precision (its shape sets the grouping);
        gamma: ``γ_j = 1 − δ_j Σ_jj (P,)``; theta_dev: ``θ − μ₀ (P,)``; sizes: group sizes.
    """
    kind = prior_precision_kind(prior_precision, len(sizes), sum(sizes))
    sq = theta_dev.to(gamma.dtype) ** 2
    if kind == "scalar":
        new = gamma.sum() / sq.sum()
    elif kind == "group":
        new = torch.stack([g.sum() / q.sum() for g, q in zip(gamma.split(list(sizes)), sq.split(list(sizes)))])
    else:
        new = gamma / sq
    return new.reshape(prior_precision.shape).to(prior_precision.dtype)
