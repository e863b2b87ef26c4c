"""Held-out predictive of the measurements: a calibration check that needs no ground truth.

For a Gaussian model ``r = y − A x̂ ~ N(0, K)`` the predictive of a group ``G`` of measurements
given all others needs no refit (Rasmussen & Williams 2006, §5.4.2, in block form): with
``α = K⁻¹ r`` and ``Λ_G = [K⁻¹]_GG``,

    ``r_G − E[r_G | r_rest] = Λ_G⁻¹ α_G``,   ``Cov[r_G | r_rest] = Λ_G⁻¹``.

Groups are single measurements (leave-one-out) or whole projections (leave-one-angle-out,
the check that matters for sparse-angle CT: predicting an unseen projection from the others is
what the image prior is for). ``K`` comes as an :class:`ObservationSpectrum`,

    ``K(s) = U diag(s λ + σ²) Uᵀ + (s t + σ²)(I − U Uᵀ)``,

the eigen-structure of ``A J Σ_θ Jᵀ Aᵀ`` (exactly, or in the low-rank subspace plus its
isotropic remainder ``t``) with a prior scale ``s``.

Scaling the whole model — prior variances and ``σ²`` together — by ``c`` scales every held-out
covariance by ``c`` and leaves the errors unchanged, so ``c = mean(eᵀ Σ⁻¹ e) / b`` (``chi2``)
makes the held-out predictive calibrated in closed form: a recalibration of the posterior
scale by cross-validation, which stays sound when the evidence is misled by a misspecified
model (Bachoc 2013). (Scaling the prior alone is no use: the residual ``y − A x̂`` of a DIP
fitted to all measurements is noise-like, so its held-out likelihood prefers no prior.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ObservationSpectrum", "HeldOutPredictive", "heldout_groups", "heldout_predictive"]

_Z = {0.68: 0.994457883, 0.95: 1.959963985}  # two-sided normal quantiles


@dataclass
class ObservationSpectrum:
    """``K(s)`` from ``basis U (n, r)`` orthonormal, ``eigenvalues λ (r,)`` of ``A C Aᵀ`` in it,
    ``tail`` ``t`` (mean eigenvalue of ``A C Aᵀ`` off the basis; unused when ``r = n``) and
    ``noise_variance`` ``σ²`` (all float64)."""

    basis: Tensor
    eigenvalues: Tensor
    tail: float
    noise_variance: float

    @property
    def num_obs(self) -> int:
        return self.basis.shape[0]

    def _inverse_parts(self, scale: float) -> tuple[Tensor, float]:
        """``K(s)⁻¹ = U diag(d) Uᵀ + c I``: returns ``d``, ``c``."""
        c = 0.0 if self.basis.shape[1] == self.num_obs else \
            1.0 / (scale * self.tail + self.noise_variance)
        return 1.0 / (scale * self.eigenvalues + self.noise_variance) - c, c

    def solve(self, rhs: Tensor, scale: float = 1.0) -> Tensor:
        """``K(s)⁻¹ rhs`` for ``rhs (n,)`` or ``(n, k)``."""
        d, c = self._inverse_parts(scale)
        u = self.basis
        return u @ (d.reshape(-1, *([1] * (rhs.ndim - 1))) * (u.mT @ rhs)) + c * rhs

    def inverse_blocks(self, groups: Tensor, scale: float = 1.0) -> Tensor:
        """``[K(s)⁻¹]_GG`` for ``groups (G, b)`` of measurement indices: ``(G, b, b)``."""
        d, c = self._inverse_parts(scale)
        ug = self.basis[groups]  # (G, b, r)
        blocks = torch.einsum("gir,r,gjr->gij", ug, d, ug)
        return blocks + c * torch.eye(groups.shape[1], dtype=blocks.dtype, device=blocks.device)


def heldout_groups(obs_shape: tuple[int, int], kind: str) -> Tensor:
    """Index groups ``(G, b)`` over the row-major sinogram ``(n_angles, n_det)``:
    ``"measurement"`` (``G = n``, ``b = 1``) or ``"angle"`` (one group per projection)."""
    n_angles, n_det = (int(s) for s in obs_shape)
    idx = torch.arange(n_angles * n_det)
    if kind == "measurement":
        return idx.reshape(-1, 1)
    if kind == "angle":
        return idx.reshape(n_angles, n_det)
    raise ValueError(f"kind must be 'measurement' or 'angle', got {kind!r}")


@dataclass
class HeldOutPredictive:
    """Predictive of each measurement group given the rest.

    ``z (n,)``: held-out errors over their predictive std (standard normal when calibrated);
    ``log_likelihood``: joint held-out log density per measurement; ``coverage``: fraction of
    measurements inside the central 68 % / 95 % held-out intervals; ``chi2``: mean of
    ``eᵀ Σ⁻¹ e / b`` over groups (1 when calibrated); ``scale``: the prior scale used.
    """

    kind: str
    z: Tensor
    log_likelihood: float
    coverage: dict[str, float]
    chi2: float
    scale: float

    def to_dict(self) -> dict:
        return dict(kind=self.kind, log_likelihood=self.log_likelihood, coverage=self.coverage,
                    chi2=self.chi2, scale=self.scale, z_std=float(self.z.std()))


def _heldout_terms(spectrum: ObservationSpectrum, residual: Tensor, groups: Tensor,
                   scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per group: errors ``e (G, b)``, predictive covariances ``Σ (G, b, b)``, ``log|Σ| (G,)``
    and ``α_G (G, b)``."""
    alpha = spectrum.solve(residual, scale)
    prec = spectrum.inverse_blocks(groups, scale)
    chol = torch.linalg.cholesky(prec)
    cov = torch.cholesky_inverse(chol)
    err = (cov @ alpha[groups].unsqueeze(-1)).squeeze(-1)
    logdet = -2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return err, cov, logdet, alpha[groups]


def heldout_predictive(spectrum: ObservationSpectrum, residual: Tensor, groups: Tensor,
                       kind: str = "angle", scale: float = 1.0) -> HeldOutPredictive:
    """Held-out predictive of ``residual (n,)`` (``y − A x̂``) for ``groups`` (module docs)."""
    residual = _check_residual(spectrum, residual)
    with torch.no_grad():
        err, cov, logdet, alpha_g = _heldout_terms(spectrum, residual, groups, scale)
        b = groups.shape[1]
        quad = (err * alpha_g).sum(-1)  # eᵀ Σ⁻¹ e = α_Gᵀ Λ_G⁻¹ α_G
        z = (err / cov.diagonal(dim1=-2, dim2=-1).sqrt()).reshape(-1)
        ll = -0.5 * (logdet + quad + b * math.log(2 * math.pi)).sum() / residual.numel()
        cover = {f"{lvl:.2f}": float((z.abs() <= q).double().mean()) for lvl, q in _Z.items()}
    return HeldOutPredictive(kind, z, float(ll), cover, float(quad.mean() / b), float(scale))


def _check_residual(spectrum: ObservationSpectrum, residual: Tensor) -> Tensor:
    if not isinstance(residual, Tensor) or residual.numel() != spectrum.num_obs:
        raise ValueError(f"residual must be a tensor with {spectrum.num_obs} entries")
    return residual.reshape(-1).to(spectrum.basis)
