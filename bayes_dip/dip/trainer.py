"""Deep image prior reconstruction: fit a U-Net to one measurement, keep the best iterate."""
from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from bayes_dip.ct import fbp
from bayes_dip.runtime import deferred_interrupts

from .checkpoint import load_checkpoint, save_checkpoint
from .config import DIPConfig
from .tv import tv_loss
from .unet import unet_preset

__all__ = ["DIPHistory", "DIPResult", "reconstruct_dip"]

# config fields that may change between an interrupted run and its resumption
_RESUMABLE_CHANGES = ("iterations", "checkpoint_every", "log_every", "plateau_window",
                      "plateau_tol", "backtrack_factor")


@dataclass
class DIPHistory:
    """Per-iteration record (CPU, float64): ``loss[i]`` and ``psnr[i]`` belong to the
    parameters before Adam step ``i``; ``psnr`` is ``None`` without ground truth."""

    loss: Tensor
    psnr: Tensor | None


@dataclass
class DIPResult:
    """Outcome of :func:`reconstruct_dip`.

    ``recon``: ``(B, 1, H, W)`` output of ``net`` (best weights, eval mode) at ``net_input``;
    ``best_iteration`` is the index ``i`` of the lowest ``history.loss[i]``; ``seconds``
    is the training wall time, summed over resumed runs; ``backtracks``: the iterations at
    which a diverged run went back to its best iterate (``DIPConfig.backtrack_factor``).
    """

    recon: Tensor
    net: nn.Module
    net_input: Tensor
    best_loss: float
    best_iteration: int
    history: DIPHistory
    seconds: float
    backtracks: list[int]


def dip_loss(ray_trafo: nn.Module, x: Tensor, y: Tensor, gamma: float) -> Tensor:
    """``‖A x − y‖² / numel(y) + gamma · Σ_b TV(x_b)``, a scalar."""
    misfit = (ray_trafo.A(x) - y).pow(2).sum() / y.numel()
    return misfit + gamma * tv_loss(x).sum()


def _psnr(x: Tensor, ground_truth: Tensor) -> Tensor:
    """Mean over the batch of ``10 log10(range² / MSE)``, range = max − min of each
    ground-truth image (scikit-image's convention with an explicit data range)."""
    dims = tuple(range(1, x.ndim))
    mse = (x - ground_truth).pow(2).mean(dim=dims)
    data_range = ground_truth.amax(dim=dims) - ground_truth.amin(dim=dims)
    return (10 * torch.log10(data_range.pow(2) / mse)).mean()


class _BestIterate:
    """Copy of the parameters with the lowest loss so far.

    On CPU the comparison is a cheap host check and parameters are copied only on
    improvement; on accelerators the update is a branch-free ``torch.where`` so the loop
    never waits for the device.
    """

    def __init__(self, params: list[Tensor], loss: Tensor, sync_free: bool):
        self.params = [p.detach().clone() for p in params]
        self.loss = loss.detach().clone()
        self.iteration = torch.full((), -1, dtype=torch.int64, device=loss.device)
        self.sync_free = sync_free

    def update(self, loss: Tensor, params: list[Tensor], iteration: int) -> None:
        improved = loss < self.loss
        if self.sync_free:
            for best, p in zip(self.params, params):
                best.copy_(torch.where(improved, p.detach(), best))
            self.loss = torch.where(improved, loss, self.loss)
            self.iteration = torch.where(improved, iteration, self.iteration)
        elif bool(improved):
            for best, p in zip(self.params, params):
                best.copy_(p.detach())
            self.loss = loss.detach().clone()
            self.iteration.fill_(iteration)


