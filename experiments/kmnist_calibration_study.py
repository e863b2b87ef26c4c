"""KMNIST calibration study: five uncertainty methods on the paper's angles × noise grid.

Runs (or resumes) the study of ``experiments/configs/kmnist_grid.yaml`` with
:func:`bayes_dip.studies.run_study` and prints its table. Outputs in ``--out``:
``table.md`` / ``table.csv`` (test log-likelihood per pixel, coverage ECE, UCE, AUSE,
PSNR, SSIM, mean ± standard error; seconds per stage), ``per_image.csv``, figures under
``figures/`` and the per-image results under ``results/`` (never recomputed).

    python experiments/kmnist_calibration_study.py                 # the note's run
    python experiments/kmnist_calibration_study.py --images 50     # the paper's 50 images
    python experiments/kmnist_calibration_study.py --smoke         # < 2 min check

KMNIST is read from ``--data-root`` or ``$BAYES_DIP_DATA`` (folder holding ``kmnist/``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = HERE / "configs" / "kmnist_grid.yaml"

# a quick end-to-end check of the whole pipeline on real KMNIST images (numbers meaningless)
SMOKE = {
    "settings": [{"angles": 20, "noise": 0.05, "kmnist": 2}],
    "dip": {"iterations": 300, "lr": 1.0e-3, "lr_warmup": 50, "gamma": 1.0e-4},
    "mcdo": {"num_samples": 1024, "iterations": 300},
    "evidence": {"mode": "exact", "steps": 50},
    "figures": {"formats": ["png"], "images": 1, "gallery_samples": 8},
}


def build_config(args: argparse.Namespace) -> dict:
    config = yaml.safe_load(Path(args.config).read_text())
    if args.smoke:
        config.update(SMOKE)
        config["name"] = f"{config['name']}-smoke"
    if args.images is not None:
        for entry in config["settings"]:
            if "kmnist" in entry:
                entry["kmnist"] = args.images
    if args.data_root is not None:
        config["data_root"] = args.data_root
    if args.device is not None:
        config["device"] = args.device
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="study YAML")
    parser.add_argument("--out", default="outputs/kmnist_grid", help="output folder")
    parser.add_argument("--images", type=int, help="first N test images in every setting")
    parser.add_argument("--smoke", action="store_true", help="tiny settings, 1 setting × 2 images")
    parser.add_argument("--data-root", help="data folder with kmnist/ (default $BAYES_DIP_DATA)")
    parser.add_argument("--device", help="torch device (default from the config: cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    from bayes_dip.studies import run_study

    start = time.perf_counter()
    results = run_study(build_config(args), args.out, progress=not args.quiet)
    print(results.table_markdown)
    print(f"{len(results.computed)} results computed, {len(results.reused)} reused, "
          f"{time.perf_counter() - start:.0f} s; outputs in {results.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
