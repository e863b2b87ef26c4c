"""Method registry of the studies: name -> how to get a :class:`Prediction` for one image.

=================  ==========================  ==============================================
name               label                       predictive
=================  ==========================  ==============================================
``dip``            DIP (σ²=1)                  ``N(x̂, c_A I)`` (``bayes_dip.baselines``)
``dip-evidence``   DIP (evidence σ²)           ``N(x̂, σ_y² c_A I)``, σ_y² by evidence (*)
``mcdo``           DIP-MCDO                    Gaussian fit to MC-dropout samples (own net)
                                               plus ``σ̂_y² c_A``, σ̂_y² from its residual
``lin-dip-mll``    Linearised DIP (MLL)        linearised DIP, type-II ML hyperparameters
``lin-dip-tvmap``  Linearised DIP (TV-MAP)     linearised DIP, evidence + TV-PredCP
=================  ==========================  ==============================================

(*) ``dip_evidence: {noise_variance: own}`` (default): σ_y² maximises the closed-form
evidence of the homoscedastic model itself; ``mll``: σ_y² of the linearised DIP's MLL
evidence (the paper's "DIP (MLL σ²)"; shared with ``lin-dip-mll``, optimised once).

``dip``, ``dip-evidence`` and the linearised methods share the DIP of the image
(:meth:`MethodContext.dip`); ``mcdo`` trains its own dropout network without TV. Each
spec lists the config ``sections`` its result depends on (they enter the result's
fingerprint) and checks its section when the study config is validated.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, fields, replace
from typing import Any, Callable

import torch

from bayes_dip.checks import check_choice, check_int, check_number
from bayes_dip.dip import DIPConfig
from bayes_dip.studies.context import MethodContext
from bayes_dip.metrics import SAMPLES_PER_PIXEL_FOR_FULL, Prediction
from bayes_dip.studies.store import fingerprint

__all__ = ["MethodSpec", "METHODS", "register_method"]


@dataclass(frozen=True)
class MethodSpec:
    """``run(ctx) -> Prediction``; ``check(config)`` raises on a bad config section;
    ``dip(config)`` the DIP settings the method trains its network with."""

    name: str
    label: str
    sections: tuple[str, ...]
    run: Callable[[MethodContext], Prediction]
    check: Callable[[Any], None] = lambda config: None
    dip: Callable[[Any], DIPConfig] = lambda config: config.dip


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to :data:`METHODS` (e.g. a user's own method); names must be new."""
    if not isinstance(spec, MethodSpec):
        raise TypeError(f"spec must be a MethodSpec, got {type(spec).__name__}")
    if spec.name in METHODS:
        raise ValueError(f"spec.name {spec.name!r} is already registered")
    METHODS[spec.name] = spec
    return spec


def _dip_info(dip) -> dict:
    """How the method's network training ended (reported with every prediction)."""
    return {"dip_iterations_run": len(dip.history.loss), "dip_best_iteration": dip.best_iteration}


def _variance_factor(ctx: MethodContext) -> float:
    """``c_A`` of the setting's ray transform (one SVD per geometry, cached on the context)."""
    key = ("variance_factor", ctx.setting.key)
    if key not in ctx.shared:
        ctx.shared[key] = ctx.ray_trafo.variance_factor()
    return ctx.shared[key]


