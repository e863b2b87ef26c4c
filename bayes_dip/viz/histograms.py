"""Histograms: |error| vs predicted std (2D, per method) and z-scores against N(0, 1)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from bayes_dip.metrics._inputs import ArrayLike, predictive_arrays
from bayes_dip.metrics.calibration import qq_data, z_score_histogram
from bayes_dip.viz._figure import check_named, check_range, maybe_save, new_figure

__all__ = ["plot_error_vs_std", "plot_z_scores"]


def plot_error_vs_std(
    predictions: dict[str, tuple[ArrayLike, ArrayLike]],
    ground_truth: ArrayLike,
    *,
    n_bins: int = 50,
    std_max: float | None = None,
    error_max: float | None = None,
    units: str = "a.u.",
    panel_size: float = 3.2,
    save_path: str | Path | None = None,
) -> Figure:
    """2D histogram of pixel ``|error|`` against predicted std, one panel per method.

    ``predictions`` maps names to ``(recon, std)`` shaped like ``ground_truth`` (any
    shape). Axes (``[0, std_max]``, ``[0, error_max]``, default: max over methods) and
    the logarithmic count scale are shared; one colour bar. The line ``|error| = std``
    is drawn: for a calibrated Gaussian 68 % of the pixels lie below it.
    """
    check_named(predictions, "predictions")
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    pixels = {}
    for method, pair in predictions.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"predictions[{method!r}] must be a pair (recon, std)")
        mu, sd, gt = predictive_arrays(pair[0], pair[1], ground_truth)
        pixels[method] = (sd, np.abs(gt - mu))
    for name, value in (("std_max", std_max), ("error_max", error_max)):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
    std_max = std_max or max(float(sd.max()) for sd, _ in pixels.values())
    error_max = error_max or max(float(err.max()) for _, err in pixels.values()) or 1.0
    counts = {m: np.histogram2d(sd, err, bins=n_bins, range=[[0, std_max], [0, error_max]])
              for m, (sd, err) in pixels.items()}
    vmax = max(float(c[0].max()) for c in counts.values())
    norm = LogNorm(vmin=1.0, vmax=max(vmax, 10.0))
    fig = new_figure(panel_size * len(pixels) + 1.0, panel_size)
    axes = fig.subplots(1, len(pixels), squeeze=False)[0]
    for ax, (method, (hist, x_edges, y_edges)) in zip(axes, counts.items()):
        mesh = ax.pcolormesh(x_edges, y_edges, np.ma.masked_equal(hist.T, 0), norm=norm,
                             cmap="viridis")
        top = min(std_max, error_max)
        ax.plot([0, top], [0, top], color="red", linewidth=1.0, label="|error| = std")
        ax.set(xlabel=f"predicted std [{units}]", ylabel=f"|error| [{units}]", title=method,
               xlim=(0, std_max), ylim=(0, error_max))
        ax.legend(fontsize="small", loc="upper left")
    fig.colorbar(mesh, ax=list(axes), label="pixels per bin", shrink=0.85)
    return maybe_save(fig, save_path)


def plot_z_scores(
    z_scores: dict[str, ArrayLike],
    *,
    n_bins: int = 60,
    z_range: tuple[float, float] = (-5.0, 5.0),
    n_quantiles: int = 99,
    quantity: str = "ground truth",
    save_path: str | Path | None = None,
) -> Figure:
    """z-score density per method against ``N(0, 1)``, and their normal QQ plot.

    ``z_scores`` maps names to ``(gt − mean) / std`` (see ``bayes_dip.metrics.z_scores``), or
    to the z-scores of another ``quantity`` (e.g. held-out measurements).
    A QQ line steeper than the diagonal means over-confidence.
    """
    check_named(z_scores, "z_scores")
    check_range(z_range, "z_range")
    fig = new_figure(9.0, 4.0)
    ax_hist, ax_qq = fig.subplots(1, 2)
    grid = np.linspace(*z_range, 200)
    ax_hist.plot(grid, np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi), color="black",
                 linestyle=":", label="N(0, 1)")
    ax_qq.plot(z_range, z_range, color="black", linestyle=":", label="calibrated")
    for method, z in z_scores.items():
        hist = z_score_histogram(z, n_bins=n_bins, range=z_range)
        ax_hist.stairs(hist.density, hist.edges,
                       label=f"{method} ({100 * hist.outside:.1f} % outside)")
        qq = qq_data(z, n_quantiles=n_quantiles)
        ax_qq.plot(qq.theoretical, qq.empirical, marker=".", linestyle="none", label=method)
    ax_hist.set(xlabel=f"z = ({quantity} − mean) / std", ylabel="density", title="z-scores")
    ax_qq.set(xlabel="standard normal quantile", ylabel="empirical z quantile",
              title="normal QQ plot")
    for ax in (ax_hist, ax_qq):
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    return maybe_save(fig, save_path)
