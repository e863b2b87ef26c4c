"""Predictive posterior of the linearised DIP over the image (DESIGN.md §1.6).

``x | y ~ N(x̂, Σ_post)``, ``Σ_post = C − C Aᵀ K_yy⁻¹ A C + η² I`` with ``C = J Σ_θ Jᵀ`` and
``η² = σ_y² c_A`` the image-space noise term (:meth:`bayes_dip.ct.RayTransform.variance_factor`).

* :func:`exact_predictive` — full covariance from a StructuredCovariance (small images).
* :func:`sample_predictive` — Matheron's rule: ``e = x₀ − C Aᵀ K_yy⁻¹ (A x₀ + ε)`` with
  ``x₀ ~ N(0, C)``, ``ε ~ N(0, σ_y² I)`` is a draw of ``N(0, Σ_post − η² I)``; ``K_yy⁻¹`` by
  Cholesky (with a StructuredCovariance) or preconditioned CG (matrix-free). ``η²`` is added
  analytically (std, patch covariances).

Both are structures, not scores: :meth:`bayes_dip.metrics.Prediction.from_uncertainty` turns
a result into the one predictive type that test log-likelihoods and coverage are read from.
"""
from __future__ import annotations

import hashlib
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from bayes_dip.checks import check_int, check_number
from bayes_dip.linalg import CGInfo, Preconditioner, pcg
from bayes_dip.output_folder import KeyedCheckpoint, parameter_digest
from bayes_dip.runtime import deferred_interrupts

from .covariance import StructuredCovariance
from .heldout import ObservationSpectrum
from .model import LinearizedModel

__all__ = ["conditional_mean", "ExactPredictive", "exact_predictive",
           "SampledPredictive", "sample_predictive", "subspace_predictive"]

def _resolve_noise(model: LinearizedModel, image_noise: float | str) -> float:
    if image_noise == "auto":
        return float(model.noise_variance.detach()) * model.ray_trafo.variance_factor()
    return check_number(image_noise, "image_noise", ge=0)


def _mean(model: LinearizedModel, mean: Tensor | None) -> Tensor:
    if mean is None:
        return model.jac.output.detach().to(torch.float64)
    if not isinstance(mean, Tensor) or tuple(mean.shape) != tuple(model.jac.output.shape):
        raise ValueError(f"mean must have shape {tuple(model.jac.output.shape)}")
    return mean.detach().to(torch.float64)


def _checkpoint(path: str | os.PathLike | None, model: LinearizedModel,
                generator: torch.Generator | None, **settings: Any) -> KeyedCheckpoint | None:
    """The sampling stage's checkpoint, keyed by the settings, the generator's starting state,
    the linearisation point and the hyperparameters (another run's file is refused)."""
    if path is None:
        return None
    if generator is None:
        raise ValueError("checkpoint_path needs a generator (the draws must be reproducible)")
    state = generator.get_state().cpu().numpy().tobytes()
    key = dict(settings, generator=hashlib.sha1(state).hexdigest(),
               theta=float(model.jac.theta.double().sum()),
               hyperparameters=parameter_digest(model))
    return KeyedCheckpoint(path, key, "posterior samples")


