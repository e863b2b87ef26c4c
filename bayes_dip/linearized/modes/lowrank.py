"""``lowrank``: the exact mode's algebra in a rank-``r`` observation subspace (large images)."""
from __future__ import annotations

from typing import Any

import torch

from ..predcp import FixedSampleTVPredCP
from ..predictive import subspace_predictive
from ..subspace import SubspaceCovariance
from .base import EvidenceMode

__all__ = ["LowRankMode"]


class LowRankMode(EvidenceMode):
    """The evidence bound of a :class:`SubspaceCovariance` (exact at ``r = n_obs``), the PredCP
    with fixed samples (2 per block unless given) and solve-free predictive samples (the std
    map from at least ``variance_samples`` of them)."""

    name = "lowrank"
    sampler_options = ("batch_size", "progress")

    def structure(self, lin, seed: int) -> SubspaceCovariance:
        return lin.subspace(seed)

    def check_structure(self, structure: Any) -> None:
        if not isinstance(structure, SubspaceCovariance):
            raise ValueError("mode='lowrank' needs structured=SubspaceCovariance.build(...)")

    def predcp(self, lin, rate: float, num_samples: int | None, seed: int) -> FixedSampleTVPredCP:
        gen = torch.Generator(device=lin.jac.device).manual_seed(seed)
        return FixedSampleTVPredCP(lin.jac, lin.model.prior, rate, num_samples=num_samples or 2,
                                   generator=gen)

    def spectrum(self, lin, noise_variance: float):
        return lin.subspace().spectrum(lin.model.prior, noise_variance)

    def predictive(self, lin, *, num_samples: int, image_noise, seed: int, mean: str,
                   **options: Any):
        gen = torch.Generator(device=lin.jac.device).manual_seed(seed)
        spectrum = lin.subspace(seed).spectrum(lin.model.prior,
                                               float(lin.model.noise_variance.detach()))
        return subspace_predictive(lin.model, spectrum, num_samples, generator=gen,
                                   mean=lin.recon if mean == "dip" else "posterior",
                                   image_noise=image_noise, **options)

    def draws(self, num_samples: int, variance_samples: int) -> int:
        return max(num_samples, variance_samples)
