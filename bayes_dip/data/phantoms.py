"""Synthetic test images ``(1, 1, size, size)`` float32 in [0, 1]; random ones seeded explicitly."""
from __future__ import annotations

import numpy as np
import torch
from skimage.data import shepp_logan_phantom

from bayes_dip.checks import check_int
from bayes_dip.data.transforms import as_image_tensor, check_size, resize_square

__all__ = ["shepp_logan", "random_ellipses", "rectangles"]


def shepp_logan(size: int = 128) -> torch.Tensor:
    """scikit-image's (modified) Shepp-Logan phantom (400x400, values in [0, 1]) resized to ``size``."""
    return as_image_tensor(resize_square(shepp_logan_phantom(), check_size(size), "Shepp-Logan phantom"))


def _check_num_seed(num: int, seed: int) -> None:
    check_int(num, "num", 1, allow_numpy=True)
    check_int(seed, "seed", 0, allow_numpy=True)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1]: ``x`` grows to the right, ``y`` upwards."""
    c = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    return c[None, :], -c[:, None]


def _rescale(img: np.ndarray) -> np.ndarray:
    img = np.clip(img, 0.0, None)
    peak = img.max()
    return img / peak if peak > 0 else img


def random_ellipses(size: int = 128, num: int = 10, seed: int = 0) -> torch.Tensor:
    """Sum of ``num`` random ellipses (random centre, half-axes, rotation, value in (0.1, 1]).

    Ellipses lie inside the unit disc inscribed in the image; negative sums are clipped at 0
    and the image is divided by its maximum, so values lie in [0, 1].
    """
    size = check_size(size)
    _check_num_seed(num, seed)
    rng = np.random.default_rng(seed)
    x, y = _grid(size)
    img = np.zeros((size, size))
    for _ in range(num):
        a, b = rng.uniform(0.05, 0.4, size=2)
        r = rng.uniform(0.0, 1.0 - max(a, b))
        phi = rng.uniform(0.0, 2 * np.pi)
        cx, cy = r * np.cos(phi), r * np.sin(phi)
        theta = rng.uniform(0.0, np.pi)
        u = (x - cx) * np.cos(theta) + (y - cy) * np.sin(theta)
        v = -(x - cx) * np.sin(theta) + (y - cy) * np.cos(theta)
        img[(u / a) ** 2 + (v / b) ** 2 <= 1.0] += rng.uniform(0.1, 1.0)
    return as_image_tensor(_rescale(img))


def rectangles(size: int = 128, num: int = 5, seed: int = 0) -> torch.Tensor:
    """``num`` random axis-aligned rectangles with values in (0.1, 1]; later ones overwrite earlier.

    Side lengths are 5-50 % of the image; the background is 0 and the maximum is scaled to 1.
    """
    size = check_size(size)
    _check_num_seed(num, seed)
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size))
    for _ in range(num):
        h, w = (max(1, int(round(f * size))) for f in rng.uniform(0.05, 0.5, size=2))
        top, left = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
        img[top:top + h, left:left + w] = rng.uniform(0.1, 1.0)
    return as_image_tensor(_rescale(img))
