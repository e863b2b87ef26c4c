"""Test log-likelihood of a ground-truth image under a Gaussian predictive, per pixel.

All three variants (torch or numpy in, float out) return ``log N(x_true | mean, Σ) / n_pixels``:

- :func:`log_likelihood_diagonal`: ``Σ = diag(std²)``; any shape, all pixels pooled.
- :func:`log_likelihood_full`: one image ``(H, W)`` or ``(1, 1, H, W)`` and a dense
  ``(H·W, H·W)`` covariance over the row-major flattened image.
- :func:`log_likelihood_patchwise`: Σ is block diagonal over non-overlapping patches
  (see :func:`image_patches`), given per patch or estimated from predictive samples.

Cholesky factorisations run in float64 on the input's device; when a covariance is not
numerically positive definite, a growing multiple of ``mean(diag Σ)`` is added to its
diagonal and the absolute jitter used is reported in :class:`LogLikelihood`.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["LogLikelihood", "log_likelihood_diagonal", "log_likelihood_full",
           "log_likelihood_patchwise", "image_patches", "patch_covariances_from_samples"]

_LOG_2PI = math.log(2.0 * math.pi)
ArrayLike = Tensor | np.ndarray


class LogLikelihood(NamedTuple):
    """Log-likelihood per pixel and the largest diagonal jitter that was added (0 if none)."""

    per_pixel: float
    jitter: float


def _as_tensor(x: Tensor | np.ndarray, name: str) -> Tensor:
    """Float64 tensor (device kept) from a tensor or numpy array, checked finite."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must contain only finite values")
    return x.to(torch.float64)


def _single_image(x: ArrayLike, name: str) -> Tensor:
    """``(H, W)`` float64 from ``(H, W)`` or ``(1, 1, H, W)``."""
    x = _as_tensor(x, name)
    if x.ndim == 4 and x.shape[:2] == (1, 1):
        return x[0, 0]
    if x.ndim == 2:
        return x
    raise ValueError(f"{name} must have shape (H, W) or (1, 1, H, W), got {tuple(x.shape)}")


def _cholesky_with_jitter(cov: Tensor, initial_jitter: float, max_tries: int,
                          ) -> tuple[Tensor, float]:
    """Cholesky factors of ``cov`` (``(..., n, n)`` float64) and the largest jitter used.

    A matrix whose factorisation fails gets ``initial_jitter · 10^k · mean(diag)`` added to
    its diagonal, ``k = 0, 1, …, max_tries − 1``, until it succeeds; others get none.
    """
    batch = cov.reshape(-1, *cov.shape[-2:])
    chol, info = torch.linalg.cholesky_ex(batch)
    failed = info > 0
    max_jitter = 0.0
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    scale = batch.diagonal(dim1=-2, dim2=-1).mean(-1)
    for k in range(max_tries):
        if not bool(failed.any()):
            break
        idx = failed.nonzero().squeeze(-1)
        jitter = initial_jitter * 10.0**k * scale[idx]
        retry, retry_info = torch.linalg.cholesky_ex(batch[idx] + jitter[:, None, None] * eye)
        ok = retry_info == 0
        chol[idx[ok]] = retry[ok]
        failed[idx[ok]] = False
        if bool(ok.any()):
            max_jitter = max(max_jitter, float(jitter[ok].max()))
    if bool(failed.any()):
        raise ValueError(f"covariance is not positive definite even with a jitter of "
                         f"{initial_jitter * 10.0**(max_tries - 1):.1g} × its mean variance")
    return chol.reshape(cov.shape), max_jitter


def _gaussian_log_density(residual: Tensor, chol: Tensor) -> Tensor:
    """``log N(residual | 0, L Lᵀ)`` for residuals ``(..., n)`` and factors ``(..., n, n)``."""
    white = torch.linalg.solve_triangular(chol, residual.unsqueeze(-1), upper=False).squeeze(-1)
    logdet = 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    n = residual.shape[-1]
    return -0.5 * (n * _LOG_2PI + logdet + white.square().sum(-1))