def _homoscedastic(ctx: MethodContext, evidence: bool) -> Prediction:
    from bayes_dip.baselines import dip_evidence_predictive, dip_fixed_predictive

    dip = ctx.dip()
    start = time.perf_counter()
    c = _variance_factor(ctx)
    seconds = {"dip": dip.seconds}
    if evidence:
        noise_variance = None
        if ctx.config.dip_evidence.get("noise_variance", "own") == "mll":
            _, mll = _optimize(ctx, tvmap=False)
            noise_variance = mll.noise_variance
            seconds.update(ctx.image_cache["linearized"].seconds)
            seconds.pop("predictive", None)
            start = time.perf_counter()
        pred = dip_evidence_predictive(dip.recon, ctx.ray_trafo, ctx.y, variance_factor=c,
                                       noise_variance=noise_variance)
        seconds["evidence"] = seconds.get("evidence", 0.0) + time.perf_counter() - start
    else:
        pred = dip_fixed_predictive(dip.recon, ctx.ray_trafo, variance_factor=c)
        seconds["predictive"] = time.perf_counter() - start
    pred.network_output, pred.seconds = dip.recon, seconds
    pred.info.update(_dip_info(dip))
    return pred


def _check_dip_evidence(config: Any) -> None:
    section = config.dip_evidence
    _check_keys(section, {"noise_variance"}, "dip_evidence")
    source = section.get("noise_variance", "own")
    if source not in ("own", "mll"):
        raise ValueError(f"dip_evidence.noise_variance must be 'own' (closed-form evidence of "
                         f"the homoscedastic model) or 'mll' (σ_y² of the linearised DIP's MLL "
                         f"evidence), got {source!r}")
    if source == "mll":
        _check_linearized(config)


_MCDO_KEYS = {"dropout_p", "num_samples", "batch_size"}
_DIP_KEYS = {f.name for f in fields(DIPConfig)} - {"gamma"}


def _mcdo_dip_config(config: Any) -> DIPConfig:
    """The study's DIP settings with the ``mcdo`` overrides and ``gamma = 0`` (no TV)."""
    overrides = {k: v for k, v in config.mcdo.items() if k in _DIP_KEYS}
    return replace(config.dip, gamma=0.0, **overrides)


def _check_mcdo(config: Any) -> None:
    section = config.mcdo
    unknown = sorted(set(section) - _MCDO_KEYS - _DIP_KEYS)
    if "gamma" in section:
        raise ValueError("mcdo.gamma: DIP-MCDO is trained without TV (gamma is always 0)")
    if unknown:
        raise ValueError(f"mcdo: unknown key(s) {unknown}; known: {sorted(_MCDO_KEYS | _DIP_KEYS)}")
    p = section.get("dropout_p", 0.05)
    check_number(p, "mcdo.dropout_p", gt=0, lt=1)
    for key, minimum in (("num_samples", 2), ("batch_size", 1)):
        value = section.get(key)
        if value is not None:
            check_int(value, f"mcdo.{key}", minimum)
    try:
        _mcdo_dip_config(config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"mcdo: {exc}") from exc


