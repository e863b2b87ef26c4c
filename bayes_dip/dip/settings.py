"""DIP settings read from the measurement: noise level, TV weight by the balancing principle.

The DIP loss ``‖A x − y‖² / m + γ TV(x)`` weighs a mean squared misfit, whose expected value
at the truth is the noise variance ``σ²``, against the total variation. The rule used here
is the balancing principle (Ito, Jin & Takeuchi 2011): choose ``γ`` so that the penalty
equals half the expected misfit at the solution, ``γ · TV(x_γ) = ½ σ²``. ``x_γ`` is the
pixel-space TV reconstruction (cheap: products with ``A`` only), found by the fixed-point
iteration ``γ_{k+1} = ½ σ² / TV(x_{γ_k})`` from ``γ_0 = ½ σ² / TV(FBP)``, stopped after
two updates: on the development slices (and KMNIST) two updates land within 0.8–1.0× of
``½ σ² / TV(x_true)``, the value the hand-tuned presets had found, while iterating further
can drift on images with large flat areas (TV reconstructions then flatten further).

``σ²`` is the simulated noise variance when it is known, else estimated from the sinogram
(:func:`estimate_noise_std`).

:func:`dip_config_from_data` adds a plateau-based budget: Adam runs until the lowest loss
improves by less than 0.5 % over 200 iterations while the loss no longer falls inside them
(at most :func:`iteration_cap`), instead of a count tuned on one image — under-fitted DIPs
were the main cause of intervals that missed. Most development DIPs were still improving at
2,000 iterations; the cap gives smaller images, whose steps are cheaper, up to twice that
(4,000 at 64² and below: the five 64² cases gain 0.1–0.75 dB, KMNIST 0–9 −0.2 to +1.8 dB,
mean +0.5; headsq s065 reaches FBP + 1.7 dB instead of + 0.95) in less than a 128² DIP's
time (64²: 117–139 s to 4,000; 128²: 147–183 s to 2,000 on 2 cores). A run recovering from
an Adam blow-up goes on
(the 64² head slice s025 reaches 25.3 dB instead of stopping at 24.0; FBP 24.3), and one
stuck above its best after a blow-up goes back to its best iterate at half the learning rate
(cranium s030 at 60 angles / 2 %: 28.1 → 28.4 dB; s050 at 64², 20 angles / 10 %: 24.1 → 24.6).
Backtracking after a blow-up (``DIPConfig.backtrack_factor = 2``) is available but off: its
halved learning rates cost 0.3–1.6 dB at the 2,000-iteration cap on headsq
s035/s055/s065 and KMNIST 1/5.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import DIPConfig
from .tv import tv_loss

__all__ = ["estimate_noise_std", "tv_reconstruction", "balanced_tv_weight", "unet_for_size",
           "iteration_cap", "dip_config_from_data"]

#: iteration cap of the data-driven DIP from :data:`FULL_BUDGET_SIDE` pixels on
MAX_ITERATIONS = 2000
#: image side (pixels) from which the cap is :data:`MAX_ITERATIONS`; smaller images get more
FULL_BUDGET_SIDE = 128
#: largest image side (pixels) that gets the small ``"kmnist"`` U-Net
SMALL_UNET_MAX_SIDE = 32


def unet_for_size(size: int) -> str:
    """The U-Net preset of :func:`dip_config_from_data` for an image of larger side ``size``."""
    return "kmnist" if size <= SMALL_UNET_MAX_SIDE else "128"


def iteration_cap(size: int) -> int:
    """Iteration cap of the DIP for an image of larger side ``size``: :data:`MAX_ITERATIONS`
    from :data:`FULL_BUDGET_SIDE` on; below, ``MAX_ITERATIONS · FULL_BUDGET_SIDE / size`` at
    most twice as many, in whole plateau windows (4,000 up to 64 px). A smaller image's step
    is cheaper (64²: 0.45× the 128² step), so the cap spends about the 128² DIP's time."""
    if not size > 0:
        raise ValueError(f"size must be > 0, got {size!r}")
    scale = min(2.0, max(1.0, FULL_BUDGET_SIDE / size))
    return 200 * round(MAX_ITERATIONS * scale / 200)