def _check_covariance(cov: Tensor, name: str) -> None:
    if cov.shape[-1] != cov.shape[-2]:
        raise ValueError(f"{name} must be square in its last two dimensions, "
                         f"got {tuple(cov.shape)}")
    diag = cov.diagonal(dim1=-2, dim2=-1)
    asymmetry = (cov - cov.transpose(-1, -2)).abs().amax(dim=(-2, -1))
    if bool((asymmetry > 1e-5 * diag.abs().amax(-1)).any()):
        raise ValueError(f"{name} must be symmetric (up to 1e-5 of its largest variance)")
    if bool((diag <= 0).any()):
        raise ValueError(f"{name} must have a strictly positive diagonal")


def log_likelihood_diagonal(mean: ArrayLike, std: ArrayLike, ground_truth: ArrayLike) -> float:
    """Per-pixel ``mean_i log N(gt_i | mean_i, std_i²)``; arguments of one shape, ``std > 0``."""
    mu, sd, gt = (_as_tensor(t, n) for t, n in ((mean, "mean"), (std, "std"),
                                                 (ground_truth, "ground_truth")))
    if not (mu.shape == sd.shape == gt.shape):
        raise ValueError(f"mean, std and ground_truth must share one shape, got {tuple(mu.shape)}, "
                         f"{tuple(sd.shape)}, {tuple(gt.shape)}")
    if bool((sd <= 0).any()):
        raise ValueError("std must be strictly positive")
    z = (gt - mu) / sd
    return float((-0.5 * (_LOG_2PI + z.square()) - sd.log()).mean())


def log_likelihood_full(mean: ArrayLike, covariance: ArrayLike, ground_truth: ArrayLike, *,
                        initial_jitter: float = 1e-10, max_tries: int = 8) -> LogLikelihood:
    """Per-pixel ``log N(gt | mean, covariance) / (H·W)`` for one image.

    ``mean``, ``ground_truth``: ``(H, W)`` or ``(1, 1, H, W)``; ``covariance``:
    ``(H·W, H·W)`` over the row-major flattened image.
    """
    mu = _single_image(mean, "mean")
    gt = _single_image(ground_truth, "ground_truth")
    if gt.shape != mu.shape:
        raise ValueError(f"ground_truth must have the shape of mean {tuple(mu.shape)}, "
                         f"got {tuple(gt.shape)}")
    cov = _as_tensor(covariance, "covariance")
    n = mu.numel()
    if cov.shape != (n, n):
        raise ValueError(f"covariance must have shape ({n}, {n}), got {tuple(cov.shape)}")
    _check_covariance(cov, "covariance")
    chol, jitter = _cholesky_with_jitter(cov, initial_jitter, max_tries)
    log_density = _gaussian_log_density((gt - mu).reshape(-1), chol)
    return LogLikelihood(float(log_density) / n, jitter)


def _axis_blocks(size: int, p: int) -> list[tuple[Tensor, int, Tensor]]:
    """Blocks along one image axis: ``(starts, length, block indices)`` per block length."""
    n_blocks, rem = divmod(size, p)
    ids = torch.arange(n_blocks)
    if rem == 0:
        return [(ids * p, p, ids)]
    last = [(ids[-1:] * p, p + rem, ids[-1:])]
    return ([(ids[:-1] * p, p, ids[:-1])] if n_blocks > 1 else []) + last


def _patch_groups(im_shape: tuple[int, int], patch_size: int) -> list[tuple[Tensor, Tensor]]:
    """Patches of :func:`image_patches` grouped by shape: ``(patch ids (G,), pixels (G, n))``."""
    if len(im_shape) != 2 or min(im_shape) < 1:
        raise ValueError(f"im_shape must be (H, W) with H, W >= 1, got {im_shape}")
    if not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
    h, w = im_shape
    p = min(patch_size, h, w)
    n_cols = w // p
    groups = []
    for row_starts, row_len, row_ids in _axis_blocks(h, p):
        for col_starts, col_len, col_ids in _axis_blocks(w, p):
            rows = row_starts[:, None] + torch.arange(row_len)  # (m_r, row_len)
            cols = col_starts[:, None] + torch.arange(col_len)  # (m_c, col_len)
            pixels = rows[:, None, :, None] * w + cols[None, :, None, :]
            patch_ids = row_ids[:, None] * n_cols + col_ids[None, :]
            groups.append((patch_ids.reshape(-1), pixels.reshape(-1, row_len * col_len)))
    return groups


