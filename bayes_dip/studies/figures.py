"""Study figures: per setting (panels, reliability, sparsification, error-vs-std, z-scores,
sample galleries) and across settings (test log-likelihood against the number of angles)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bayes_dip.metrics import coverage_curve, sparsification_curve, z_scores
from bayes_dip.viz import (plot_error_vs_std, plot_reliability_diagram, plot_sample_gallery,
                           plot_sparsification, plot_uncertainty_panels, plot_z_scores,
                           save_figure)
from bayes_dip.viz._figure import new_figure

__all__ = ["ImagePredictions", "setting_figures", "plot_ll_vs_angles"]

# one image of a setting: ground truth (H, W) or None, FBP (H, W), and per method label
# a dict with "mean", "std" (H, W) and optionally "samples" (k, H, W)
ImagePredictions = tuple[str, np.ndarray | None, np.ndarray, dict[str, dict[str, np.ndarray]]]


def _save(fig, path: Path, formats: Sequence[str]) -> list[Path]:
    return save_figure(fig, path, formats=formats)


def setting_figures(images: list[ImagePredictions], folder: Path, *, title: str, units: str,
                    value_label: str, panel_images: int, formats: Sequence[str],
                    file_names: dict[str, str] | None = None) -> list[Path]:
    """Write the figures of one setting into ``folder``; returns the files written.

    Panels and galleries (``samples_<file name of the method>_<image>``) for the first
    ``panel_images`` images; calibration figures pool the pixels of all images with a
    ground truth. ``file_names`` maps method labels to file-name parts (default: the label
    with non-alphanumerics replaced).
    """
    file_names = file_names or {}
    written: list[Path] = []
    for key, gt, fbp, preds in images[:panel_images]:
        fig = plot_uncertainty_panels({m: (p["mean"], p["std"]) for m, p in preds.items()},
                                      gt, fbp=fbp, units=units, value_label=value_label)
        fig.suptitle(f"{title}: {key}")
        written += _save(fig, folder / f"panels_{key}", formats)
        for method, p in preds.items():
            if p.get("samples") is not None and len(p["samples"]) > 0:
                fig = plot_sample_gallery(p["samples"], units=units, value_label=value_label)
                fig.suptitle(f"{method}: predictive samples, {key}")
                written += _save(fig, folder / f"samples_{file_names.get(method, _slug(method))}_{key}", formats)
    with_gt = [im for im in images if im[1] is not None]
    if not with_gt:
        return written
    methods = [m for m in with_gt[0][3] if all(m in im[3] for im in with_gt)]
    pooled: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    gt_all = np.concatenate([im[1].ravel() for im in with_gt])
    for m in methods:
        pooled[m] = (np.concatenate([im[3][m]["mean"].ravel() for im in with_gt]),
                     np.concatenate([im[3][m]["std"].ravel() for im in with_gt]))
    fig = plot_reliability_diagram({m: coverage_curve(mu, sd, gt_all) for m, (mu, sd) in pooled.items()})
    fig.suptitle(f"{title} ({len(with_gt)} images pooled)")
    written += _save(fig, folder / "reliability", formats)
    fig = plot_sparsification({m: sparsification_curve(mu, sd, gt_all)
                               for m, (mu, sd) in pooled.items()})
    fig.suptitle(title)
    written += _save(fig, folder / "sparsification", formats)
    fig = plot_error_vs_std(pooled, gt_all, units=units)
    fig.suptitle(title)
    written += _save(fig, folder / "error_vs_std", formats)
    fig = plot_z_scores({m: z_scores(mu, sd, gt_all) for m, (mu, sd) in pooled.items()})
    fig.suptitle(title)
    written += _save(fig, folder / "z_scores", formats)
    return written


def plot_ll_vs_angles(rows: list[dict[str, Any]], settings: dict[str, dict[str, Any]],
                      path: Path, formats: Sequence[str]) -> list[Path]:
    """Mean test log-likelihood (± standard error) against the number of angles, one panel
    per noise level, one line per method. ``settings`` maps setting keys to their params;
    nothing is written unless some noise level has at least two angle counts."""
    by_noise: dict[float, dict[str, list[tuple[int, float, float]]]] = {}
    for r in rows:
        params = settings[r["setting"]]
        if params["kind"] != "simulated" or not math.isfinite(r["test_ll_mean"]):
            continue
        by_noise.setdefault(params["noise"], {}).setdefault(r["method_label"], []).append(
            (params["angles"], r["test_ll_mean"], r["test_ll_se"]))
    panels = {n: lines for n, lines in sorted(by_noise.items())
              if len({a for pts in lines.values() for a, _, _ in pts}) >= 2}
    if not panels:
        return []
    fig = new_figure(4.2 * len(panels) + 0.5, 3.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (noise, lines) in zip(axes, panels.items()):
        for label, pts in lines.items():
            pts = sorted(pts)
            a = [p[0] for p in pts]
            mean = np.array([p[1] for p in pts])
            se = np.nan_to_num(np.array([p[2] for p in pts]))
            ax.errorbar(a, mean, yerr=se, marker="o", capsize=3, label=label)
        ax.set(xlabel="number of angles", ylabel="test log-likelihood per pixel",
               title=f"{noise * 100:g} % noise")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    return save_figure(fig, path, formats=formats)


def _slug(text: str) -> str:
    words = "".join(c if c.isalnum() else " " for c in text).split()
    return "-".join(words).lower()
