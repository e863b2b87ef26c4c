"""The ``bayes-dip`` command.

``bayes-dip reconstruct`` runs the main job: a DIP reconstruction (with uncertainty) of the
embedded real CT slice, or of an image file, a KMNIST test image, or a real HTC2022 scan.
``bayes-dip calibrate --config study.yaml`` runs a calibration study.
Every option can also come from a YAML file (``--config``); flags on the command line win.
Every option is checked before work starts; an interrupted ``reconstruct`` (Ctrl-C, SIGTERM)
keeps its checkpoints in ``<out>.partial/`` and the same command resumes from them.
"""
from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import sys
import warnings
from pathlib import Path
from typing import Sequence

import yaml

from bayes_dip.checks import check_choice, check_int
from bayes_dip.preflight import (HTC2022_MAX_ANGLES, check_device, check_memory,
                                 check_output_folder, estimate_run_time, image_side)
from bayes_dip.runtime import (available_cpus, last_signal, set_threads,
                               terminate_as_interrupt)

__all__ = ["main", "build_parser"]

DESCRIPTION = ("bayes-dip: CT reconstruction with a deep image prior and pixelwise uncertainty "
               "from a linearised-DIP Gaussian process.")
RECONSTRUCT_DESCRIPTION = """\
Reconstruct one CT image; writes arrays, a figure and metrics.json to --out.

Without a source option it reconstructs the real head-CT slice that ships with
pydicom (CT_small.dcm) at 128x128 pixels from a simulated scan (30 parallel-beam
angles, 5 % noise): a DIP whose TV weight and length are read from the data
(balancing principle at the noise level, stop at a loss plateau), then the
linearised DIP's evidence (TV-MAP), pixelwise standard deviations and a
held-out-projection check that needs no ground truth. On 2 idle cores a 128x128
job takes 5 to 8 minutes (DIP 2-3, uncertainty 3-5) and 1.5 GiB of memory;
before it starts, a job prints its own estimate (one DIP step timed on this
machine times the step count); --no-uncertainty stops after the DIP.

Sources: --image FILE and --kmnist INDEX simulate a scan (--angles, --noise and
--size apply); --htc2022 FILE is a measured fan-beam scan with its own angles
and noise (--angles and --noise are refused; --size sets the image grid).
--data-root applies to --kmnist only. The uncertainty options apply to the
--method they name; with --no-uncertainty none apply.

Ctrl-C or SIGTERM keeps the checkpoints (DIP, evidence, samples) in <out>.partial/ and
prints the command that resumes; rerunning the same command resumes from them,
--restart starts over."""

