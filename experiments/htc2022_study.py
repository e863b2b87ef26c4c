"""Real limited-angle scan (HTC2022 "ta", 0–60°): error bars of the linearised DIP and
DIP-MCDO, and where they are large — in the directions the scan did not measure.

1. Runs (or resumes) ``experiments/configs/htc2022.yaml`` with
   :func:`bayes_dip.studies.run_study`: metrics against the ground-truth segmentation in
   plastic-fraction units (``table.md``), panels of reconstruction | std | |error|, sample
   galleries, reliability and sparsification plots under ``figures/``.
2. Directional analysis (:mod:`bayes_dip.studies.directional`), written to
   ``directional.md`` / ``directional.json`` and ``figures/directional.{png,pdf}``:

   * the data sensitivity per Fourier direction (spectrum of back-projected white noise)
     splits the directions into measured and unmeasured ones;
   * per method, the Fourier power of the posterior samples (about their mean) per
     direction, and its ratio unmeasured / measured (> 1: more uncertainty where the scan
     saw nothing); the same ratio of the actual error ``mean − ground truth`` for reference;
   * the mean predicted std at ground-truth edges whose normal is unmeasured vs measured
     (those edges are invisible to the data), and the same for |error|.

    python experiments/htc2022_study.py            # full run
    python experiments/htc2022_study.py --smoke    # pipeline check (numbers meaningless)

The scan is read from ``--data-root`` or ``$BAYES_DIP_DATA`` (folder holding ``htc2022/``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from bayes_dip.studies.script import run_script, study_parser

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "htc2022.yaml"

SMOKE = {
    "dip": {"iterations": 60, "lr": 1.0e-3, "gamma": 1.0e-3, "log_every": 10},
    "mcdo": {"num_samples": 256, "iterations": 60},
    "evidence": {"mode": "stochastic", "steps": 2, "num_probes": 2, "cg_max_iter": 5,
                 "precond_rank": 10, "precond_every": 50, "variance": 1.0e-3,
                 "noise_variance": 4.0},
    "tvmap": {"predcp_scale": 50.0, "predcp_samples": 2, "predcp_rule": "paper"},
    "predictive": {"num_samples": 16, "cg_max_iter": 5, "precond_rank": 10},
    "figures": {"formats": ["png"], "images": 1, "gallery_samples": 16},
}


def directional_analysis(results, n_bins: int = 36) -> tuple[list[dict], dict]:
    """Rows per method (see the module docstring) and the spectra for the figure."""
    from bayes_dip.studies.directional import (direction_spectrum, edge_std_by_visibility,
                                               measured_directions, sector_ratio,
                                               sensitivity_spectrum)
    from bayes_dip.studies.methods import METHODS
    from bayes_dip.studies.problems import build_problem, image_key
    from bayes_dip.studies.store import ResultStore

    cfg = results.config
    setting = cfg.settings[0]
    image_id = setting.images[0]
    problem = build_problem(setting, image_id, cfg.seed, cfg.data_root)
    gt = problem.ground_truth.numpy()[0, 0]
    sensitivity = sensitivity_spectrum(problem.ray_trafo, n_probes=16, seed=cfg.seed,
                                       n_bins=n_bins)
    measured = measured_directions(sensitivity)
    store = ResultStore(results.out_dir)
    rows, spectra, stds = [], {}, {}
    for method in cfg.methods:
        arrays = store.arrays(setting.key, image_key(image_id), method)
        if "samples" not in arrays or len(arrays["samples"]) < 2:
            raise ValueError(f"{method}: the directional analysis needs stored samples "
                             "(figures.gallery_samples >= 2)")
        label = METHODS[method].label
        posterior = direction_spectrum(arrays["samples"] - arrays["mean"], n_bins)
        error = direction_spectrum(arrays["mean"] - gt, n_bins)
        edge_std = edge_std_by_visibility(arrays["std"], gt, measured)
        edge_err = edge_std_by_visibility(np.abs(arrays["mean"] - gt), gt, measured)
        spectra[label] = (posterior, error)
        stds[label] = arrays["std"]
        rows.append({
            "method": label, "samples": int(len(arrays["samples"])),
            "posterior_power_ratio": sector_ratio(posterior, measured),
            "error_power_ratio": sector_ratio(error, measured),
            "edge_std_measured": edge_std.measured_mean,
            "edge_std_unmeasured": edge_std.unmeasured_mean,
            "edge_std_ratio": edge_std.ratio, "edge_error_ratio": edge_err.ratio,
            "edges_measured": edge_std.measured_count,
            "edges_unmeasured": edge_std.unmeasured_count})
    data = {"sensitivity": sensitivity, "measured": measured, "spectra": spectra, "stds": stds,
            "ground_truth": gt}
    return rows, data


def directional_markdown(rows: list[dict], measured: np.ndarray) -> str:
    width = 180.0 / measured.size
    header = ("| method | samples | posterior power unmeasured/measured | error power "
              "unmeasured/measured | edge std measured | edge std unmeasured | edge std ratio "
              "| edge |error| ratio |\n|---|---|---|---|---|---|---|---|")
    lines = [f"| {r['method']} | {r['samples']} | {r['posterior_power_ratio']:.2f} | "
             f"{r['error_power_ratio']:.2f} | {r['edge_std_measured']:.4f} | "
             f"{r['edge_std_unmeasured']:.4f} | {r['edge_std_ratio']:.2f} | "
             f"{r['edge_error_ratio']:.2f} |" for r in rows]
    return "\n".join([
        "# HTC2022: uncertainty by direction",
        f"Measured Fourier directions: {int(measured.sum())} of {measured.size} sectors of "
        f"{width:g}° (sensitivity ≥ half its maximum). Ratios > 1: larger where the scan "
        f"measured nothing. Edges: {rows[0]['edges_measured']} ground-truth edge pixels with a "
        f"measured normal, {rows[0]['edges_unmeasured']} with an unmeasured one.",
        header, *lines]) + "\n"


def directional_figure(data: dict, path: Path, formats) -> list[Path]:
    from bayes_dip.viz import save_figure
    from bayes_dip.viz._figure import new_figure

    stds, gt = data["stds"], data["ground_truth"]
    n = len(stds)
    fig = new_figure(3.2 * (n + 1), 6.6)
    grid = fig.add_gridspec(2, n + 1)
    vmax = max(float(s.max()) for s in stds.values())
    gy, gx = np.gradient(gt)
    magnitude = np.hypot(gy, gx)
    edges = magnitude >= 0.3 * magnitude.max()
    bins = data["measured"].size
    visible = data["measured"][np.minimum((np.mod(np.arctan2(gy, gx), np.pi) / np.pi * bins)
                                          .astype(int), bins - 1)]
    ax = fig.add_subplot(grid[0, 0])
    overlay = np.stack([gt * 0.5] * 3, axis=-1)
    overlay[edges & visible] = (0.1, 0.8, 0.1)
    overlay[edges & ~visible] = (0.9, 0.1, 0.1)
    ax.imshow(overlay, interpolation="nearest")
    ax.set_title("edges: normal measured (green)\n/ unmeasured (red)", fontsize="small")
    ax.set_xticks([])
    ax.set_yticks([])
    for k, (label, std) in enumerate(stds.items()):
        ax = fig.add_subplot(grid[0, k + 1])
        im = ax.imshow(std, cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(f"{label}: std", fontsize="small")
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, shrink=0.8, label="std [plastic fraction]")
    ax = fig.add_subplot(grid[1, :])
    degrees = np.rad2deg(data["sensitivity"].angles)
    step = 180.0 / bins
    for d, m in zip(degrees, data["measured"]):
        if not m:
            ax.axvspan(d - step / 2, d + step / 2, color="0.9", lw=0)
    sens = data["sensitivity"].power
    ax.plot(degrees, sens / sens.max(), color="black", lw=2, label="data sensitivity (Aᵀε)")
    for label, (posterior, error) in data["spectra"].items():
        line, = ax.plot(degrees, posterior.power / posterior.power.max(), marker=".",
                        label=f"{label}: posterior samples")
        ax.plot(degrees, error.power / error.power.max(), ls="--", color=line.get_color(),
                label=f"{label}: error")
    ax.set(yscale="log", xlim=(0, 180), xlabel="Fourier direction atan2(f_y, f_x) [°]",
           ylabel="power / max", title="Fourier power per direction (grey: unmeasured directions)")
    ax.legend(fontsize="x-small", ncol=2)
    ax.grid(alpha=0.3)
    return save_figure(fig, path, formats=formats)


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__.split("\n\n")[0], DEFAULT_CONFIG, "outputs/htc2022")
    results, _ = run_script(parser, SMOKE, argv)
    rows, data = directional_analysis(results)
    text = directional_markdown(rows, data["measured"])
    (results.out_dir / "directional.md").write_text(text)
    (results.out_dir / "directional.json").write_text(json.dumps(rows, indent=2))
    directional_figure(data, results.out_dir / "figures" / "directional",
                       results.config.figures.formats)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
