"""``K_yy`` in a rank-``r`` observation subspace plus an isotropic remainder (large images).

The exact mode (:class:`~bayes_dip.linearized.covariance.StructuredCovariance`) needs the dense
Jacobian; at 128² and beyond it does not fit. :class:`SubspaceCovariance` keeps the same
block-kernel structure (``K_yy = Σ_t w_t(h) N_t + σ_y² I``) but only in an orthonormal basis
``Q (n_obs, r)`` of a randomized sketch of ``A J Σ_θ Jᵀ Aᵀ`` (prior at the hyperparameters of
:meth:`SubspaceCovariance.build`) and its complement ``Q⊥``:

* ``B(h) = Σ_t w_t(h) QᵀN_tQ`` (``r × r``), from ``r`` VJPs,
* ``τ(h) = Σ_t w_t(h) tr(Q⊥ᵀN_tQ⊥)`` by Hutchinson probes projected onto ``Q⊥``,
* ``K̃ = Q (B + σ_y² I) Qᵀ + (σ_y² + τ/(n − r)) (I − QQᵀ)``.

``K̃`` drops the cross block ``QᵀK Q⊥`` (Fischer's inequality: ``log|K| ≤ log|K₁₁| +
log|K₂₂|``) and replaces ``K₂₂`` by its mean eigenvalue (Jensen), so ``log|K̃| ≥ log|K_yy|``
up to the Hutchinson error in ``τ``: the evidence is a lower bound, exact at ``r = n_obs``.
One evidence step costs an ``r × r`` Cholesky, so the paper's 1,500 steps take seconds.
"""
from __future__ import annotations

import math
import os

import torch
from torch import Tensor

from bayes_dip.checks import check_int
from bayes_dip.linalg import LowRankPreconditioner
from bayes_dip.output_folder import atomic_write

from .covariance import ImageCovariance, TermWeights, term_grams
from .heldout import ObservationSpectrum
from .jacobian import NetworkJacobian
from .priors import WeightPrior

__all__ = ["SubspaceCovariance"]


def _same(a, b) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu())
    return a == b