# options of `reconstruct` with their defaults; YAML keys use the same names (dashes or underscores)
RECONSTRUCT_DEFAULTS: dict = dict(
    image=None, kmnist=None, htc2022=None, data_root=None, size=None, angles=30, noise=0.05,
    iterations=None, gamma=None, lr=None, device="cpu", seed=0, out="outputs/reconstruct",
    quiet=False, uncertainty=True, method="lin-dip-tvmap", evidence="auto", evidence_steps=None,
    predcp_scale=1.0, samples=16, mcdo_samples=None, mean="dip", calibrate="none",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bayes-dip", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser(
        "reconstruct", help="DIP reconstruction with pixelwise uncertainty",
        description=RECONSTRUCT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    src = rec.add_mutually_exclusive_group()
    src.add_argument("--image", help="image file (.dcm, .png, .npy) to simulate a scan of")
    src.add_argument("--kmnist", type=int, metavar="INDEX", help="KMNIST test image index")
    src.add_argument("--htc2022", metavar="MAT", help="real HTC2022 scan (.mat; fan beam, no simulation)")
    rec.add_argument("--data-root", help="data folder with kmnist/ (default: $BAYES_DIP_DATA)")
    rec.add_argument("--size", type=int, help="image side in pixels (resize; HTC2022 grid)")
    rec.add_argument("--angles", type=int, help="parallel-beam angles of the simulated scan (default 30)")
    rec.add_argument("--noise", type=float, help="relative white-noise level of the simulated scan (default 0.05)")
    rec.add_argument("--iterations", type=int, help="DIP iterations (default: by image size)")
    rec.add_argument("--gamma", type=float, help="TV weight of the DIP (default: by image size)")
    rec.add_argument("--lr", type=float, help="Adam learning rate of the DIP")
    rec.add_argument("--device", help="torch device, e.g. cpu or cuda (default cpu)")
    rec.add_argument("--seed", type=int, help="seed of noise and network initialisation")
    rec.add_argument("--out", help="output folder (default outputs/reconstruct)")
    rec.add_argument("--config", help="YAML file with any of these options")
    rec.add_argument("--quiet", action="store_true", default=None, help="no progress bars")
    _add_threads(rec)
    rec.add_argument("--restart", action="store_true",
                     help="discard the checkpoints of an interrupted run in <out>.partial/")
    rec.add_argument("--force", action="store_true",
                     help="run even if the estimated memory exceeds the available memory")
    cal = sub.add_parser(
        "calibrate", help="run a calibration study from a YAML file",
        description="Run a calibration study (settings × images × methods) from a YAML file; "
                    "resumable: finished results in --out are reused. See experiments/configs/.")
    cal.add_argument("--config", required=True, help="study YAML (schema: bayes_dip.studies.config)")
    cal.add_argument("--out", default="outputs/study", help="study folder (default outputs/study)")
    cal.add_argument("--quiet", action="store_true", help="no progress bars")
    cal.add_argument("--report-only", action="store_true",
                     help="compute nothing: tables and figures of the results in --out finished "
                          "so far")
    _add_threads(cal)
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
    unc.add_argument("--method",
                     help="a method of the registry that calibration studies use (one image): "
                          "lin-dip-tvmap (default) / lin-dip-mll: linearised DIP, evidence with "
                          "/ without the TV-PredCP hyperprior; mcdo: MC-dropout DIP; "
                          "dip-evidence / dip: DIP with a homoscedastic variance, evidence-"
                          "optimised / sigma_y^2 = 1")
    unc.add_argument("--evidence",
                     help="evidence of the linearised DIP: exact (small images), lowrank "
                          "(rank-400 observation subspace; large images) or stochastic "
                          "(Hutchinson + CG, the paper's); default auto by size")
    unc.add_argument("--evidence-steps", type=int,
                     help="evidence optimisation steps (default: by mode)")
    unc.add_argument("--predcp-scale", type=float,
                     help="TV-PredCP hyperprior scale of lin-dip-tvmap: rate scale · γ · "
                          "numel(y) / (2 · the DIP's mean squared residual), the same in any "
                          "units of the scan (default 1)")
    unc.add_argument("--mean", choices=("dip", "posterior"),
                     help="predictive mean of lin-dip-*: the DIP output (default) or the "
                          "linearised posterior mean (helps an under-fitted DIP)")
    unc.add_argument("--calibrate", choices=("heldout", "none"),
                     help="lin-dip-*: keep the evidence's hyperparameters (default), or scale "
                          "prior and noise so that the leave-one-angle-out predictive of the "
                          "measurements is calibrated (it made pixel intervals too narrow on "
                          "real head slices)")
    unc.add_argument("--samples", type=int, help="posterior samples to write (default 16)")
    unc.add_argument("--mcdo-samples", type=int,
                     help="dropout samples of the MC-dropout predictive (default 4096)")
    return parser


def _add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int,
                        help="threads of torch and the BLAS/OpenMP libraries (default: "
                             "$OMP_NUM_THREADS if set, else the CPUs available to this "
                             f"process, here {available_cpus()}); use 1 per job when "
                             "running jobs side by side")


def _merge_settings(args: argparse.Namespace, defaults: dict) -> tuple[dict, set[str]]:
    """Defaults updated by ``--config`` and then by the flags given; also the names given."""
    settings, given = dict(defaults), set()
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
        given.update(loaded)
    for key in defaults:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
            given.add(key)
    return settings, given


#: options that apply only to some runs: (option, applies(settings), where it applies)
_APPLICABILITY = (
    ("data_root", lambda s: s["kmnist"] is not None, "--kmnist"),
    ("method", lambda s: s["uncertainty"], "uncertainty runs"),
    ("samples", lambda s: s["uncertainty"] and s["method"] not in ("dip", "dip-evidence"),
     "--method lin-dip-* and mcdo"),
    ("evidence", lambda s: _linearized(s), "--method lin-dip-*"),
    ("evidence_steps", lambda s: _linearized(s), "--method lin-dip-*"),
    ("predcp_scale", lambda s: s["uncertainty"] and s["method"] == "lin-dip-tvmap",
     "--method lin-dip-tvmap"),
    ("mcdo_samples", lambda s: s["uncertainty"] and s["method"] == "mcdo", "--method mcdo"),
    ("mean", lambda s: _linearized(s), "--method lin-dip-*"),
    ("calibrate", lambda s: _linearized(s), "--method lin-dip-*"),
)


