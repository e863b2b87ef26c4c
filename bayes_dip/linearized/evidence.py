"""Type-II maximum likelihood (ARD) of the linearised DIP's hyperparameters (DESIGN.md §1.4).

Negative log evidence of the linearised model, minimised with Adam over
``log σ_d²``, ``log ℓ_d`` and ``log σ_y²``:

    ``½ log|K_yy| + ½ ‖y − A x̂‖² / σ_y² + ½ θ*ᵀ Σ_θ⁻¹ θ* + ½ n log 2π``
    (``θ* = θ̂``, ``weights="map"``)

or, with ``θ*`` the mode of the linearised model (``weights="linearized_mode"``), the exact
Gaussian marginal likelihood ``−log N(y | A(x̂ − J θ̂), K_yy)``. With a PredCP hyperprior
its ``Σ_d −log p(ℓ_d)`` is added (TV-MAP).

How the objective and its gradient are computed is the mode's
(:mod:`bayes_dip.linearized.modes`):

* ``mode="exact"``: :class:`~bayes_dip.linearized.covariance.StructuredCovariance`, Cholesky
  in float64, autograd; the value is the exact negative log evidence.
* ``mode="lowrank"``: the same on a
  :class:`~bayes_dip.linearized.subspace.SubspaceCovariance` (rank-``r`` observation subspace
  plus isotropic remainder; large images): a lower bound on the evidence, exact at
  ``r = n_obs``, with the exact mode's millisecond steps.
* ``mode="stochastic"``: Hutchinson probes and preconditioned CG for ``∂ log|K_yy|``; the
  log-determinant itself is not computed, the reported value leaves it out.

Checkpoints (atomic) hold the step, hyperparameters, Adam state, history, generator state and
the mode's state (the stochastic mode's preconditioner), so a resumed run continues exactly
like an uninterrupted one; with a checkpoint
path a SIGINT/SIGTERM finishes the current step, checkpoints it and raises ``KeyboardInterrupt``.

Adam's second-moment decay ``β₂`` is the mode's (:attr:`EvidenceMode.adam_beta2
<bayes_dip.linearized.modes.base.EvidenceMode.adam_beta2>`): 0.9 where the objective is
deterministic (exact, lowrank), torch's 0.999 for the stochastic mode's noisy gradients. The
log-hyperparameters travel far from their start, and a long memory of the large early
gradients keeps the late steps small: on the default job (CT_small 128², low-rank TV-MAP)
``β₂ = 0.999`` had not converged after 1,500 steps (objective 15.156 per measurement), while
``β₂ = 0.99`` converged at step 1,100 and ``β₂ = 0.9`` at step 750, both at 15.029, the
optimum that a restarted Adam also reaches.

Convergence (:attr:`EvidenceResult.convergence`): over the last ``window`` steps the objective
must change by less than ``CONVERGENCE_RTOL`` relative to ``max(|objective|, n_obs)`` and the
mean gradient norm (log-hyperparameters, per measurement) stay below ``CONVERGENCE_GTOL``;
otherwise a ``RuntimeWarning`` says so.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from bayes_dip.checks import check_choice, check_int, check_number
from bayes_dip.output_folder import atomic_write
from bayes_dip.runtime import deferred_interrupts

from .covariance import StructuredCovariance
from .model import LinearizedModel
from .modes.base import Objective
from .subspace import SubspaceCovariance

__all__ = ["EvidenceConfig", "EvidenceResult", "optimize_evidence", "negative_log_evidence"]

_WEIGHTS = ("map", "linearized_mode")


@dataclass(frozen=True)
class EvidenceConfig:
    """Settings of :func:`optimize_evidence` (defaults: the paper's, DESIGN.md §5).

    Args:
        mode: a name of :data:`~bayes_dip.linearized.modes.EVIDENCE_MODES`: ``"exact"``
            (needs a StructuredCovariance), ``"lowrank"`` (needs a SubspaceCovariance) or
            ``"stochastic"``.
        steps: Adam steps (paper: 1,500 exact / 3,000 stochastic).
        lr: Adam learning rate (paper: 0.01).
        weights: ``θ*`` of the weight-norm term: ``"map"`` (θ̂) or ``"linearized_mode"``.
        num_probes: Hutchinson probes per step (stochastic).
        cg_max_iter, cg_tol: CG iteration cap and relative residual tolerance (stochastic).
        precond_rank: rank of the Nyström preconditioner (stochastic; 0: no preconditioner).
        precond_every: steps between preconditioner rebuilds (stochastic).
        seed: seeds the probes, the preconditioner sketches and the PredCP samples.
        checkpoint_every: steps between checkpoints (with a ``checkpoint_path``).
        stop_when_converged: end before ``steps`` once the run has converged (checked every
            50 steps from step 300; see :attr:`EvidenceResult.convergence`).
        learn_noise_variance: ``False`` keeps σ_y² at the model's value (a known noise level)
            and optimises the prior hyperparameters only.
        adam_beta2: Adam's second-moment decay (``None``: the mode's, module docstring).
        progress: show a tqdm progress bar.
    """

    mode: str = "exact"
    steps: int = 1500
    lr: float = 0.01
    weights: str = "map"
    num_probes: int = 10
    cg_max_iter: int = 50
    cg_tol: float = 1e-3
    precond_rank: int = 200
    precond_every: int = 100
    seed: int = 0
    checkpoint_every: int = 100
    progress: bool = True
    stop_when_converged: bool = False
    learn_noise_variance: bool = True
    adam_beta2: float | None = None

    def __post_init__(self) -> None:
        from .modes import EVIDENCE_MODES

        check_choice(self.mode, "mode", EVIDENCE_MODES)
        check_choice(self.weights, "weights", _WEIGHTS)
        for name, minimum in (("steps", 0), ("num_probes", 1), ("cg_max_iter", 1),
                              ("precond_rank", 0), ("precond_every", 1), ("seed", 0),
                              ("checkpoint_every", 1)):
            check_int(getattr(self, name), name, minimum)
        for name in ("lr", "cg_tol"):
            check_number(getattr(self, name), name, gt=0)
        if self.adam_beta2 is not None:
            check_number(self.adam_beta2, "adam_beta2", ge=0, lt=1)


@dataclass
class EvidenceResult:
    """Outcome of :func:`optimize_evidence`.

    ``history`` has one entry per step for ``"objective"`` (the minimised loss; stochastic:
    without the log-determinant), ``"neg_log_evidence"`` (exact mode; per measurement and
    without PredCP: ``nan`` in stochastic mode), ``"predcp"``, ``"noise_variance"``,
    ``"cg_iterations"``, ``"cg_residual"`` (largest relative residual), ``"grad_norm"``
    (gradient norm in the log-hyperparameters, per measurement) and ``"seconds"``.
    ``convergence``: ``converged`` (bool), ``objective_change`` and ``grad_norm`` over the last
    ``window`` steps (see the module docstring).
    """

    hyperparameters: dict[str, dict[str, float]]
    noise_variance: float
    steps: int
    seconds: float
    history: dict[str, list[float]] = field(default_factory=dict)
    convergence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_HISTORY_KEYS = ("objective", "neg_log_evidence", "predcp", "noise_variance", "cg_iterations",
                 "cg_residual", "grad_norm", "seconds")
#: convergence tolerances: relative objective change and gradient norm per measurement
CONVERGENCE_RTOL = 1e-3
CONVERGENCE_GTOL = 1e-2


def negative_log_evidence(model: LinearizedModel,
                          structured: StructuredCovariance | SubspaceCovariance,
                          weights: str = "map") -> Tensor:
    """Negative log evidence (scalar, float64, differentiable in the hyperparameters): exact
    with a StructuredCovariance, the subspace bound with a SubspaceCovariance."""
    check_choice(weights, "weights", _WEIGHTS)
    nv = model.noise_variance
    const = 0.5 * model.num_obs * math.log(2 * math.pi)
    if weights == "map":
        residual = model.residual
        value = structured.gaussian_nll(model.prior, nv)
        value = value + 0.5 * residual.square().sum() / nv
        return value + 0.5 * model.prior.quadratic(scatter=model.theta_scatter) + const
    residual = model.prior_mean_residual
    return structured.gaussian_nll(model.prior, nv, residual) + const


def optimize_evidence(model: LinearizedModel, config: EvidenceConfig | None = None, *,
                      structured: StructuredCovariance | None = None, predcp=None,
                      checkpoint_path: str | os.PathLike | None = None,
                      resume: bool = True) -> EvidenceResult:
    """Optimise ``model``'s hyperparameters in place by type-II ML (+ PredCP: TV-MAP).

    Args:
        model: the linearised model (its ``prior`` and ``log_noise_variance`` are updated).
        config: :class:`EvidenceConfig`.
        structured: the Grams of the exact mode (``mode="exact"``: a StructuredCovariance;
            ``mode="lowrank"``: a SubspaceCovariance).
        predcp: ``None`` (MLL) or a callable ``prior -> Σ_d −log p(ℓ_d)``
            (:class:`~bayes_dip.linearized.predcp.ExactTVPredCP` /
            :class:`~bayes_dip.linearized.predcp.SampledTVPredCP`; one without a generator
            of its own gets this run's, so that checkpoints capture its randomness).
        checkpoint_path: file to write checkpoints to every ``config.checkpoint_every`` steps
            and at the end; with ``resume`` an existing one is loaded first.
    """
    config = config or EvidenceConfig()
    if not isinstance(config, EvidenceConfig):
        raise TypeError(f"config must be an EvidenceConfig, got {type(config).__name__}")
    if not isinstance(model, LinearizedModel):
        raise TypeError(f"model must be a LinearizedModel, got {type(model).__name__}")
    from .modes import EVIDENCE_MODES

    mode = EVIDENCE_MODES[config.mode]
    mode.check_structure(structured)
    if predcp is not None and not callable(predcp):
        raise TypeError("predcp must be None or callable(prior) -> Tensor")
    params = [p for name, p in model.named_parameters() if p.requires_grad
              and (config.learn_noise_variance or name != "log_noise_variance")]
    beta2 = mode.adam_beta2 if config.adam_beta2 is None else config.adam_beta2
    optimizer = torch.optim.Adam(params, lr=config.lr, betas=(0.9, beta2))
    generator = torch.Generator(device=model.jac.device).manual_seed(config.seed)
    history: dict[str, list[float]] = {k: [] for k in _HISTORY_KEYS}
    loss = mode.objective(model, config, structured, generator)
    if predcp is not None and hasattr(predcp, "generator") and predcp.generator is None:
        predcp.generator = generator
    path = Path(checkpoint_path) if checkpoint_path is not None else None
    objective_terms = _objective_terms(structured, predcp)
    start, elapsed = 0, 0.0
    if path is not None and resume and path.exists():
        start, elapsed = _load(path, model, optimizer, history, generator, loss, config,
                               objective_terms)

    t0 = time.perf_counter()
    if start and _converged_stop(config, history, model):
        start = config.steps  # resumed from its convergence stop: finished
    bar = tqdm(range(start, config.steps), desc=f"evidence ({config.mode})",
               disable=not config.progress, initial=start, total=config.steps)
    try:
        with deferred_interrupts(path is not None) as stop:
            for step in bar:
                loss.before_step(step)
                optimizer.zero_grad(set_to_none=True)
                objective, nle_value, stats = loss()
                pc = predcp(model.prior) if predcp is not None else None
                if pc is not None:
                    objective = objective + pc
                objective.backward()
                stats["grad_norm"] = _grad_norm(params) / model.num_obs
                optimizer.step()
                _record(history, objective, nle_value, pc, model, stats,
                        elapsed + time.perf_counter() - t0)
                if config.progress:
                    bar.set_postfix(_postfix(history, model), refresh=False)
                done = step + 1
                finished = done == config.steps or _converged_stop(config, history, model)
                if path is not None and (done % config.checkpoint_every == 0
                                         or finished or stop.requested):
                    _save(path, done, model, optimizer, history, generator, loss, config,
                          elapsed + time.perf_counter() - t0, objective_terms)
                if stop.requested:
                    raise KeyboardInterrupt
                if finished:
                    break
    finally:
        bar.close()
    seconds = elapsed + time.perf_counter() - t0
    convergence = _convergence(history, model.num_obs)
    if config.steps > 0 and not convergence["converged"]:
        warnings.warn(f"evidence optimisation ({config.mode}) did not converge in {config.steps} "
                      f"steps: objective change {convergence['objective_change']:.1e} and "
                      f"gradient norm {convergence['grad_norm']:.1e} over the last "
                      f"{convergence['window']} steps (tolerances {CONVERGENCE_RTOL:g}, "
                      f"{CONVERGENCE_GTOL:g}); the uncertainty may be far off: use more steps "
                      "(bayes-dip reconstruct: --evidence-steps)",
                      RuntimeWarning, stacklevel=2)
    return EvidenceResult(model.prior.hyperparameters(), float(model.noise_variance.detach()),
                          len(history["objective"]), seconds, history, convergence)


def _grad_norm(params: list[Tensor]) -> float:
    return math.sqrt(sum(float(p.grad.square().sum()) for p in params if p.grad is not None))


def _postfix(history: dict[str, list[float]], model: LinearizedModel) -> dict[str, str]:
    """Progress-bar fields: the minimised objective per measurement and its parts."""
    n = model.num_obs
    post = {"objective/obs": f"{history['objective'][-1] / n:.4g}"}
    if not math.isnan(history["neg_log_evidence"][-1]):
        post["nle/obs"] = f"{history['neg_log_evidence'][-1]:.4g}"
    if not math.isnan(history["predcp"][-1]):
        post["predcp/obs"] = f"{history['predcp'][-1] / n:.4g}"
    post["σ_y²"] = f"{history['noise_variance'][-1]:.3g}"
    if not math.isnan(history["cg_iterations"][-1]):
        post.update(cg_it=int(history["cg_iterations"][-1]),
                    cg_res=f"{history['cg_residual'][-1]:.1e}")
    return post


def _converged_stop(config: EvidenceConfig, history: dict[str, list[float]],
                    model: LinearizedModel) -> bool:
    """With ``config.stop_when_converged``: converged (:func:`_convergence`) at a multiple of
    50 steps, from step 300 on."""
    steps = len(history["objective"])
    return (config.stop_when_converged and steps >= 300 and steps % 50 == 0
            and _convergence(history, model.num_obs)["converged"])


def _convergence(history: dict[str, list[float]], num_obs: int) -> dict[str, Any]:
    """Objective change and mean gradient norm over the last ``window`` steps (module
    docstring); ``window = clamp(steps // 5, 1, 50)``."""
    objective, grads = history["objective"], history["grad_norm"]
    steps = len(objective)
    if steps < 2:
        return dict(converged=False, window=0, objective_change=float("nan"),
                    grad_norm=float("nan"))
    window = min(max(steps // 5, 1), 50)
    last, before = objective[-1], objective[-1 - window]
    change = abs(last - before) / max(abs(last), num_obs)
    grad = sum(grads[-window:]) / window
    converged = change < CONVERGENCE_RTOL and grad < CONVERGENCE_GTOL
    return dict(converged=bool(converged), window=window, objective_change=change,
                grad_norm=grad)


def _record(history: dict[str, list[float]], objective: Tensor, nle: float, pc: Tensor | None,
            model: LinearizedModel, stats: dict[str, float], seconds: float) -> None:
    history["objective"].append(float(objective.detach()))
    history["neg_log_evidence"].append(nle)
    history["predcp"].append(float(pc.detach()) if pc is not None else float("nan"))
    history["noise_variance"].append(float(model.noise_variance.detach()))
    history["cg_iterations"].append(stats["cg_iterations"])
    history["cg_residual"].append(stats["cg_residual"])
    history["grad_norm"].append(stats["grad_norm"])
    history["seconds"].append(seconds)


def _objective_terms(structured, predcp) -> dict[str, Any]:
    """What, besides the config, defines the objective (checked when a run resumes)."""
    return {"subspace_rank": getattr(structured, "rank", None),
            "predcp": None if predcp is None else type(predcp).__name__,
            "predcp_rate": getattr(predcp, "rate", None),
            "predcp_samples": getattr(predcp, "num_samples", None)}


def _save(path: Path, step: int, model: LinearizedModel, optimizer: torch.optim.Optimizer,
          history: dict[str, list[float]], generator: torch.Generator, loss: Objective,
          config: EvidenceConfig, seconds: float, objective_terms: dict[str, Any]) -> None:
    hyper = {name: p.detach().clone() for name, p in model.named_parameters()}
    state = {"step": step, "hyperparameters": hyper,
             "optimizer": optimizer.state_dict(), "history": history,
             "generator": generator.get_state(), "mode_state": loss.state(),
             "config": asdict(config), "objective": objective_terms, "seconds": seconds}
    atomic_write(path, lambda f: torch.save(state, f))


def _load(path: Path, model: LinearizedModel, optimizer: torch.optim.Optimizer,
          history: dict[str, list[float]], generator: torch.Generator, loss: Objective,
          config: EvidenceConfig, objective_terms: dict[str, Any]) -> tuple[int, float]:
    state = torch.load(path, map_location=model.jac.device, weights_only=False)
    saved = dict(state["config"])
    for key in ("mode", "lr", "weights", "seed", "num_probes", "precond_rank", "precond_every",
                "learn_noise_variance", "adam_beta2"):
        if saved.get(key, getattr(EvidenceConfig, key)) != getattr(config, key):
            raise ValueError(f"checkpoint {path} was written with {key}={saved.get(key)!r}, "
                             f"not {getattr(config, key)!r}")
    if "objective" not in state:
        raise ValueError(f"checkpoint {path} does not record its objective (PredCP, subspace; "
                         "written by an older version): delete it to start over")
    saved_terms = state["objective"]
    for key, value in objective_terms.items():
        if saved_terms.get(key) != value:
            raise ValueError(f"checkpoint {path} was written with {key}={saved_terms.get(key)!r}, "
                             f"not {value!r}")
    if state["step"] > config.steps:
        raise ValueError(f"checkpoint {path} is at step {state['step']} > steps={config.steps}")
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(state["hyperparameters"][name])
    optimizer.load_state_dict(state["optimizer"])
    for key in history:  # grad_norm: not recorded by older versions
        history[key].extend(state["history"].get(key, [float("nan")] * int(state["step"])))
    generator.set_state(state["generator"])
    loss.load_state(state.get("mode_state", state.get("precond")))  # "precond": older files
    return int(state["step"]), float(state["seconds"])