def _mcdo(ctx: MethodContext) -> Prediction:
    """DIP-MCDO with the image-space noise term ``σ̂_y² c_A`` added to every pixel variance
    (saturated sigmoid pixels otherwise get zero variance). ``σ̂_y² = ‖A x̂ − y‖² / m`` is the
    noise variance the dropout network's own residual shows: the term is the measurement noise
    seen in image space (as ``η²`` of the linearised DIP), so it must carry the units of the
    sinogram; the original code's ``σ_y² = 1`` does not, and over-states the noise by the
    factor ``1 / σ_y²`` (e.g. ~16 on KMNIST at 5 % noise)."""
    from bayes_dip.baselines import DEFAULT_NUM_SAMPLES, fit_mcdo, mcdo_predictive

    section = ctx.config.mcdo
    p = section.get("dropout_p", 0.05)
    fit = fit_mcdo(ctx.ray_trafo, ctx.y, dropout_p=p, config=_mcdo_dip_config(ctx.config),
                   net=ctx.unet(dropout_p=p), net_input=ctx.fbp, ground_truth=ctx.ground_truth,
                   checkpoint_dir=ctx.cache_dir / "mcdo", progress=ctx.progress)
    h, w = ctx.fbp.shape[-2:]
    options = ctx.config.metrics
    num_samples = section.get("num_samples", DEFAULT_NUM_SAMPLES)
    full = (num_samples >= SAMPLES_PER_PIXEL_FOR_FULL * h * w
            and h * w <= options.full_covariance_max_pixels)
    with torch.no_grad():
        residual = ctx.ray_trafo(fit.recon.to(ctx.y.dtype)) - ctx.y
    noise_variance = float(residual.square().mean())  # σ̂_y²
    added = _variance_factor(ctx) * noise_variance
    # the samples resume after an interruption; the file is specific to the settings
    tag = fingerprint({s: ctx.config.section(s) for s in ("mcdo", "metrics")})
    pred = mcdo_predictive(fit.net, fit.net_input, num_samples=num_samples,
                           seed=ctx.seed(1), batch_size=section.get("batch_size"),
                           full_covariance=full,
                           patch_sizes=() if full or options.patch_size == 1 else (options.patch_size,),
                           added_variance=added, progress=ctx.progress,
                           checkpoint_path=ctx.cache_dir / f"mcdo_samples-{tag}.pt")
    gallery = None
    count = ctx.config.figures.gallery_samples
    if count >= 2:
        gallery = mcdo_predictive(fit.net, fit.net_input, num_samples=count, seed=ctx.seed(2),
                                  full_covariance=False, store_samples=True,
                                  progress=False).samples
    pred.gallery, pred.network_output = gallery, fit.recon
    pred.seconds = {"dip": fit.seconds, "predictive": pred.seconds["samples"]}
    pred.info.update({"dropout_p": p, "noise_variance": noise_variance, "added_variance": added,
                      **_dip_info(fit)})
    return pred


_LIN_MODEL_KEYS = {"gprior", "variance", "lengthscale", "noise_variance", "exact_memory",
                   "subspace_rank"}
_LIN_INIT_KEYS = ("variance", "lengthscale", "noise_variance")
_LIN_RUN_KEYS = {"mode", "steps", "weights"}
_EVIDENCE_KEYS = {"lr", "num_probes", "cg_max_iter", "cg_tol", "precond_rank", "precond_every",
                  "checkpoint_every", "stop_when_converged", "learn_noise_variance"}
_TVMAP_KEYS = {"predcp_scale", "predcp_samples", "predcp_rule"}
_PREDICTIVE_KEYS = {"num_samples", "image_noise", "batch_size", "cg_tol", "cg_max_iter",
                    "precond_rank", "mean", "calibrate"}
_PREDICTIVE_CHOICES = {"mean": ("dip", "posterior"), "calibrate": ("none", "heldout")}


def _check_keys(section: dict, known: set[str], name: str) -> None:
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"{name}: unknown key(s) {unknown}; known: {sorted(known)}")


def _check_linearized(config: Any) -> None:
    from bayes_dip.linearized import EVIDENCE_MODES, EvidenceConfig

    ev = config.evidence
    _check_keys(ev, _LIN_MODEL_KEYS | _LIN_RUN_KEYS | _EVIDENCE_KEYS, "evidence")
    if ev.get("mode", "auto") != "auto" and ev["mode"] not in EVIDENCE_MODES:
        raise ValueError(f"evidence.mode must be auto or one of {', '.join(EVIDENCE_MODES)}, "
                         f"got {ev['mode']!r}")
    try:
        EvidenceConfig(**{k: v for k, v in ev.items() if k in _EVIDENCE_KEYS | {"weights"}},
                       **({"steps": ev["steps"]} if ev.get("steps") is not None else {}))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"evidence: {exc}") from exc
    for key in ("variance", "lengthscale", "noise_variance"):
        if not (key == "noise_variance" and ev.get(key) == "residual"):
            check_number(ev.get(key, 1.0), f"evidence.{key}", gt=0)
    if ev.get("noise_variance") == "residual" and ev.get("learn_noise_variance"):
        raise ValueError("evidence: noise_variance 'residual' holds σ_y² at the DIP's mean "
                         "squared residual; it cannot be combined with learn_noise_variance")
    pr = config.predictive
    _check_keys(pr, _PREDICTIVE_KEYS, "predictive")
    check_int(pr.get("num_samples", 1024), "predictive.num_samples", 2)
    for key, allowed in _PREDICTIVE_CHOICES.items():
        check_choice(pr.get(key, allowed[0]), f"predictive.{key}", allowed)
    noise = pr.get("image_noise", "auto")
    if noise != "auto":
        check_number(noise, "predictive.image_noise", ge=0)