def _linearized(settings: dict) -> bool:
    return settings["uncertainty"] and settings["method"].startswith("lin-dip")


def _option(key: str) -> str:
    return "--" + key.replace("_", "-")


def _check_reconstruct(settings: dict, given: set[str], force: bool) -> tuple[Path, int]:
    """Everything that can be checked before work: option applicability (error or one-line
    warning), ``--out``, the problem's memory. Returns the absolute output folder and the
    image side (``None`` where the image file is unreadable: loading then says why)."""
    if settings["htc2022"] is not None:
        misplaced = [_option(k) for k in ("angles", "noise") if k in given]
        if misplaced:
            verb = "does" if len(misplaced) == 1 else "do"
            raise ValueError(f"{'/'.join(misplaced)} {verb} not apply to --htc2022: a measured "
                             "scan has its own angles and noise; remove them")
    from bayes_dip.linearized import EVIDENCE_MODES
    from bayes_dip.studies.methods import METHODS
    check_choice(settings["method"], "--method", METHODS)
    if settings["evidence"] != "auto" and settings["evidence"] not in EVIDENCE_MODES:
        raise ValueError(f"--evidence must be auto or one of {', '.join(EVIDENCE_MODES)}, "
                         f"got {settings['evidence']!r}")
    for key, applies, where in _APPLICABILITY:
        if key in given and not applies(settings):
            warnings.warn(f"{_option(key)} applies to {where} only; ignored")
    out = check_output_folder(settings["out"])
    angles, size = settings["angles"], settings["size"]
    check_int(angles, "--angles", 1)
    if size is not None:
        check_int(size, "--size", 1)
    if settings["htc2022"] is not None:
        side, angles, options = size or 128, HTC2022_MAX_ANGLES, "--size"
    elif settings["kmnist"] is not None:
        side, options = 28, "--angles"
    elif settings["image"] is not None:
        side, options = size or image_side(settings["image"]), "--angles/--size"
    else:
        side, options = size or 128, "--angles/--size"
    if side is not None:
        check_memory(side, angles, options, force=force)
    return out, side


def _announce_run_time(settings: dict, side: int) -> None:
    """Print the run-time estimate of the job (:func:`~bayes_dip.preflight.estimate_run_time`)."""
    method = settings["method"] if settings["uncertainty"] else None
    estimate = estimate_run_time(side, method, settings["iterations"], settings["mcdo_samples"],
                                 settings["device"])
    print(f"bayes-dip reconstruct: {side}x{side} pixels; estimated run time "
          f"{estimate.describe()}", file=sys.stderr)


def _partial_progress(partial: Path) -> str:
    """What the checkpoints in ``partial`` hold, in words ("" where none)."""
    import torch

    from bayes_dip.dip.checkpoint import load_checkpoint
    parts = []
    dip = load_checkpoint(partial / "dip")
    if dip is not None:
        parts.append(f"DIP iteration {dip['iteration']} of {dip['config']['iterations']} "
                     f"with its best iterate ({int(dip['best_iteration'])})")
    mcdo = load_checkpoint(partial / "mcdo")
    if mcdo is not None:
        parts.append(f"MC-dropout DIP iteration {mcdo['iteration']} of "
                     f"{mcdo['config']['iterations']}")
    for samples in sorted(partial.glob("mcdo_samples-*.pt")):
        state = torch.load(samples, map_location="cpu", weights_only=False)
        parts.append(f"MC-dropout samples {state['moments']['count']} of "
                     f"{state['key']['num_samples']}")
    if (partial / "subspace.pt").is_file():
        parts.append("the low-rank subspace")
    for evidence in sorted(partial.glob("evidence-*.pt")):
        state = torch.load(evidence, map_location="cpu", weights_only=False)
        parts.append(f"evidence step {state['step']} of {state['config']['steps']}")
    for samples in sorted(partial.glob("predictive-*.pt")):
        state = torch.load(samples, map_location="cpu", weights_only=False)
        parts.append(f"posterior samples {sum(e.shape[0] for e in state['errors'])} of "
                     f"{state['key']['num_samples']}")
    return ", ".join(parts)


