"""Predictive distributions of a Laplace posterior.

*GLM* (linearised) predictive: ``f(x; θ) ≈ f(x; θ̂) + J_x (θ − θ̂)`` gives
``f(x) ~ N(f(x; θ̂), J_x Σ J_xᵀ)`` — exact moments of the linearised model, pushed
through a link for classification (:mod:`.links`: probit, Laplace bridge, Monte Carlo).
*NN* (sampled-weights) predictive: evaluate the network at posterior weight samples.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..checks import check_choice
from .curvature.layers import JacobianTerm, jacobian_terms, supported_layers
from .functional import ModelFunction
from .likelihoods import BernoulliLikelihood, CategoricalLikelihood, Likelihood
from .links import laplace_bridge_predictive, mc_predictive, probit_binary, probit_multiclass
from .posterior.base import Scale, Structure

__all__ = ["glm_moments", "classification_probabilities", "sampled_outputs", "LINKS"]

LINKS = ("probit", "bridge", "mc")

#: Elements of per-example Jacobians (chunk × n_out × P) held at once.
JACOBIAN_BUDGET = 2**24


def glm_moments(fn: ModelFunction, theta: Tensor, inputs: Tensor, structure: Structure, scale: Scale,
                delta: Tensor, diagonal: bool = False) -> tuple[Tensor, Tensor]:
    """Mean ``(B, *out)`` and covariance ``(B, n_out, n_out)`` (or variances ``(B, n_out)``) of ``f(x)``.

    Per-example Jacobians come from layer hooks (``n_out`` batched backward passes, with
    linear layers kept as outer products ``g ⊗ a`` that KFAC and diagonal posteriors
    contract without forming ``J``) or, for other layers, from ``torch.func``.

    Args:
        fn: model function; theta: ``θ̂ (P,)``; inputs: prepared inputs ``(B, ...)``;
        structure, scale, delta: the posterior ``Σ = (s GGN + diag δ)⁻¹``;
        diagonal: return only the output variances.
    """
    with torch.no_grad():
        mean = fn(theta, inputs)
    n_out, n = mean[0].numel(), theta.numel()
    chunk = max(1, JACOBIAN_BUDGET // max(1, n_out * n))
    by_layers = supported_layers(fn)
    parts = []
    for start in range(0, inputs.shape[0], chunk):
        sl = inputs[start:start + chunk]
        if by_layers:
            terms = jacobian_terms(fn, theta, sl)[1]
        else:
            terms = [JacobianTerm(fn.jacobian(theta, sl).detach())]
        parts.append(structure.output_covariance(terms, scale, delta, diagonal))
    return mean, torch.cat(parts)


def classification_probabilities(likelihood: Likelihood, f_mean: Tensor, f_cov: Tensor, link: str,
                                 n_samples: int = 1000, generator: torch.Generator | None = None) -> Tensor:
    """Predictive class probabilities from a Gaussian belief over the logits.

    Categorical: ``(B, C)``; Bernoulli: ``P(y = 1)`` with the shape of the logits.
    ``f_cov`` is ``(B, C, C)`` or variances ``(B, C)``.
    """
    check_choice(link, "link", LINKS)
    if isinstance(likelihood, CategoricalLikelihood):
        if link == "probit":
            return probit_multiclass(f_mean, f_cov)
        if link == "bridge":
            return laplace_bridge_predictive(f_mean, f_cov)
        return mc_predictive(f_mean, f_cov, "softmax", n_samples, generator)
    if isinstance(likelihood, BernoulliLikelihood):
        var = f_cov.reshape(f_mean.shape)
        if link == "probit":
            return probit_binary(f_mean, var)
        if link == "bridge":
            raise ValueError("link='bridge' needs a categorical likelihood; use 'probit' or 'mc' for binary")
        return mc_predictive(f_mean, var, "sigmoid", n_samples, generator)
    raise ValueError(f"class probabilities need a classification likelihood, got {likelihood!r}")


def sampled_outputs(fn: ModelFunction, theta_samples: Tensor, inputs: Tensor) -> Tensor:
    """Network outputs at weight samples ``(S, P)`` -> ``(S, B, *out)``."""
    with torch.no_grad():
        return torch.stack([fn(t, inputs) for t in theta_samples])
