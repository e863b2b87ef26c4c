"""Does the default command give calibrated error bars on scans it was not tuned on?

Runs ``bayes-dip reconstruct`` with its defaults (no per-image flags) on every development
case and prints one table row per case: PSNR of FBP, of the DIP and of the predictive mean,
coverage of the 68 % / 95 % intervals, the pixelwise Gaussian test log-likelihood next to the
oracle homoscedastic ``N(mean, RMSE²)``, Spearman(std, |error|), the held-out (leave-one-
angle-out) coverage of the measurements, and the run time. The column "68 % if 95 % held"
is the 68 % coverage after rescaling the std map so that exactly 95 % of the pixels are
covered: the best any global recalibration could do. Below 0.76 only a differently shaped std
map (not a different scale) can bring both levels into their target bands. The column "in
object" gives the 68 % / 95 % coverage of the pixels whose true value is above 5 % of its
maximum (the object, not the air around it): where the intervals over-cover, is it the air?

    python experiments/calibration_benchmark.py                 # all cases (about 1.7 h)
    python experiments/calibration_benchmark.py --cases headsq,kmnist  # names with a match

Cases: the real head-CT slices in ``$BAYES_DIP_DATA/ct_slices`` (64² as given, 128² resized,
one 256²; 30 angles, 5 % noise, plus 20 angles / 10 % and 60 angles / 2 % variants), pydicom's
CT_small, KMNIST test images 0–9 (20 angles, 5 %) and the real HTC2022 "ta" scan. Results are
kept per case under ``--out`` (a rerun reuses finished cases; ``--rerun`` recomputes).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from bayes_dip.cli import RECONSTRUCT_DEFAULTS
from bayes_dip.reconstruct import run_reconstruct
from bayes_dip.runtime import set_threads


def _cases(data: Path) -> dict[str, dict]:
    slices = data / "ct_slices"
    cases: dict[str, dict] = {}
    for n in (25, 35, 55, 65):
        cases[f"headsq_s{n:03d}@64"] = dict(image=str(slices / f"headsq_s{n:03d}_64.npy"))
    for n in (20, 30, 50, 70, 90):
        cases[f"cranium_s{n:03d}@128"] = dict(image=str(slices / f"cranium_s{n:03d}_256.npy"),
                                              size=128)
    cases["cranium_s050@64 20a 10%"] = dict(image=str(slices / "cranium_s050_256.npy"),
                                            size=64, angles=20, noise=0.10)
    cases["cranium_s030@128 60a 2%"] = dict(image=str(slices / "cranium_s030_256.npy"),
                                            size=128, angles=60, noise=0.02)
    cases["cranium_s070@256"] = dict(image=str(slices / "cranium_s070_256.npy"), size=256)
    cases["CT_small@128"] = {}
    for i in range(10):
        cases[f"kmnist{i} 20a"] = dict(kmnist=i, angles=20, data_root=str(data))
    cases["htc2022_ta@128"] = dict(htc2022=str(data / "htc2022" /
                                               "htc2022_ta_sparse_example.mat"))
    return cases


def _coverage_68_at_95(folder: Path) -> float:
    """68 % coverage of the std map rescaled to cover exactly 95 % (nan without ground truth)."""
    if not (folder / "ground_truth.npy").is_file():
        return float("nan")
    truth, mean, std = (np.load(folder / f"{n}.npy").astype(np.float64)
                        for n in ("ground_truth", "reconstruction", "std"))
    z = np.abs(truth - mean).ravel() / std.ravel()
    scale = np.quantile(z, 0.95) / 1.959964
    return float(np.mean(z <= 0.994458 * scale))


def _object_coverage(folder: Path, threshold: float = 0.05) -> tuple[float, float]:
    """68 % / 95 % coverage over the pixels whose true value exceeds ``threshold`` times the
    truth's maximum (nan without ground truth)."""
    if not (folder / "ground_truth.npy").is_file():
        return float("nan"), float("nan")
    truth, mean, std = (np.load(folder / f"{n}.npy").astype(np.float64).ravel()
                        for n in ("ground_truth", "reconstruction", "std"))
    inside = truth > threshold * truth.max()
    z = np.abs(truth - mean)[inside] / std[inside]
    return float(np.mean(z <= 0.994458)), float(np.mean(z <= 1.959964))


def _row(name: str, m: dict, folder: Path) -> str:
    unc = m.get("uncertainty", {})
    cov = unc.get("coverage", {})
    held = unc.get("heldout", {}).get("coverage", {})
    dip = m.get("dip_network_quality", m["dip_quality"])
    cells = [name, f"{m['fbp'].get('psnr', float('nan')):.2f}", f"{dip['psnr']:.2f}",
             f"{m['dip_quality']['psnr']:.2f}", f"{cov.get('0.68', float('nan')):.2f}",
             f"{cov.get('0.95', float('nan')):.2f}",
             "{:.2f} / {:.2f}".format(*_object_coverage(folder)),
             f"{_coverage_68_at_95(folder):.2f}",
             f"{unc.get('pixel_log_likelihood', float('nan')):.2f}",
             f"{unc.get('oracle_log_likelihood_per_pixel', float('nan')):.2f}",
             f"{unc.get('spearman_std_error', float('nan')):.2f}",
             f"{held.get('0.95', float('nan')):.2f}", f"{m['seconds']['total']:.0f}"]
    return "| " + " | ".join(cells) + " |"


HEADER = ("| case | FBP dB | DIP dB | mean dB | cov 68 | cov 95 | in object 68 / 95 | "
          "68 % if 95 % held | LL/px | oracle LL | Spearman | held-out cov 95 | s |\n|"
          + "---|" * 13)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("BAYES_DIP_DATA", "../shared/data"))
    parser.add_argument("--cases", default="",
                        help="comma-separated substrings; run the cases whose name has one")
    parser.add_argument("--out", default="outputs/calibration_benchmark")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rerun", action="store_true")
    args = parser.parse_args()
    set_threads(args.threads)
    out = Path(args.out)
    rows = []
    for name, given in _cases(Path(args.data)).items():
        if not any(part in name for part in args.cases.split(",")):
            continue
        folder = out / name.replace(" ", "_").replace("%", "pct").replace("@", "_")
        metrics_path = folder / "metrics.json"
        if args.rerun or not metrics_path.is_file():
            settings = dict(RECONSTRUCT_DEFAULTS, out=str(folder), quiet=True, **given)
            run_reconstruct(settings)
        rows.append(_row(name, json.loads(metrics_path.read_text()), folder))
        print(rows[-1], flush=True)
    print(HEADER)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