def reconstruct_dip(ray_trafo: nn.Module, y: Tensor, *, net: nn.Module | None = None,
                    net_input: Tensor | None = None, config: DIPConfig | None = None,
                    ground_truth: Tensor | None = None,
                    checkpoint_dir: str | os.PathLike | None = None,
                    progress: bool = True) -> DIPResult:
    """Deep image prior reconstruction of ``y ≈ A x`` (the lowest-loss iterate).

    Args:
        ray_trafo: operator with ``.A``, ``.im_shape`` ``(H, W)`` and ``.obs_shape``, on
            ``y``'s device.
        y: measurement ``(B, 1, n_angles, n_detectors)``; fixes device and dtype. With
            ``B > 1`` one network is fitted to all ``B`` measurements jointly.
        net: network ``(B, C, H, W) -> (B, 1, H, W)``; a copy is trained (moved to ``y``'s
            device/dtype). Default: ``unet_preset(config.unet)`` initialised from
            ``config.seed``.
        net_input: fixed input ``(B, C, H, W)``; default ``fbp(ray_trafo, y)``.
        config: :class:`DIPConfig`; default ``DIPConfig()`` (the paper's KMNIST run).
        ground_truth: ``(B, 1, H, W)``; only for the PSNR in the history and progress bar.
        checkpoint_dir: folder for an atomic checkpoint every ``config.checkpoint_every``
            iterations and at the end; a run finds its checkpoint there and resumes from
            it, giving the same result as an uninterrupted run. A SIGINT/SIGTERM during
            training then finishes the current iteration, checkpoints it and raises
            ``KeyboardInterrupt``.
        progress: show a tqdm bar (updated every ``config.log_every`` iterations).
    """
    config = DIPConfig() if config is None else config
    if not isinstance(config, DIPConfig):
        raise TypeError(f"config must be a DIPConfig, got {type(config).__name__}")
    y = _check_measurement(ray_trafo, y)
    im_shape = tuple(int(s) for s in ray_trafo.im_shape)
    factory = dict(device=y.device, dtype=y.dtype)
    if ground_truth is not None:
        ground_truth = _check_image(ground_truth, "ground_truth", y.shape[0], im_shape)
        ground_truth = ground_truth.detach().to(**factory)
    if net_input is None:
        net_input = fbp(ray_trafo, y, filter_type=config.fbp_filter)
    else:
        net_input = _check_image(net_input, "net_input", y.shape[0], im_shape)
    net_input = net_input.detach().to(**factory)
    net = _prepare_net(net, config, im_shape, y)

    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise ValueError("net has no trainable parameters")
    optimizer = torch.optim.Adam(params, lr=config.lr)
    total = config.iterations
    losses = torch.full((total,), float("nan"), **factory)
    psnrs = torch.full((total,), float("nan"), **factory) if ground_truth is not None else None
    best = _BestIterate(params, torch.tensor(float("inf"), **factory),
                        sync_free=y.device.type != "cpu")
    start, seconds_before = 0, 0.0
    backtracks: list[int] = []
    rng_devices = [y.device] if y.device.type == "cuda" else []

    with torch.random.fork_rng(devices=rng_devices):
        _seed_all(config.seed, y.device)
        state = load_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
        if state is not None:
            start, seconds_before = _restore(state, config, y, net_input, net, optimizer,
                                             best, losses, psnrs)
            backtracks = list(state.get("backtracks", []))
        t0 = time.perf_counter()
        net.train()
        done = start
        bar = tqdm(total=total, initial=start, desc="DIP", disable=not progress,
                   dynamic_ncols=True)
        try:
            with deferred_interrupts(checkpoint_dir is not None) as stop:
                # a run resumed from its plateau stop is finished
                first = total if _plateau_stop(config, losses, start) else start
                for it in range(first, total):
                    if it <= config.lr_warmup:
                        for group in optimizer.param_groups:
                            warm = min(1.0, (it + 1) / max(config.lr_warmup, 1))
                            group["lr"] = config.lr * warm
                    optimizer.zero_grad(set_to_none=True)
                    out = net(net_input)
                    loss = dip_loss(ray_trafo, out, y, config.gamma)
                    loss.backward()
                    losses[it] = loss.detach()
                    if psnrs is not None:
                        psnrs[it] = _psnr(out.detach(), ground_truth)
                    if _diverged(config, best, loss, it):
                        _backtrack(optimizer, params, best)
                        backtracks.append(it)
                    else:
                        best.update(loss.detach(), params, it)
                        optimizer.step()
                    done = it + 1
                    finished = done == total or _plateau_stop(config, losses, done)
                    if not finished and _plateaued(config, losses, done):
                        _backtrack(optimizer, params, best)  # stuck above its best
                        backtracks.append(it)
                    if done % config.log_every == 0 or finished:
                        postfix = {"loss": f"{losses[it].item():.3e}",
                                   "best": f"{best.loss.item():.3e}"}
                        if psnrs is not None:
                            postfix["psnr"] = f"{psnrs[it].item():.2f}"
                        bar.set_postfix(postfix, refresh=False)
                        bar.update(done - bar.n)
                    if checkpoint_dir is not None and (done % config.checkpoint_every == 0
                                                       or finished or stop.requested):
                        seconds = seconds_before + time.perf_counter() - t0
                        save_checkpoint(checkpoint_dir, _state(
                            config, y, net_input, net, optimizer, best, losses, psnrs, done,
                            seconds, backtracks))
                    if stop.requested:
                        raise KeyboardInterrupt
                    if finished:
                        break
        finally:
            bar.close()
        seconds = seconds_before + time.perf_counter() - t0

    best_iteration = int(best.iteration)
    if best_iteration < 0:
        raise RuntimeError("DIP loss was never finite; lower config.lr or check y and ray_trafo")
    with torch.no_grad():
        for p, b in zip(params, best.params):
            p.copy_(b)
        net.eval()
        recon = net(net_input)
    history = DIPHistory(loss=losses[:done].double().cpu(),
                         psnr=None if psnrs is None else psnrs[:done].double().cpu())
    return DIPResult(recon=recon, net=net, net_input=net_input, best_loss=float(best.loss),
                     best_iteration=best_iteration, history=history, seconds=seconds,
                     backtracks=backtracks)


