"""``stochastic``: Hutchinson probes and preconditioned CG (the paper's mode for large images).

``∂ log|K_yy|`` by probes ``z ~ N(0, P)`` drawn from a Nyström preconditioner ``P ≈ K_yy``
(refreshed every ``precond_every`` steps; its shift follows σ_y² every step),
``E[(P⁻¹z)ᵀ ∂K (K⁻¹z)] = tr(K⁻¹ ∂K)``, ``K⁻¹ z`` by preconditioned CG. The log-determinant
itself is not computed; the reported objective leaves it out. Predictive samples by Matheron's
rule with CG solves.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from bayes_dip.linalg import LowRankPreconditioner, pcg

from ..predcp import SampledTVPredCP
from ..predictive import conditional_mean, sample_predictive
from .base import EvidenceMode, Objective

__all__ = ["StochasticMode", "StochasticObjective"]


class StochasticObjective(Objective):
    """Loss whose gradient estimates that of the negative log evidence (matrix-free)."""

    def __init__(self, model, config, generator: torch.Generator):
        self.model, self.config, self.generator = model, config, generator
        self.precond: LowRankPreconditioner | None = None

    def before_step(self, step: int) -> None:
        if step % self.config.precond_every == 0 or self.precond is None:
            self.refresh_preconditioner()

    def refresh_preconditioner(self) -> None:
        if self.config.precond_rank > 0:
            rank = min(self.config.precond_rank, self.model.num_obs - 1)
            p = self.model.obs_cov.preconditioner(rank, self.generator)
            self.precond = LowRankPreconditioner(p.eigvecs, p.eigvals, p.shift)

    def state(self) -> Any:
        if self.precond is None:
            return None
        return (self.precond.eigvecs, self.precond.eigvals, self.precond.shift)

    def load_state(self, state: Any) -> None:
        if state is not None:
            self.precond = LowRankPreconditioner(*state)

    def _current_precond(self) -> LowRankPreconditioner | None:
        if self.precond is None:
            return None
        return LowRankPreconditioner(self.precond.eigvecs, self.precond.eigvals,
                                     float(self.model.noise_variance.detach()))

    def __call__(self) -> tuple[Tensor, float, dict[str, float]]:
        model, cfg = self.model, self.config
        precond = self._current_precond()
        n, s = model.num_obs, cfg.num_probes
        dtype = model.jac.dtype
        with torch.no_grad():
            if precond is not None:
                z = precond.sample_probes(s, self.generator)
            else:
                z = torch.randn(n, s, generator=self.generator, dtype=dtype,
                                device=model.jac.device)
            rhs = z
            if cfg.weights == "linearized_mode":
                r = model.prior_mean_residual.to(dtype).unsqueeze(1)
                rhs = torch.cat([z, r], 1)
            sol, info = pcg(model.obs_cov.matmul, rhs, precond=precond, tol=cfg.cg_tol,
                            max_iter=cfg.cg_max_iter)
            w = precond.solve(z) if precond is not None else z
        # ½ ∂log|K|: ½ mean_i (K⁻¹z_i)ᵀ ∂K (P⁻¹z_i)
        surrogate = 0.5 * model.obs_cov.bilinear(sol[:, :s], w) / s
        loss = surrogate - surrogate.detach()
        nv = model.noise_variance
        if cfg.weights == "map":
            residual = model.residual
            fit = (0.5 * residual.square().sum() / nv
                   + 0.5 * model.prior.quadratic(scatter=model.theta_scatter))
        else:
            alpha = sol[:, s:]
            r = model.prior_mean_residual
            value = 0.5 * (r @ alpha.squeeze(1).to(r.dtype))
            # gradient of ½ rᵀK⁻¹r is −½ αᵀ ∂K α
            quad = -0.5 * model.obs_cov.bilinear(alpha, alpha)
            fit = value + quad - quad.detach()
        stats = {"cg_iterations": float(info.iterations),
                 "cg_residual": float(info.residual_norms.max())}
        return loss + fit + 0.5 * n * math.log(2 * math.pi), float("nan"), stats


class StochasticMode(EvidenceMode):
    """Matrix-free evidence gradients, fresh PredCP samples each step (20 per block unless
    given) and Matheron samples with CG. The paper runs 3,000 steps; the command line refines
    its start for 20 (hours otherwise on a CPU) and solves its samples to 1e-3."""

    name = "stochastic"
    default_steps = 3000
    command_line_steps = 20
    command_line_sampler = {"cg_tol": 1e-3}
    has_spectrum = False
    adam_beta2 = 0.999  # noisy gradients: torch's default memory
    sampler_options = ("batch_size", "cg_tol", "cg_max_iter", "precond_rank", "precond", "progress")

    def objective(self, model, config, structure, generator) -> StochasticObjective:
        return StochasticObjective(model, config, generator)

    def predcp(self, lin, rate: float, num_samples: int | None, seed: int) -> SampledTVPredCP:
        return SampledTVPredCP(lin.jac, rate, num_samples=num_samples or 20)

    def predictive(self, lin, *, num_samples: int, image_noise, seed: int, mean: str,
                   precond_rank: int = 200, **options: Any):
        gen = torch.Generator(device=lin.jac.device).manual_seed(seed)
        precond = options.pop("precond", None)
        if precond is None and precond_rank:
            pgen = torch.Generator(device=lin.jac.device).manual_seed(seed)
            precond = lin.model.obs_cov.preconditioner(min(precond_rank, lin.model.num_obs - 1),
                                                       pgen)
        center = lin.recon
        if mean == "posterior":
            center, lin.mean_cg = conditional_mean(lin.model, precond=precond)
        return sample_predictive(lin.model, num_samples, mean=center, image_noise=image_noise,
                                 generator=gen, precond=precond, **options)
