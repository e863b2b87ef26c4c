"""Curves comparing methods: reliability (coverage) diagram and sparsification plot."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from bayes_dip.metrics.calibration import CoverageCurve, SparsificationCurve, ause, coverage_ece
from bayes_dip.viz._figure import check_named, maybe_save, new_figure

__all__ = ["plot_reliability_diagram", "plot_sparsification"]


def plot_reliability_diagram(
    curves: dict[str, CoverageCurve],
    *,
    show_gap: bool = True,
    save_path: str | Path | None = None,
) -> Figure:
    """Empirical coverage vs credible level per method (legend: coverage ECE), with the diagonal.

    With ``show_gap`` a second panel plots ``coverage − level``, where values below 0
    mean over-confidence. ``curves`` maps method names to :class:`CoverageCurve`.
    """
    check_named(curves, "curves")
    for method, curve in curves.items():
        if not isinstance(curve, CoverageCurve):
            raise TypeError(f"curves[{method!r}] must be a CoverageCurve")
    fig = new_figure(9.0 if show_gap else 4.6, 4.2)
    axes = fig.subplots(1, 2 if show_gap else 1, squeeze=False)[0]
    lo = min(float(c.levels.min()) for c in curves.values())
    axes[0].plot([lo, 1.0], [lo, 1.0], color="black", linestyle=":", label="calibrated")
    for method, curve in curves.items():
        label = f"{method} (ECE {coverage_ece(curve):.3f})"
        line, = axes[0].plot(curve.levels, curve.coverage, marker=".", label=label)
        if show_gap:
            axes[1].plot(curve.levels, curve.coverage - curve.levels, marker=".",
                         color=line.get_color())
    axes[0].set(xlabel="credible level", ylabel="empirical coverage",
                title="reliability of central intervals")
    axes[0].legend(fontsize="small")
    axes[0].grid(alpha=0.3)
    if show_gap:
        axes[1].axhline(0.0, color="black", linestyle=":")
        axes[1].set(xlabel="credible level", ylabel="coverage − level",
                    title="< 0: over-confident, > 0: under-confident")
        axes[1].grid(alpha=0.3)
    return maybe_save(fig, save_path)


def plot_sparsification(
    curves: dict[str, SparsificationCurve],
    *,
    error_label: str = "normalised MAE of kept pixels",
    save_path: str | Path | None = None,
) -> Figure:
    """Sparsification curves (solid) and their oracles (dashed, same colour) per method.

    The legend gives each method's AUSE; ``error_label`` names the y axis.
    """
    check_named(curves, "curves")
    for method, curve in curves.items():
        if not isinstance(curve, SparsificationCurve):
            raise TypeError(f"curves[{method!r}] must be a SparsificationCurve")
    fig = new_figure(5.0, 4.0)
    ax = fig.subplots()
    for method, curve in curves.items():
        line, = ax.plot(curve.fractions, curve.by_uncertainty,
                        label=f"{method} (AUSE {ause(curve):.3f})")
        ax.plot(curve.fractions, curve.oracle, linestyle="--", color=line.get_color())
    ax.plot([], [], linestyle="--", color="gray", label="oracle (by |error|)")
    ax.set(xlabel="fraction of pixels removed (most uncertain first)", ylabel=error_label,
           title="sparsification", xlim=(0.0, 1.0))
    top = max(float(np.max(c.by_uncertainty)) for c in curves.values())
    ax.set_ylim(bottom=0.0, top=1.05 * top)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return maybe_save(fig, save_path)
