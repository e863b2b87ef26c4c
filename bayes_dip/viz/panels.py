"""Image panels: reconstruction | std | |error| per method, and a gallery of posterior samples."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from bayes_dip.metrics._inputs import ArrayLike
from bayes_dip.viz._figure import (
    as_image,
    as_image_stack,
    check_named,
    check_range,
    image_panel,
    maybe_save,
    new_figure,
    span,
)

__all__ = ["plot_uncertainty_panels", "plot_sample_gallery"]


def plot_uncertainty_panels(
    predictions: dict[str, tuple[ArrayLike, ArrayLike]],
    ground_truth: ArrayLike | None = None,
    *,
    fbp: ArrayLike | None = None,
    image_range: tuple[float, float] | None = None,
    std_range: tuple[float, float] | None = None,
    error_range: tuple[float, float] | None = None,
    value_label: str = "attenuation",
    units: str = "a.u.",
    panel_size: float = 2.4,
    save_path: str | Path | None = None,
) -> Figure:
    """One row per method: reconstruction | std | ``|error|`` (the last only with ``ground_truth``).

    ``predictions`` maps a method name to ``(recon, std)``, each ``(H, W)`` or
    ``(1, 1, H, W)``; ``std=None`` (a method without uncertainty) leaves its std panel
    empty, and the std column is dropped when no method has one. With ``ground_truth`` or ``fbp`` a first row shows them. Every
    column uses one colour range for all methods: ``image_range`` (default: min/max of
    the ground truth, else of all reconstructions), ``std_range`` and ``error_range``
    (default: 0 to the max over methods). Each panel has a colour bar labelled with
    ``units``. Saved as PNG and PDF when ``save_path`` is given.
    """
    check_named(predictions, "predictions")
    for name, rng in (("image_range", image_range), ("std_range", std_range),
                      ("error_range", error_range)):
        check_range(rng, name)
    recons, stds = {}, {}
    for method, pair in predictions.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"predictions[{method!r}] must be a pair (recon, std)")
        recons[method] = as_image(pair[0], f"predictions[{method!r}] recon")
        if pair[1] is None:
            continue
        stds[method] = as_image(pair[1], f"predictions[{method!r}] std")
        if stds[method].shape != recons[method].shape or np.any(stds[method] < 0):
            raise ValueError(f"predictions[{method!r}] std must be non-negative with the "
                             f"reconstruction's shape {recons[method].shape}")
    gt = None if ground_truth is None else as_image(ground_truth, "ground_truth")
    references = {} if gt is None else {"ground truth": gt}
    if fbp is not None:
        references["FBP"] = as_image(fbp, "fbp")
    shapes = {a.shape for a in (*recons.values(), *references.values())}
    if len(shapes) != 1:
        raise ValueError(f"all images must share one shape, got {sorted(shapes)}")

    errors = {} if gt is None else {m: np.abs(r - gt) for m, r in recons.items()}
    image_range = image_range or span([gt] if gt is not None else list(recons.values()))
    if stds:
        std_range = std_range or span(list(stds.values()), lower_zero=True)
    if errors:
        error_range = error_range or span(list(errors.values()), lower_zero=True)

    n_cols = 1 + bool(stds) + bool(errors)
    n_rows = len(predictions) + (1 if references else 0)
    fig = new_figure(panel_size * n_cols * 1.25, panel_size * n_rows)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    value_cbar = f"{value_label} [{units}]"
    if references:
        for ax, (title, image) in zip(axes[0], references.items()):
            image_panel(fig, ax, image, image_range, "gray", value_cbar, title)
        for ax in axes[0, len(references):]:
            fig.delaxes(ax)
    for row, method in zip(axes[1 if references else 0:], predictions):
        image_panel(fig, row[0], recons[method], image_range, "gray", value_cbar,
                    f"{method}: reconstruction")
        if method in stds:
            image_panel(fig, row[1], stds[method], std_range, "viridis", f"std [{units}]",
                        f"{method}: std")
        elif stds:
            fig.delaxes(row[1])
        if errors:
            image_panel(fig, row[-1], errors[method], error_range, "magma",
                        f"|error| [{units}]", f"{method}: |error|")
    return maybe_save(fig, save_path)


def plot_sample_gallery(
    samples: ArrayLike,
    *,
    n_samples: int = 8,
    n_cols: int = 4,
    image_range: tuple[float, float] | None = None,
    value_label: str = "attenuation",
    units: str = "a.u.",
    panel_size: float = 2.0,
    save_path: str | Path | None = None,
) -> Figure:
    """The first ``n_samples`` of ``samples`` (``(S, 1, H, W)`` or ``(S, H, W)``) in a grid.

    All panels share ``image_range`` (default: min/max over the shown samples) and one
    colour bar.
    """
    stack = as_image_stack(samples, "samples")
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    if not isinstance(n_cols, int) or n_cols < 1:
        raise ValueError(f"n_cols must be a positive int, got {n_cols!r}")
    check_range(image_range, "image_range")
    shown = stack[:n_samples]
    image_range = image_range or span(list(shown))
    n_cols = min(n_cols, len(shown))
    n_rows = -(-len(shown) // n_cols)
    fig = new_figure(panel_size * n_cols + 1.0, panel_size * n_rows)
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for k, (ax, image) in enumerate(zip(axes, shown)):
        im = ax.imshow(image, cmap="gray", vmin=image_range[0], vmax=image_range[1],
                       interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"sample {k}", fontsize="medium")
    for ax in axes[len(shown):]:
        fig.delaxes(ax)
    fig.colorbar(im, ax=list(axes[:len(shown)]), label=f"{value_label} [{units}]", shrink=0.85)
    return maybe_save(fig, save_path)
