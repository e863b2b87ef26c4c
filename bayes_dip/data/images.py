"""Single 2D images from files (.dcm, .png, .npy) as ``(1, 1, H, W)`` float32 tensors in [0, 1].

Intensity conventions:

* ``.dcm``: Hounsfield units -> linear attenuation -> divided by the image maximum
  (see :mod:`bayes_dip.data.dicom`), so 0 means vacuum.
* ``.png``: grey values divided by the format's maximum (255 for 8-bit, 65535 for 16-bit);
  colour images are converted to luma (ITU-R 601-2, PIL's ``"L"`` mode), alpha is dropped.
* ``.npy``: a real 2D array (leading singleton axes allowed). Non-negative arrays are divided
  by their maximum (0 stays 0, as for DICOM; an all-zero image stays zero); arrays with
  negative values are rescaled by min-max to [0, 1] (a constant image becomes zeros).

Resizing (``size``) uses ``skimage.transform.resize`` with linear interpolation and
anti-aliasing and only accepts square images: reconstructions here are on square grids,
so a non-square image raises ValueError rather than being silently distorted or cropped
(use :func:`bayes_dip.data.transforms.is_square` to check first).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from bayes_dip.data.dicom import read_dicom_unit
from bayes_dip.data.paths import require_file
from bayes_dip.data.transforms import as_image_tensor, check_size, resize_square

__all__ = ["SUPPORTED_SUFFIXES", "read_image_array", "load_image"]

SUPPORTED_SUFFIXES = (".dcm", ".png", ".npy")


def _unit_range(arr: np.ndarray) -> np.ndarray:
    """Non-negative: divide by the maximum; otherwise min-max. All-constant -> zeros."""
    arr = arr.astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0.0:
        return arr / hi if hi > 0 else arr
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def _read_png(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode == "1":
                return np.asarray(im, dtype=np.float64)
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                return np.asarray(im, dtype=np.float64) / 65535.0
            return np.asarray(im.convert("L"), dtype=np.float64) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"image file {str(path)!r} is not a readable PNG: {exc}") from exc


def _read_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"image file {str(path)!r} is not a readable .npy array: {exc}") from exc
    if not isinstance(arr, np.ndarray) or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) \
            or np.iscomplexobj(arr):
        raise ValueError(f"image file {str(path)!r} must hold a real numeric array, got dtype {arr.dtype}")
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or min(arr.shape) < 1:
        raise ValueError(f"image file {str(path)!r} must hold a 2D array (H, W), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"image file {str(path)!r} contains NaN or inf values")
    return _unit_range(arr)


def read_image_array(path: str | os.PathLike) -> np.ndarray:
    """Read ``path`` (.dcm/.png/.npy) as a float64 ``(H, W)`` array in [0, 1] at native size.

    Raises:
        FileNotFoundError: missing file.
        ValueError: unsupported suffix or unreadable/corrupt content (names the file).
    """
    p = require_file(path, "image file")
    suffix = p.suffix.lower()
    if suffix == ".dcm":
        return read_dicom_unit(p)
    if suffix == ".png":
        return _read_png(p)
    if suffix == ".npy":
        return _read_npy(p)
    raise ValueError(f"image file {str(p)!r} has unsupported suffix {p.suffix!r}; "
                     f"expected one of {', '.join(SUPPORTED_SUFFIXES)}")


def load_image(path: str | os.PathLike, size: int | None = None) -> torch.Tensor:
    """Image file as a float32 tensor ``(1, 1, H, W)`` in [0, 1].

    Args:
        path: a ``.dcm``, ``.png`` or ``.npy`` file (intensity conventions: module docstring).
        size: resize a square image to ``(size, size)``; None keeps the native shape
            (non-square allowed). A non-square image with ``size`` set raises ValueError.
    """
    size = check_size(size)
    arr = read_image_array(path)
    if size is not None:
        arr = resize_square(arr, size, name=f"image {str(path)!r}")
    return as_image_tensor(arr)
