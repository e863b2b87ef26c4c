"""The ``bayes-dip reconstruct`` job: problem → FBP → DIP → metrics, figure, arrays.

The uncertainty comes from the method registry of the studies
(:data:`~bayes_dip.studies.METHODS`): the command line runs a one-image study
(:func:`method_config`) whose DIP settings are read from the data, so a method means the same
on the command line and in a study.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from bayes_dip.baselines import DEFAULT_NUM_SAMPLES
from bayes_dip.checks import check_choice, check_int
from bayes_dip.dip import DIPConfig
from bayes_dip.dip.settings import dip_config_from_data
from bayes_dip.linearized import EVIDENCE_MODES
from bayes_dip.metrics import pixel_calibration, psnr, ssim, std_error_correlation
from bayes_dip.output_folder import atomic_output_folder
from bayes_dip.problem import CTProblem, load_problem
from bayes_dip.studies.config import FigureOptions, MetricsOptions, Setting, StudyConfig
from bayes_dip.studies.context import MethodContext
from bayes_dip.studies.methods import METHODS
from bayes_dip.metrics import Prediction
from bayes_dip.viz import plot_error_vs_std, plot_uncertainty_panels, plot_z_scores

__all__ = ["run_reconstruct", "default_dip_config", "method_config"]

#: patch size of the command line's patchwise test log-likelihood (sampled predictives)
PATCH_SIZE = 10


def default_dip_config(problem: CTProblem, **overrides) -> tuple[DIPConfig, dict]:
    """The DIP settings read from the problem (:func:`~bayes_dip.dip.dip_config_from_data`:
    balancing-principle TV weight at the simulated noise level, or at the level estimated
    from a measured sinogram, and a plateau budget); ``overrides`` that are not ``None``
    replace fields. Returns the config and how it was derived."""
    return dip_config_from_data(problem.ray_trafo, problem.sinogram, problem.fbp,
                                problem.noise_std, **overrides)


def method_config(settings: dict, dip: DIPConfig) -> StudyConfig:
    """The one-image study a command line describes: its ``method`` with the DIP settings
    ``dip`` (read from the data) and the evidence with σ_y² held at the DIP's mean squared
    residual, stopped once converged; checked by the method's own validation."""
    evidence = dict(mode=settings["evidence"], noise_variance="residual",
                    stop_when_converged=True)
    predictive = dict(num_samples=settings["samples"], mean=settings["mean"],
                      calibrate=settings["calibrate"])
    mode = EVIDENCE_MODES.get(settings["evidence"])  # None for "auto": exact or low-rank
    steps = settings["evidence_steps"]
    if steps is None and mode is not None:
        steps = mode.command_line_steps
    if steps is not None:
        evidence["steps"] = steps
    if mode is not None:
        predictive.update(mode.command_line_sampler)
    config = StudyConfig(
        name="reconstruct", methods=(settings["method"],), settings=(), seed=settings["seed"],
        device=settings["device"], dip=dip, evidence=evidence,
        tvmap=dict(predcp_scale=settings["predcp_scale"]), predictive=predictive,
        mcdo=dict(num_samples=settings["mcdo_samples"] or DEFAULT_NUM_SAMPLES),
        metrics=MetricsOptions(patch_size=PATCH_SIZE),
        figures=FigureOptions(gallery_samples=settings["samples"]))
    METHODS[settings["method"]].check(config)
    return config


def _setting(settings: dict, problem: CTProblem) -> Setting:
    if settings["htc2022"] is not None:
        return Setting("htc2022", (problem.name,), size=settings["size"],
                       htc2022=settings["htc2022"])
    return Setting("simulated", (problem.name,), angles=settings["angles"],
                   noise=settings["noise"], size=settings["size"])


def _quality(x: torch.Tensor, problem: CTProblem) -> dict:
    if problem.ground_truth is None:
        return {}
    gt = problem.ground_truth
    data_range = float(gt.max() - gt.min()) or 1.0
    return dict(psnr=psnr(x, gt, data_range=data_range), ssim=ssim(x, gt, data_range=data_range))