def image_patches(im_shape: tuple[int, int], patch_size: int) -> list[Tensor]:
    """Row-major flat pixel indices of the non-overlapping patches of an ``im_shape`` image.

    Patches are ``patch_size × patch_size`` in row-major patch order; where a side is not
    divisible by ``patch_size`` the last patch along it also takes the remaining pixels
    (so edge patches can be larger and non-square). ``patch_size`` is clipped to
    ``min(im_shape)``. Pixels inside a patch are listed in row-major order.
    """
    groups = _patch_groups(im_shape, patch_size)
    patches: list[Tensor] = [torch.empty(0)] * sum(ids.numel() for ids, _ in groups)
    for ids, pixels in groups:
        for k, row in zip(ids.tolist(), pixels):
            patches[k] = row
    return patches


def _samples_as_flat(samples: ArrayLike) -> tuple[Tensor, tuple[int, int]]:
    """``(S, H·W)`` view (dtype kept) and ``(H, W)`` of samples ``(S, [1,] H, W)``."""
    if isinstance(samples, np.ndarray):
        samples = torch.from_numpy(samples)
    if not isinstance(samples, Tensor) or not samples.is_floating_point():
        raise TypeError("samples must be a floating-point torch.Tensor or numpy.ndarray")
    s = samples[:, 0] if samples.ndim == 4 and samples.shape[1] == 1 else samples
    if s.ndim != 3:
        raise ValueError(f"samples must have shape (S, 1, H, W) or (S, H, W), "
                         f"got {tuple(samples.shape)}")
    if s.shape[0] < 2:
        raise ValueError("samples must contain at least 2 samples")
    if not bool(torch.isfinite(s).all()):
        raise ValueError("samples must contain only finite values")
    return s.reshape(s.shape[0], -1), (s.shape[1], s.shape[2])


