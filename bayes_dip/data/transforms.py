"""Small array helpers shared by the loaders: squareness check, anti-aliased resize, tensor wrap."""
from __future__ import annotations

import numpy as np
import torch
from skimage.transform import resize

from bayes_dip.checks import check_int

__all__ = ["is_square", "resize_square", "as_image_tensor"]


def is_square(image: np.ndarray | torch.Tensor) -> bool:
    """Whether the last two axes of ``image`` (e.g. ``(H, W)`` or ``(B, 1, H, W)``) are equal."""
    shape = tuple(image.shape)
    if len(shape) < 2:
        raise ValueError(f"image must have at least 2 dims (H, W), got shape {shape}")
    return shape[-1] == shape[-2]


def check_size(size: int | None, name: str = "size") -> int | None:
    """``size`` as an int >= 2, or None; TypeError/ValueError naming ``name`` otherwise."""
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"{name} must be an int or None, got {size!r}")
    return check_int(size, name, 2, allow_numpy=True)


def resize_square(image: np.ndarray, size: int, name: str = "image") -> np.ndarray:
    """Resize a square 2D array to ``(size, size)`` float64 (linear; anti-aliased when shrinking).

    The result is clipped to the input's value range. Raises ValueError naming ``name`` if
    ``image`` is not 2D and square.
    """
    size = check_size(size)
    if size is None:
        raise TypeError("size must be an int, got None")
    if image.ndim != 2:
        raise ValueError(f"{name} must be a 2D array, got shape {image.shape}")
    if not is_square(image):
        raise ValueError(f"{name} is {image.shape[0]}x{image.shape[1]} pixels, not square; "
                         f"only square images can be resized to {size}x{size}")
    image = image.astype(np.float64)
    if image.shape[0] == size:
        return image.copy()
    out = resize(image, (size, size), order=1, mode="reflect",
                 anti_aliasing=size < image.shape[0], preserve_range=True)
    return np.clip(out, image.min(), image.max())


def as_image_tensor(image: np.ndarray) -> torch.Tensor:
    """2D array ``(H, W)`` -> float32 tensor ``(1, 1, H, W)``."""
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
