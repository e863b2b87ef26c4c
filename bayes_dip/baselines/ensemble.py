"""Deep-ensemble DIP: ``K`` independently initialised DIPs, Gaussian fitted to their outputs.

Member ``k`` is :func:`~bayes_dip.dip.reconstruct_dip` with ``config.seed + k`` (its own
network initialisation); the predictive is the :class:`~bayes_dip.metrics.Prediction`
of the ``K`` reconstructions (unbiased moments). With ``K`` members every covariance has
rank ``K − 1``, so log-likelihoods need ``added_variance > 0`` (e.g. the image-noise term
``σ_y² · ray_trafo.variance_factor()``).
"""
from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from bayes_dip.checks import check_int, check_number
from bayes_dip.dip import DIPConfig, DIPResult, reconstruct_dip

from bayes_dip.metrics import Prediction

from ._moments import PatchGrouping, StreamingMoments
from .mcdo import _FULL_COVARIANCE_MAX_PIXELS, _predictive

__all__ = ["deep_ensemble"]


def deep_ensemble(ray_trafo: nn.Module, y: Tensor, *, members: int = 5,
                  config: DIPConfig | None = None, net_input: Tensor | None = None,
                  ground_truth: Tensor | None = None, full_covariance: bool | None = None,
                  patch_sizes: Sequence[int] = (), added_variance: float = 0.0,
                  checkpoint_dir: str | os.PathLike | None = None,
                  progress: bool = True) -> tuple[list[DIPResult], Prediction]:
    """Train ``members`` DIPs on one measurement and fit a Gaussian to their reconstructions.

    Args:
        ray_trafo, y, net_input, ground_truth, progress: as for
            :func:`~bayes_dip.dip.reconstruct_dip` (``y`` one measurement ``(1, 1, na, nd)``).
        members: ``K >= 2``.
        config: shared :class:`~bayes_dip.dip.DIPConfig`; member ``k`` uses seed
            ``config.seed + k``. Default ``DIPConfig()``.
        full_covariance, patch_sizes, added_variance: as for
            :func:`~bayes_dip.baselines.mcdo_predictive`.
        checkpoint_dir: member ``k`` checkpoints to ``checkpoint_dir/member_k`` (resumable).

    Returns:
        the members' :class:`~bayes_dip.dip.DIPResult` and the predictive (its ``samples``
        are the ``K`` reconstructions, ``seconds`` the wall time of training and fitting).
    """
    members = check_int(members, "members", 2, allow_numpy=True)
    config = DIPConfig() if config is None else config
    if not isinstance(config, DIPConfig):
        raise TypeError(f"config must be a DIPConfig, got {type(config).__name__}")
    if not isinstance(y, Tensor) or y.ndim != 4 or y.shape[0] != 1:
        raise ValueError(f"y must be one measurement (1, 1, n_angles, n_det), got "
                         f"{tuple(getattr(y, 'shape', ()))}")
    added_variance = check_number(added_variance, "added_variance", ge=0, finite=True)
    if full_covariance is not None and not isinstance(full_covariance, bool):
        raise TypeError(f"full_covariance must be a bool or None, got {full_covariance!r}")
    if isinstance(patch_sizes, (int, str)):
        raise TypeError(f"patch_sizes must be a sequence of ints, got {patch_sizes!r}")
    sizes = sorted({check_int(p, "patch_sizes entries", 1, allow_numpy=True) for p in patch_sizes})

    t0 = time.perf_counter()
    results = []
    for k in range(members):
        member_dir = None if checkpoint_dir is None else Path(checkpoint_dir) / f"member_{k}"
        results.append(reconstruct_dip(ray_trafo, y, net_input=net_input,
                                       config=replace(config, seed=config.seed + k),
                                       ground_truth=ground_truth, checkpoint_dir=member_dir,
                                       progress=progress))
    recons = torch.cat([r.recon.detach() for r in results])
    im_shape = tuple(int(s) for s in recons.shape[-2:])
    n = im_shape[0] * im_shape[1]
    full = n <= _FULL_COVARIANCE_MAX_PIXELS if full_covariance is None else full_covariance
    moments = StreamingMoments(n, full, {p: PatchGrouping(im_shape, p) for p in sizes},
                               recons.device)
    moments.update(recons.reshape(members, n))
    return results, _predictive(moments, im_shape, added_variance, recons,
                                time.perf_counter() - t0)
