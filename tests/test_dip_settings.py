"""Data-driven DIP settings: sinogram noise estimate, balancing-principle TV weight."""
from __future__ import annotations

import pytest
import torch

from bayes_dip.data import random_ellipses, shepp_logan
from bayes_dip.dip import tv_loss
from bayes_dip.dip.settings import (MAX_ITERATIONS, balanced_tv_weight, dip_config_from_data,
                                    estimate_noise_std, iteration_cap, tv_reconstruction)
from bayes_dip.problem import simulated_problem


@pytest.fixture(autouse=True)
def _single_thread(_torch_threads):
    torch.set_num_threads(1)


@pytest.mark.parametrize("size,level,upper", [(128, 0.05, 1.15), (128, 0.10, 1.15), (64, 0.05, 1.3)])
def test_noise_estimate_recovers_the_simulated_level(size, level, upper):
    """Within 15 % at 128²; biased upwards (never below) where edges are sharp at the
    detector scale."""
    p = simulated_problem(shepp_logan(size).float(), num_angles=30, noise_level=level, seed=0)
    ratio = estimate_noise_std(p.sinogram) / p.noise_std
    assert 0.95 < ratio < upper


def test_noise_estimate_is_zero_for_a_noise_free_polynomial():
    t = torch.linspace(-1, 1, 50, dtype=torch.float64)
    y = (1 + t + 2 * t ** 2 - t ** 3).expand(7, 50).reshape(1, 1, 7, 50)
    assert estimate_noise_std(y) == pytest.approx(0.0, abs=1e-9)


def test_tv_reconstruction_solves_its_problem():
    """The result beats FBP and small perturbations do not lower its objective."""
    x = random_ellipses(32, seed=1).float()
    p = simulated_problem(x, num_angles=20, noise_level=0.05, seed=0)
    gamma = 1e-3

    def objective(z):
        return float((p.ray_trafo.A(z) - p.sinogram).pow(2).mean() + gamma * tv_loss(z).sum())

    rec = tv_reconstruction(p.ray_trafo, p.sinogram, gamma, p.fbp, iterations=400)
    assert objective(rec) < objective(p.fbp)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        assert objective(rec) <= objective(rec + 1e-3 * torch.randn(rec.shape, generator=gen))


def test_balancing_principle_on_a_phantom_with_known_answer():
    """Piecewise-constant phantom: the balanced γ satisfies γ·TV(x_γ) ≈ ½σ² (the fixed point,
    after two updates) and lands near ½σ²/TV(x_true), the weight the truth itself balances."""
    x = random_ellipses(48, seed=3).float()
    p = simulated_problem(x, num_angles=30, noise_level=0.05, seed=0)
    s2 = p.noise_std ** 2
    gamma = balanced_tv_weight(p.ray_trafo, p.sinogram, s2, p.fbp)
    rec = tv_reconstruction(p.ray_trafo, p.sinogram, gamma, p.fbp)
    assert gamma * float(tv_loss(rec).sum()) == pytest.approx(0.5 * s2, rel=0.2)
    assert gamma == pytest.approx(0.5 * s2 / float(tv_loss(x).sum()), rel=0.35)
    with pytest.raises(ValueError, match="noise_variance"):
        balanced_tv_weight(p.ray_trafo, p.sinogram, 0.0, p.fbp)


def test_config_from_data_follows_the_rule_and_overrides():
    p = simulated_problem(shepp_logan(64).float(), num_angles=20, noise_level=0.05, seed=0)
    cfg, info = dip_config_from_data(p.ray_trafo, p.sinogram, p.fbp, p.noise_std)
    assert cfg.unet == "128" and cfg.plateau_window > 0 and cfg.gamma > 0
    assert cfg.iterations == iteration_cap(64) == 2 * MAX_ITERATIONS
    assert info["noise_std"] == p.noise_std and info["gamma_rule"] == "balancing principle"
    cfg2, info2 = dip_config_from_data(p.ray_trafo, p.sinogram, p.fbp, None, gamma=1e-3, lr=None)
    assert cfg2.gamma == 1e-3 and cfg2.lr == cfg.lr and info2["gamma_rule"] == "given"
    assert info2["noise_std"] == info2["noise_std_estimated"]


def test_iteration_cap_spends_the_128_budget_on_smaller_images():
    """Full cap from 128 px on, 128/side times it below (whole 200-iteration windows), at
    most twice; never below the full cap, so no image gets fewer iterations than before."""
    assert iteration_cap(128) == iteration_cap(512) == MAX_ITERATIONS
    assert iteration_cap(28) == iteration_cap(64) == 2 * MAX_ITERATIONS
    assert iteration_cap(96) == 2600  # 2,667 rounded to a whole window
    caps = [iteration_cap(side) for side in range(16, 300)]
    assert all(a >= b for a, b in zip(caps, caps[1:])) and all(c % 200 == 0 for c in caps)
    with pytest.raises(ValueError, match="size"):
        iteration_cap(0)