def run_reconstruct(settings: dict, checkpoint_dir: str | Path | None = None) -> dict:
    """Run the job described by ``settings`` (see :data:`bayes_dip.cli.RECONSTRUCT_DEFAULTS`).

    ``checkpoint_dir``: folder for the stage checkpoints of the method (``dip/``,
    ``subspace.pt``, ``evidence-*.pt``, ...); a run resumes from those it finds there
    (``None``: a temporary folder, removed afterwards). Returns the metrics written to
    ``metrics.json``.
    """
    if checkpoint_dir is None:
        with tempfile.TemporaryDirectory(prefix="bayes_dip_reconstruct_") as tmp:
            return run_reconstruct(settings, tmp)
    start = time.perf_counter()
    _check_uncertainty_settings(settings)
    source = next((k for k in ("image", "kmnist", "htc2022") if settings[k] is not None), None)
    try:
        problem = load_problem(image=settings["image"], kmnist=settings["kmnist"],
                               htc2022=settings["htc2022"], data_root=settings["data_root"],
                               size=settings["size"], angles=settings["angles"],
                               noise=settings["noise"], seed=settings["seed"])
    except (ValueError, TypeError, FileNotFoundError) as exc:
        if source is None:
            raise
        raise type(exc)(f"--{source}: {exc}") from exc
    config, derived = default_dip_config(problem, iterations=settings["iterations"],
                                         gamma=settings["gamma"], lr=settings["lr"],
                                         seed=settings["seed"])
    study = method_config(settings, config)
    ctx = MethodContext(problem, study, _setting(settings, problem), problem.name,
                        Path(checkpoint_dir), progress=not settings["quiet"])
    gt = problem.ground_truth
    pred = None
    if settings["uncertainty"]:
        pred = METHODS[settings["method"]].run(ctx)
        network_output = pred.network_output
        run = dict(iterations_run=pred.info.get("dip_iterations_run"),
                   best_iteration=pred.info.get("dip_best_iteration"))
        seconds = dict(dip=pred.seconds.get("dip"),
                       **{f"uncertainty_{k}": v for k, v in pred.seconds.items() if k != "dip"})
        dip_config = METHODS[settings["method"]].dip(study)
    else:
        dip = ctx.dip()
        network_output = dip.recon
        run = dict(iterations_run=len(dip.history.loss), best_iteration=dip.best_iteration)
        seconds, dip_config = dict(dip=dip.seconds), study.dip
    network_output = network_output.detach().float().cpu()
    recon = network_output if pred is None else pred.mean.detach().float().cpu()
    metrics = dict(problem=problem.info, dip=dict(dip_config.to_dict(), **derived, **run),
                   fbp=_quality(problem.fbp, problem), dip_quality=_quality(recon, problem),
                   dip_network_quality=_quality(network_output, problem), seconds=seconds)
    if pred is not None:
        metrics["uncertainty"] = _uncertainty_metrics(METHODS[settings["method"]].label, pred,
                                                      problem, network_output.double())
    with atomic_output_folder(settings["out"]) as out:
        np.save(out / "reconstruction.npy", recon.numpy()[0, 0])
        np.save(out / "fbp.npy", problem.fbp.numpy()[0, 0])
        np.save(out / "sinogram.npy", problem.sinogram.numpy()[0, 0])
        if gt is not None:
            np.save(out / "ground_truth.npy", gt.numpy()[0, 0])
        std = None
        if pred is not None:
            std = pred.std.float().cpu()
            label = METHODS[settings["method"]].label
            np.save(out / "std.npy", std.numpy()[0, 0])
            samples = pred.sample(settings["samples"], ctx.seed(17))
            if samples is not None:
                np.save(out / "samples.npy", samples.float().cpu().numpy()[:, 0])
            if gt is not None:
                plot_error_vs_std({label: (recon, std)}, gt,
                                  units=problem.info.get("image_unit", "a.u."),
                                  save_path=out / "error_vs_std")
            if pred.heldout_z is not None:
                plot_z_scores({"leave-one-angle-out": pred.heldout_z.cpu()},
                              quantity="held-out measurement", save_path=out / "heldout")
        _figure(problem, "DIP" if pred is None else label, recon, std, out / "reconstruction.png")
        metrics["seconds"]["total"] = time.perf_counter() - start
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (out / "settings.yaml").write_text(yaml.safe_dump(settings, sort_keys=True))
    _print_summary(problem, metrics, Path(settings["out"]))
    return metrics