def _check_tvmap(config: Any) -> None:
    _check_linearized(config)
    tv = config.tvmap
    _check_keys(tv, _TVMAP_KEYS, "tvmap")
    check_number(tv.get("predcp_scale", 1.0), "tvmap.predcp_scale", gt=0)
    check_int(tv.get("predcp_samples", 20), "tvmap.predcp_samples", 1)
    from bayes_dip.linearized import PREDCP_RATES

    check_choice(tv.get("predcp_rule", "residual"), "tvmap.predcp_rule", PREDCP_RATES)
    if config.dip.gamma <= 0:
        raise ValueError("dip.gamma must be > 0 for lin-dip-tvmap (the PredCP rate is "
                         "proportional to gamma)")


def _optimize(ctx: MethodContext, tvmap: bool):
    """The image's shared linearisation with its hyperparameters optimised by MLL or TV-MAP
    (from the initial values; checkpointed under ``cache_dir``, so MLL run by two methods is
    optimised once). Returns ``(LinearizedDIP, EvidenceResult)``."""
    from bayes_dip.linearized import LinearizedDIP

    dip = ctx.dip()
    ev = dict(ctx.config.evidence)
    model_options = {k: ev.pop(k) for k in _LIN_MODEL_KEYS if k in ev}
    if model_options.get("noise_variance") == "residual":  # held at the DIP's misfit
        with torch.no_grad():
            residual = ctx.ray_trafo(dip.recon.to(ctx.y.dtype)) - ctx.y
        model_options["noise_variance"] = float(residual.double().square().mean())
        ev["learn_noise_variance"] = False
    if "linearized" not in ctx.image_cache:
        # one linearisation per image (its Jacobian structure is reused by MLL and TV-MAP)
        ctx.image_cache["linearized"] = LinearizedDIP(
            dip.net, dip.net_input, ctx.ray_trafo, ctx.y, recon=dip.recon,
            gamma=ctx.config.dip.gamma, progress=ctx.progress, checkpoint_dir=ctx.cache_dir,
            **model_options)
    lin = ctx.image_cache["linearized"]
    # each method starts from the initial hyperparameters
    lin.reset_hyperparameters(**{k: model_options[k] for k in _LIN_INIT_KEYS if k in model_options})
    mode, steps = ev.pop("mode", "auto"), ev.pop("steps", None)
    weights = ev.pop("weights", "map")
    tv = ctx.config.tvmap
    name = "tvmap" if tvmap else "mll"
    # the checkpoint is specific to the sections that define the objective
    tag = fingerprint({s: ctx.config.section(s) for s in ("evidence", "tvmap")[:1 + tvmap]})
    evidence = lin.optimize_hyperparameters(
        mode, tv.get("predcp_scale", 1.0) if tvmap else None, steps=steps, weights=weights,
        predcp_samples=tv.get("predcp_samples"),
        predcp_rule=tv.get("predcp_rule", "residual"), progress=ctx.progress,
        checkpoint_path=ctx.cache_dir / f"evidence-{name}-{tag}.pt", seed=ctx.seed(3), **ev)
    return lin, evidence


