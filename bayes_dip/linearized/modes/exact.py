"""``exact``: every Gram matrix of ``K_yy`` (small images; DESIGN.md §7's structured trick)."""
from __future__ import annotations

from typing import Any

from ..covariance import StructuredCovariance
from ..predcp import ExactTVPredCP
from ..predictive import conditional_mean, exact_predictive
from .base import EvidenceMode

__all__ = ["ExactMode"]


class ExactMode(EvidenceMode):
    """The exact negative log evidence from a :class:`StructuredCovariance` (Cholesky in
    float64, milliseconds per step), the exact PredCP and the full-covariance predictive."""

    name = "exact"
    full_covariance = True

    def structure(self, lin, seed: int) -> StructuredCovariance:
        return lin.structured

    def check_structure(self, structure: Any) -> None:
        if not isinstance(structure, StructuredCovariance):
            raise ValueError("mode='exact' needs structured=StructuredCovariance.build(...)")

    def predcp(self, lin, rate: float, num_samples: int | None, seed: int) -> ExactTVPredCP:
        return ExactTVPredCP(lin.structured, lin.model.prior, rate)

    def spectrum(self, lin, noise_variance: float):
        return lin.structured.spectrum(lin.model.prior, noise_variance)

    def predictive(self, lin, *, num_samples: int, image_noise, seed: int, mean: str,
                   **options: Any):
        center = lin.recon if mean == "dip" else \
            conditional_mean(lin.model, structured=lin.structured)[0]
        return exact_predictive(lin.model, lin.structured, mean=center, image_noise=image_noise)
