"""Bayesian logistic regression with the Laplace approximation and the probit predictive.

Model: y_i ~ Bernoulli(σ(φ(x_i)ᵀ w)), φ(x) = (1, x₁, x₂), prior w ~ N(0, τ² I) with τ = 2.
Data: 2 × 15 points from two Gaussian blobs (seed 0). The MAP is found by damped Newton
(and, as a cross-check, by gradient ascent); q(w) = N(ŵ, A⁻¹). On a grid of inputs the
predictive P(y = 1 | x) is computed three ways:

- plug-in σ(φᵀŵ) (no uncertainty);
- probit approximation σ(m / sqrt(1 + π v / 8)), m = φᵀŵ, v = φᵀ A⁻¹ φ;
- Monte Carlo over weight samples w ~ q (the reference the probit approximates),
  itself checked against 1-D Gauss–Hermite quadrature of E[σ(f)], f ~ N(m, v).

Writes a PNG to --out (default results/logistic_regression_example/) and prints a summary.

    python experiments/logistic_regression_example.py [--out DIR] [--seed 0]
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn.functional import logsigmoid

from bayes_dip.laplace.explicit import LaplaceApproximation, fit_laplace, gradient_ascent_map
from bayes_dip.laplace.links import probit_binary

PRIOR_STD = 2.0
DT = torch.float64


def make_data(num_per_class: int = 15, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Inputs (2n, 2) from blobs at (−1, −1) and (1, 1) with std 1.2; labels (2n,) in {0, 1}."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.tensor([-1.0, -1.0], dtype=DT) + 1.2 * torch.randn(num_per_class, 2, generator=g, dtype=DT)
    x1 = torch.tensor([1.0, 1.0], dtype=DT) + 1.2 * torch.randn(num_per_class, 2, generator=g, dtype=DT)
    y = torch.cat([torch.zeros(num_per_class, dtype=DT), torch.ones(num_per_class, dtype=DT)])
    return torch.cat([x0, x1]), y


def features(x: Tensor) -> Tensor:
    """φ(x) = (1, x₁, x₂): (n, 3)."""
    return torch.cat([torch.ones_like(x[:, :1]), x], 1)


def log_joint(w: Tensor, phi: Tensor, y: Tensor) -> Tensor:
    """log p(y | w) + log p(w), ()."""
    f = phi @ w
    log_lik = (y * logsigmoid(f) + (1 - y) * logsigmoid(-f)).sum()
    log_prior = -0.5 * (w**2).sum() / PRIOR_STD**2 - w.numel() * (math.log(PRIOR_STD) + 0.5 * math.log(2 * math.pi))
    return log_lik + log_prior


def predictive(laplace: LaplaceApproximation, phi: Tensor, num_samples: int, generator: torch.Generator
               ) -> dict[str, Tensor]:
    """P(y = 1 | x) on feature rows phi (n, 3): plug-in, probit, quadrature, MC mean and its standard error."""
    mean = phi @ laplace.mode
    var = ((phi @ laplace.covariance) * phi).sum(1)
    total, total_sq = torch.zeros_like(mean), torch.zeros_like(mean)
    for start in range(0, num_samples, 1000):  # chunks of weight samples keep memory small
        probs = torch.sigmoid(laplace.sample(min(1000, num_samples - start), generator) @ phi.T)  # (s, n)
        total += probs.sum(0)
        total_sq += (probs**2).sum(0)
    mc = total / num_samples
    mc_var = (total_sq / num_samples - mc**2).clamp_min(0.0)
    nodes, weights = (torch.tensor(a, dtype=DT) for a in np.polynomial.hermite_e.hermegauss(64))
    quadrature = (torch.sigmoid(mean[:, None] + var.sqrt()[:, None] * nodes) * weights).sum(1) / weights.sum()
    return {
        "plugin": torch.sigmoid(mean),
        "probit": probit_binary(mean, var),
        "quadrature": quadrature,
        "mc": mc,
        "mc_stderr": (mc_var / num_samples).sqrt(),
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/logistic_regression_example"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-samples", type=int, default=20_000)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)

    x, y = make_data(seed=args.seed)
    phi = features(x)
    log_f = lambda w: log_joint(w, phi, y)  # noqa: E731
    w0 = torch.zeros(3, dtype=DT)
    laplace = fit_laplace(log_f, w0, method="newton")
    ga = gradient_ascent_map(log_f, w0, lr=0.05, grad_tol=1e-8, max_iter=20_000)

    side = torch.linspace(-5, 5, 101, dtype=DT)
    g1, g2 = torch.meshgrid(side, side, indexing="xy")
    grid_x = torch.stack([g1.flatten(), g2.flatten()], 1)
    pred = predictive(laplace, features(grid_x), args.num_samples, torch.Generator().manual_seed(args.seed + 1))
    err = (pred["probit"] - pred["mc"]).abs()
    summary = {
        "newton_iterations": laplace.map_result.iterations,
        "gradient_ascent_iterations": ga.iterations,
        "max_abs_map_difference": (ga.theta - laplace.mode).abs().max().item(),
        "log_evidence": laplace.log_evidence.item(),
        "max_abs_probit_minus_mc": err.max().item(),
        "max_mc_stderr": pred["mc_stderr"].max().item(),
        "max_abs_probit_minus_quadrature": (pred["probit"] - pred["quadrature"]).abs().max().item(),
        "max_mc_minus_quadrature_in_stderr": ((pred["mc"] - pred["quadrature"]).abs()
                                              / pred["mc_stderr"].clamp_min(1e-12)).max().item(),
        "max_abs_plugin_minus_probit": (pred["plugin"] - pred["probit"]).abs().max().item(),
    }
    print(f"data: 2 x 15 points, seed {args.seed}; prior w ~ N(0, {PRIOR_STD}^2 I)")
    print(f"MAP w = {laplace.mode.tolist()}  (Newton: {laplace.map_result.iterations} iterations; "
          f"gradient ascent: {ga.iterations} iterations, converged = {ga.converged}, "
          f"max |w_GA - w_Newton| = {summary['max_abs_map_difference']:.2e})")
    print(f"posterior std of w = {laplace.marginal_std.tolist()}")
    print(f"Laplace log evidence = {summary['log_evidence']:.4f}")
    print(f"grid of {grid_x.shape[0]} inputs on [-5, 5]^2, {args.num_samples} MC weight samples:")
    print(f"  max |probit - MC|   = {summary['max_abs_probit_minus_mc']:.4f}  "
          f"(max MC standard error {summary['max_mc_stderr']:.4f})")
    print(f"  max |probit - quadrature| = {summary['max_abs_probit_minus_quadrature']:.4f}  "
          "(the probit approximation error itself)")
    print(f"  max |MC - quadrature| / MC standard error = {summary['max_mc_minus_quadrature_in_stderr']:.2f}")
    print(f"  max |plug-in - probit| = {summary['max_abs_plugin_minus_probit']:.4f}  (what the uncertainty changes)")
    path = args.out / "logistic_regression_predictive.png"
    _plot(x, y, g1, g2, pred, path)
    print(f"figure: {path}")
    return summary


def _plot(x: Tensor, y: Tensor, g1: Tensor, g2: Tensor, pred: dict[str, Tensor], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shape = g1.shape
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    panels = [("plug-in σ(φᵀŵ)", pred["plugin"], "RdBu_r", (0, 1)),
              ("probit σ(m / √(1 + πv/8))", pred["probit"], "RdBu_r", (0, 1)),
              ("|probit − MC|", (pred["probit"] - pred["mc"]).abs(), "viridis", None)]
    for ax, (title, values, cmap, lim) in zip(axes, panels):
        kw = {"vmin": lim[0], "vmax": lim[1]} if lim else {}
        im = ax.pcolormesh(g1, g2, values.reshape(shape), cmap=cmap, shading="auto", **kw)
        if lim:
            cs = ax.contour(g1, g2, values.reshape(shape), levels=[0.1, 0.3, 0.5, 0.7, 0.9], colors="k",
                            linewidths=0.7)
            ax.clabel(cs, fontsize=7)
        fig.colorbar(im, ax=ax)
        ax.scatter(x[y == 0, 0], x[y == 0, 1], c="C0", edgecolors="w", s=25)
        ax.scatter(x[y == 1, 0], x[y == 1, 1], c="C3", edgecolors="w", s=25)
        ax.set(title=title, xlabel="x₁", ylabel="x₂", aspect="equal")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
