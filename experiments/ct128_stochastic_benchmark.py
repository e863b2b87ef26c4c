"""Cost of the stochastic (matrix-free) evidence on the 128² real CT slice (issue 4 §9).

Measures, for the linearised DIP around a short DIP run on pydicom's CT_small.dcm (128²,
parallel beam, 30 angles, 5 % noise, U-Net preset "128"):

* one ``K_yy`` product with ``b`` columns vs one U-Net forward + backward at batch ``b``;
* the Nyström preconditioner build;
* seconds per stochastic evidence step, CG iterations and relative residuals;
* Matheron sampling of the predictive.

    python experiments/ct128_stochastic_benchmark.py                    # defaults below
    python experiments/ct128_stochastic_benchmark.py --steps 3 --probes 4 --precond-rank 20
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from bayes_dip.data import load_dicom_slice
from bayes_dip.dip import DIPConfig, reconstruct_dip, unet_preset
from bayes_dip.linearized import EvidenceConfig, LinearizedDIP
from bayes_dip.problem import simulated_problem


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dip-iterations", type=int, default=300)
    parser.add_argument("--steps", type=int, default=5, help="stochastic evidence steps")
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--cg-max-iter", type=int, default=50)
    parser.add_argument("--precond-rank", type=int, default=100)
    parser.add_argument("--samples", type=int, default=16, help="Matheron samples")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    problem = simulated_problem(load_dicom_slice(size=128), num_angles=30, noise_level=0.05)
    rt, y = problem.ray_trafo, problem.sinogram
    cfg = DIPConfig(iterations=args.dip_iterations, lr=1e-3, gamma=1e-5, unet="128")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    dip = reconstruct_dip(rt, y, net=unet_preset("128"), net_input=problem.fbp, config=cfg,
                          progress=False)
    print(f"DIP: {args.dip_iterations} iterations in {time.perf_counter() - t0:.1f} s")
    lin = LinearizedDIP(dip.net, dip.net_input, rt, y, gamma=cfg.gamma)
    print(f"weights under the prior: {lin.jac.num_params}, measurements: {lin.model.num_obs}")

    b = args.probes + 1
    v = torch.randn(lin.model.num_obs, b)
    with torch.no_grad():
        lin.model.obs_cov.matmul(v)  # warm-up (the first vmapped call per shape is slow)
        t0 = time.perf_counter()
        lin.model.obs_cov.matmul(v)
        t_k = time.perf_counter() - t0
    net = unet_preset("128")
    xb = dip.net_input.expand(b, -1, -1, -1)
    net(xb).sum().backward()
    t0 = time.perf_counter()
    net(xb).sum().backward()
    t_net = time.perf_counter() - t0
    print(f"K_yy product, {b} columns: {t_k:.2f} s; U-Net forward+backward, batch {b}: "
          f"{t_net:.2f} s; ratio {t_k / t_net:.2f}")

    t0 = time.perf_counter()
    lin.model.obs_cov.preconditioner(args.precond_rank, torch.Generator().manual_seed(0))
    print(f"Nyström preconditioner, rank {args.precond_rank}: {time.perf_counter() - t0:.1f} s")

    config = EvidenceConfig(mode="stochastic", steps=args.steps, num_probes=args.probes,
                            cg_max_iter=args.cg_max_iter, precond_rank=args.precond_rank,
                            precond_every=max(args.steps, 1), progress=False)
    result = lin.optimize_hyperparameters("stochastic", config=config, steps=args.steps,
                                          progress=False)
    sec = np.diff([0.0] + result.history["seconds"])
    later = np.mean(sec[1:]) if len(sec) > 1 else float("nan")
    print(f"stochastic evidence: {args.steps} steps in {result.seconds:.1f} s (first step incl. "
          f"preconditioner {sec[0]:.1f} s, later steps {later:.1f} s); CG iterations "
          f"{result.history['cg_iterations']}; max relative residuals "
          f"{[f'{r:.1e}' for r in result.history['cg_residual']]}")
    t0 = time.perf_counter()
    unc = lin.estimate_uncertainty(num_samples=args.samples, precond_rank=args.precond_rank,
                                   cg_max_iter=args.cg_max_iter, cg_tol=1e-3)
    its = [info.iterations for info in unc.predictive.cg]
    print(f"Matheron predictive, {args.samples} samples: {time.perf_counter() - t0:.1f} s "
          f"(CG iterations per batch {its}); σ_y² = {unc.noise_variance:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
