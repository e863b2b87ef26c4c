"""Input checks shared by the metrics: torch or numpy in, validated float64 arrays out."""
from __future__ import annotations

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray


def as_float64_array(x: ArrayLike, name: str) -> np.ndarray:
    """Float64 numpy copy of a tensor or array; TypeError naming ``name`` for anything else."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float64).numpy()
    if isinstance(x, np.ndarray):
        return x.astype(np.float64, copy=False)
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def check_finite(x: np.ndarray, name: str) -> None:
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must contain only finite values")


def check_same_shape(arrays: dict[str, np.ndarray]) -> None:
    """Raise ValueError if the named arrays do not all share one shape."""
    (first_name, first), *rest = arrays.items()
    for name, x in rest:
        if x.shape != first.shape:
            raise ValueError(f"{name} must have the shape of {first_name} {tuple(first.shape)}, "
                             f"got {tuple(x.shape)}")


def predictive_arrays(mean: ArrayLike, std: ArrayLike, ground_truth: ArrayLike,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flattened float64 ``(mean, std, ground_truth)`` of one shape, finite, with ``std > 0``."""
    arrays = {"mean": as_float64_array(mean, "mean"), "std": as_float64_array(std, "std"),
              "ground_truth": as_float64_array(ground_truth, "ground_truth")}
    check_same_shape(arrays)
    for name, x in arrays.items():
        check_finite(x, name)
    if arrays["mean"].size == 0:
        raise ValueError("mean must not be empty")
    if np.any(arrays["std"] <= 0):
        raise ValueError("std must be strictly positive")
    return tuple(x.reshape(-1) for x in arrays.values())  # type: ignore[return-value]


def as_image_batch(x: ArrayLike, name: str) -> np.ndarray:
    """Float64 array ``(B, H, W)`` from ``(H, W)`` or ``(B, 1, H, W)``."""
    a = as_float64_array(x, name)
    if a.ndim == 2:
        return a[None]
    if a.ndim == 4 and a.shape[1] == 1:
        return a[:, 0]
    raise ValueError(f"{name} must have shape (H, W) or (B, 1, H, W), got {tuple(a.shape)}")