def _draw(num_samples: int, batch_size: int, draw: Callable[[int], Tensor],
          generator: torch.Generator | None, checkpoint: KeyedCheckpoint | None,
          state: dict[str, Any] | None, every: int, bar: tqdm, **kept: Any) -> Tensor:
    """``(num_samples, n_pix)`` from ``draw(b) -> (b, n_pix)`` batch by batch, continuing from a
    checkpoint ``state``; the draws so far, the generator state and ``kept`` are saved every
    ``every`` batches, at the end and on SIGINT/SIGTERM (then ``KeyboardInterrupt``)."""
    errors = [] if state is None else list(state["errors"])  # batches (no copy when saved)
    done = sum(e.shape[0] for e in errors)
    if state is not None:
        generator.set_state(state["generator"])
        bar.update(-(-done // batch_size))
    with deferred_interrupts(checkpoint is not None) as stop:
        for i, start in enumerate(range(done, num_samples, batch_size)):
            b = min(batch_size, num_samples - start)
            errors.append(draw(b))
            bar.update()
            last = start + b == num_samples
            if checkpoint is not None and ((i + 1) % every == 0 or last or stop.requested):
                checkpoint.save(errors=errors, generator=generator.get_state(), **kept)
            if stop.requested:
                bar.close()
                raise KeyboardInterrupt
    return torch.cat(errors)


def conditional_mean(model: LinearizedModel, *, structured: StructuredCovariance | None = None,
                     precond: Preconditioner | None = None, cg_tol: float = 1e-6,
                     cg_max_iter: int = 500) -> tuple[Tensor, CGInfo | None]:
    """Posterior mean of the linearised model with the weight prior centred at ``θ̂``:
    ``x̂ + C Aᵀ K_yy⁻¹ (y − A x̂)`` ``(1, 1, H, W)`` float64 (the mean that matches the
    covariance of :func:`exact_predictive` / :func:`sample_predictive`).

    ``K_yy⁻¹`` by Cholesky with ``structured``, else by preconditioned CG (reported)."""
    x_hat = model.jac.output.detach().to(torch.float64)
    residual = model.residual.unsqueeze(1)
    info = None
    with torch.no_grad():
        if structured is not None:
            kyy = structured.observation_covariance(model.prior,
                                                    model.noise_variance.to(torch.float64))
            alpha = torch.cholesky_solve(residual, torch.linalg.cholesky(kyy))
            corr = structured.cross_covariance(model.prior) @ alpha
        else:
            dtype = model.jac.dtype
            alpha, info = pcg(model.obs_cov.matmul, residual.to(dtype), precond=precond,
                              tol=cg_tol, max_iter=cg_max_iter)
            corr = model.obs_cov.cross_matmul(alpha)
    return x_hat + corr.to(torch.float64).reshape(x_hat.shape), info


@dataclass
class ExactPredictive:
    """``N(mean, covariance)`` over the row-major pixels; ``covariance`` includes ``image_noise``
    (``η²``) and ``jitter`` on its diagonal (both reported, float64)."""

    mean: Tensor
    covariance: Tensor
    image_noise: float
    jitter: float

    def std(self) -> Tensor:
        """Pixel standard deviations ``(1, 1, H, W)``."""
        return self.covariance.diagonal().sqrt().reshape(self.mean.shape)

    def sample(self, num: int, generator: torch.Generator | None = None) -> Tensor:
        """``(num, 1, H, W)`` draws."""
        chol = torch.linalg.cholesky(self.covariance)
        eps = torch.randn(chol.shape[0], num, generator=generator, dtype=chol.dtype,
                          device=chol.device)
        return self.mean.reshape(1, 1, *self.mean.shape[-2:]) + (chol @ eps).mT.reshape(
            num, 1, *self.mean.shape[-2:])


def exact_predictive(model: LinearizedModel, structured: StructuredCovariance, *,
                     mean: Tensor | None = None, image_noise: float | str = "auto",
                     jitter: float | None = None) -> ExactPredictive:
    """Full-covariance predictive from the Grams of ``structured`` (float64).

    ``jitter=None`` chooses the smallest diagonal jitter that lifts the smallest eigenvalue of
    the covariance to ``1e-10 · mean(diag)`` (0 when it already is); it is reported, never
    retried silently. ``mean`` defaults to ``x̂``.
    """
    if not isinstance(structured, StructuredCovariance):
        raise TypeError("structured must be a StructuredCovariance, got "
                        f"{type(structured).__name__}")
    eta2 = _resolve_noise(model, image_noise)
    with torch.no_grad():
        prior, nv = model.prior, model.noise_variance.to(torch.float64)
        c = structured.image_covariance(prior)
        cross = structured.cross_covariance(prior)  # C Aᵀ
        chol = torch.linalg.cholesky(structured.observation_covariance(prior, nv))
        b = torch.linalg.solve_triangular(chol, cross.mT, upper=False)
        cov = c - b.mT @ b
        cov = 0.5 * (cov + cov.mT)
        cov.diagonal().add_(eta2)
        if jitter is None:
            floor = 1e-10 * float(cov.diagonal().mean())
            lowest = float(torch.linalg.eigvalsh(cov)[0])
            jitter = max(0.0, floor - lowest)
        else:
            check_number(jitter, "jitter", ge=0)
        cov.diagonal().add_(jitter)
    return ExactPredictive(_mean(model, mean), cov, eta2, float(jitter))


@dataclass
class SampledPredictive:
    """Predictive from Matheron samples: ``samples (S, 1, H, W)`` = mean + posterior errors
    (without the image noise ``η²``, which is added analytically); ``cg`` per batch."""

    mean: Tensor
    samples: Tensor
    image_noise: float
    cg: list[CGInfo]

    def std(self) -> Tensor:
        """Pixel std ``(1, 1, H, W)``: ``√(mean_s e_s² + η²)`` (errors about the known mean)."""
        err = self.samples - self.mean
        return (err.square().mean(0, keepdim=True) + self.image_noise).sqrt()

    def cg_report(self) -> dict[str, Any] | None:
        """The CG solves of the samples (``None`` without any): how many, the most iterations,
        the largest final relative residual, and whether every one reached its tolerance."""
        if not self.cg:
            return None
        return {"solves": len(self.cg), "max_iterations": max(i.iterations for i in self.cg),
                "max_residual": max(float(i.residual_norms.max()) for i in self.cg),
                "converged": all(i.converged for i in self.cg)}


def subspace_predictive(model: LinearizedModel, spectrum: ObservationSpectrum, num_samples: int,
                        *, mean: str | Tensor = "posterior", image_noise: float | str = "auto",
                        batch_size: int = 8, generator: torch.Generator | None = None,
                        progress: bool = False,
                        checkpoint_path: str | os.PathLike | None = None,
                        checkpoint_every: int = 16) -> SampledPredictive:
    """Posterior given the projected data ``Uᵀ y`` (``U`` the basis of ``spectrum``, e.g. the
    low-rank subspace): exact Gaussian conditioning on ``r`` linear functionals of ``y``, so
    the covariance ``C − G diag(1/(λ + σ²)) Gᵀ`` with ``G = C Aᵀ U`` is never below the
    full-data posterior's (conservative), and equal to it when ``U`` spans all measurements.

    Samples need no solves: ``e = x₀ − G diag(1/(λ + σ²)) (Uᵀ A x₀ + σ ξ)``, ``x₀ ~ N(0, C)``,
    one JVP each after the ``r`` VJP/JVP pairs of ``G``; so hundreds of samples fit where CG
    samples allow tens (pixel variances to ``√(2/S)`` relative error). ``mean``:
    ``"posterior"`` (``x̂ + G diag(1/(λ + σ²)) Uᵀ (y − A x̂)``), ``"dip"`` (``x̂``) or an
    image ``(1, 1, H, W)``.

    ``checkpoint_path``: a file that keeps ``G`` and the draws so far (every
    ``checkpoint_every`` batches, at the end and on SIGINT/SIGTERM, which then raise
    ``KeyboardInterrupt``); a rerun continues from it to the uninterrupted run's samples
    (needs a ``generator``).
    """
    for name, value, minimum in (("num_samples", num_samples, 2), ("batch_size", batch_size, 1),
                                 ("checkpoint_every", checkpoint_every, 1)):
        check_int(value, name, minimum)
    if spectrum.num_obs != model.num_obs:
        raise ValueError(f"spectrum has {spectrum.num_obs} measurements, model {model.num_obs}")
    eta2 = _resolve_noise(model, image_noise)
    jac, dtype, f64 = model.jac, model.jac.dtype, torch.float64
    basis, nv = spectrum.basis, spectrum.noise_variance
    rank = basis.shape[1]
    gain = 1.0 / (spectrum.eigenvalues + nv)  # (r,)
    total = -(-rank // batch_size) + -(-num_samples // batch_size)
    bar = tqdm(total=total, desc="posterior samples", disable=not progress, dynamic_ncols=True)
    checkpoint = _checkpoint(checkpoint_path, model, generator, kind="subspace",
                             num_samples=num_samples, batch_size=batch_size, rank=rank,
                             basis=float(basis.double().abs().sum()), noise=nv)
    state = None if checkpoint is None else checkpoint.load(basis.device)

    def draw(b: int) -> Tensor:
        x0 = model.image_cov.sample(b, generator).to(f64)
        proj = basis.mT @ model.likelihood.matmul(x0.to(dtype)).to(f64)
        proj += math.sqrt(nv) * torch.randn(rank, b, generator=generator, dtype=f64,
                                            device=basis.device)
        return (x0 - cross @ (gain.unsqueeze(1) * proj)).mT

    with torch.no_grad():
        if state is None:
            cross = []  # G = C Aᵀ U, (n_pix, r)
            for i in range(0, rank, batch_size):
                u = model.likelihood.rmatmul(basis[:, i:i + batch_size].to(dtype))
                cross.append(model.image_cov.matmul(u).to(f64))
                bar.update()
            cross = torch.cat(cross, 1)
        else:
            cross = state["cross"]
            bar.update(-(-rank // batch_size))
        err = _draw(num_samples, batch_size, draw, generator, checkpoint, state,
                    checkpoint_every, bar, cross=cross)
        bar.close()
        err = err.reshape(num_samples, 1, *jac.im_shape)
        if isinstance(mean, str) and mean == "posterior":
            x_hat = _mean(model, None)
            center = x_hat + (cross @ (gain * (basis.mT @ model.residual))).reshape(x_hat.shape)
        elif isinstance(mean, str) and mean == "dip":
            center = _mean(model, None)
        elif isinstance(mean, Tensor):
            center = _mean(model, mean)
        else:
            raise ValueError(f"mean must be 'posterior', 'dip' or an image tensor, got {mean!r}")
    return SampledPredictive(center, center + err, eta2, [])


def sample_predictive(model: LinearizedModel, num_samples: int, *,
                      structured: StructuredCovariance | None = None, mean: Tensor | None = None,
                      image_noise: float | str = "auto", batch_size: int = 8,
                      cg_tol: float = 1e-4, cg_max_iter: int = 200, precond_rank: int = 200,
                      precond: Preconditioner | None = None,
                      generator: torch.Generator | None = None, progress: bool = False,
                      checkpoint_path: str | os.PathLike | None = None,
                      checkpoint_every: int = 4) -> SampledPredictive:
    """``num_samples`` posterior draws by Matheron's rule (see module docs).

    With ``structured`` the solves use a Cholesky factor of ``K_yy``; otherwise preconditioned
    CG to ``cg_tol`` relative residual, with ``precond`` (e.g.
    :meth:`~bayes_dip.linearized.subspace.SubspaceCovariance.preconditioner`) or else a
    Nyström preconditioner of rank ``precond_rank``. ``checkpoint_path``/``checkpoint_every``:
    as for :func:`subspace_predictive` (the draws and CG reports so far are kept).
    """
    for name, value, minimum in (("num_samples", num_samples, 2), ("batch_size", batch_size, 1),
                                 ("cg_max_iter", cg_max_iter, 1),
                                 ("precond_rank", precond_rank, 0),
                                 ("checkpoint_every", checkpoint_every, 1)):
        check_int(value, name, minimum)
    eta2 = _resolve_noise(model, image_noise)
    x_mean = _mean(model, mean)
    jac, prior, dtype = model.jac, model.prior, model.jac.dtype
    chol = cross = precond = None
    with torch.no_grad():
        nv = model.noise_variance
        if structured is not None:
            kyy = structured.observation_covariance(prior, nv.to(torch.float64))
            chol = torch.linalg.cholesky(kyy)
            cross = structured.cross_covariance(prior)
        elif precond is None and precond_rank > 0:
            precond = model.obs_cov.preconditioner(min(precond_rank, model.num_obs - 1), generator)
        checkpoint = _checkpoint(checkpoint_path, model, generator, kind="matheron",
                                 num_samples=num_samples, batch_size=batch_size, cg_tol=cg_tol,
                                 cg_max_iter=cg_max_iter, exact=structured is not None)
        state = None if checkpoint is None else checkpoint.load(jac.device)
        infos: list[CGInfo] = [] if state is None else list(state["cg"])

        def draw(b: int) -> Tensor:
            x0 = jac.jvp(prior.sample(b, generator, dtype=prior.log_variance.dtype).to(dtype))
            eps = torch.randn(model.num_obs, b, generator=generator, dtype=dtype,
                              device=jac.device) * nv.to(dtype).sqrt()
            y0 = model.likelihood.matmul(x0) + eps
            if chol is not None:
                alpha = torch.cholesky_solve(y0.to(torch.float64), chol)
                corr = cross @ alpha
            else:
                alpha, info = pcg(model.obs_cov.matmul, y0, precond=precond, tol=cg_tol,
                                  max_iter=cg_max_iter)
                infos.append(info)
                corr = model.obs_cov.cross_matmul(alpha)
            return (x0.to(torch.float64) - corr.to(torch.float64)).mT

        bar = tqdm(total=-(-num_samples // batch_size), desc="posterior samples (CG)",
                   disable=not progress, dynamic_ncols=True)
        err = _draw(num_samples, batch_size, draw, generator, checkpoint, state,
                    checkpoint_every, bar, cg=infos)
        bar.close()
        err = err.reshape(num_samples, 1, *jac.im_shape)
    pred = SampledPredictive(x_mean, x_mean + err, eta2, infos)
    report = pred.cg_report()
    if report is not None and not report["converged"]:
        failed = sum(not i.converged for i in infos)
        warnings.warn(f"posterior sampling: {failed} of {len(infos)} CG solves stopped at "
                      f"{cg_max_iter} iterations above cg_tol {cg_tol:g} (largest relative "
                      f"residual {report['max_residual']:.1e}); the samples are approximate: "
                      "raise cg_max_iter", RuntimeWarning, stacklevel=2)
    return pred
