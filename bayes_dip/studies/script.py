"""Command-line plumbing shared by the study scripts in ``experiments/``."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from bayes_dip.studies.runner import StudyResults, run_study

__all__ = ["study_parser", "study_config", "run_script"]


def study_parser(description: str, default_config: Path, default_out: str,
                 images_option: bool = False) -> argparse.ArgumentParser:
    """``--config --out --smoke --data-root --device --quiet --report-only --workers
    --scheduler`` (and ``--images``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=str(default_config), help="study YAML")
    parser.add_argument("--out", default=default_out, help="output folder")
    if images_option:
        parser.add_argument("--images", type=int,
                            help="first N KMNIST test images in every setting")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny settings: checks the pipeline in minutes (numbers meaningless)")
    parser.add_argument("--data-root", help="data folder (default $BAYES_DIP_DATA)")
    parser.add_argument("--device", help="torch device (default from the config: cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--report-only", action="store_true",
                        help="compute nothing: tables and figures of the results finished so far")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="Dask local cluster of N single-threaded workers (default: one per "
                             "CPU); 0: serial, in this process")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="existing Dask cluster: tcp://host:port, scheduler file (.json) or "
                             "dask-jobqueue file (.yaml)")
    return parser


def study_config(args: argparse.Namespace, smoke: dict[str, Any]) -> dict[str, Any]:
    """The YAML of ``args.config`` with the command-line overrides applied; ``--smoke``
    replaces the top-level sections given in ``smoke`` and suffixes the name."""
    path = Path(args.config)
    if not path.is_file():
        raise FileNotFoundError(f"--config: file {str(path)!r} not found")
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict):
        raise ValueError(f"--config: {path} must hold a mapping")
    if args.smoke:
        config.update(smoke)
        config["name"] = f"{config['name']}-smoke"
    if getattr(args, "images", None) is not None:
        for entry in config["settings"]:
            if "kmnist" in entry:
                entry["kmnist"] = args.images
    if args.data_root is not None:
        config["data_root"] = args.data_root
    if args.device is not None:
        config["device"] = args.device
    return config


def run_script(parser: argparse.ArgumentParser, smoke: dict[str, Any],
               argv: Sequence[str] | None = None) -> tuple[StudyResults, argparse.Namespace]:
    """Parse ``argv``, run the study, print its table and a one-line summary."""
    args = parser.parse_args(argv)
    start = time.perf_counter()
    results = run_study(study_config(args, smoke), args.out, progress=not args.quiet,
                        report_only=args.report_only, workers=args.workers,
                        scheduler=args.scheduler)
    print(results.table_markdown)
    print(f"{len(results.computed)} results computed, {len(results.reused)} reused, "
          f"{time.perf_counter() - start:.0f} s; outputs in {results.out_dir}")
    return results, args