def _linearized(ctx: MethodContext, tvmap: bool) -> Prediction:
    """The optimised linearisation's predictive: ``predictive.calibrate: heldout`` first
    rescales the model by its leave-one-angle-out z² (:meth:`LinearizedDIP.recalibrate`); the
    ground-truth-free held-out checks (angles and single measurements) are reported where
    ``K_yy`` has structure (exact and low-rank modes); ``predictive.mean`` picks the DIP
    output or the linearised posterior mean. Low-rank mode: ``num_samples`` solve-free draws
    (at least 512 for the std map), all kept for the log-likelihood."""
    from bayes_dip.linearized import EVIDENCE_MODES

    dip = ctx.dip()
    lin, evidence = _optimize(ctx, tvmap)
    pr = dict(ctx.config.predictive)
    num_samples = pr.pop("num_samples", 1024)
    image_noise = pr.pop("image_noise", "auto")
    mean, calibrate = pr.pop("mean", "dip"), pr.pop("calibrate", "none")
    nle = evidence.history.get("neg_log_evidence") or [float("nan")]
    info = {"mode": lin.mode, "evidence_steps": evidence.steps,
            "neg_log_evidence_per_obs": nle[-1], "convergence": evidence.convergence,
            "mean": mean, **_dip_info(dip)}
    heldout_z = None
    mode = EVIDENCE_MODES[lin.mode]
    if mode.has_spectrum:  # the held-out checks need K_yy's eigen-structure
        if calibrate == "heldout":
            info["recalibration_scale"] = lin.recalibrate("angle")
        angle, single = lin.heldout("angle"), lin.heldout("measurement")
        heldout_z = angle.z
        info.update(heldout=angle.to_dict(), loo=single.to_dict())
    exact = mode.full_covariance
    gallery = max(2, ctx.config.figures.gallery_samples)
    options = {k: v for k, v in {**pr, "progress": ctx.progress}.items()
               if k in mode.sampler_options}  # e.g. the exact mode needs no solver options
    result = lin.estimate_uncertainty(num_samples=gallery if exact else num_samples,
                                      image_noise=image_noise, seed=ctx.seed(4), mean=mean,
                                      **options)
    seconds = {"dip": dip.seconds, **result.seconds}
    info.update(noise_variance=result.noise_variance, image_noise=result.image_noise,
                hyperparameters=result.hyperparameters)
    if exact:
        info["jitter"] = result.predictive.jitter
    else:
        info["num_samples"] = result.predictive.samples.shape[0]
        if result.predictive.cg_report() is not None:  # CG solves of the samples
            info["sampling_cg"] = result.predictive.cg_report()
    if lin.mean_cg is not None:  # the posterior mean's CG solve (stochastic mode)
        info["mean_cg"] = {"iterations": lin.mean_cg.iterations,
                           "residual": float(lin.mean_cg.residual_norms.max()),
                           "converged": lin.mean_cg.converged}
    return Prediction.from_uncertainty(result, ctx.config.figures.gallery_samples,
                                       network_output=dip.recon, heldout_z=heldout_z,
                                       seconds=seconds, info=info)


for _spec in (
    MethodSpec("dip", "DIP (σ²=1)", ("dip", "unet"), lambda ctx: _homoscedastic(ctx, False)),
    MethodSpec("dip-evidence", "DIP (evidence σ²)", ("dip", "unet", "dip_evidence", "evidence"),
               lambda ctx: _homoscedastic(ctx, True), _check_dip_evidence),
    MethodSpec("mcdo", "DIP-MCDO", ("dip", "unet", "mcdo"), _mcdo, _check_mcdo,
               _mcdo_dip_config),
    MethodSpec("lin-dip-mll", "Linearised DIP (MLL)", ("dip", "unet", "evidence", "predictive"),
               lambda ctx: _linearized(ctx, False), _check_linearized),
    MethodSpec("lin-dip-tvmap", "Linearised DIP (TV-MAP)",
               ("dip", "unet", "evidence", "tvmap", "predictive"),
               lambda ctx: _linearized(ctx, True), _check_tvmap),
):
    register_method(_spec)
