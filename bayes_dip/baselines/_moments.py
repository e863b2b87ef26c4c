"""Streaming mean and (full / patch / pixel) covariance of image samples, in float64.

Batches are merged with Chan et al.'s pairwise update of the centred second moments
(``M2 = Σ (x − x̄)(x − x̄)ᵀ``), which stays accurate when the variance is tiny compared
with the mean (no ``E[x²] − x̄²`` cancellation).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from bayes_dip.metrics import image_patches

PatchCovariances = Tensor | list[Tensor]


class PatchGrouping:
    """The patches of :func:`bayes_dip.metrics.image_patches`, grouped by pixel count.

    ``groups``: list of ``(patch ids (G,), pixel indices (G, n))``; ``num_patches``: total.
    """

    def __init__(self, im_shape: tuple[int, int], patch_size: int):
        patches = image_patches(im_shape, patch_size)
        by_size: dict[int, list[int]] = {}
        for k, pixels in enumerate(patches):
            by_size.setdefault(pixels.numel(), []).append(k)
        self.num_patches = len(patches)
        self.groups = [(torch.tensor(ids), torch.stack([patches[k] for k in ids]))
                       for ids in by_size.values()]

    def assemble(self, per_group: Sequence[Tensor]) -> PatchCovariances:
        """One ``(n_patches, n, n)`` tensor if all patches have ``n`` pixels, else a list
        of ``(n_k, n_k)`` tensors in patch order (the two forms the metrics accept)."""
        if len(self.groups) == 1:
            return per_group[0]
        covs: list[Tensor] = [torch.empty(0)] * self.num_patches
        for (ids, _), group_covs in zip(self.groups, per_group):
            for k, cov in zip(ids.tolist(), group_covs):
                covs[k] = cov
        return covs


class StreamingMoments:
    """Accumulates the sample mean and centred second moments of flat samples ``(b, n)``.

    Args:
        num_pixels: ``n``.
        full: also accumulate the dense ``(n, n)`` second moment.
        patches: patch size -> :class:`PatchGrouping` whose patch blocks are accumulated.
        device: device of the accumulators (float64).
    """

    def __init__(self, num_pixels: int, full: bool, patches: dict[int, PatchGrouping],
                 device: torch.device):
        zeros = dict(dtype=torch.float64, device=device)
        self.count = 0
        self.mean = torch.zeros(num_pixels, **zeros)
        self.m2_diag = torch.zeros(num_pixels, **zeros)
        self.m2_full = torch.zeros(num_pixels, num_pixels, **zeros) if full else None
        self.patches = patches
        self.m2_patch = {p: [torch.zeros(ids.numel(), px.shape[1], px.shape[1], **zeros)
                             for ids, px in grouping.groups] for p, grouping in patches.items()}
        self._pixels = {p: [px.to(device) for _, px in grouping.groups]
                        for p, grouping in patches.items()}

    def update(self, batch: Tensor) -> None:
        """Merge a batch of flat samples ``(b, n)`` (any float dtype)."""
        x = batch.to(torch.float64)
        b = x.shape[0]
        batch_mean = x.mean(0)
        centred = x - batch_mean
        delta = batch_mean - self.mean
        total = self.count + b
        weight = self.count * b / total
        self.mean += delta * (b / total)
        self.m2_diag += centred.square().sum(0) + weight * delta.square()
        if self.m2_full is not None:
            self.m2_full += centred.T @ centred
            self.m2_full += weight * torch.outer(delta, delta)
        for p, accumulators in self.m2_patch.items():
            for m2, pixels in zip(accumulators, self._pixels[p]):
                xp = centred[:, pixels]  # (b, G, n)
                dp = delta[pixels]  # (G, n)
                m2 += torch.einsum("bgi,bgj->gij", xp, xp)
                m2 += weight * dp[:, :, None] * dp[:, None, :]
        self.count = total

    def state_dict(self) -> dict:
        """The accumulators (for a checkpoint)."""
        return {"count": self.count, "mean": self.mean, "m2_diag": self.m2_diag,
                "m2_full": self.m2_full, "m2_patch": self.m2_patch}

    def load_state_dict(self, state: dict) -> None:
        """Continue from accumulators of :meth:`state_dict` (same pixels, patches, device)."""
        self.count = int(state["count"])
        self.mean, self.m2_diag, self.m2_full = state["mean"], state["m2_diag"], state["m2_full"]
        self.m2_patch = state["m2_patch"]

    def variance(self, added_variance: float = 0.0) -> Tensor:
        """Unbiased pixel variances ``(n,)`` plus ``added_variance``."""
        return self.m2_diag / (self.count - 1) + added_variance

    def covariance(self, added_variance: float = 0.0) -> Tensor | None:
        """Unbiased ``(n, n)`` covariance plus ``added_variance · I`` (``None`` if not kept)."""
        if self.m2_full is None:
            return None
        cov = self.m2_full / (self.count - 1)
        cov.diagonal().add_(added_variance)
        return cov

    def patch_covariances(self, added_variance: float = 0.0) -> dict[int, PatchCovariances]:
        """Patch size -> unbiased patch covariances (+ ``added_variance · I``)."""
        out = {}
        for p, accumulators in self.m2_patch.items():
            per_group = []
            for m2 in accumulators:
                cov = m2 / (self.count - 1)
                cov.diagonal(dim1=-2, dim2=-1).add_(added_variance)
                per_group.append(cov)
            out[p] = self.patches[p].assemble(per_group)
        return out