def _check_uncertainty_settings(settings: dict) -> None:
    check_choice(settings["method"], "--method", METHODS)
    for key, allowed in (("mean", ("dip", "posterior")),
                         ("calibrate", ("heldout", "none"))):
        check_choice(settings[key], f"--{key}", allowed)
    for key, minimum in (("samples", 2), ("evidence_steps", 1), ("mcdo_samples", 2)):
        value = settings[key]
        if value is not None:
            check_int(value, f"--{key.replace('_', '-')}", minimum)
    scale = settings["predcp_scale"]
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise ValueError(f"--predcp-scale must be a number > 0 (for plain type-II maximum "
                         f"likelihood use --method lin-dip-mll), got {scale!r}")


def _uncertainty_metrics(label: str, pred: Prediction, problem: CTProblem,
                         network_output: torch.Tensor) -> dict:
    """What ``metrics.json`` reports of the predictive (ground-truth metrics where known)."""
    info = {k: v for k, v in pred.info.items() if not k.startswith("dip_")}
    out = dict(method=label, **info, mean_std=float(pred.std.mean()))
    gt = problem.ground_truth
    if gt is not None:
        gt64 = gt.to(torch.float64)
        mean, std = pred.mean.cpu().double(), pred.std.cpu().double()
        ll = pred.log_likelihood(gt64, PATCH_SIZE)
        out.update(test_log_likelihood_per_pixel=ll.per_pixel, ll_kind=ll.kind)
        out.update(pixel_calibration(mean, std, gt64))
        out["spearman_std_error"] = std_error_correlation(mean, std, gt64).spearman
        # the same std map about the network output: what the predictive mean changes
        out["about_dip_output"] = pixel_calibration(network_output.cpu().double(), std, gt64)
    return out


def _figure(problem: CTProblem, label: str, recon: torch.Tensor, std: torch.Tensor | None,
            path: Path) -> None:
    plot_uncertainty_panels({label: (recon, std)}, problem.ground_truth, fbp=problem.fbp,
                            value_label="image", units=problem.info.get("image_unit", "a.u."))\
        .savefig(path, dpi=120, bbox_inches="tight")


def _print_summary(problem: CTProblem, metrics: dict, out: Path) -> None:
    lines = [f"bayes-dip reconstruct: {problem.name}, {problem.info['angles']} angles"]
    labels = (("FBP", "fbp"), ("DIP", "dip_network_quality"), ("mean", "dip_quality"))
    for label, key in labels if "uncertainty" in metrics else labels[:2]:
        q = metrics[key]
        if q:
            lines.append(f"  {label:<4} PSNR {q['psnr']:6.2f} dB  SSIM {q['ssim']:.3f}")
    unc = metrics.get("uncertainty")
    if unc:
        line = f"  uncertainty ({unc['method']}): mean std {unc['mean_std']:.4f}"
        if "coverage" in unc:
            line += (f", pixel log-lik {unc['pixel_log_likelihood']:.3f} (oracle "
                     f"{unc['oracle_log_likelihood_per_pixel']:.3f}), coverage 68% "
                     f"{unc['coverage']['0.68']:.2f} 95% {unc['coverage']['0.95']:.2f}")
        lines.append(line)
        held = unc.get("heldout")
        if held:
            lines.append(f"  held-out projections (no ground truth needed): coverage 68% "
                         f"{held['coverage']['0.68']:.2f} 95% {held['coverage']['0.95']:.2f}, "
                         f"z² {held['chi2']:.2f} (1 when calibrated)")
    lines.append(f"  time {metrics['seconds']['total']:.1f} s; outputs in {out}")
    print("\n".join(lines))
