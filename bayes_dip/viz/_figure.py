"""Figure plumbing shared by the plots: Agg-only figures, image panels, saving to PNG + PDF."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bayes_dip.metrics._inputs import ArrayLike, as_float64_array, check_finite

_SAVE_SUFFIXES = (".png", ".pdf")


def new_figure(width: float, height: float) -> Figure:
    """A figure drawn by matplotlib's Agg canvas (never touches pyplot or a GUI backend)."""
    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig: Figure, path: str | Path, formats: Sequence[str] = ("png", "pdf"),
                dpi: int = 150) -> list[Path]:
    """Save ``fig`` as ``path`` with each suffix in ``formats``; returns the written paths.

    A ``.png`` / ``.pdf`` suffix on ``path`` is replaced; parent folders are created.
    """
    if not formats:
        raise ValueError("formats must name at least one file format")
    path = Path(path)
    stem = path.with_suffix("") if path.suffix.lower() in _SAVE_SUFFIXES else path
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        out = stem.with_name(f"{stem.name}.{fmt.lstrip('.')}")
        fig.savefig(out, dpi=dpi)
        written.append(out)
    return written


def maybe_save(fig: Figure, save_path: str | Path | None) -> Figure:
    if save_path is not None:
        save_figure(fig, save_path)
    return fig


def as_image(x: ArrayLike, name: str) -> np.ndarray:
    """Float64 ``(H, W)`` from a tensor/array of shape ``(H, W)`` or ``(1, 1, H, W)``."""
    a = as_float64_array(x, name)
    if a.ndim == 4 and a.shape[:2] == (1, 1):
        a = a[0, 0]
    if a.ndim != 2:
        raise ValueError(f"{name} must have shape (H, W) or (1, 1, H, W), got {tuple(a.shape)}")
    check_finite(a, name)
    return a


def as_image_stack(x: ArrayLike, name: str) -> np.ndarray:
    """Float64 ``(S, H, W)`` from ``(S, 1, H, W)`` or ``(S, H, W)``."""
    a = as_float64_array(x, name)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3 or a.shape[0] == 0:
        raise ValueError(f"{name} must have shape (S, 1, H, W) or (S, H, W) with S >= 1, "
                         f"got {tuple(a.shape)}")
    check_finite(a, name)
    return a


def check_range(value_range: tuple[float, float] | None, name: str) -> None:
    if value_range is not None and not (len(value_range) == 2 and value_range[0] < value_range[1]):
        raise ValueError(f"{name} must be (vmin, vmax) with vmin < vmax, got {value_range}")


def span(arrays: Sequence[np.ndarray], lower_zero: bool = False) -> tuple[float, float]:
    """``(min, max)`` over all arrays (``min = 0`` with ``lower_zero``), widened if degenerate."""
    lo = 0.0 if lower_zero else float(min(a.min() for a in arrays))
    hi = float(max(a.max() for a in arrays))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def image_panel(fig: Figure, ax: Axes, image: np.ndarray, value_range: tuple[float, float],
                cmap: str, colorbar_label: str, title: str | None = None) -> None:
    """``imshow`` without ticks on a fixed colour range, with a labelled colour bar."""
    im = ax.imshow(image, cmap=cmap, vmin=value_range[0], vmax=value_range[1],
                   interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize="medium")
    fig.colorbar(im, ax=ax, label=colorbar_label, shrink=0.85)


def check_named(items: dict, name: str) -> None:
    if not isinstance(items, dict) or not items:
        raise ValueError(f"{name} must be a non-empty dict mapping method names to values")
