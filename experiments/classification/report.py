"""Markdown tables and reliability diagrams of the benchmark results.

A result row is a dict with keys ``model, method, acc, nll, ece, brier, fit_s, hyper_s,
predict_s``, ``auroc`` (``{ood_name: value}``), ``shift`` (``{angle: {"acc", "nll", "ece"}}``)
and ``prior_precision``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from bayes_dip.viz import save_figure

from .metrics import ReliabilityBins

__all__ = ["markdown_table", "results_table", "shift_table", "plot_reliability"]


def _cell(value: object, digits: int) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, (list, tuple)):
        return "per-layer"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], digits: int = 4) -> str:
    """A GitHub markdown table; floats with ``digits`` decimals, NaN/None as ``–``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row has {len(row)} cells, the header {len(header)}")
        lines.append("| " + " | ".join(_cell(v, digits) for v in row) + " |")
    return "\n".join(lines)


def results_table(rows: list[dict]) -> str:
    """Main table: in-distribution metrics, OOD AUROC per OOD set, prior precision and wall times."""
    ood_names = list(rows[0]["auroc"]) if rows else []
    header = (["model", "method", "acc ↑", "NLL ↓", "ECE ↓", "Brier ↓"]
              + [f"AUROC {n} ↑" for n in ood_names] + ["δ", "fit [s]", "hyper [s]", "predict [s]"])
    body = []
    for r in rows:
        body.append([r["model"], r["method"], r["acc"], r["nll"], r["ece"], r["brier"],
                     *(r["auroc"][n] for n in ood_names), r.get("prior_precision"),
                     f"{r['fit_s']:.1f}", f"{r['hyper_s']:.1f}", f"{r['predict_s']:.1f}"])
    return markdown_table(header, body)


def shift_table(rows: list[dict], metric: str) -> str:
    """One ``metric`` (``"acc" | "nll" | "ece"``) per rotation angle (columns) and method (rows)."""
    if not rows or not rows[0].get("shift"):
        return ""
    angles = list(rows[0]["shift"])
    header = ["model", "method"] + [f"{a:g}°" for a in angles] + ["mean"]
    body = []
    for r in rows:
        values = [r["shift"][a][metric] for a in angles]
        body.append([r["model"], r["method"], *values, float(np.mean(values))])
    return markdown_table(header, body)


def plot_reliability(bins: dict[str, ReliabilityBins], title: str, save_path: str | Path) -> list[Path]:
    """Reliability diagrams, one panel per method: accuracy per confidence bin (bars), the gap to the
    bin's mean confidence (hatched) and the fraction of examples per bin (grey line).

    Writes ``save_path`` as PNG; returns the written paths.
    """
    if not bins:
        raise ValueError("bins must name at least one method")
    n = len(bins)
    cols = min(n, 3)
    grid_rows = -(-n // cols)
    fig = Figure(figsize=(3.3 * cols, 3.3 * grid_rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(grid_rows, cols, squeeze=False)).ravel()
    for ax, (method, b) in zip(axes, bins.items()):
        full = b.counts > 0
        centers = 0.5 * (b.edges[:-1] + b.edges[1:])
        width = b.edges[1] - b.edges[0]
        ax.bar(centers[full], b.accuracy[full], width=width, color="tab:blue", edgecolor="black",
               linewidth=0.5, label="accuracy")
        low = np.minimum(b.accuracy[full], b.confidence[full])
        ax.bar(centers[full], np.abs(b.confidence[full] - b.accuracy[full]), bottom=low, width=width,
               fill=False, hatch="///", edgecolor="tab:red", linewidth=0.5, label="gap to confidence")
        ax.plot(centers, b.counts / b.counts.sum(), color="tab:gray", marker=".", linewidth=0.8,
                label="fraction in bin")
        ax.plot([0, 1], [0, 1], color="black", linestyle=":")
        weights = b.counts[full] / b.counts.sum()
        ece = float(np.sum(weights * np.abs(b.accuracy[full] - b.confidence[full])))
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=f"{method}\nECE {ece:.4f}")
        ax.title.set_fontsize("small")
    axes[0].legend(loc="upper left", fontsize="x-small")
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return save_figure(fig, save_path, formats=("png",))
