"""The ``bayes-dip`` command.

``bayes-dip reconstruct`` runs the main job: a DIP reconstruction (with uncertainty) of the
embedded real CT slice, or of an image file, a KMNIST test image, or a real HTC2022 scan.
``bayes-dip calibrate --config study.yaml`` runs a calibration study.
Every option can also come from a YAML file (``--config``); flags on the command line win.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import yaml

__all__ = ["main", "build_parser"]

# options of `reconstruct` with their defaults; YAML keys use the same names (dashes or underscores)
RECONSTRUCT_DEFAULTS: dict = dict(
    image=None, kmnist=None, htc2022=None, data_root=None, size=None, angles=30, noise=0.05,
    iterations=None, gamma=None, lr=None, device="cpu", seed=0, out="outputs/reconstruct",
    quiet=False, uncertainty=True, method="lin-dip", evidence="auto", evidence_steps=None,
    predcp_scale=1.0, samples=16, mcdo_samples=None,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bayes-dip", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser(
        "reconstruct", help="DIP reconstruction with pixelwise uncertainty",
        description="Reconstruct one CT image; writes arrays, a figure and metrics.json to --out.")
    src = rec.add_mutually_exclusive_group()
    src.add_argument("--image", help="image file (.dcm, .png, .npy) to simulate a scan of")
    src.add_argument("--kmnist", type=int, metavar="INDEX", help="KMNIST test image index")
    src.add_argument("--htc2022", metavar="MAT", help="real HTC2022 scan (.mat; fan beam, no simulation)")
    rec.add_argument("--data-root", help="data folder with kmnist/ (default: $BAYES_DIP_DATA)")
    rec.add_argument("--size", type=int, help="image side in pixels (resize; HTC2022 grid)")
    rec.add_argument("--angles", type=int, help="number of parallel-beam angles (default 30)")
    rec.add_argument("--noise", type=float, help="relative white-noise level (default 0.05)")
    rec.add_argument("--iterations", type=int, help="DIP iterations (default: by image size)")
    rec.add_argument("--gamma", type=float, help="TV weight of the DIP (default: by image size)")
    rec.add_argument("--lr", type=float, help="Adam learning rate of the DIP")
    rec.add_argument("--device", help="torch device, e.g. cpu or cuda (default cpu)")
    rec.add_argument("--seed", type=int, help="seed of noise and network initialisation")
    rec.add_argument("--out", help="output folder (default outputs/reconstruct)")
    rec.add_argument("--config", help="YAML file with any of these options")
    rec.add_argument("--quiet", action="store_true", default=None, help="no progress bars")
    cal = sub.add_parser(
        "calibrate", help="run a calibration study from a YAML file",
        description="Run a calibration study (settings × images × methods) from a YAML file; "
                    "resumable: finished results in --out are reused. See experiments/configs/.")
    cal.add_argument("--config", required=True, help="study YAML (schema: bayes_dip.studies.config)")
    cal.add_argument("--out", default="outputs/study", help="study folder (default outputs/study)")
    cal.add_argument("--quiet", action="store_true", help="no progress bars")
    cal.add_argument("--workers", type=int, metavar="N",
                     help="Dask local cluster of N single-threaded worker processes "
                          "(default: one per CPU); 0: one image after another in this process")
    cal.add_argument("--scheduler", metavar="ADDRESS",
                     help="run on an existing Dask cluster: tcp://host:port, a scheduler file "
                          "(.json), or a dask-jobqueue file (.yaml: SLURM/PBS, see "
                          "experiments/configs/cluster_slurm.yaml)")
    unc = rec.add_argument_group("uncertainty")
    unc.add_argument("--no-uncertainty", dest="uncertainty", action="store_false", default=None,
                     help="reconstruction only")
    unc.add_argument("--method", choices=("lin-dip", "mcdo", "dip"),
                     help="lin-dip: linearised DIP (default); mcdo: MC-dropout DIP; "
                          "dip: DIP with a homoscedastic evidence-optimised variance")
    unc.add_argument("--evidence", choices=("auto", "exact", "lowrank", "stochastic"),
                     help="evidence of the linearised DIP: exact (small images), lowrank "
                          "(rank-400 observation subspace; large images) or stochastic "
                          "(Hutchinson + CG, the paper's); default auto by size")
    unc.add_argument("--evidence-steps", type=int,
                     help="evidence optimisation steps (default: by mode)")
    unc.add_argument("--predcp-scale", type=float,
                     help="TV-PredCP hyperprior scale (TV-MAP; default 1); 0 for plain MLL")
    unc.add_argument("--samples", type=int, help="posterior samples to write (default 16)")
    unc.add_argument("--mcdo-samples", type=int,
                     help="dropout samples of the MC-dropout predictive (default 4096)")
    return parser


def _merge_settings(args: argparse.Namespace, defaults: dict) -> dict:
    settings = dict(defaults)
    if args.config is not None:
        path = Path(args.config)
        if not path.is_file():
            raise ValueError(f"--config: file {str(path)!r} not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"--config: {path} is not valid YAML ({exc})") from exc
        if not isinstance(loaded, dict):
            raise ValueError(f"--config: {path} must hold a mapping of option: value")
        loaded = {k.replace("-", "_"): v for k, v in loaded.items()}
        unknown = sorted(set(loaded) - set(defaults))
        if unknown:
            raise ValueError(f"--config: unknown option(s) {unknown}; known: {sorted(defaults)}")
        settings.update(loaded)
    for key in defaults:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad input, with one clear message)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "reconstruct":
            from bayes_dip.reconstruct import run_reconstruct
            run_reconstruct(_merge_settings(args, RECONSTRUCT_DEFAULTS))
        elif args.command == "calibrate":
            from bayes_dip.studies import run_study
            from bayes_dip.studies.parallel import StudyTasksFailed
            if not Path(args.config).is_file():
                raise ValueError(f"--config: file {args.config!r} not found")
            try:
                results = run_study(args.config, args.out, progress=not args.quiet,
                                    workers=args.workers, scheduler=args.scheduler)
            except StudyTasksFailed as exc:
                print(exc.results.table_markdown)
                print(f"bayes-dip calibrate: error: {exc}", file=sys.stderr)
                return 1
            print(results.table_markdown)
    except (ValueError, TypeError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        print(f"bayes-dip {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
