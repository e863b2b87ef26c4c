"""Isotropic-per-block Gaussian weight priors ``θ ~ N(μ₀, diag(δ)⁻¹)``.

A prior precision is a plain tensor of one of three shapes:

- ``()`` (or ``(1,)`` when there is more than one group): one scalar for all weights;
- ``(G,)``: one value per group, the subset's parameter tensors in subset order ("per layer");
- ``(P,)``: one value per weight.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["prior_precision_kind", "check_prior_precision", "expand_prior_precision", "check_prior_mean"]


def prior_precision_kind(prec: Tensor, n_groups: int, n_params: int) -> str:
    """``"scalar" | "group" | "parameter"`` for a prior precision of shape ``()``, ``(G,)`` or ``(P,)``."""
    if prec.dim() == 0 or (prec.dim() == 1 and prec.numel() == 1 and n_groups != 1):
        return "scalar"
    if prec.dim() == 1 and prec.numel() == n_groups:
        return "group"
    if prec.dim() == 1 and prec.numel() == n_params:
        return "parameter"
    raise ValueError(f"prior_precision must have shape (), ({n_groups},) (per group) or ({n_params},) "
                     f"(per parameter), got {tuple(prec.shape)}")


def check_prior_precision(value: float | Tensor, n_groups: int | None, n_params: int | None,
                          dtype: torch.dtype, device: torch.device) -> Tensor:
    """Validated positive prior precision as a tensor of its given shape (shape unchecked if ``n_params`` is None)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
        raise TypeError(f"prior_precision must be a number or a tensor, got {type(value).__name__}")
    prec = torch.as_tensor(value, dtype=dtype, device=device)
    if n_params is not None:
        prior_precision_kind(prec, n_groups, n_params)
    if not bool(torch.isfinite(prec).all()) or not bool((prec > 0).all()):
        raise ValueError("prior_precision must be finite and > 0")
    return prec


def expand_prior_precision(prec: Tensor, sizes: Sequence[int]) -> Tensor:
    """Per-weight precisions ``δ (P,)`` from a scalar, per-group or per-weight precision."""
    n_params = sum(sizes)
    kind = prior_precision_kind(prec, len(sizes), n_params)
    if kind == "scalar":
        return prec.reshape(()).expand(n_params)
    if kind == "group":
        return torch.repeat_interleave(prec, torch.tensor(list(sizes), device=prec.device))
    return prec


def check_prior_mean(value: float | Tensor, n_params: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Prior mean ``μ₀`` as a ``(P,)`` tensor from a number, a ``()`` or a ``(P,)`` tensor."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
        raise TypeError(f"prior_mean must be a number or a tensor, got {type(value).__name__}")
    mean = torch.as_tensor(value, dtype=dtype, device=device)
    if mean.dim() == 0:
        return mean.expand(n_params).clone()
    if mean.shape != (n_params,):
        raise ValueError(f"prior_mean must have shape () or ({n_params},), got {tuple(mean.shape)}")
    if not bool(torch.isfinite(mean).all()):
        raise ValueError("prior_mean must be finite")
    return mean.clone()
