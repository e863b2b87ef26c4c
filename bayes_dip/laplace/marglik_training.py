"""Online marginal-likelihood training (Immer et al., ICML 2021, Algorithm 1).

The network weights ``θ`` and the hyperparameters (layer-wise prior precisions ``δ (G,)``,
and the noise ``σ`` of Gaussian likelihoods) are trained together: every epoch takes
Adam steps on the negative log joint per example

    −(1/N) [ (N/B) Σ_{b ∈ batch} log p(y_b | f(x_b; θ), σ) − ½ Σ_g δ_g ‖θ_g‖² ],

and after a burn-in of ``burn_in`` epochs, every ``frequency`` epochs, a :class:`Laplace`
(KFAC, diagonal, ...) is fitted at the current ``θ`` and ``n_hyper_steps`` Adam steps on
``(log δ, log σ)`` maximise its log evidence. Every epoch can be checkpointed; a run with
the same ``checkpoint`` path resumes where the file left off.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from bayes_dip.checks import check_choice, check_int
from bayes_dip.output_folder import atomic_write

from .laplace import Laplace
from .likelihoods import Likelihood, make_likelihood

__all__ = ["MarglikConfig", "MarglikResult", "train_marglik"]


@dataclass
class MarglikConfig:
    """Settings of :func:`train_marglik`.

    Attributes:
        epochs: passes over the training data.
        lr: Adam learning rate of the weights; lr_hyper: of ``log δ`` and ``log σ``.
        batch_size: mini-batch size of the weight updates.
        structure: curvature of the evidence (``"kfac" | "diag" | "full" | ...``).
        prior: ``"layerwise"`` (one ``δ`` per parameter tensor) or ``"scalar"``.
        prior_precision: initial ``δ``; sigma_noise: initial ``σ`` (Gaussian likelihoods).
        burn_in: epochs before the first hyperparameter update; frequency: epochs between updates.
        n_hyper_steps: Adam steps on the evidence per update.
        optimize_noise: fit ``σ`` too (default: True for Gaussian likelihoods).
        curvature_batch_size: batch size of the Laplace fit.
        seed: shuffling of the mini-batches.
    """

    epochs: int = 10
    lr: float = 1e-3
    lr_hyper: float = 0.1
    batch_size: int = 128
    structure: str = "kfac"
    prior: str = "layerwise"
    prior_precision: float = 1.0
    sigma_noise: float = 1.0
    burn_in: int = 0
    frequency: int = 1
    n_hyper_steps: int = 100
    optimize_noise: bool | None = None
    curvature_batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "frequency", "n_hyper_steps", "curvature_batch_size"):
            check_int(getattr(self, name), name, 1)
        check_int(self.burn_in, "burn_in", 0)
        check_choice(self.prior, "prior", ("layerwise", "scalar"))
        for name in ("lr", "lr_hyper", "prior_precision", "sigma_noise"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")


@dataclass
class MarglikResult:
    """The trained model (in place), the last fitted :class:`Laplace`, hyperparameters and history.

    ``history`` has per epoch ``loss`` (mean negative log joint per example) and, per
    hyperparameter update, ``{"epoch", "log_evidence", "prior_precision", "sigma_noise"}``.
    """

    model: nn.Module
    laplace: Laplace | None
    prior_precision: Tensor
    sigma_noise: Tensor
    history: dict[str, list] = field(default_factory=dict)


def _check_data(data: Any) -> tuple[Tensor, Tensor]:
    if not (isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data)):
        raise TypeError("data must be a tuple (X, y) of tensors")
    x, y = data
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"data (X, y) must have the same, non-zero number of rows, got {x.shape[0]} and {y.shape[0]}")
    return x, y


def _groups(model: nn.Module) -> list[nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    return params


def _save(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def train_marglik(model: nn.Module, likelihood: str | Likelihood, data: tuple[Tensor, Tensor],
                  config: MarglikConfig | None = None, *, checkpoint: str | os.PathLike | None = None,
                  progress: bool = True) -> MarglikResult:
    """Train ``model`` (in place) and its prior precisions (and ``σ``) by the online Laplace evidence.

    Args:
        model: network ``(B, ...) -> (B, *out)``; every trainable parameter tensor is one group.
        likelihood: ``"classification" | "regression" | "binary"`` or a :class:`Likelihood`.
        data: training ``(X (N, ...), y (N, ...))``.
        config: :class:`MarglikConfig` (default settings if None).
        checkpoint: file written after every epoch; if it exists the run resumes from it (its
            config must match, except ``epochs``, which may extend the run).
        progress: tqdm bar over the epochs (loss and log evidence in its postfix).
    Returns:
        :class:`MarglikResult` with ``prior_precision`` of shape ``(G,)`` (layerwise) or ``()``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    config = MarglikConfig() if config is None else config
    if not isinstance(config, MarglikConfig):
        raise TypeError(f"config must be a MarglikConfig, got {type(config).__name__}")
    lik = make_likelihood(likelihood)
    optimize_noise = lik.has_noise if config.optimize_noise is None else config.optimize_noise
    if optimize_noise and not lik.has_noise:
        raise ValueError(f"optimize_noise needs a Gaussian likelihood, not {lik!r}")
    x, y = _check_data(data)
    params = _groups(model)
    dtype, device = params[0].dtype, params[0].device
    n = x.shape[0]
    n_groups = len(params) if config.prior == "layerwise" else 1
    log_prec = torch.full((n_groups,), math.log(config.prior_precision), dtype=dtype, device=device)
    log_prec.requires_grad_(True)
    log_sigma = torch.tensor(math.log(config.sigma_noise), dtype=dtype, device=device, requires_grad=True)
    opt = torch.optim.Adam(params, lr=config.lr)
    hyper_opt = torch.optim.Adam([log_prec] + ([log_sigma] if optimize_noise else []), lr=config.lr_hyper)
    gen = torch.Generator().manual_seed(config.seed)
    history: dict[str, list] = {"loss": [], "updates": []}
    start_epoch = 0
    path = None if checkpoint is None else Path(checkpoint)
    if path is not None and path.is_file():
        state = torch.load(path, weights_only=False)
        if {**state["config"], "epochs": config.epochs} != asdict(config):
            raise ValueError(f"checkpoint {path} was written with another config (other than epochs): "
                             f"{state['config']}")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        with torch.no_grad():
            log_prec.copy_(state["log_prec"])
            log_sigma.copy_(state["log_sigma"])
        hyper_opt.load_state_dict(state["hyper_opt"])
        gen.set_state(state["generator"])
        history, start_epoch = state["history"], state["epoch"]
    la = None
    bar = tqdm(range(start_epoch, config.epochs), disable=not progress, desc="marglik training",
               initial=start_epoch, total=config.epochs)
    for epoch in bar:
        model.train()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for begin in range(0, n, config.batch_size):
            idx = perm[begin:begin + config.batch_size].to(x.device)
            prec, sigma = log_prec.detach().exp(), log_sigma.detach().exp()
            log_lik = lik.log_prob(model(x[idx]), y[idx], sigma).mean()
            log_prior = sum(0.5 * prec[min(g, n_groups - 1)] * (p**2).sum() for g, p in enumerate(params))
            loss = -log_lik + log_prior / n
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
        history["loss"].append(total / n)
        done = epoch + 1
        if done > config.burn_in and (done - config.burn_in) % config.frequency == 0:
            la, log_evidence = _hyper_update(model, lik, (x, y), config, log_prec, log_sigma, hyper_opt,
                                             optimize_noise)
            history["updates"].append({"epoch": done, "log_evidence": log_evidence,
                                       "prior_precision": log_prec.detach().exp().tolist(),
                                       "sigma_noise": float(log_sigma.detach().exp())})
            bar.set_postfix(loss=f"{history['loss'][-1]:.4f}", evidence=f"{history['updates'][-1]['log_evidence']:.1f}")
        else:
            bar.set_postfix(loss=f"{history['loss'][-1]:.4f}")
        if path is not None:
            _save(path, {"config": asdict(config), "model": model.state_dict(), "opt": opt.state_dict(),
                         "log_prec": log_prec.detach(), "log_sigma": log_sigma.detach(),
                         "hyper_opt": hyper_opt.state_dict(), "generator": gen.get_state(),
                         "history": history, "epoch": done})
    model.eval()
    prec = log_prec.detach().exp()
    return MarglikResult(model, la, prec if n_groups > 1 else prec.reshape(()), log_sigma.detach().exp(), history)


