"""The "weight example": Laplace approximation of a Normal model with unknown mean and noise.

Model: y_i ~ N(μ, σ²), i = 1..N, with priors μ ~ N(250, 2²) and σ ~ Uniform(0.5, 5.5).
Data: 35 draws simulated with true μ = 251, σ = 1 (seed 0); the N = 5 data set is the
first 5 of them. For each data set we compare, against the exact posterior from grid
integration:

- Laplace in (μ, σ) directly: a Gaussian that ignores the bound σ > 0.5;
- Laplace in (μ, logit((σ − 0.5)/5)) with the Jacobian correction, back-transformed.

Writes PNG figures to --out (default results/weight_example/) and prints a summary table.

    python experiments/weight_example.py [--out DIR] [--seed 0]
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bayes_dip.laplace.explicit import LaplaceApproximation, fit_laplace
from bayes_dip.laplace.transforms import (
    ConstrainedLaplace,
    IdentityTransform,
    LogitTransform,
    ParameterTransform,
    fit_constrained_laplace,
)

PRIOR_MU_MEAN, PRIOR_MU_STD = 250.0, 2.0
SIGMA_LOW, SIGMA_HIGH = 0.5, 5.5
TRUE_MU, TRUE_SIGMA = 251.0, 1.0
DT = torch.float64


def simulate_weights(num: int = 35, seed: int = 0) -> Tensor:
    """``num`` draws from N(TRUE_MU, TRUE_SIGMA²), float64 (num,)."""
    g = torch.Generator().manual_seed(seed)
    return TRUE_MU + TRUE_SIGMA * torch.randn(num, generator=g, dtype=DT)


def log_joint_grid(y: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    """log p(y, μ, σ) for broadcastable μ, σ (any shape); −inf where σ ∉ (0.5, 5.5).

    Uses the sufficient statistics Σ(y − μ)² = N (ȳ − μ)² + Σ(y − ȳ)².
    """
    n, y_bar = y.numel(), y.mean()
    ss = ((y - y_bar) ** 2).sum()
    sigma_safe = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
    log_lik = (-n * torch.log(sigma_safe) - 0.5 * n * math.log(2 * math.pi)
               - (n * (y_bar - mu) ** 2 + ss) / (2 * sigma_safe**2))
    log_prior_mu = (-0.5 * ((mu - PRIOR_MU_MEAN) / PRIOR_MU_STD) ** 2
                    - math.log(PRIOR_MU_STD) - 0.5 * math.log(2 * math.pi))
    inside = (sigma > SIGMA_LOW) & (sigma < SIGMA_HIGH)
    log_prior_sigma = torch.where(inside, torch.full_like(sigma, -math.log(SIGMA_HIGH - SIGMA_LOW)),
                                  torch.full_like(sigma, -math.inf))
    return log_lik + log_prior_mu + log_prior_sigma


def log_joint(theta: Tensor, y: Tensor) -> Tensor:
    """log p(y, μ, σ) at θ = (μ, σ), ()."""
    return log_joint_grid(y, theta[0], theta[1])


@dataclass(frozen=True)
class GridPosterior:
    """Exact posterior on a (μ, σ) grid: densities on grid cells (midpoint rule)."""

    mu: Tensor  # (M,)
    sigma: Tensor  # (S,)
    density: Tensor  # (M, S), integrates to 1
    log_evidence: Tensor  # log p(y)

    @property
    def mu_marginal(self) -> Tensor:
        return self.density.sum(1) * (self.sigma[1] - self.sigma[0])

    @property
    def sigma_marginal(self) -> Tensor:
        return self.density.sum(0) * (self.mu[1] - self.mu[0])


def grid_posterior(y: Tensor, num_mu: int = 2400, num_sigma: int = 2000, mu_halfwidth: float = 12.0) -> GridPosterior:
    """Exact posterior by midpoint-rule integration over μ ∈ 250 ± mu_halfwidth, σ ∈ (0.5, 5.5)."""
    d_mu = 2 * mu_halfwidth / num_mu
    d_sigma = (SIGMA_HIGH - SIGMA_LOW) / num_sigma
    mu = PRIOR_MU_MEAN - mu_halfwidth + d_mu * (torch.arange(num_mu, dtype=DT) + 0.5)
    sigma = SIGMA_LOW + d_sigma * (torch.arange(num_sigma, dtype=DT) + 0.5)
    log_f = log_joint_grid(y, mu[:, None], sigma[None, :])
    log_z = torch.logsumexp(log_f.flatten(), 0) + math.log(d_mu * d_sigma)
    return GridPosterior(mu, sigma, torch.exp(log_f - log_z), log_z)


def fit_weight_laplace(y: Tensor) -> tuple[LaplaceApproximation, ConstrainedLaplace]:
    """Laplace in (μ, σ) and in (μ, logit-scaled σ), both by Newton from (ȳ, clipped std(y))."""
    sigma0 = float(y.std().clamp(SIGMA_LOW + 0.1, SIGMA_HIGH - 0.1)) if y.numel() > 1 else 1.0
    theta0 = torch.tensor([y.mean().item(), sigma0], dtype=DT)
    plain = fit_laplace(lambda th: log_joint(th, y), theta0, method="newton", alpha=0.5, max_iter=200)
    transform = ParameterTransform([IdentityTransform(), LogitTransform(SIGMA_LOW, SIGMA_HIGH)])
    constrained = fit_constrained_laplace(lambda th: log_joint(th, y), theta0, transform,
                                          method="newton", alpha=0.5, max_iter=200)
    return plain, constrained


def _moments(x: Tensor, density: Tensor) -> tuple[float, float]:
    dx = x[1] - x[0]
    mean = (x * density).sum() * dx
    var = ((x - mean) ** 2 * density).sum() * dx
    return mean.item(), var.sqrt().item()


@dataclass(frozen=True)
class Comparison:
    """Marginal summaries of one approximation against the grid posterior."""

    method: str
    mu_mean: float
    mu_std: float
    sigma_mean: float
    sigma_std: float
    mass_sigma_below_low: float  # q(σ < 0.5)
    sigma_tv: float  # total-variation distance of the σ marginal to the exact one
    mu_tv: float
    log_evidence: float


def compare(grid: GridPosterior, plain: LaplaceApproximation, constrained: ConstrainedLaplace) -> list[Comparison]:
    """Rows for the exact grid posterior, the plain Laplace and the logit-transformed Laplace."""
    mu, sig = grid.mu, grid.sigma
    exact_mu, exact_sigma = grid.mu_marginal, grid.sigma_marginal
    d_mu, d_sig = (mu[1] - mu[0]).item(), (sig[1] - sig[0]).item()
    rows = [Comparison("exact (grid)", *_moments(mu, exact_mu), *_moments(sig, exact_sigma),
                       0.0, 0.0, 0.0, grid.log_evidence.item())]

    q_mu = plain.marginal_log_prob(0, mu).exp()
    q_sig = plain.marginal_log_prob(1, sig).exp()
    below = plain.marginal_cdf(1, torch.tensor(SIGMA_LOW, dtype=DT)).item()
    above = 1.0 - plain.marginal_cdf(1, torch.tensor(SIGMA_HIGH, dtype=DT)).item()
    std = plain.marginal_std
    rows.append(Comparison(
        "Laplace (mu, sigma)", plain.mode[0].item(), std[0].item(), plain.mode[1].item(), std[1].item(),
        below, 0.5 * ((q_sig - exact_sigma).abs().sum().item() * d_sig + below + above),
        0.5 * (q_mu - exact_mu).abs().sum().item() * d_mu, plain.log_evidence.item()))

    q_mu = constrained.marginal_log_prob(0, mu).exp()
    q_sig = constrained.marginal_log_prob(1, sig).exp()
    rows.append(Comparison(
        "Laplace (mu, logit sigma)", *_moments(mu, q_mu), *_moments(sig, q_sig),
        constrained.marginal_cdf(1, torch.tensor(SIGMA_LOW, dtype=DT)).item(),
        0.5 * (q_sig - exact_sigma).abs().sum().item() * d_sig,
        0.5 * (q_mu - exact_mu).abs().sum().item() * d_mu, constrained.log_evidence.item()))
    return rows


def plot(y: Tensor, grid: GridPosterior, plain: LaplaceApproximation, constrained: ConstrainedLaplace,
         path: Path) -> None:
    """Marginals of μ and σ and joint contours (5 %, 30 %, 70 % of each peak height)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    n = y.numel()
    mu_mean = (grid.mu * grid.mu_marginal).sum() * (grid.mu[1] - grid.mu[0])
    mu_half = max(5 * plain.marginal_std[0].item(), 1.0)
    mu_plot = torch.linspace(mu_mean.item() - mu_half, mu_mean.item() + mu_half, 600, dtype=DT)
    sig_top = min(SIGMA_HIGH, plain.mode[1].item() + 6 * plain.marginal_std[1].item())
    sig_plot = torch.linspace(0.0, sig_top + 0.3, 800, dtype=DT)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    ax = axes[0]
    keep = (grid.mu >= mu_plot[0]) & (grid.mu <= mu_plot[-1])
    ax.plot(grid.mu[keep], grid.mu_marginal[keep], "k", lw=2.5, label="exact (grid)")
    ax.plot(mu_plot, plain.marginal_log_prob(0, mu_plot).exp(), "C0--", label="Laplace (μ, σ)")
    ax.plot(mu_plot, constrained.marginal_log_prob(0, mu_plot).exp(), "C3:", lw=2, label="Laplace (μ, logit σ)")
    ax.axvline(TRUE_MU, color="gray", lw=0.8)
    ax.set(xlabel="μ", ylabel="density", title=f"marginal of μ (N = {n})")
    ax.legend(fontsize=8)

    ax = axes[1]
    exact_sig = torch.zeros_like(sig_plot)
    inside = (sig_plot > SIGMA_LOW) & (sig_plot < SIGMA_HIGH)
    exact_sig[inside] = torch.from_numpy(
        np.interp(sig_plot[inside].numpy(), grid.sigma.numpy(), grid.sigma_marginal.numpy()))
    q_plain = plain.marginal_log_prob(1, sig_plot).exp()
    below = plain.marginal_cdf(1, torch.tensor(SIGMA_LOW, dtype=DT)).item()
    ax.plot(sig_plot, exact_sig, "k", lw=2.5, label="exact (grid)")
    ax.plot(sig_plot, q_plain, "C0--", label="Laplace (μ, σ)")
    ax.fill_between(sig_plot[sig_plot <= SIGMA_LOW], 0, q_plain[sig_plot <= SIGMA_LOW], color="C0", alpha=0.3,
                    label=f"q(σ < {SIGMA_LOW}) = {below:.3f}")
    ax.plot(sig_plot, constrained.marginal_log_prob(1, sig_plot).exp(), "C3:", lw=2, label="Laplace (μ, logit σ)")
    ax.axvline(SIGMA_LOW, color="gray", ls="-.", lw=0.8)
    ax.axvline(TRUE_SIGMA, color="gray", lw=0.8)
    ax.set(xlabel="σ", title=f"marginal of σ (N = {n}); prior bound σ > {SIGMA_LOW}")
    ax.legend(fontsize=8)

    ax = axes[2]
    mm, ss = torch.meshgrid(mu_plot, sig_plot, indexing="ij")
    log_f = log_joint_grid(y, mm, ss)
    exact = torch.exp(log_f - grid.log_evidence)
    pts = torch.stack([mm, ss], -1)
    q_plain_2d = plain.log_prob(pts).exp()
    transform = constrained.transform
    in_support = transform.in_support(pts).all(-1)
    safe = torch.where(in_support[..., None], pts, constrained.mode.expand_as(pts))
    u = transform.to_unconstrained(safe)
    q_con_2d = torch.where(in_support, (constrained.laplace.log_prob(u) - transform.log_abs_det_jacobian(u)).exp(),
                           torch.zeros_like(u[..., 0]))
    levels = [exact.max().item() * f for f in (0.05, 0.3, 0.7)]
    ax.contourf(mm, ss, exact, levels=[levels[0], levels[1], levels[2], exact.max().item() * 1.01],
                cmap="Greys", alpha=0.6)
    ax.contour(mm, ss, q_plain_2d, levels=[q_plain_2d.max().item() * f for f in (0.05, 0.3, 0.7)],
               colors="C0", linestyles="--")
    ax.contour(mm, ss, q_con_2d, levels=[q_con_2d.max().item() * f for f in (0.05, 0.3, 0.7)],
               colors="C3", linestyles=":")
    ax.axhline(SIGMA_LOW, color="gray", ls="-.", lw=0.8)
    ax.plot([TRUE_MU], [TRUE_SIGMA], "k+", ms=10)
    ax.set(xlabel="μ", ylabel="σ", title="joint: exact (grey), Laplace (blue), logit Laplace (red)")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(6))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[tuple[int, list[Comparison]]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/weight_example"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)

    y_all = simulate_weights(35, seed=args.seed)
    print(f"simulated 35 weights with mu = {TRUE_MU}, sigma = {TRUE_SIGMA}, seed = {args.seed}; "
          f"N = 5 uses the first 5")
    results = []
    header = (f"{'N':>3} {'method':<26} {'E[mu]':>8} {'sd[mu]':>7} {'E[sigma]':>8} {'sd[sigma]':>9} "
              f"{'q(s<0.5)':>9} {'TV(mu)':>7} {'TV(sigma)':>9} {'log Z':>9}")
    print(header)
    print("-" * len(header))
    for n in (35, 5):
        y = y_all[:n]
        grid = grid_posterior(y)
        plain, constrained = fit_weight_laplace(y)
        rows = compare(grid, plain, constrained)
        for r in rows:
            print(f"{n:>3} {r.method:<26} {r.mu_mean:8.3f} {r.mu_std:7.3f} {r.sigma_mean:8.3f} {r.sigma_std:9.3f} "
                  f"{r.mass_sigma_below_low:9.4f} {r.mu_tv:7.4f} {r.sigma_tv:9.4f} {r.log_evidence:9.3f}")
        path = args.out / f"weight_example_N{n}.png"
        plot(y, grid, plain, constrained, path)
        print(f"    figure: {path}")
        results.append((n, rows))
    print("E[.] and sd[.]: posterior mean/std (plain Laplace: mode and Gaussian std); TV: total-variation "
          "distance of the marginal to the exact one; log Z: log evidence log p(y).")
    return results


if __name__ == "__main__":
    main()
