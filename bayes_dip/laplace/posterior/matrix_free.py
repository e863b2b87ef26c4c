"""Matrix-free posterior: ``K = s GGN₀ + diag(δ)`` applied through JVP/VJP products over the data.

Solves by preconditioned CG (:func:`bayes_dip.linalg.pcg`), optionally with a Nyström
low-rank preconditioner of the GGN; ``log|K|`` by stochastic Lanczos quadrature with a
gradient from Hutchinson probes and CG (:func:`bayes_dip.linalg.logdet_surrogate`);
marginal variances by Hutchinson's diagonal estimator (with the preconditioner's exact
diagonal as control variate); samples by "sample-then-solve":
``K⁻¹ (√s Jᵀ L₀ ε₁ + √δ ⊙ ε₂) ~ N(0, K⁻¹)``. Probes are drawn once from ``seed``, so the
stochastic log-determinant is a smooth function of the hyperparameters.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from ...checks import check_int
from ...linalg import (CGInfo, LowRankPreconditioner, hutchinson_diagonal, logdet_surrogate, nystrom,
                       pcg, sample_probes, slq_logdet)
from ..curvature.operator import GGNOperator
from ..curvature.output import OutputCurvature
from ..batches import Batches
from ..functional import ModelFunction
from .base import Scale, Structure, as_number

__all__ = ["MatrixFree"]


class MatrixFree(Structure):
    """GGN-vector products only; for networks too big for any dense curvature.

    Args:
        cg_tol: relative residual of the CG solves; cg_max_iter: their iteration cap.
        precond_rank: rank of the Nyström preconditioner of the GGN (0: no preconditioner).
        n_probes: Hutchinson / SLQ probes; lanczos_steps: Lanczos steps per SLQ probe.
        seed: seed of the probes and the preconditioner sketch.
        chunk_size: columns per vmapped JVP/VJP.
    """

    name = "matrix_free"

    def __init__(self, cg_tol: float = 1e-6, cg_max_iter: int | None = None, precond_rank: int = 0,
                 n_probes: int = 16, lanczos_steps: int = 50, seed: int = 0,
                 chunk_size: int | None = None):
        if not isinstance(cg_tol, (int, float)) or not cg_tol > 0:
            raise ValueError(f"cg_tol must be > 0, got {cg_tol!r}")
        for value, what, low in ((precond_rank, "precond_rank", 0), (n_probes, "n_probes", 1),
                                 (lanczos_steps, "lanczos_steps", 1)):
            check_int(value, what, low)
        self.cg_tol, self.cg_max_iter = float(cg_tol), cg_max_iter
        self.precond_rank, self.n_probes, self.lanczos_steps = precond_rank, n_probes, lanczos_steps
        self.seed, self.chunk_size = seed, chunk_size
        self.op: GGNOperator | None = None
        self.probes: Tensor | None = None
        self.precond_eig: tuple[Tensor, Tensor] | None = None
        #: diagnostics of the last CG solve
        self.last_cg_info: CGInfo | None = None

    def __repr__(self) -> str:
        return f"MatrixFree(cg_tol={self.cg_tol}, precond_rank={self.precond_rank}, n_probes={self.n_probes})"

    def bind(self, fn: ModelFunction, curv: OutputCurvature, batches: Batches, theta: Tensor,
             progress: bool = False) -> None:
        """Attach the GGN operator (the data) without recomputing anything else."""
        self.op = GGNOperator(fn, curv, batches, theta, chunk_size=self.chunk_size, progress=progress)

    def fit(self, fn: ModelFunction, curv: OutputCurvature, batches: Batches, theta: Tensor,
            progress: bool = False) -> None:
        self.bind(fn, curv, batches, theta, progress)
        n = theta.numel()
        gen = torch.Generator(device=theta.device).manual_seed(self.seed)
        self.probes = sample_probes(n, self.n_probes, "rademacher", gen, dtype=theta.dtype, device=theta.device)
        self.precond_eig = None
        if self.precond_rank:
            with torch.no_grad():
                eig = nystrom(self.op, n, min(self.precond_rank, n), generator=gen,
                              dtype=theta.dtype, device=theta.device)
            self.precond_eig = (eig.eigvecs, eig.eigvals)

    def _op(self) -> GGNOperator:
        if self.op is None or self.probes is None:
            raise RuntimeError("matrix_free posterior has no data: call fit() (or bind() after loading)")
        return self.op

    def _matmul(self, scale: Scale, delta: Tensor):
        op = self._op()

        def apply(v: Tensor) -> Tensor:
            with torch.no_grad():
                gv = op(v)
            return scale * gv + delta.to(v.dtype).unsqueeze(1) * v
        return apply

    def _precond(self, scale: Scale, delta: Tensor) -> LowRankPreconditioner | None:
        if self.precond_eig is None:
            return None
        vecs, vals = self.precond_eig
        return LowRankPreconditioner(vecs, as_number(scale) * vals, float(delta.detach().mean()))

    def _solve(self, v: Tensor, scale: Scale, delta: Tensor) -> Tensor:
        s, d = (scale.detach() if isinstance(scale, Tensor) else scale), delta.detach()
        x, info = pcg(self._matmul(s, d), v.to(self._op().theta.dtype), precond=self._precond(s, d),
                      tol=self.cg_tol, max_iter=self.cg_max_iter)
        self.last_cg_info = info
        if not info.converged:
            warnings.warn(f"matrix_free: CG did not reach tol={self.cg_tol} in {info.iterations} iterations "
                          f"(max relative residual {float(info.residual_norms.max()):.2e})", RuntimeWarning)
        return x.to(v.dtype)

    def curvature_matmul(self, v: Tensor) -> Tensor:
        with torch.no_grad():
            return self._op()(v)

    def covariance_matmul(self, v: Tensor, scale: Scale, delta: Tensor) -> Tensor:
        return self._solve(v, scale, delta)

    def logdet(self, scale: Scale, delta: Tensor) -> Tensor:
        self._op()
        s, d = (scale.detach() if isinstance(scale, Tensor) else scale), delta.detach()
        precond = self._precond(s, d)
        value = slq_logdet(self._matmul(s, d), self.probes, self.lanczos_steps, precond=precond).value
        tracked = (isinstance(scale, Tensor) and scale.requires_grad) or delta.requires_grad
        if not tracked:
            return value
        surrogate, info = logdet_surrogate(self._matmul(scale, delta), self.probes, precond=precond,
                                           tol=self.cg_tol, max_iter=self.cg_max_iter)
        self.last_cg_info = info
        return value + surrogate.to(torch.float64)

    def variance(self, scale: Scale, delta: Tensor) -> Tensor:
        s, d = (scale.detach() if isinstance(scale, Tensor) else scale), delta.detach()
        precond = self._precond(s, d)
        if precond is None:
            return hutchinson_diagonal(lambda v: self._solve(v, s, d), self.probes).value
        vecs, vals, mu = precond.eigvecs, precond.eigvals, precond.shift
        exact = 1 / mu - (vecs**2 * (vals / (mu * (vals + mu)))).sum(1)
        rest = hutchinson_diagonal(lambda v: self._solve(v, s, d) - precond.solve(v), self.probes).value
        return (exact + rest).to(delta.dtype)

    def sample(self, n: int, scale: Scale, delta: Tensor, generator: torch.Generator | None) -> Tensor:
        op = self._op()
        s = as_number(scale)
        with torch.no_grad():
            rhs = s**0.5 * op.sample_root(n, generator)
            eps = torch.randn(rhs.shape, generator=generator, dtype=rhs.dtype, device=rhs.device)
            rhs = rhs + delta.detach().to(rhs.dtype).sqrt().unsqueeze(1) * eps
        return self._solve(rhs, scale, delta).T

    def state_dict(self) -> dict[str, Any]:
        if self.probes is None:
            raise RuntimeError("matrix_free posterior is not fitted: call fit() first")
        state: dict[str, Any] = {"probes": self.probes}
        if self.precond_eig is not None:
            state["precond_eigvecs"], state["precond_eigvals"] = self.precond_eig
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.probes = state["probes"]
        self.precond_eig = ((state["precond_eigvecs"], state["precond_eigvals"])
                            if "precond_eigvecs" in state else None)
