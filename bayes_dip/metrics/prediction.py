"""The one predictive type: what every method of :data:`~bayes_dip.studies.METHODS` and every
baseline returns (in a study and on the command line), a Gaussian pixel predictive, how it was
obtained, and its scores against a ground truth."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

import torch
from torch import Tensor

from .calibration import coverage_curve
from .log_likelihood import log_likelihood_diagonal, log_likelihood_full, log_likelihood_patchwise

__all__ = ["Prediction", "PredictiveLogLikelihood", "SAMPLES_PER_PIXEL_FOR_FULL"]

SAMPLES_PER_PIXEL_FOR_FULL = 10
"""A full sample covariance is used only from this many samples per pixel on (with fewer it
is near-singular and its log-likelihood meaningless)."""


class PredictiveLogLikelihood(NamedTuple):
    """Test log-likelihood per pixel, the covariance it used (``kind``) and the jitter added."""

    per_pixel: float
    kind: str
    jitter: float


@dataclass
class Prediction:
    """Predictive ``N(mean, Σ)`` over the pixels of one image.

    Attributes:
        mean: ``(1, 1, H, W)``.
        std: ``(1, 1, H, W)`` pixel standard deviations ``sqrt(diag Σ)``, > 0.
        covariance: dense ``(H·W, H·W)`` Σ (row-major pixels) where the method has it exactly.
        patch_covariances: patch size ``p`` -> covariances of the patches of
            :func:`bayes_dip.metrics.image_patches` (a tensor ``(n_patches, p², p²)`` or a
            list), ``added_variance`` included.
        samples: ``(S, 1, H, W)`` draws from the predictive (without ``added_variance``).
        gallery: ``(k, 1, H, W)`` a few predictive samples for figures only (when
            ``samples`` is not kept).
        added_variance: image-space noise variance added to every pixel on top of the
            covariance of ``samples`` (already included in ``std`` and ``covariance``).
        independent_pixels: Σ is diagonal (homoscedastic DIP): the diagonal
            log-likelihood is the full one.
        network_output: ``(1, 1, H, W)`` the trained network's output the predictive is built
            around (the DIP output; the dropout-free output for MC-dropout), where there is one.
        heldout_z: z-scores of held-out measurements (leave-one-angle-out), the check that
            needs no ground truth, where the method has one.
        seconds: wall time per stage (``dip``, ``evidence``, ``predictive``, ...).
        info: plain values worth reporting (optimised σ_y², hyperparameters, CG stats).
    """

    mean: Tensor
    std: Tensor
    covariance: Tensor | None = None
    patch_covariances: dict[int, Any] = field(default_factory=dict)
    samples: Tensor | None = None
    gallery: Tensor | None = None
    added_variance: float = 0.0
    independent_pixels: bool = False
    network_output: Tensor | None = None
    heldout_z: Tensor | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mean.ndim != 4 or self.mean.shape[:2] != (1, 1):
            raise ValueError(f"mean must have shape (1, 1, H, W), got {tuple(self.mean.shape)}")
        if self.std.shape != self.mean.shape:
            raise ValueError(f"std must have the shape of mean {tuple(self.mean.shape)}, "
                             f"got {tuple(self.std.shape)}")
        n = self.mean[0, 0].numel()
        if self.covariance is not None and tuple(self.covariance.shape) != (n, n):
            raise ValueError(f"covariance must have shape ({n}, {n}), "
                             f"got {tuple(self.covariance.shape)}")
        if self.samples is not None and (self.samples.ndim != 4
                                         or self.samples.shape[1:] != self.mean.shape[1:]):
            raise ValueError(f"samples must have shape (S, 1, H, W) matching mean, "
                             f"got {tuple(self.samples.shape)}")
        if not self.added_variance >= 0:
            raise ValueError(f"added_variance must be >= 0, got {self.added_variance}")

    @classmethod
    def from_uncertainty(cls, result, gallery_samples: int = 0, **fields: Any) -> "Prediction":
        """The predictive of a linearised-DIP :class:`~bayes_dip.linearized.UncertaintyResult`:
        its full covariance (exact mode; ``gallery_samples`` of its samples kept for figures)
        or all its draws with the image noise ``η²`` as ``added_variance`` (sampled modes).
        ``fields`` go to the constructor (``seconds``, ``info``, ``network_output``, ...)."""
        pred = result.predictive
        covariance = getattr(pred, "covariance", None)
        if covariance is not None:
            return cls(mean=result.mean, std=result.std, covariance=covariance,
                       gallery=result.samples[:gallery_samples], **fields)
        return cls(mean=result.mean, std=result.std, samples=pred.samples,
                   added_variance=result.image_noise, **fields)

    @property
    def variance(self) -> Tensor:
        """``(1, 1, H, W)`` pixel variances ``diag Σ``."""
        return self.std.square()

    def sample(self, count: int, seed: int = 0) -> Tensor | None:
        """Up to ``count`` predictive draws ``(k, 1, H, W)``: the method's gallery or samples,
        else ``count`` fresh draws from its full covariance (seeded); ``None`` for methods
        with none of these or ``count == 0``."""
        if count == 0:
            return None
        for draws in (self.gallery, self.samples):
            if draws is not None:
                return draws[:count]
        if self.covariance is None:
            return None
        cov = self.covariance.double()
        n = cov.shape[0]
        chol, info = torch.linalg.cholesky_ex(cov)
        if info != 0:
            chol = torch.linalg.cholesky(cov + 1e-10 * cov.diagonal().mean() * torch.eye(
                n, dtype=cov.dtype, device=cov.device))
        gen = torch.Generator(device=cov.device).manual_seed(seed)
        noise = torch.randn(n, count, generator=gen, dtype=cov.dtype, device=cov.device)
        draws = (chol @ noise).T.reshape(count, *self.mean.shape[1:])
        return (draws + self.mean.double()).to(self.mean.dtype)

    def log_likelihood(self, ground_truth: Tensor, patch_size: int = 2,
                       full_covariance_max_pixels: int = 4096) -> PredictiveLogLikelihood:
        """Test log-likelihood per pixel of ``ground_truth (1, 1, H, W)``, in order of
        preference under: the full covariance; the patch covariances of ``patch_size``; for
        independent pixels or without samples, the diagonal; from the samples, the full
        sample covariance for small images (``H·W <= full_covariance_max_pixels`` and at least
        :data:`SAMPLES_PER_PIXEL_FOR_FULL` samples per pixel), else patch covariances."""
        if not bool((self.std > 0).all()):
            raise ValueError(f"{int((self.std <= 0).sum())} pixels have zero predictive variance "
                             "(e.g. saturated sigmoid outputs of MC-dropout); add an image-noise "
                             "variance (added_variance), e.g. σ_y² · ray_trafo.variance_factor()")
        gt = ground_truth.to(self.mean.device)
        if self.covariance is not None:
            ll = log_likelihood_full(self.mean, self.covariance, gt)
            return PredictiveLogLikelihood(ll.per_pixel, "full", ll.jitter)
        if patch_size in self.patch_covariances:
            ll = log_likelihood_patchwise(self.mean, gt, patch_size,
                                          covariances=self.patch_covariances[patch_size])
            return PredictiveLogLikelihood(ll.per_pixel, f"patchwise-{patch_size}", ll.jitter)
        if self.independent_pixels or self.samples is None:
            kind = "full" if self.independent_pixels else "diagonal"
            return PredictiveLogLikelihood(log_likelihood_diagonal(self.mean, self.std, gt),
                                           kind, 0.0)
        h, w = self.mean.shape[-2:]
        full = (h * w <= full_covariance_max_pixels
                and self.samples.shape[0] >= SAMPLES_PER_PIXEL_FOR_FULL * h * w)
        patch = max(h, w) if full else patch_size
        ll = log_likelihood_patchwise(self.mean, gt, patch, samples=self.samples,
                                      added_variance=self.added_variance)
        return PredictiveLogLikelihood(ll.per_pixel, "full (sample covariance)" if full
                                       else f"patchwise-{patch}", ll.jitter)

    def coverage(self, ground_truth: Tensor, levels: Sequence[float] = (0.68, 0.95),
                 ) -> dict[str, float]:
        """Fraction of pixels whose central ``level`` interval ``mean ± z·std`` holds the
        ground truth, per level (keys ``"0.68"``, ...)."""
        curve = coverage_curve(self.mean.detach().cpu().double(), self.std.detach().cpu().double(),
                               ground_truth.detach().cpu().double(), levels=tuple(levels))
        return {f"{lvl:.2f}": float(c) for lvl, c in zip(curve.levels, curve.coverage)}