def _diverged(config: DIPConfig, best: _BestIterate, loss: Tensor, it: int) -> bool:
    """``loss > backtrack_factor × lowest loss`` from twice the warm-up on (on accelerators
    only every ``log_every`` iterations, as the check syncs with the host)."""
    if not config.backtrack_factor or it < 2 * config.lr_warmup \
            or (best.sync_free and it % config.log_every):
        return False
    return bool(loss.detach() > config.backtrack_factor * best.loss)


def _backtrack(optimizer: torch.optim.Optimizer, params: list[Tensor],
               best: _BestIterate) -> None:
    """Back to the best iterate at half the learning rate. Adam's moments are kept: fresh
    ones would make the next step a full-size sign step, which diverged again at once."""
    with torch.no_grad():
        for p, b in zip(params, best.params):
            p.copy_(b)
    for group in optimizer.param_groups:
        group["lr"] *= 0.5


def _plateau_stop(config: DIPConfig, losses: Tensor, done: int) -> bool:
    """Stop at a plateau of the lowest loss; a plateau that the run reached stuck above its
    best (the last window's lowest loss more than ``plateau_tol`` above the lowest before:
    an Adam spike it did not recover from) sends it back to the best iterate instead."""
    if not _plateaued(config, losses, done):
        return False
    window, keep = config.plateau_window, 1.0 - config.plateau_tol
    return keep * float(losses[done - window:done].min()) <= float(losses[:done - window].min())


def _plateaued(config: DIPConfig, losses: Tensor, done: int) -> bool:
    """After the warm-up, every ``plateau_window`` iterations: did the lowest loss improve by
    less than the fraction ``plateau_tol`` over the last window, with the loss no longer
    falling inside it (the lowest loss of its second half not ``plateau_tol`` below that of
    its first)? The second test keeps a run going that is recovering from an Adam spike."""
    window, keep = config.plateau_window, 1.0 - config.plateau_tol
    if window == 0 or done % window or done < config.lr_warmup + 2 * window:
        return False
    if float(losses[:done].min()) <= keep * float(losses[:done - window].min()):
        return False
    half = done - window // 2
    return float(losses[half:done].min()) > keep * float(losses[done - window:half].min())


def _check_measurement(ray_trafo: nn.Module, y: Tensor) -> Tensor:
    for attr in ("A", "im_shape", "obs_shape"):
        if not hasattr(ray_trafo, attr):
            raise TypeError(f"ray_trafo must have .A, .im_shape and .obs_shape; missing .{attr}")
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if not y.is_floating_point():
        raise TypeError(f"y must be a floating-point tensor, got dtype {y.dtype}")
    obs_shape = tuple(int(s) for s in ray_trafo.obs_shape)
    if y.ndim != 4 or y.shape[1] != 1 or tuple(y.shape[-2:]) != obs_shape:
        raise ValueError(f"y must have shape (B, 1, {obs_shape[0]}, {obs_shape[1]}) to match "
                         f"ray_trafo.obs_shape, got {tuple(y.shape)}")
    if not bool(torch.isfinite(y).all()):
        raise ValueError("y contains NaN or inf values")
    return y.detach()


