"""Total variation of images."""
from __future__ import annotations

from torch import Tensor

__all__ = ["tv_loss"]


def tv_loss(x: Tensor) -> Tensor:
    """Anisotropic total variation per image, ``(B, C, H, W) -> (B,)``.

    ``TV(x) = Σ |x[i+1, j] − x[i, j]| + Σ |x[i, j+1] − x[i, j]|``, summed over channels.
    Its autograd gradient is the subgradient with ``sign(0) = 0``.
    """
    if x.ndim != 4:
        raise ValueError(f"x must have shape (B, C, H, W), got {tuple(x.shape)}")
    vertical = (x[..., 1:, :] - x[..., :-1, :]).abs().sum(dim=(1, 2, 3))
    horizontal = (x[..., :, 1:] - x[..., :, :-1]).abs().sum(dim=(1, 2, 3))
    return vertical + horizontal
