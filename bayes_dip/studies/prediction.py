"""What a study method returns: a Gaussian pixel predictive and how it was obtained."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["Prediction"]


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
