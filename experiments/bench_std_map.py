"""Monte-Carlo error of the std map at 128²: solve-free subspace samples vs a reference.

Trains the DIP on pydicom's CT_small (30 angles, 5 % noise), builds the low-rank linearised
model (MLL, a short evidence run: the estimator's error does not depend on where the
hyperparameters are), and draws pixel variances of the subspace predictive
(:func:`bayes_dip.linearized.subspace_predictive`) from ``S`` samples for each ``S`` in
``--samples`` and from ``--reference`` samples with another seed. Prints, per ``S``, the
median and 90th percentile of the relative error of the pixel variances against the
reference, and the seconds taken (the ``r`` VJP/JVP pairs of ``G = C Aᵀ U`` are shared).

    python experiments/bench_std_map.py --samples 16,128,512 --reference 4096
"""
from __future__ import annotations

import argparse
import time

import torch

from bayes_dip.data import load_dicom_slice
from bayes_dip.dip import dip_config_from_data, reconstruct_dip
from bayes_dip.linearized import LinearizedDIP, subspace_predictive
from bayes_dip.problem import simulated_problem
from bayes_dip.runtime import set_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", default="16,128,512")
    parser.add_argument("--reference", type=int, default=4096)
    parser.add_argument("--dip-iterations", type=int, default=600)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    set_threads(args.threads)
    problem = simulated_problem(load_dicom_slice(None, size=128).float(), num_angles=30,
                                noise_level=0.05, seed=0)
    config, _ = dip_config_from_data(problem.ray_trafo, problem.sinogram, problem.fbp,
                                     problem.noise_std, iterations=args.dip_iterations)
    dip = reconstruct_dip(problem.ray_trafo, problem.sinogram, net_input=problem.fbp,
                          config=config, progress=False)
    lin = LinearizedDIP(dip.net, dip.net_input, problem.ray_trafo, problem.sinogram,
                        noise_variance=problem.noise_std ** 2)
    lin.optimize_hyperparameters("lowrank", steps=200, progress=False)
    spectrum = lin.observation_spectrum()

    def variances(num: int, seed: int) -> tuple[torch.Tensor, float]:
        t0 = time.perf_counter()
        pred = subspace_predictive(lin.model, spectrum, num, image_noise=0.0,
                                   generator=torch.Generator().manual_seed(seed))
        return pred.std().square().reshape(-1), time.perf_counter() - t0

    reference, seconds = variances(args.reference, 12345)
    print(f"reference: {args.reference} samples in {seconds:.1f} s")
    print("| samples | median rel. error | 90th percentile | seconds |\n|---|---|---|---|")
    for num in (int(s) for s in args.samples.split(",")):
        var, seconds = variances(num, 0)
        rel = (var - reference).abs() / reference
        print(f"| {num} | {float(rel.median()):.3f} | {float(rel.quantile(0.9)):.3f} | "
              f"{seconds:.1f} |")


if __name__ == "__main__":
    main()
