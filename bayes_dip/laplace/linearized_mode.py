"""Mode ``θ*`` of the linearised model for any likelihood (Antorán et al. 2022, recommendation 1).

The linearised model ``f_lin(x; θ) = f(x; θ̂) + J_x (θ − θ̂)`` with the prior ``N(μ₀, D⁻¹)``
has the log joint

    Φ(Δ) = Σ_n log p(y_n | f(x_n; θ̂) + J_n Δ) − ½ (θ̂ + Δ − μ₀)ᵀ D (θ̂ + Δ − μ₀),   Δ = θ − θ̂,

which is concave for the Gaussian, categorical and Bernoulli likelihoods. Its maximiser
``Δ*`` is found by inexact Newton steps (CG on the exact Hessian of ``−Φ``, preconditioned
by the fitted posterior precision ``K = s GGN + D``, which is that Hessian at ``Δ = 0`` for
a full GGN) with a backtracking (Armijo) step. Every evaluation of ``Φ``, ``∇Φ`` or a
Hessian-vector product is one pass over the data with one JVP and one VJP per batch.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.func import jvp, vjp

from ..checks import check_int
from .batches import Batches
from .functional import ModelFunction
from .likelihoods import Likelihood
from .posterior.base import Scale, Structure

__all__ = ["linearized_log_likelihood", "find_linearized_mode"]


def _linearized_batches(fn: ModelFunction, batches: Batches, theta: Tensor, step: Tensor):
    """Per batch: the network ``f`` as a function of the weights on its inputs, the targets and
    the linearised output ``f̂ + J Δ`` (computed without autograd)."""
    for x, y in batches:
        inputs = fn.prepare(x)

        def f(t: Tensor, inputs=inputs) -> Tensor:
            return fn(t, inputs)

        with torch.no_grad():
            f_hat, jd = jvp(f, (theta,), (step,))
        yield f, y, f_hat + jd


def linearized_log_likelihood(fn: ModelFunction, likelihood: Likelihood, batches: Batches, theta: Tensor,
                              step: Tensor, sigma_noise: Tensor | float = 1.0,
                              grad: bool = True) -> tuple[Tensor, Tensor | None]:
    """``Σ_n log p(y_n | f(x_n; θ̂) + J_n Δ)`` (float64) and its gradient in ``Δ`` ``(P,)`` (or None).

    Args:
        fn: the network as a function of the subset weights; theta: ``θ̂ (P,)``;
        step: ``Δ (P,)``; sigma_noise: ``σ`` of Gaussian likelihoods; grad: also return the gradient.
    """
    total = torch.zeros((), dtype=torch.float64, device=theta.device)
    gradient = torch.zeros_like(theta) if grad else None
    step = step.to(theta.dtype)
    for f, y, f_lin in _linearized_batches(fn, batches, theta, step):
        f_lin.requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            log_lik = likelihood.log_prob(f_lin, y, sigma_noise).sum()
        total = total + log_lik.detach().to(torch.float64)
        if grad:
            (residual,) = torch.autograd.grad(log_lik, f_lin)
            _, pullback = vjp(f, theta)
            gradient += pullback(residual)[0].detach()
    return total, gradient


def _hessian_matmul(fn: ModelFunction, likelihood: Likelihood, batches: Batches, theta: Tensor, step: Tensor,
                    v: Tensor, sigma_noise: Tensor | float) -> Tensor:
    """``Σ_n J_nᵀ H_n J_n v`` with ``H_n = −∂² log p / ∂f²`` at the linearised output ``f̂ + J_n Δ``."""
    out = torch.zeros_like(theta)
    scale = likelihood.curvature_scale(sigma_noise)
    for f, _, f_lin in _linearized_batches(fn, batches, theta, step):
        with torch.no_grad():
            _, jv = jvp(f, (theta,), (v,))
            hv = scale * likelihood.hessian_matmul(f_lin, jv.unsqueeze(0)).squeeze(0)
        _, pullback = vjp(f, theta)
        out += pullback(hv)[0].detach()
    return out


def _newton_direction(matmul, precond, grad: Tensor, max_iter: int, rtol: float) -> Tensor:
    """Approximate ``H⁻¹ g`` by preconditioned CG (``matmul``: ``H v``, ``precond``: ``M⁻¹ v``)."""
    x = torch.zeros_like(grad)
    r = grad.clone()
    z = precond(r)
    p, rz = z.clone(), r @ z
    stop = rtol * float(grad.norm())
    for _ in range(max_iter):
        hp = matmul(p)
        alpha = rz / (p @ hp)
        x, r = x + alpha * p, r - alpha * hp
        if float(r.norm()) <= stop:
            break
        z = precond(r)
        rz, rz_old = r @ z, rz
        p = z + (rz / rz_old) * p
    return x


def find_linearized_mode(fn: ModelFunction, likelihood: Likelihood, batches: Batches, theta: Tensor,
                         prior_mean: Tensor, structure: Structure, scale: Scale, delta: Tensor, *,
                         init: Tensor | None = None, sigma_noise: Tensor | float = 1.0, max_iter: int = 20,
                         cg_iter: int = 20, tol: float = 1e-5) -> tuple[Tensor, Tensor]:
    """``Δ* = θ* − θ̂ (P,)`` maximising ``Φ`` and ``log p(D | θ*)`` of the linearised model (float64).

    Inexact Newton: each step solves ``(Σ_n J_nᵀ H_n J_n + D) p = ∇Φ`` (exact Hessian of ``−Φ``,
    Hessian-vector products by JVP/VJP passes over the data) with at most ``cg_iter`` CG
    iterations preconditioned by the fitted ``K⁻¹``, then backtracks ``Δ + t p``.

    Args:
        fn, likelihood, batches: the model function, likelihood and training data;
        theta: ``θ̂ (P,)``; prior_mean: ``μ₀ (P,)``; structure, scale, delta: the posterior
            precision ``K = s GGN + diag(δ)`` (preconditioner; ``δ (P,)`` is also the prior);
        init: starting ``Δ`` (warm start; default 0); sigma_noise: ``σ`` (Gaussian likelihoods);
        max_iter: Newton steps at most; tol: stop when the Newton decrement ``½ ∇Φᵀ p`` (nats)
            falls below it.
    """
    for name, value in (("max_iter", max_iter), ("cg_iter", cg_iter)):
        check_int(value, name, 1)
    with torch.no_grad():
        s = scale.detach() if isinstance(scale, Tensor) else scale
        d = delta.detach().to(theta.dtype)
        step = torch.zeros_like(theta) if init is None else init.detach().to(theta.dtype).clone()

        def objective(st: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            log_lik, g = linearized_log_likelihood(fn, likelihood, batches, theta, st, sigma_noise)
            dev = theta + st - prior_mean
            phi = log_lik - 0.5 * (d.to(torch.float64) * dev.to(torch.float64) ** 2).sum()
            return phi, log_lik, g - d * dev

        def precond(v: Tensor) -> Tensor:
            return structure.covariance_matmul(v.unsqueeze(1), s, d).squeeze(1)

        phi, log_lik, grad = objective(step)
        for _ in range(max_iter):
            def matmul(v: Tensor, st: Tensor = step) -> Tensor:
                return _hessian_matmul(fn, likelihood, batches, theta, st, v, sigma_noise) + d * v

            direction = _newton_direction(matmul, precond, grad, cg_iter, 1e-3)
            decrement = float(grad.to(torch.float64) @ direction.to(torch.float64))
            if 0.5 * decrement < tol:
                break
            t = 1.0
            while True:
                candidate = step + t * direction
                new_phi, new_log_lik, new_grad = objective(candidate)
                if float(new_phi) >= float(phi) + 1e-4 * t * decrement or t < 1e-4:
                    break
                t *= 0.5
            if float(new_phi) <= float(phi):  # no ascent even for a tiny step: at the mode numerically
                break
            step, phi, log_lik, grad = candidate, new_phi, new_log_lik, new_grad
    return step, log_lik
