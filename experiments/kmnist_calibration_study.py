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

import sys
from pathlib import Path

from bayes_dip.studies.script import run_script, study_parser

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "kmnist_grid.yaml"

# a quick end-to-end check of the whole pipeline on real KMNIST images (numbers meaningless)
SMOKE = {
    "settings": [{"angles": 20, "noise": 0.05, "kmnist": 2}],
    "dip": {"iterations": 200, "lr": 1.0e-3, "lr_warmup": 50, "gamma": 1.0e-4},
    "mcdo": {"num_samples": 1024, "iterations": 200},
    "evidence": {"mode": "exact", "steps": 50},
    "figures": {"formats": ["png"], "images": 1, "gallery_samples": 8},
}


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__.split("\n\n")[0], DEFAULT_CONFIG, "outputs/kmnist_grid",
                          images_option=True)
    run_script(parser, SMOKE, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