def estimate_noise_std(sinogram: Tensor) -> float:
    """Robust white-noise std of a sinogram ``(1, 1, n_angles, n_det)``: the median absolute
    deviation of its 4th-order differences along the detector (noise variance × 70), which a
    smooth projection barely changes. Biased upwards where projections have sharp edges at
    the detector scale (small images with thin strokes: up to 2× on 28² KMNIST)."""
    if not isinstance(sinogram, Tensor) or sinogram.ndim != 4 or sinogram.shape[-1] < 5:
        raise ValueError("sinogram must be a tensor (1, 1, n_angles, n_det) with n_det >= 5")
    y = sinogram.detach().to(torch.float64).reshape(-1, sinogram.shape[-1])
    d = y[:, :-4] - 4 * y[:, 1:-3] + 6 * y[:, 2:-2] - 4 * y[:, 3:-1] + y[:, 4:]
    d = d.reshape(-1)
    mad = (d - d.median()).abs().median()
    return float(1.482602218505602 * mad / math.sqrt(70.0))


def tv_reconstruction(ray_trafo, y: Tensor, gamma: float, x0: Tensor, *,
                      iterations: int = 300) -> Tensor:
    """``argmin_x ‖A x − y‖² / m + γ TV(x)`` over pixels by Adam (cosine-annealed step, start
    ``x0 (1, 1, H, W)``, initial step 1 % of ``max|x0|``); returns ``(1, 1, H, W)``."""
    x = x0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.01 * float(x0.abs().max().clamp_min(1e-12)))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations)
    for _ in range(iterations):
        opt.zero_grad(set_to_none=True)
        loss = (ray_trafo.A(x) - y).pow(2).sum() / y.numel() + gamma * tv_loss(x).sum()
        loss.backward()
        opt.step()
        sched.step()
    return x.detach()


def balanced_tv_weight(ray_trafo, y: Tensor, noise_variance: float, x0: Tensor, *,
                       updates: int = 2, iterations: int = 300) -> float:
    """``γ`` with ``γ · TV(x_γ) ≈ ½ σ²`` by ``updates`` fixed-point steps (module docs)."""
    if not noise_variance > 0:
        raise ValueError(f"noise_variance must be > 0, got {noise_variance!r}")
    tv = float(tv_loss(x0).sum())
    if not tv > 0:
        raise ValueError("x0 has zero total variation; cannot balance the TV weight")
    gamma, x = 0.5 * noise_variance / tv, x0
    for _ in range(updates):
        x = tv_reconstruction(ray_trafo, y, gamma, x, iterations=iterations)
        gamma = 0.5 * noise_variance / float(tv_loss(x).sum())
    return gamma


def dip_config_from_data(ray_trafo, y: Tensor, x0: Tensor, noise_std: float | None = None,
                         **overrides) -> tuple[DIPConfig, dict]:
    """The DIP settings of a measurement ``y`` with FBP ``x0``: ``γ`` by the balancing
    principle at the noise level ``noise_std`` (estimated from ``y`` when ``None``), the
    ``"kmnist"`` U-Net (Adam at 2e-3 after 200 warm-up steps, the tested KMNIST setting) up
    to 32 px and the ``"128"`` U-Net (GroupNorm; 3e-3 after 100 steps) above — at 64² the
    un-normalised ``"kmnist"`` U-Net got stuck far below FBP on a real head slice (20.9 dB
    against FBP's 30.6; 29.0 dB at lr 1e-3) where the ``"128"`` U-Net reached 31.6 dB — and
    the plateau budget.
    ``overrides`` that are not ``None`` replace fields. Returns the config and a record of
    how it was derived (noise std used and estimated)."""
    estimated = estimate_noise_std(y)
    sigma = estimated if noise_std is None else float(noise_std)
    size = max(int(s) for s in ray_trafo.im_shape)
    given = {k: v for k, v in overrides.items() if v is not None}
    gamma = given.pop("gamma", None)
    rule = "balancing principle" if gamma is None else "given"
    if gamma is None:
        gamma = balanced_tv_weight(ray_trafo, y, sigma ** 2, x0)
    unet = unet_for_size(size)
    small = unet == "kmnist"
    config = DIPConfig(iterations=iteration_cap(size), lr=2e-3 if small else 3e-3,
                       lr_warmup=200 if small else 100, gamma=gamma,
                       unet=unet, plateau_window=200,
                       plateau_tol=0.005)
    config = DIPConfig.from_dict({**config.to_dict(), **given})
    return config, dict(noise_std=sigma, noise_std_estimated=estimated,
                        noise_std_known=noise_std is not None, gamma_rule=rule)
