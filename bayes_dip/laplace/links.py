"""Predictive link approximations for Gaussian beliefs over classifier logits.

Given a Gaussian belief ``f ~ N(m, S)`` over the logits of one input (from a
linearised Laplace posterior), these return predictive class probabilities
``E[link(f)]``:

- :func:`probit_binary` — ``σ(m / sqrt(1 + π v / 8))`` (MacKay 1992);
- :func:`probit_multiclass` — softmax of per-class scaled logits
  ``m_c / sqrt(1 + π S_cc / 8)`` (the multiclass probit approximation);
- :func:`laplace_bridge` — Dirichlet concentrations matching the Gaussian in the
  softmax basis (Hobbhahn, Kristiadi & Hennig, UAI 2022), with
  :func:`laplace_bridge_predictive` its mean;
- :func:`mc_predictive` — Monte-Carlo average of the link over logit samples.

Shapes: ``f_mean`` is ``(N, C)``; ``f_var`` is either the per-class variances
``(N, C)`` or the full covariances ``(N, C, C)``. The binary functions also take
``f_mean`` of shape ``(N,)`` with ``f_var`` of shape ``(N,)``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..checks import check_choice

__all__ = [
    "probit_binary",
    "probit_multiclass",
    "laplace_bridge",
    "laplace_bridge_predictive",
    "mc_predictive",
]

_LINKS = ("sigmoid", "softmax")


def _check_mean(f_mean: Tensor, *, binary: bool) -> None:
    if not isinstance(f_mean, Tensor) or not f_mean.is_floating_point():
        raise TypeError("f_mean must be a floating-point torch.Tensor")
    if binary:
        if f_mean.dim() not in (1, 2) or (f_mean.dim() == 2 and f_mean.shape[1] != 1):
            raise ValueError(f"f_mean must have shape (N,) or (N, 1) for a binary link, got {tuple(f_mean.shape)}")
    elif f_mean.dim() != 2:
        raise ValueError(f"f_mean must have shape (N, C), got {tuple(f_mean.shape)}")
    if not torch.isfinite(f_mean).all():
        raise ValueError("f_mean must be finite")


def _variances(f_mean: Tensor, f_var: Tensor) -> Tensor:
    """Per-output variances with the shape of ``f_mean`` from ``f_var`` (same shape, or (N, C, C))."""
    if not isinstance(f_var, Tensor) or not f_var.is_floating_point():
        raise TypeError("f_var must be a floating-point torch.Tensor")
    if f_var.shape == f_mean.shape:
        var = f_var
    elif f_mean.dim() == 2 and f_var.shape == (*f_mean.shape, f_mean.shape[1]):
        var = torch.diagonal(f_var, dim1=-2, dim2=-1)
    else:
        raise ValueError(
            f"f_var must have shape {tuple(f_mean.shape)} (variances) or "
            f"{(*f_mean.shape, f_mean.shape[-1])} (covariances), got {tuple(f_var.shape)}"
        )
    if not torch.isfinite(var).all() or (var < 0).any():
        raise ValueError("f_var must have finite, non-negative variances")
    return var


def _covariances(f_mean: Tensor, f_var: Tensor) -> Tensor:
    """Full covariances (N, C, C) from variances (N, C) or covariances (N, C, C)."""
    var = _variances(f_mean, f_var)
    if f_var.dim() == 3:
        if not torch.isfinite(f_var).all():
            raise ValueError("f_var must be finite")
        return 0.5 * (f_var + f_var.transpose(-2, -1))
    return torch.diag_embed(var)


def probit_binary(f_mean: Tensor, f_var: Tensor) -> Tensor:
    """Probit approximation ``E[σ(f)] ≈ σ(m / sqrt(1 + π v / 8))`` for ``f ~ N(m, v)``.

    Args:
        f_mean: logit means, (N,) or (N, 1).
        f_var: logit variances of the same shape, or (N, 1, 1) for (N, 1) means.
    Returns:
        P(y = 1), same shape as ``f_mean``.
    """
    _check_mean(f_mean, binary=True)
    var = _variances(f_mean, f_var)
    return torch.sigmoid(f_mean / torch.sqrt(1.0 + math.pi / 8.0 * var))


def probit_multiclass(f_mean: Tensor, f_var: Tensor) -> Tensor:
    """Multiclass probit approximation ``softmax(m_c / sqrt(1 + π S_cc / 8))``.

    Each class logit is scaled by its own variance (off-diagonal covariances are ignored).

    Args:
        f_mean: logit means (N, C).
        f_var: logit variances (N, C) or covariances (N, C, C).
    Returns:
        class probabilities (N, C).
    """
    _check_mean(f_mean, binary=False)
    var = _variances(f_mean, f_var)
    return torch.softmax(f_mean / torch.sqrt(1.0 + math.pi / 8.0 * var), dim=-1)


def laplace_bridge(f_mean: Tensor, f_var: Tensor, zero_sum_correction: bool = True) -> Tensor:
    """Dirichlet concentrations ``α`` approximating the softmax of ``f ~ N(m, S)``.

    ``α_c = (1 − 2/C + e^{m_c} Σ_l e^{−m_l} / C²) / S_cc``: the inverse of the Laplace
    approximation of ``Dir(α)`` in the softmax basis (Hobbhahn et al. 2022). Softmax is
    invariant to adding a constant to all logits, while the bridge is exact only for
    Gaussians on the sum-zero plane; with ``zero_sum_correction`` the belief is first
    projected there, ``f ↦ P f`` with ``P = I − 11ᵀ/C`` (mean ``P m``, covariance
    ``P S P``), which leaves the distribution of ``softmax(f)`` unchanged.

    Args:
        f_mean: logit means (N, C), C ≥ 2.
        f_var: logit variances (N, C) or covariances (N, C, C); positive variances.
        zero_sum_correction: apply the sum-zero projection first.
    Returns:
        concentrations α (N, C), all positive.
    """
    _check_mean(f_mean, binary=False)
    num_classes = f_mean.shape[1]
    if num_classes < 2:
        raise ValueError(f"f_mean must have C >= 2 classes for the Laplace bridge, got C = {num_classes}")
    cov = _covariances(f_mean, f_var)
    mean = f_mean
    if zero_sum_correction:
        # softmax(f) = softmax(P f) with P = I − 11ᵀ/C: project the belief onto the plane.
        mean = mean - mean.mean(-1, keepdim=True)
        cov = cov - cov.mean(-1, keepdim=True)
        cov = cov - cov.mean(-2, keepdim=True)
    var = torch.diagonal(cov, dim1=-2, dim2=-1)
    if (var <= 0).any():
        raise ValueError("f_var must give positive logit variances for the Laplace bridge")
    # e^{m_c} Σ_l e^{-m_l} computed stably as exp(m_c + logsumexp(-m)).
    cross = torch.exp(mean + torch.logsumexp(-mean, dim=-1, keepdim=True))
    return (1.0 - 2.0 / num_classes + cross / num_classes**2) / var


def laplace_bridge_predictive(f_mean: Tensor, f_var: Tensor, zero_sum_correction: bool = True) -> Tensor:
    """Mean ``α / Σ α`` of the Laplace-bridge Dirichlet: class probabilities (N, C)."""
    alpha = laplace_bridge(f_mean, f_var, zero_sum_correction=zero_sum_correction)
    return alpha / alpha.sum(-1, keepdim=True)


def mc_predictive(
    f_mean: Tensor,
    f_var: Tensor,
    link: str = "softmax",
    num_samples: int = 1000,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Monte-Carlo predictive ``(1/S) Σ_s link(f_s)``, ``f_s ~ N(m, S)``.

    Args:
        f_mean: logit means: (N, C) for ``"softmax"``; (N,) or (N, 1) for ``"sigmoid"``.
        f_var: variances of the shape of ``f_mean``, or covariances (N, C, C)
            (sampled through a symmetric square root, so singular covariances are fine).
        link: ``"sigmoid"`` (binary, returns P(y = 1)) or ``"softmax"``.
        num_samples: number of logit samples S.
        generator: torch.Generator on the device of ``f_mean`` for reproducibility.
    Returns:
        probabilities with the shape of ``f_mean``.
    """
    check_choice(link, "link", _LINKS)
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    _check_mean(f_mean, binary=link == "sigmoid")
    shape = (num_samples, *f_mean.shape)
    eps = torch.randn(shape, generator=generator, dtype=f_mean.dtype, device=f_mean.device)
    if f_var.dim() == 3:
        cov = _covariances(f_mean, f_var)
        evals, evecs = torch.linalg.eigh(cov)
        root = evecs * evals.clamp_min(0.0).sqrt().unsqueeze(-2)  # (N, C, C), root rootᵀ = S
        samples = f_mean + torch.einsum("nij,snj->sni", root, eps)
    else:
        samples = f_mean + _variances(f_mean, f_var).sqrt() * eps
    if link == "sigmoid":
        return torch.sigmoid(samples).mean(0)
    return torch.softmax(samples, dim=-1).mean(0)