class SubspaceCovariance:
    """Approximate ``K_yy(h)`` of rank-``r`` subspace plus isotropic remainder (module docs).

    ``basis (n_obs, r)`` orthonormal ``Q``; ``grams (T, r, r)`` ``QᵀN_tQ``; ``tail (T,)``
    ``tr(Q⊥ᵀN_tQ⊥)`` (estimated); ``weights(prior)`` ``w_t(h)``. All float64.
    """

    def __init__(self, weights: TermWeights, basis: Tensor, grams: Tensor, tail: Tensor):
        self.weights, self.basis, self.grams, self.tail = weights, basis, grams, tail
        self.n_obs, self.rank = basis.shape

    @classmethod
    def build(cls, jac: NetworkJacobian, ray_trafo, prior: WeightPrior, rank: int, *,
              tail_probes: int = 32, batch_size: int = 8,
              generator: torch.Generator | None = None,
              progress: bool = False) -> "SubspaceCovariance":
        """Sketch ``A J L ε`` (``rank`` JVPs, ``ε ~ N(0, I)``, ``Σ_θ = L Lᵀ`` at the current
        hyperparameters), then ``rank + tail_probes`` VJPs; ``rank >= n_obs`` is exact."""
        ImageCovariance(jac, prior)  # validates jac/prior
        if tuple(ray_trafo.im_shape) != jac.im_shape:
            raise ValueError("ray_trafo.im_shape does not match the network output")
        check_int(rank, "rank", 1)
        check_int(tail_probes, "tail_probes", 1)
        check_int(batch_size, "batch_size", 1)
        f64, n_obs = torch.float64, math.prod(ray_trafo.obs_shape)
        with torch.no_grad():
            if rank >= n_obs:
                basis = torch.eye(n_obs, dtype=f64, device=jac.device)
            else:
                sketch = torch.cat([
                    ray_trafo.matmul(jac.jvp(
                        prior.sample(min(batch_size, rank - i), generator).to(jac.dtype)))
                    for i in range(0, rank, batch_size)], 1)
                basis = torch.linalg.qr(sketch.to(f64)).Q
            cot = ray_trafo.rmatmul(basis.to(jac.dtype))
            terms, radii, grams = term_grams(jac, prior, cot, batch_size=batch_size,
                                             progress=progress)
            grams_t = torch.stack(grams)
            del grams, cot
            tail = torch.zeros(len(terms), dtype=f64, device=jac.device)
            if basis.shape[1] < n_obs:
                z = torch.randn(n_obs, tail_probes, generator=generator, dtype=f64,
                                device=jac.device)
                z = z - basis @ (basis.mT @ z)
                cot = ray_trafo.rmatmul(z.to(jac.dtype))
                _, _, probe_grams = term_grams(jac, prior, cot, batch_size=batch_size)
                tail = torch.stack([g.trace() for g in probe_grams]) / tail_probes
        weights = TermWeights(terms, radii, prior.layout, f64, jac.device)
        return cls(weights, basis, grams_t, tail.clamp_min(0.0))

    def save(self, path: str | os.PathLike, key: dict[str, Tensor | int]) -> None:
        """Write the structure atomically to ``path`` with ``key``, what it was built from
        (:meth:`load` returns it only for an equal key)."""
        state = dict(key=key, terms=self.weights.terms, radii=self.weights.radii,
                     basis=self.basis, grams=self.grams, tail=self.tail)
        atomic_write(path, lambda f: torch.save(state, f))

    @classmethod
    def load(cls, path: str | os.PathLike, key: dict[str, Tensor | int],
             layout, device: torch.device | None = None) -> "SubspaceCovariance | None":
        """The structure saved at ``path`` for an equal ``key`` (tensors compared exactly), or
        ``None`` when there is no such file; a file built from something else is an error."""
        if not os.path.exists(path):
            return None
        state = torch.load(path, map_location=device, weights_only=False)
        saved = state["key"]
        if saved.keys() != key.keys() or not all(_same(saved[k], key[k]) for k in key):
            raise ValueError(f"{os.fspath(path)!r} holds a subspace of another network, "
                             "prior or rank; remove it or use another checkpoint folder")
        weights = TermWeights(state["terms"], state["radii"], layout, torch.float64, device)
        return cls(weights, state["basis"], state["grams"], state["tail"])

    def _parts(self, prior: WeightPrior, noise_variance: Tensor) -> tuple[Tensor, Tensor]:
        """Cholesky factor of ``B + σ² I`` and the remainder's variance ``σ² + τ/(n − r)``."""
        w = self.weights(prior)
        nv = noise_variance.to(torch.float64).reshape(())
        b = torch.einsum("t,tij->ij", w, self.grams)
        b = 0.5 * (b + b.mT) + nv * torch.eye(self.rank, dtype=b.dtype, device=b.device)
        chol, info = torch.linalg.cholesky_ex(b)
        if int(info) != 0:
            raise ValueError("the subspace K_yy is not positive definite (Cholesky failed at "
                             f"column {int(info)}); the hyperparameters have diverged")
        rest = self.n_obs - self.rank
        remainder = nv + (w @ self.tail) / rest if rest else nv
        return chol, remainder

    def gaussian_nll(self, prior: WeightPrior, noise_variance: Tensor,
                     residual: Tensor | None = None) -> Tensor:
        """``½ log|K̃| (+ ½ rᵀ K̃⁻¹ r)`` (float64, differentiable in the hyperparameters)."""
        chol, remainder = self._parts(prior, noise_variance)
        rest = self.n_obs - self.rank
        value = chol.diagonal().log().sum() + 0.5 * rest * torch.log(remainder)
        if residual is not None:
            r = residual.reshape(-1).to(torch.float64)
            if r.numel() != self.n_obs:
                raise ValueError(f"residual must have {self.n_obs} entries, got {r.numel()}")
            inside = self.basis.mT @ r
            outside = (r - self.basis @ inside).square().sum()
            alpha = torch.cholesky_solve(inside.unsqueeze(1), chol).squeeze(1)
            value = value + 0.5 * inside @ alpha + 0.5 * outside / remainder
        return value

    def spectrum(self, prior: WeightPrior, noise_variance: Tensor | float) -> ObservationSpectrum:
        """``K̃`` as an :class:`~bayes_dip.linearized.heldout.ObservationSpectrum`: ``U = QV``,
        ``λ = Λ`` from ``B = VΛVᵀ`` and the remainder's mean eigenvalue ``τ/(n − r)``."""
        with torch.no_grad():
            w = self.weights(prior)
            b = torch.einsum("t,tij->ij", w, self.grams)
            evals, evecs = torch.linalg.eigh(0.5 * (b + b.mT))
            rest = self.n_obs - self.rank
            tail = float(w @ self.tail) / rest if rest else 0.0
        return ObservationSpectrum(self.basis @ evecs, evals.clamp_min(0.0), tail,
                                   float(noise_variance))

    def preconditioner(self, prior: WeightPrior, noise_variance: Tensor | float
                       ) -> LowRankPreconditioner:
        """``K̃`` as a CG preconditioner for the exact ``K_yy`` (Matheron samples): ``U λ Uᵀ
        + μ I`` with ``U = QV`` from ``B = VΛVᵀ``, ``μ = σ² + τ/(n − r)``, ``λ = max(Λ + σ² − μ,
        0)``."""
        with torch.no_grad():
            chol, remainder = self._parts(prior, torch.as_tensor(noise_variance))
            b = chol @ chol.mT  # B + σ² I
            evals, evecs = torch.linalg.eigh(b)
            mu = float(remainder)
            return LowRankPreconditioner(self.basis @ evecs, (evals - mu).clamp_min(0.0), mu)