def _sample_covariances(flat: Tensor, pixels: Tensor, max_elements: int = 2**24) -> Tensor:
    """Unbiased float64 covariances ``(G, n, n)`` of the pixel sets ``pixels`` ``(G, n)``.

    Works through the patches in chunks of at most ``max_elements`` gathered sample values,
    so the samples are never copied to float64 as a whole.
    """
    n_samples = flat.shape[0]
    pixels = pixels.to(flat.device)
    sample_mean = flat.sum(0, dtype=torch.float64) / n_samples
    chunk = max(1, max_elements // (n_samples * pixels.shape[1]))
    covs = []
    for start in range(0, pixels.shape[0], chunk):
        idx = pixels[start:start + chunk]
        centred = flat[:, idx].to(torch.float64) - sample_mean[idx]  # (S, g, n)
        covs.append(torch.einsum("sgi,sgj->gij", centred, centred) / (n_samples - 1))
    return torch.cat(covs)


def patch_covariances_from_samples(samples: ArrayLike, patch_size: int) -> Tensor | list[Tensor]:
    """Unbiased sample covariance of each patch of :func:`image_patches` (order as there).

    ``samples``: ``(S, 1, H, W)`` or ``(S, H, W)`` draws from the predictive (not
    zero-mean perturbations); each covariance is centred at the sample mean. Returns a
    float64 tensor ``(n_patches, p², p²)`` when ``p`` divides ``H`` and ``W``, else a list
    of ``(n_k, n_k)`` tensors, ``n_k`` the pixels of patch ``k``.
    """
    flat, im_shape = _samples_as_flat(samples)
    groups = _patch_groups(im_shape, patch_size)
    if len(groups) == 1:
        return _sample_covariances(flat, groups[0][1])
    covs: list[Tensor] = [torch.empty(0)] * sum(ids.numel() for ids, _ in groups)
    for ids, pixels in groups:
        for k, cov in zip(ids.tolist(), _sample_covariances(flat, pixels)):
            covs[k] = cov
    return covs


def log_likelihood_patchwise(mean: ArrayLike, ground_truth: ArrayLike, patch_size: int, *,
                             covariances: ArrayLike | Sequence[ArrayLike] | None = None,
                             samples: ArrayLike | None = None, added_variance: float = 0.0,
                             initial_jitter: float = 1e-10, max_tries: int = 8) -> LogLikelihood:
    """Per-pixel log-likelihood of one image under a patch-block-diagonal Gaussian.

    ``mean``, ``ground_truth``: ``(H, W)`` or ``(1, 1, H, W)``. Give exactly one of
    ``covariances`` — a tensor ``(n_patches, p², p²)`` when ``p`` divides ``H`` and ``W``, or
    a sequence of ``(n_k, n_k)`` tensors in the order of :func:`image_patches` — or
    ``samples`` ``(S, 1, H, W)`` from which they are estimated as in
    :func:`patch_covariances_from_samples`. ``added_variance`` (≥ 0) is added to every
    diagonal entry first (e.g. the image-space noise term of the predictive; with fewer
    samples than pixels per patch the sample covariances are singular without it).
    ``jitter`` is the largest used on any patch.
    """
    mu = _single_image(mean, "mean")
    gt = _single_image(ground_truth, "ground_truth")
    if gt.shape != mu.shape:
        raise ValueError(f"ground_truth must have the shape of mean {tuple(mu.shape)}, "
                         f"got {tuple(gt.shape)}")
    if (covariances is None) == (samples is None):
        raise ValueError("give exactly one of covariances and samples")
    if not added_variance >= 0:
        raise ValueError(f"added_variance must be non-negative, got {added_variance}")
    groups = _patch_groups(tuple(mu.shape), patch_size)
    n_patches = sum(ids.numel() for ids, _ in groups)
    if samples is not None:
        flat, sample_shape = _samples_as_flat(samples)
        if sample_shape != tuple(mu.shape):
            raise ValueError(f"samples must have images of shape {tuple(mu.shape)}, "
                             f"got {sample_shape}")
    elif isinstance(covariances, (Tensor, np.ndarray)):
        n = groups[0][1].shape[1]
        if len(groups) != 1 or covariances.shape != (n_patches, n, n):
            raise ValueError(f"covariances as a tensor must have shape ({n_patches}, {n}, {n}) "
                             f"(patches of equal size); got {tuple(covariances.shape)}")
        cov_tensor = _as_tensor(covariances, "covariances").to(mu.device)
    else:
        cov_list = list(covariances)
        if len(cov_list) != n_patches:
            raise ValueError(f"covariances must hold {n_patches} patch covariances for patch_size "
                             f"{patch_size} and image shape {tuple(mu.shape)}, got {len(cov_list)}")
    residual = (gt - mu).reshape(-1)
    total = torch.zeros((), dtype=torch.float64, device=mu.device)
    max_jitter = 0.0
    for ids, pixels in groups:
        n = pixels.shape[1]
        if samples is not None:
            cov = _sample_covariances(flat, pixels)
        elif isinstance(covariances, (Tensor, np.ndarray)):
            cov = cov_tensor[ids.to(mu.device)]
        else:
            for k in ids.tolist():
                if tuple(cov_list[k].shape) != (n, n):
                    raise ValueError(f"covariances[{k}] must have shape ({n}, {n}), "
                                     f"got {tuple(cov_list[k].shape)}")
            cov = torch.stack([_as_tensor(cov_list[k], f"covariances[{k}]").to(mu.device)
                               for k in ids.tolist()])
        if added_variance > 0:
            cov = cov + added_variance * torch.eye(n, dtype=cov.dtype, device=cov.device)
        _check_covariance(cov, "covariances")
        chol, jitter = _cholesky_with_jitter(cov, initial_jitter, max_tries)
        total = total + _gaussian_log_density(residual[pixels.to(mu.device)], chol).sum()
        max_jitter = max(max_jitter, jitter)
    return LogLikelihood(float(total) / mu.numel(), max_jitter)
