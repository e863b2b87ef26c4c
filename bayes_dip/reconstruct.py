"""The ``bayes-dip reconstruct`` job: problem → FBP → DIP → metrics, figure, arrays."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml

from bayes_dip.dip import DIPConfig, reconstruct_dip
from bayes_dip.dip.settings import dip_config_from_data
from bayes_dip.metrics import psnr, ssim
from bayes_dip.output_folder import atomic_output_folder
from bayes_dip.problem import CTProblem, load_problem
from bayes_dip.baselines import (DEFAULT_DROPOUT_P, DEFAULT_NUM_SAMPLES, dip_evidence_predictive,
                                 fit_mcdo, mcdo_predictive)
from bayes_dip.linearized import LinearizedDIP, image_noise_variance
from bayes_dip.metrics import pixel_calibration, std_error_correlation
from bayes_dip.viz import plot_error_vs_std, plot_uncertainty_panels, plot_z_scores

__all__ = ["run_reconstruct", "default_dip_config", "METHODS"]


def default_dip_config(problem: CTProblem, **overrides) -> tuple[DIPConfig, dict]:
    """The DIP settings read from the problem (:func:`~bayes_dip.dip.dip_config_from_data`:
    balancing-principle TV weight at the simulated noise level, or at the level estimated
    from a measured sinogram, and a plateau budget); ``overrides`` that are not ``None``
    replace fields. Returns the config and how it was derived."""
    return dip_config_from_data(problem.ray_trafo, problem.sinogram, problem.fbp,
                                problem.noise_std, **overrides)


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device: {name!r} is not a torch device ({exc})") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but torch sees no CUDA GPU")
    return device


def _quality(x: torch.Tensor, problem: CTProblem) -> dict:
    if problem.ground_truth is None:
        return {}
    gt = problem.ground_truth
    data_range = float(gt.max() - gt.min()) or 1.0
    return dict(psnr=psnr(x, gt, data_range=data_range), ssim=ssim(x, gt, data_range=data_range))


@dataclass
class Uncertainty:
    """Pixelwise predictive of one method: ``mean``/``std`` ``(1, 1, H, W)``, optional samples."""

    method: str
    mean: torch.Tensor
    std: torch.Tensor
    samples: torch.Tensor | None
    log_likelihood: Callable[[torch.Tensor], float]
    info: dict
    seconds: dict
    heldout_z: torch.Tensor | None = None


def run_reconstruct(settings: dict, checkpoint_dir: str | Path | None = None) -> dict:
    """Run the job described by ``settings`` (see :data:`bayes_dip.cli.RECONSTRUCT_DEFAULTS`).

    ``checkpoint_dir``: folder for the DIP (``dip/``) and evidence (``evidence.pt``)
    checkpoints; a run resumes from those it finds there. Returns the metrics written to
    ``metrics.json``.
    """
    start = time.perf_counter()
    device = _device(settings["device"])
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
    method = settings["method"] if settings["uncertainty"] else "dip"
    if method == "mcdo":
        config = replace(config, gamma=0.0)  # the MC-dropout baseline is trained without TV
    progress = not settings["quiet"]
    ray_trafo = problem.ray_trafo.to(device)
    y, net_input = problem.sinogram.to(device), problem.fbp.to(device)
    gt = problem.ground_truth
    gt_device = None if gt is None else gt.to(device)
    train = fit_mcdo if method == "mcdo" else reconstruct_dip
    checkpoints = None if checkpoint_dir is None else Path(checkpoint_dir)
    dip = train(ray_trafo, y, net_input=net_input, config=config, ground_truth=gt_device,
                checkpoint_dir=None if checkpoints is None else checkpoints / "dip",
                progress=progress)

    uncertainty = None
    if settings["uncertainty"]:
        resume = {} if checkpoints is None or method != "lin-dip" else dict(
            checkpoint_path=checkpoints / "evidence.pt")
        uncertainty = _UNCERTAINTY[method](settings, problem, dip, config.gamma,
                                           derived["noise_std"] ** 2, progress, **resume)
    recon = (dip.recon if uncertainty is None else uncertainty.mean).detach().float().cpu()
    metrics = dict(problem=problem.info, dip=dict(config.to_dict(), **derived,
                                                  iterations_run=len(dip.history.loss),
                                                  best_iteration=dip.best_iteration),
                   fbp=_quality(problem.fbp, problem), dip_quality=_quality(recon, problem),
                   dip_network_quality=_quality(dip.recon.detach().float().cpu(), problem),
                   seconds=dict(dip=dip.seconds))
    if uncertainty is not None:
        metrics["uncertainty"] = _uncertainty_metrics(uncertainty, problem,
                                                      dip.recon.detach().float())
        metrics["seconds"].update({f"uncertainty_{k}": v for k, v in uncertainty.seconds.items()})
    with atomic_output_folder(settings["out"]) as out:
        np.save(out / "reconstruction.npy", recon.numpy()[0, 0])
        np.save(out / "fbp.npy", problem.fbp.numpy()[0, 0])
        np.save(out / "sinogram.npy", problem.sinogram.numpy()[0, 0])
        if gt is not None:
            np.save(out / "ground_truth.npy", gt.numpy()[0, 0])
        std = None
        if uncertainty is not None:
            std = uncertainty.std.float().cpu()
            np.save(out / "std.npy", std.numpy()[0, 0])
            if uncertainty.samples is not None:
                np.save(out / "samples.npy", uncertainty.samples.float().cpu().numpy()[:, 0])
            if gt is not None:
                plot_error_vs_std({uncertainty.method: (recon, std)}, gt,
                                  units=problem.info.get("image_unit", "a.u."),
                                  save_path=out / "error_vs_std")
            if uncertainty.heldout_z is not None:
                plot_z_scores({"leave-one-angle-out": uncertainty.heldout_z.cpu()},
                              quantity="held-out measurement", save_path=out / "heldout")
        label = "DIP" if uncertainty is None else uncertainty.method
        _figure(problem, label, recon, std, out / "reconstruction.png")
        metrics["seconds"]["total"] = time.perf_counter() - start
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (out / "settings.yaml").write_text(yaml.safe_dump(settings, sort_keys=True))
    _print_summary(problem, metrics, Path(settings["out"]))
    return metrics


def _check_uncertainty_settings(settings: dict) -> None:
    if settings["method"] not in METHODS:
        raise ValueError(f"--method must be one of {METHODS}, got {settings['method']!r}")
    for key, allowed in (("mean", ("dip", "posterior")),
                         ("calibrate", ("heldout", "none"))):
        if settings[key] not in allowed:
            raise ValueError(f"--{key} must be one of {allowed}, got {settings[key]!r}")
    for key in ("samples", "evidence_steps", "mcdo_samples"):
        value = settings[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"--{key.replace('_', '-')} must be a positive integer, got {value!r}")
    scale = settings["predcp_scale"]
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale < 0:
        raise ValueError(f"--predcp-scale must be a number >= 0, got {scale!r}")


def _linearized(settings: dict, problem: CTProblem, dip, gamma: float, noise_variance: float,
                progress: bool, checkpoint_path: Path | None = None) -> Uncertainty:
    """Linearised DIP: evidence-optimised hyperparameters (TV-MAP unless scale 0) from the
    noise level of the DIP rule, recalibrated on held-out projections (``calibrate``),
    the posterior mean (``mean``), the std map and the ground-truth-free held-out checks."""
    scale = settings["predcp_scale"]
    y = problem.sinogram.to(dip.recon.device)
    lin = LinearizedDIP(dip.net, dip.net_input, problem.ray_trafo, y, recon=dip.recon, gamma=gamma,
                        noise_variance=noise_variance, progress=progress,
                        checkpoint_dir=None if checkpoint_path is None else checkpoint_path.parent)
    mode = lin.resolve_mode(settings["evidence"])
    steps = settings["evidence_steps"]
    if steps is None and mode == "stochastic":
        steps = DEFAULT_STOCHASTIC_STEPS
    evidence = lin.optimize_hyperparameters(mode, scale or None, steps=steps, progress=progress,
                                            seed=settings["seed"], stop_when_converged=True,
                                            checkpoint_path=checkpoint_path)
    info = dict(mode=mode, prior="TV-MAP" if scale else "MLL", evidence_steps=evidence.steps,
                convergence=evidence.convergence, mean=settings["mean"])
    heldout_z = None
    if mode != "stochastic":  # held-out checks need K_yy's structure
        if settings["calibrate"] == "heldout":
            info["recalibration_scale"] = lin.recalibrate("angle")
        checks = {kind: lin.heldout(kind) for kind in ("angle", "measurement")}
        heldout_z = checks["angle"].z
        info["heldout"] = checks["angle"].to_dict()
        info["loo"] = checks["measurement"].to_dict()
    kwargs = {"cg_tol": SAMPLE_CG_TOL} if mode == "stochastic" else \
        {"progress": progress} if mode == "lowrank" else {}
    result = lin.estimate_uncertainty(num_samples=settings["samples"], seed=settings["seed"],
                                      mean=settings["mean"], **kwargs)
    info.update(noise_variance=result.noise_variance, image_noise_variance=result.image_noise,
                hyperparameters=result.hyperparameters)
    return Uncertainty("linearised DIP", result.mean, result.std, result.samples,
                       result.log_likelihood, info, result.seconds, heldout_z)


def _mcdo(settings: dict, problem: CTProblem, dip, gamma: float, noise_variance: float,
          progress: bool) -> Uncertainty:
    """MC-dropout: Gaussian fitted to dropout samples of the network trained with dropout."""
    full = dip.recon[0, 0].numel() <= 4096
    pred = mcdo_predictive(dip.net, dip.net_input, seed=settings["seed"], full_covariance=full,
                           num_samples=settings["mcdo_samples"] or DEFAULT_NUM_SAMPLES,
                           patch_sizes=() if full else (10,), progress=progress,
                           added_variance=_image_noise(problem, dip))
    samples = mcdo_predictive(dip.net, dip.net_input, num_samples=max(settings["samples"], 2),
                              seed=settings["seed"] + 1, store_samples=True,
                              progress=False).samples
    return Uncertainty("DIP-MCDO", pred.mean, pred.std, samples,
                       lambda gt: pred.log_likelihood(gt, None if full else 10),
                       dict(num_samples=pred.num_samples, dropout_p=DEFAULT_DROPOUT_P),
                       dict(sampling=pred.seconds))


def _homoscedastic(settings: dict, problem: CTProblem, dip, gamma: float,
                   noise_variance: float, progress: bool) -> Uncertainty:
    """DIP (evidence σ²): ``N(x̂, σ_y² c_A I)`` with σ_y² maximising the linear-noise evidence."""
    t0 = time.perf_counter()
    pred = dip_evidence_predictive(dip.recon.detach().cpu().double(), problem.ray_trafo,
                                   problem.sinogram.double())
    return Uncertainty("DIP (evidence σ²)", pred.mean, pred.std, None, pred.log_likelihood,
                       dict(noise_variance=pred.noise_variance, pixel_variance=pred.variance),
                       dict(evidence=time.perf_counter() - t0))


def _image_noise(problem: CTProblem, dip) -> float:
    """The image-space noise term added to the MC-dropout variance (avoids zero variance)."""
    residual = problem.ray_trafo.A(dip.recon.detach().cpu().float()) - problem.sinogram
    return image_noise_variance(problem.ray_trafo, float(residual.square().mean()))


METHODS = ("lin-dip", "mcdo", "dip")
#: evidence steps of `--evidence stochastic` on the command line unless given; the
#: paper's 3,000 take hours on a CPU, so the default job refines the initial hyperparameters only
DEFAULT_STOCHASTIC_STEPS = 20
#: relative CG residual of the command line's Matheron samples
SAMPLE_CG_TOL = 1e-3
_UNCERTAINTY = {"lin-dip": _linearized, "mcdo": _mcdo, "dip": _homoscedastic}


def _uncertainty_metrics(result: Uncertainty, problem: CTProblem,
                         dip_recon: torch.Tensor) -> dict:
    out = dict(method=result.method, **result.info, mean_std=float(result.std.mean()))
    gt = problem.ground_truth
    if gt is not None:
        gt64 = gt.to(torch.float64)
        mean, std = result.mean.cpu().double(), result.std.cpu().double()
        out["test_log_likelihood_per_pixel"] = result.log_likelihood(gt64)
        out.update(pixel_calibration(mean, std, gt64))
        out["spearman_std_error"] = std_error_correlation(mean, std, gt64).spearman
        # the same std map about the DIP output: what the predictive mean changes
        out["about_dip_output"] = pixel_calibration(dip_recon.cpu().double(), std, gt64)
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
