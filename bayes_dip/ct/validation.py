"""Input checks shared by the public CT functions (clear errors instead of astra tracebacks)."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_batch", "check_finite"]

_FLOAT_DTYPES = (torch.float32, torch.float64)


def check_batch(t: object, name: str, shape: tuple[int, int], what: str) -> Tensor:
    """Check ``t`` is a float32/float64 tensor of shape ``(B, 1, *shape)``; ``what`` names the axes."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {t.dtype}")
    if t.ndim != 4 or t.shape[1] != 1:
        raise ValueError(f"{name} must have shape (B, 1, {what}) = (B, 1, {shape[0]}, {shape[1]}), "
                         f"got {tuple(t.shape)}")
    if tuple(t.shape[2:]) != tuple(shape):
        if what.startswith("n_angles") and t.shape[2] != shape[0]:
            raise ValueError(f"{name} has {t.shape[2]} angle rows but the geometry has {shape[0]} "
                             f"angles (expected shape (B, 1, {shape[0]}, {shape[1]}), got {tuple(t.shape)})")
        raise ValueError(f"{name} must have shape (B, 1, {shape[0]}, {shape[1]}) ({what}), "
                         f"got {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one {'sinogram' if what.startswith('n_angles') else 'image'}")
    return t


def check_finite(t: Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``t`` holds NaN or inf (forces a device sync)."""
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf values")
