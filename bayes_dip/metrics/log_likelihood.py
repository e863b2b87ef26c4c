"""Test log-likelihood of a ground-truth image under a Gaussian predictive, per pixel.

All three variants return ``log N(x_true | mean, Σ) / n_pixels``:

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

import torch
from torch import Tensor

__all__ = ["LogLikelihood", "log_likelihood_diagonal", "log_likelihood_full",
           "log_likelihood_patchwise", "image_patches", "patch_covariances_from_samples"]

_LOG_2PI = math.log(2.0 * math.pi)


class LogLikelihood(NamedTuple):
    """Log-likelihood per pixel and the largest diagonal jitter that was added (0 if none)."""

    per_pixel: float
    jitter: float


def _as_tensor(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must contain only finite values")
    return x.to(torch.float64)


def _single_image(x: Tensor, name: str) -> Tensor:
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
        raise ValueError(f"{name} must be square in its last two dimensions, got {tuple(cov.shape)}")
    if not torch.allclose(cov, cov.transpose(-1, -2), rtol=1e-6, atol=1e-12):
        raise ValueError(f"{name} must be symmetric")
    if bool((cov.diagonal(dim1=-2, dim2=-1) <= 0).any()):
        raise ValueError(f"{name} must have a strictly positive diagonal")


def log_likelihood_diagonal(mean: Tensor, std: Tensor, ground_truth: Tensor) -> float:
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


def log_likelihood_full(mean: Tensor, covariance: Tensor, ground_truth: Tensor, *,
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


def image_patches(im_shape: tuple[int, int], patch_size: int) -> list[Tensor]:
    """Row-major flat pixel indices of the non-overlapping patches of an ``im_shape`` image.

    Patches are ``patch_size × patch_size`` in row-major patch order; where a side is not
    divisible by ``patch_size`` the last patch along it also takes the remaining pixels
    (so edge patches can be larger and non-square). ``patch_size`` is clipped to
    ``min(im_shape)``. Pixels inside a patch are listed in row-major order.
    """
    if len(im_shape) != 2 or min(im_shape) < 1:
        raise ValueError(f"im_shape must be (H, W) with H, W >= 1, got {im_shape}")
    if not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
    p = min(patch_size, *im_shape)
    h, w = im_shape

    def bounds(size: int) -> list[tuple[int, int]]:
        starts = list(range(0, size - p + 1, p))
        return [(s, starts[i + 1] if i + 1 < len(starts) else size) for i, s in enumerate(starts)]

    flat = torch.arange(h * w).reshape(h, w)
    return [flat[r0:r1, c0:c1].reshape(-1) for r0, r1 in bounds(h) for c0, c1 in bounds(w)]


def _samples_as_flat(samples: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """``(S, H·W)`` float64 and ``(H, W)`` from samples ``(S, 1, H, W)`` or ``(S, H, W)``."""
    s = _as_tensor(samples, "samples")
    if s.ndim == 4 and s.shape[1] == 1:
        s = s[:, 0]
    if s.ndim != 3:
        raise ValueError(f"samples must have shape (S, 1, H, W) or (S, H, W), got {tuple(s.shape)}")
    if s.shape[0] < 2:
        raise ValueError("samples must contain at least 2 samples")
    return s.reshape(s.shape[0], -1), (s.shape[1], s.shape[2])


def patch_covariances_from_samples(samples: Tensor, patch_size: int) -> list[Tensor]:
    """Unbiased sample covariance of each patch of :func:`image_patches` (order as there).

    ``samples``: ``(S, 1, H, W)`` or ``(S, H, W)`` draws from the predictive (not
    zero-mean perturbations); each covariance is centred at the sample mean.
    Returns a list of ``(n_k, n_k)`` float64 tensors, ``n_k`` the pixels of patch ``k``.
    """
    flat, im_shape = _samples_as_flat(samples)
    centred = flat - flat.mean(0, keepdim=True)
    covs = []
    for idx in image_patches(im_shape, patch_size):
        c = centred[:, idx.to(flat.device)]
        covs.append(c.T @ c / (flat.shape[0] - 1))
    return covs


def _group_by_size(covs: Sequence[Tensor]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for k, c in enumerate(covs):
        groups.setdefault(c.shape[-1], []).append(k)
    return groups


def log_likelihood_patchwise(mean: Tensor, ground_truth: Tensor, patch_size: int, *,
                             covariances: Tensor | Sequence[Tensor] | None = None,
                             samples: Tensor | None = None, initial_jitter: float = 1e-10,
                             max_tries: int = 8) -> LogLikelihood:
    """Per-pixel log-likelihood of one image under a patch-block-diagonal Gaussian.

    ``mean``, ``ground_truth``: ``(H, W)`` or ``(1, 1, H, W)``. Give exactly one of
    ``covariances`` — a tensor ``(n_patches, p², p²)`` when every patch is ``p × p``, or a
    sequence of ``(n_k, n_k)`` tensors in the order of :func:`image_patches` — or
    ``samples`` ``(S, 1, H, W)`` from which they are estimated
    (:func:`patch_covariances_from_samples`). ``jitter`` is the largest used on any patch.
    """
    mu = _single_image(mean, "mean")
    gt = _single_image(ground_truth, "ground_truth")
    if gt.shape != mu.shape:
        raise ValueError(f"ground_truth must have the shape of mean {tuple(mu.shape)}, "
                         f"got {tuple(gt.shape)}")
    if (covariances is None) == (samples is None):
        raise ValueError("give exactly one of covariances and samples")
    patches = image_patches(tuple(mu.shape), patch_size)
    if samples is not None:
        _, sample_shape = _samples_as_flat(samples)
        if sample_shape != tuple(mu.shape):
            raise ValueError(f"samples must have images of shape {tuple(mu.shape)}, got {sample_shape}")
        covs: Sequence[Tensor] = patch_covariances_from_samples(samples, patch_size)
    elif isinstance(covariances, Tensor):
        covs = list(_as_tensor(covariances, "covariances"))
    else:
        covs = [_as_tensor(c, f"covariances[{k}]") for k, c in enumerate(covariances)]
    if len(covs) != len(patches):
        raise ValueError(f"covariances must hold {len(patches)} patch covariances for patch_size "
                         f"{patch_size} and image shape {tuple(mu.shape)}, got {len(covs)}")
    for k, (c, idx) in enumerate(zip(covs, patches)):
        if c.shape != (idx.numel(), idx.numel()):
            raise ValueError(f"covariances[{k}] must have shape ({idx.numel()}, {idx.numel()}), "
                             f"got {tuple(c.shape)}")
    residual = (gt - mu).reshape(-1)
    total = torch.zeros((), dtype=torch.float64, device=mu.device)
    max_jitter = 0.0
    for members in _group_by_size(covs).values():
        cov = torch.stack([covs[k] for k in members]).to(mu.device)
        _check_covariance(cov, "covariances")
        res = torch.stack([residual[patches[k].to(mu.device)] for k in members])
        chol, jitter = _cholesky_with_jitter(cov, initial_jitter, max_tries)
        total = total + _gaussian_log_density(res, chol).sum()
        max_jitter = max(max_jitter, jitter)
    return LogLikelihood(float(total) / mu.numel(), max_jitter)
