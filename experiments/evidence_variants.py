"""Which hyperparameters give calibrated pixel intervals: TV-MAP, MLL, or a fixed noise level?

For each development case (the cases of ``calibration_benchmark.py``) one data-driven DIP is
trained (checkpointed under ``--out``), then the linearised DIP's hyperparameters are fitted
in each variant and the default std map is scored against the ground truth:

* ``tvmap``: TV-MAP type-II ML at the command's PredCP scale (1) and rate rule
  (``λ = scale · γ · m / (2σ̂²)``, :func:`~bayes_dip.linearized.predcp_rate`), σ_y² learnt
  from the noise estimate (the command's default); ``tvmap<S>``: at scale ``S``;
  ``tvmap-paper``: the paper's rate ``λ = γ · m``;
* ``mll``: plain type-II ML (``--method lin-dip-mll``);
* a ``-fixed`` suffix: σ_y² held at the known (simulated) noise variance.

    python experiments/evidence_variants.py --cases cranium_s030,CT_small \
        --variants tvmap1,tvmap0.3,tvmap,mll

Prints one row per (case, variant): PSNR of FBP and of the DIP, coverage of the 68 % / 95 % intervals about the DIP
output, pixel log-likelihood vs the oracle ``N(x̂, RMSE²)``, Spearman(std, |error|), the
held-out (leave-one-angle-out) ``z²`` and the evidence's σ_y² against the noise variance used.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from calibration_benchmark import _cases

from bayes_dip.cli import RECONSTRUCT_DEFAULTS
from bayes_dip.dip import reconstruct_dip
from bayes_dip.linearized import LinearizedDIP
from bayes_dip.metrics import pixel_calibration, psnr, std_error_correlation
from bayes_dip.problem import load_problem
from bayes_dip.reconstruct import default_dip_config
from bayes_dip.runtime import set_threads

VARIANTS = ("tvmap", "mll", "tvmap-paper", "tvmap-fixed", "mll-fixed")  # and tvmap<S>[-fixed]
HEADER = ("| case | FBP dB | DIP dB | variant | σ_y² / noise² | steps | cov 68 | cov 95 | LL/px | "
          "oracle | Spearman | held-out z² | s |\n|" + "---|" * 13)


def _predcp(variant: str) -> tuple[float | None, str]:
    """The PredCP scale (``None``: plain MLL) and rate rule of a variant name; ``ValueError``
    if unknown."""
    base = variant.removesuffix("-fixed")
    if base == "mll":
        return None, "residual"
    if base == "tvmap":
        return RECONSTRUCT_DEFAULTS["predcp_scale"], "residual"
    if base == "tvmap-paper":
        return 1.0, "paper"
    if base.startswith("tvmap"):
        try:
            scale = float(base[5:])
        except ValueError:
            scale = -1.0
        if scale > 0:
            return scale, "residual"
    raise ValueError(f"--variants: unknown {variant!r}; choose from {', '.join(VARIANTS)} "
                     "or tvmap<scale>[-fixed]")


def _row(name: str, variant: str, problem, dip, config, derived, seed: int) -> str:
    t0 = time.perf_counter()
    noise_var = derived["noise_std"] ** 2
    lin = LinearizedDIP(dip.net, dip.net_input, problem.ray_trafo, problem.sinogram,
                        recon=dip.recon, gamma=config.gamma, noise_variance=noise_var)
    scale, rule = _predcp(variant)
    evidence = lin.optimize_hyperparameters(
        "auto", scale, predcp_rule=rule, seed=seed, progress=False,
        stop_when_converged=True, learn_noise_variance=not variant.endswith("fixed"))
    heldout = lin.heldout("angle") if lin.mode != "stochastic" else None
    result = lin.estimate_uncertainty(mean="dip", seed=seed)
    gt = problem.ground_truth
    data_range = float(gt.max() - gt.min())
    quality = [f"{psnr(x, gt, data_range=data_range):.2f}" for x in (problem.fbp, dip.recon)]
    cal = pixel_calibration(result.mean, result.std, gt)
    rho = std_error_correlation(result.mean.double(), result.std.double(), gt.double()).spearman
    cells = [name, *quality, variant, f"{evidence.noise_variance / noise_var:.2f}", str(evidence.steps),
             f"{cal['coverage']['0.68']:.2f}", f"{cal['coverage']['0.95']:.2f}",
             f"{cal['pixel_log_likelihood']:.2f}",
             f"{cal['oracle_log_likelihood_per_pixel']:.2f}", f"{rho:.2f}",
             "–" if heldout is None else f"{heldout.chi2:.2f}",
             f"{time.perf_counter() - t0:.0f}"]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("BAYES_DIP_DATA", "../shared/data"))
    parser.add_argument("--cases", default="", help="comma-separated substrings of case names")
    parser.add_argument("--variants", default=",".join(VARIANTS[:2]),
                        help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--out", default="outputs/evidence_variants")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    variants = args.variants.split(",")
    for variant in variants:
        try:
            _predcp(variant)
        except ValueError as exc:
            parser.error(str(exc))
    set_threads(args.threads)
    rows = []
    for name, given in _cases(Path(args.data)).items():
        if not any(part in name for part in args.cases.split(",")):
            continue
        s = dict(RECONSTRUCT_DEFAULTS, **given)
        problem = load_problem(image=s["image"], kmnist=s["kmnist"], htc2022=s["htc2022"],
                               data_root=s["data_root"], size=s["size"], angles=s["angles"],
                               noise=s["noise"], seed=s["seed"])
        config, derived = default_dip_config(problem, seed=s["seed"])
        folder = Path(args.out) / name.replace(" ", "_").replace("%", "pct").replace("@", "_")
        dip = reconstruct_dip(problem.ray_trafo, problem.sinogram, net_input=problem.fbp,
                              config=config, checkpoint_dir=folder / "dip", progress=False)
        for variant in variants:
            if variant.endswith("fixed") and not derived["noise_std_known"]:
                continue  # a measured scan has no known noise level
            rows.append(_row(name, variant, problem, dip, config, derived, s["seed"]))
            print(rows[-1], flush=True)
    print(HEADER)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