def _check_image(x: Tensor, name: str, batch: int, im_shape: tuple[int, ...]) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor")
    if x.ndim != 4 or x.shape[0] != batch or tuple(x.shape[-2:]) != im_shape:
        raise ValueError(f"{name} must have shape ({batch}, C, {im_shape[0]}, {im_shape[1]}), "
                         f"got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf values")
    return x


def _prepare_net(net: nn.Module | None, config: DIPConfig, im_shape: tuple[int, ...],
                 y: Tensor) -> nn.Module:
    if net is None:
        name = config.unet if config.unet is not None else (
            "kmnist" if max(im_shape) <= 64 else "128")
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(config.seed)
            net = unet_preset(name)
    elif not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    else:
        net = copy.deepcopy(net)
    return net.to(device=y.device, dtype=y.dtype)


def _seed_all(seed: int, device: torch.device) -> None:
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.default_generators[device.index or 0].manual_seed(seed)


def _rng_state(device: torch.device) -> dict[str, Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _state(config: DIPConfig, y: Tensor, net_input: Tensor, net: nn.Module,
           optimizer: torch.optim.Optimizer, best: _BestIterate, losses: Tensor,
           psnrs: Tensor | None, done: int, seconds: float,
           backtracks: list[int]) -> dict[str, Any]:
    return {
        "config": config.to_dict(),
        "y": y.cpu(),
        "net_input": net_input.cpu(),
        "iteration": done,
        "net": {k: v.cpu() for k, v in net.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "best_params": [b.cpu() for b in best.params],
        "best_loss": best.loss.cpu(),
        "best_iteration": best.iteration.cpu(),
        "losses": losses[:done].cpu(),
        "psnrs": None if psnrs is None else psnrs[:done].cpu(),
        "rng": _rng_state(y.device),
        "seconds": seconds,
        "backtracks": list(backtracks),
    }


def _restore(state: dict[str, Any], config: DIPConfig, y: Tensor, net_input: Tensor,
             net: nn.Module, optimizer: torch.optim.Optimizer, best: _BestIterate,
             losses: Tensor, psnrs: Tensor | None) -> tuple[int, float]:
    saved = dict(state["config"])
    current = config.to_dict()
    for key in _RESUMABLE_CHANGES:
        saved.pop(key, None)
        current.pop(key)
    if saved != current:
        raise ValueError(f"checkpoint_dir holds a run with config {saved}, not {current}")
    for name, ours in (("y", y), ("net_input", net_input)):
        theirs = state[name]
        if theirs.dtype != ours.dtype or not torch.equal(theirs, ours.cpu()):
            raise ValueError(f"checkpoint_dir holds a run for a different {name} "
                             f"(or dtype); use another folder")
    done = int(state["iteration"])
    if done > config.iterations:
        raise ValueError(f"checkpoint is at iteration {done} > config.iterations="
                         f"{config.iterations}")
    if (state["psnrs"] is None) != (psnrs is None):
        raise ValueError("ground_truth must be given on resumption iff it was given before")
    try:
        net.load_state_dict(state["net"])
    except RuntimeError as err:
        raise ValueError(f"checkpoint_dir holds weights of another network: {err}") from err
    optimizer.load_state_dict(state["optimizer"])
    with torch.no_grad():
        for b, saved_b in zip(best.params, state["best_params"]):
            b.copy_(saved_b)
    best.loss = state["best_loss"].to(best.loss.device)
    best.iteration = state["best_iteration"].to(best.iteration.device)
    losses[:done] = state["losses"].to(losses.device)
    if psnrs is not None:
        psnrs[:done] = state["psnrs"].to(psnrs.device)
    torch.set_rng_state(state["rng"]["cpu"])
    if "cuda" in state["rng"] and y.device.type == "cuda":
        torch.cuda.set_rng_state(state["rng"]["cuda"], y.device)
    return done, float(state["seconds"])
