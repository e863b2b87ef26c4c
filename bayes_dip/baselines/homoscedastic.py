"""Homoscedastic DIP baselines: the DIP reconstruction with a predictive ``N(x̂, δ² I)``.

Following the original research code (``educating-dip/bayes_dip``, ``run_baselines_density.py``,
baseline ``deterministic``), the pixel variance is the measurement-noise variance ``σ_y²``
carried into image space by the truncated pseudo-inverse of the ray transform:

    δ² = σ_y² · c_A,   c_A = mean_i [(AᵀA)⁺_r]_ii = (1 / n_pixels) Σ_{k ≤ r} s_k⁻²,

with ``s_1 ≥ s_2 ≥ …`` the singular values of ``A`` and ``r = 100``: the "image noise term"
the linearised DIP adds to its predictive covariance, computed by the same function
(:meth:`bayes_dip.ct.RayTransform.variance_factor`, which also drops ``s_k < 10⁻³ s_1``).
The two baselines differ in ``σ_y²``:

* **DIP (σ² = 1)** — :func:`dip_fixed_predictive`: ``σ_y² = 1``.
* **DIP (evidence σ²)** — :func:`dip_evidence_predictive`: in the paper ``σ_y²`` is the
  noise variance found by the linearised DIP's evidence maximisation (pass it as
  ``noise_variance``). Without one, ``σ_y²`` maximises the evidence of the linear noise
  model under this baseline's own Gaussian, ``x ~ N(x̂, σ_y² c_A I)``, ``y = A x + ε``,
  ``ε ~ N(0, σ_y² I)``; then ``y − A x̂ ~ N(0, σ_y² (I + c_A A Aᵀ))`` and the maximiser is
  closed-form (:func:`evidence_noise_variance`).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bayes_dip.checks import check_int, check_number
from bayes_dip.linalg import pcg
from bayes_dip.metrics import Prediction

__all__ = ["evidence_noise_variance", "homoscedastic_predictive", "dip_fixed_predictive",
           "dip_evidence_predictive"]

DEFAULT_RANK = 100
"""Singular values of ``A`` kept in the pseudo-inverse (the original code's truncation)."""

_DENSE_MAX_ENTRIES = 2**22  # dense I + c A Aᵀ (Cholesky) up to this many entries of A; else CG


def _check_positive(value, name: str) -> float:
    if isinstance(value, Tensor) and value.numel() == 1:
        value = float(value)
    return check_number(value, name, gt=0, finite=True)


def _check_recon(recon: Tensor, ray_trafo: nn.Module | None = None) -> Tensor:
    if not isinstance(recon, Tensor) or not recon.is_floating_point():
        raise TypeError("recon must be a floating-point torch.Tensor")
    if recon.ndim != 4 or recon.shape[:2] != (1, 1):
        raise ValueError(f"recon must have shape (1, 1, H, W), got {tuple(recon.shape)}")
    if ray_trafo is not None and tuple(recon.shape[-2:]) != tuple(ray_trafo.im_shape):
        raise ValueError(f"recon must have images of ray_trafo.im_shape "
                         f"{tuple(ray_trafo.im_shape)}, got {tuple(recon.shape[-2:])}")
    if not bool(torch.isfinite(recon).all()):
        raise ValueError("recon contains NaN or inf values")
    return recon.detach()


def evidence_noise_variance(ray_trafo: nn.Module, y: Tensor, recon: Tensor,
                            variance_factor: float, *, cg_tol: float = 1e-10) -> float:
    """Closed-form maximiser of the evidence ``log N(y | A x̂, σ_y² (I + c_A A Aᵀ))`` in ``σ_y²``.

    The log evidence is ``−½ [m log(2π σ_y²) + log|M| + rᵀ M⁻¹ r / σ_y²]`` with
    ``r = y − A x̂``, ``M = I + c_A A Aᵀ`` and ``m`` measurements, so
    ``σ_y² = rᵀ M⁻¹ r / m``. ``M`` is factorised densely when ``A`` is small, else
    ``M⁻¹ r`` comes from CG with ``A``/``Aᵀ`` (relative residual ``cg_tol``).

    Args:
        y: ``(1, 1, n_angles, n_det)`` measurement; recon: ``(1, 1, H, W)`` DIP output.
        variance_factor: ``c_A = ray_trafo.variance_factor(rank)`` (``> 0``).
    """
    c = _check_positive(variance_factor, "variance_factor")
    recon = _check_recon(recon, ray_trafo)
    obs_shape = tuple(int(s) for s in ray_trafo.obs_shape)
    if not isinstance(y, Tensor) or tuple(y.shape) != (1, 1, *obs_shape):
        raise ValueError(f"y must be a tensor of shape (1, 1, {obs_shape[0]}, {obs_shape[1]}), "
                         f"got {tuple(getattr(y, 'shape', ()))}")
    if not bool(torch.isfinite(y).all()):
        raise ValueError("y contains NaN or inf values")
    x64 = recon.to(torch.float64)
    r = (y.detach().to(torch.float64) - ray_trafo.A(x64)).reshape(-1)
    m, n = r.numel(), x64.numel()
    if m * n <= _DENSE_MAX_ENTRIES:
        a = ray_trafo.matmul(torch.eye(n, dtype=torch.float64, device=r.device))
        gram = c * (a @ a.T)
        gram.diagonal().add_(1.0)
        chol = torch.linalg.cholesky(gram)
        white = torch.linalg.solve_triangular(chol, r[:, None], upper=False)
        quad = float(white.square().sum())
    else:
        def matmul(v: Tensor) -> Tensor:  # (m, k) -> (I + c A Aᵀ) v
            return v + c * ray_trafo.matmul(ray_trafo.rmatmul(v))

        sol, info = pcg(matmul, r[:, None], tol=cg_tol)
        if not info.converged:
            raise RuntimeError(f"CG did not reach cg_tol={cg_tol} (relative residual "
                               f"{float(info.residual_norms.max()):.2e}); raise cg_tol")
        quad = float(r @ sol[:, 0])
    return quad / m


def _variance_factor(ray_trafo: nn.Module, variance_factor: float | None, rank: int) -> float:
    """The given ``c_A`` (checked) or ``ray_trafo.variance_factor(rank)``."""
    if variance_factor is not None:
        return _check_positive(variance_factor, "variance_factor")
    return ray_trafo.variance_factor(check_int(rank, "rank", 1))


def homoscedastic_predictive(recon: Tensor, noise_variance: float,
                             variance_factor: float) -> Prediction:
    """``N(recon, δ² I)``, ``δ² = noise_variance · variance_factor`` (``recon (1, 1, H, W)``),
    as a :class:`~bayes_dip.metrics.Prediction` of independent pixels (mean in float64) with
    ``info`` ``noise_variance`` ``σ_y²``, ``variance_factor`` ``c_A`` and ``pixel_variance`` ``δ²``."""
    recon = _check_recon(recon)
    s2 = _check_positive(noise_variance, "noise_variance")
    c = _check_positive(variance_factor, "variance_factor")
    mean = recon.to(torch.float64)
    return Prediction(mean=mean, std=torch.full_like(mean, math.sqrt(s2 * c)),
                      independent_pixels=True,
                      info={"noise_variance": s2, "variance_factor": c, "pixel_variance": s2 * c})


def dip_fixed_predictive(recon: Tensor, ray_trafo: nn.Module, *, noise_variance: float = 1.0,
                         variance_factor: float | None = None,
                         rank: int = DEFAULT_RANK) -> Prediction:
    """DIP (σ² = 1): ``N(x̂, σ_y² c_A I)`` with a fixed ``σ_y²`` (default 1).

    ``variance_factor``: a precomputed ``c_A`` for ``ray_trafo`` (saves the SVD across
    images of one geometry); default ``ray_trafo.variance_factor(rank)``.
    """
    recon = _check_recon(recon, ray_trafo)
    c = _variance_factor(ray_trafo, variance_factor, rank)
    return homoscedastic_predictive(recon, noise_variance, c)


def dip_evidence_predictive(recon: Tensor, ray_trafo: nn.Module, y: Tensor, *,
                            noise_variance: float | None = None,
                            variance_factor: float | None = None,
                            rank: int = DEFAULT_RANK) -> Prediction:
    """DIP (evidence σ²): ``N(x̂, σ_y² c_A I)`` with an evidence-optimised ``σ_y²``.

    ``noise_variance``: ``σ_y²`` from the linearised DIP's evidence maximisation (the
    paper's "DIP (MLL σ²)": ``UncertaintyResult.noise_variance`` or
    ``EvidenceResult.noise_variance`` of :mod:`bayes_dip.linearized` with the MLL objective);
    ``None``: :func:`evidence_noise_variance` of this baseline's own linear-Gaussian model. ``recon`` ``(1, 1, H, W)``, ``y`` ``(1, 1, n_angles, n_det)``;
    ``variance_factor``, ``rank``: as for :func:`dip_fixed_predictive`.
    """
    recon = _check_recon(recon, ray_trafo)
    c = _variance_factor(ray_trafo, variance_factor, rank)
    if noise_variance is None:
        noise_variance = evidence_noise_variance(ray_trafo, y, recon, c)
    return homoscedastic_predictive(recon, noise_variance, c)