#: checkpoint files of run_reconstruct inside <out>.partial/
_CHECKPOINT_FILES = ("dip/dip_checkpoint.pt", "mcdo/dip_checkpoint.pt", "mcdo_samples-*.pt",
                     "subspace.pt", "evidence-*.pt", "predictive-*.pt")
#: settings that may differ between an interrupted run and its resumption
_RESUME_FREE = ("quiet",)


def _prepare_partial(partial: Path, settings: dict, restart: bool) -> None:
    """Start over (``restart``) or check that ``partial`` holds a run of these settings and
    say what resumes; then record the settings there."""
    record = partial / "settings.yaml"
    if restart:
        shutil.rmtree(partial, ignore_errors=True)
    elif record.is_file():
        saved = yaml.safe_load(record.read_text()) or {}
        changed = sorted(k for k in settings if k not in _RESUME_FREE
                         and saved.get(k) != settings[k])
        if changed:
            diff = ", ".join(f"{_option(k)} {saved.get(k)!r} -> {settings[k]!r}" for k in changed)
            raise ValueError(f"--out: {partial} holds an interrupted run with other settings "
                             f"({diff}); repeat its options to resume, or add --restart")
        progress = _partial_progress(partial)
        if progress:
            print(f"bayes-dip reconstruct: resuming the interrupted run in {partial} "
                  f"({progress}); --restart starts over", file=sys.stderr)
    partial.mkdir(parents=True, exist_ok=True)
    record.write_text(yaml.safe_dump(settings, sort_keys=True))


def _reconstruct(args: argparse.Namespace, argv: Sequence[str]) -> int:
    settings, given = _merge_settings(args, RECONSTRUCT_DEFAULTS)
    out, side = _check_reconstruct(settings, given, args.force)
    set_threads(args.threads)
    check_device(settings["device"])
    if side is not None and not settings["quiet"]:
        _announce_run_time(settings, side)
    partial = out.with_name(out.name + ".partial")
    _prepare_partial(partial, settings, args.restart)
    from bayes_dip.reconstruct import run_reconstruct
    try:
        run_reconstruct(settings, checkpoint_dir=partial)
    except KeyboardInterrupt:
        command = shlex.join(["bayes-dip", *(a for a in argv if a != "--restart")])
        saved = _partial_progress(partial)
        if saved:
            print(f"bayes-dip reconstruct: interrupted; saved {saved} in {partial}; "
                  f"resume with: {command}", file=sys.stderr)
        else:
            shutil.rmtree(partial, ignore_errors=True)
            print(f"bayes-dip reconstruct: interrupted before the first checkpoint; "
                  f"nothing saved; rerun with: {command}", file=sys.stderr)
        return 128 + (last_signal() or signal.SIGINT)
    except BaseException:
        if not any(any(partial.glob(name)) for name in _CHECKPOINT_FILES):
            shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(partial, ignore_errors=True)
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"bayes-dip: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad input, with one clear message; 128 +
    the signal number when interrupted)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings(), terminate_as_interrupt():
            warnings.showwarning = _show_warning
            if args.command == "reconstruct":
                return _reconstruct(args, argv)
            if not Path(args.config).is_file():
                raise ValueError(f"--config: file {args.config!r} not found")
            check_output_folder(args.out)
            set_threads(args.threads)
            from bayes_dip.studies import run_study
            from bayes_dip.studies.parallel import StudyTasksFailed
            try:
                results = run_study(args.config, args.out, progress=not args.quiet,
                                    report_only=args.report_only, workers=args.workers,
                                    scheduler=args.scheduler)
            except StudyTasksFailed as exc:
                print(exc.results.table_markdown)
                print(f"bayes-dip calibrate: error: {exc}", file=sys.stderr)
                return 1
            print(results.table_markdown)
    except (ValueError, TypeError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        print(f"bayes-dip {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bayes-dip {args.command}: interrupted", file=sys.stderr)
        return 128 + (last_signal() or signal.SIGINT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