def _hyper_update(model: nn.Module, lik: Likelihood, data: tuple[Tensor, Tensor], config: MarglikConfig,
                  log_prec: Tensor, log_sigma: Tensor, hyper_opt: torch.optim.Optimizer,
                  optimize_noise: bool) -> tuple[Laplace, float]:
    """Fit a Laplace at the current weights, take ``n_hyper_steps`` Adam steps on its evidence;
    returns the Laplace (at the new hyperparameters) and the last evidence value."""
    prec = log_prec.detach().exp()
    la = Laplace(model, lik, structure=config.structure, prior_precision=prec if prec.numel() > 1 else prec[0],
                 sigma_noise=log_sigma.detach().exp() if lik.has_noise else 1.0)
    la.fit(data, batch_size=config.curvature_batch_size)
    value = None
    for _ in range(config.n_hyper_steps):
        hyper_opt.zero_grad()
        p = log_prec.exp()
        value = la.log_marginal_likelihood(p if p.numel() > 1 else p[0],
                                           log_sigma.exp() if optimize_noise else None)
        (-value).backward()
        hyper_opt.step()
    p = log_prec.detach().exp()
    la.prior_precision = p if p.numel() > 1 else p[0]
    if optimize_noise:
        la.sigma_noise = log_sigma.detach().exp()
    return la, float(value.detach())
