"""Simulated anatomy study: pydicom's real CT slice and Shepp–Logan at several angle counts
and noise levels, five uncertainty methods (``experiments/configs/anatomy.yaml``).

Runs (or resumes) the study with :func:`bayes_dip.studies.run_study` and prints its table;
outputs as for the KMNIST study (``table.md``, ``table.csv``, ``per_image.csv``,
``figures/``, ``results/``).

    python experiments/anatomy_study.py            # full run
    python experiments/anatomy_study.py --smoke    # pipeline check (numbers meaningless)

Needs no data folder (both images ship with pydicom and scikit-image).
"""
from __future__ import annotations

import sys
from pathlib import Path

from bayes_dip.studies.script import run_script, study_parser

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "anatomy.yaml"

SMOKE = {
    "settings": [{"angles": 20, "noise": 0.05, "images": ["dicom", "shepp_logan"], "size": 64}],
    "dip": {"iterations": 100, "lr": 1.0e-3, "lr_warmup": 20, "gamma": 1.0e-4},
    "mcdo": {"num_samples": 256, "iterations": 100},
    "evidence": {"mode": "stochastic", "steps": 3, "num_probes": 2, "cg_max_iter": 10,
                 "precond_rank": 20, "variance": 1.0e-3},
    "tvmap": {"predcp_scale": 1.0, "predcp_samples": 2, "predcp_rule": "paper"},
    "predictive": {"num_samples": 16, "cg_max_iter": 10, "precond_rank": 20},
    "figures": {"formats": ["png"], "images": 1, "gallery_samples": 8},
}


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__.split("\n\n")[0], DEFAULT_CONFIG, "outputs/anatomy")
    run_script(parser, SMOKE, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
