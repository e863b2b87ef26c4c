"""KMNIST benchmark of the linearised DIP (issue 4 §9).

For each of the first N KMNIST test images (20 angles, 5 % noise by default): DIP, then four
methods of the registry (:data:`bayes_dip.studies.METHODS`, as in a study, one image at a time):

* ``dip`` — DIP (σ² = 1): ``N(x̂, σ_y² c_A I)`` with ``σ_y² = 1``;
* ``dip-evidence`` — DIP (MLL σ²): the same with the ``σ_y²`` of the linearised DIP's MLL
  evidence;
* ``lin-dip-mll`` and ``lin-dip-tvmap`` — exact linearised DIP with evidence-optimised
  hyperparameters (sharing one set of Gram matrices), full-covariance predictives.

Prints PSNR/SSIM, the mean test log-likelihood per pixel ± standard error per method, and
seconds per stage (DIP, Gram matrices, evidence MLL / TV-MAP and per step, predictive) plus
the peak resident memory. Per-image results are written to ``--out/results/image_XXXX.json``
and never recomputed; DIP and evidence runs checkpoint under ``--out/checkpoints`` and resume.

    python experiments/kmnist_benchmark.py                      # the paper's setting (hours)
    python experiments/kmnist_benchmark.py --quick              # 2 images, short runs
    python experiments/kmnist_benchmark.py --naive-check 5      # + 5 steps of the naive evidence

``--naive-check K`` also runs K Adam steps of the naive exact evidence (``K_yy`` rebuilt every
step from the dense ``A J``, as the original research code does) from the same start and
reports its seconds per step and the largest difference to the structured run's hyperparameters
after those steps (same objective: same trajectory up to rounding).
KMNIST is read from ``--data-root`` or ``$BAYES_DIP_DATA`` (folder holding ``kmnist/``).
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from bayes_dip.data import load_kmnist
from bayes_dip.dip import DIPConfig
from bayes_dip.linearized import EvidenceConfig, LinearizedDIP, optimize_evidence
from bayes_dip.metrics import psnr, ssim
from bayes_dip.problem import simulated_problem
from bayes_dip.studies import METHODS, MethodContext, Setting, StudyConfig

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = HERE / "configs" / "kmnist_benchmark.yaml"
QUICK = {"images": 2, "dip": {"iterations": 300, "lr": 1.0e-3, "lr_warmup": 50},
         "evidence": {"steps": 100}}
#: registry methods of the table (DIP (MLL σ²) is ``dip-evidence`` with the MLL run's σ_y²)
BENCHMARK_METHODS = ("dip", "dip-evidence", "lin-dip-mll", "lin-dip-tvmap")


def load_config(args: argparse.Namespace) -> dict:
    config = yaml.safe_load(Path(args.config).read_text())
    if args.quick:
        for key, value in QUICK.items():
            config[key] = {**config[key], **value} if isinstance(value, dict) else value
    if args.images is not None:
        config["images"] = args.images
    return config


def peak_memory_mib() -> float:
    """Peak resident set size of this process (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def study_config(config: dict) -> StudyConfig:
    """The benchmark as a study of the registry methods (exact evidence and predictive)."""
    evidence = {"mode": "exact", **config["evidence"]}
    return StudyConfig(name="kmnist_benchmark", methods=BENCHMARK_METHODS, settings=(),
                       seed=config["seed"], dip=DIPConfig(**config["dip"]),
                       dip_evidence={"noise_variance": "mll"}, evidence=evidence,
                       tvmap=dict(config["tvmap"]), predictive=dict(config["predictive"]))


def run_image(index: int, image: torch.Tensor, config: dict, out: Path, naive_steps: int,
              progress: bool) -> dict:
    problem = simulated_problem(image, num_angles=config["angles"], noise_level=config["noise"],
                                seed=config["seed"] + index, name=f"kmnist:{index}")
    study = study_config(config)
    setting = Setting("simulated", (problem.name,), angles=config["angles"], noise=config["noise"])
    ctx = MethodContext(problem, study, setting, problem.name,
                        out / "checkpoints" / f"image_{index:04d}", progress)
    gt = ctx.ground_truth
    recon = ctx.dip().recon.detach()
    record: dict = {"index": index, "psnr": float(psnr(recon, gt)), "ssim": float(ssim(recon, gt)),
                    "seconds": {"dip": ctx.dip().seconds}, "log_likelihood": {},
                    "hyperparameters": {}}
    for name in BENCHMARK_METHODS:
        pred = METHODS[name].run(ctx)
        record["log_likelihood"][METHODS[name].label] = pred.log_likelihood(gt).per_pixel
        record["seconds"].update({f"{name} {stage}": v for stage, v in pred.seconds.items()
                                  if stage != "dip"})
        if name.startswith("lin-dip"):
            record["hyperparameters"][name] = {
                k: pred.info[k] for k in ("noise_variance", "image_noise", "jitter",
                                          "hyperparameters", "neg_log_evidence_per_obs")}
    record["peak_memory_mib"] = peak_memory_mib()  # before the (memory-hungry) naive check
    if naive_steps:
        record["naive_check"] = naive_check(ctx.image_cache["linearized"], config["evidence"],
                                            naive_steps)
    return record


def naive_check(lin: LinearizedDIP, ev: dict, steps: int) -> dict:
    """K steps of the naive exact evidence vs the structured one from the same start."""
    model, jac = lin.model, lin.jac
    n_obs = model.num_obs
    eye = torch.eye(n_obs, dtype=jac.dtype)
    aj = torch.cat([jac.vjp(model.ray_trafo.rmatmul(eye[:, i:i + 64])).mT
                    for i in range(0, n_obs, 64)]).double()  # (n_obs, P)
    del eye

    def naive_step(optimizer) -> None:
        optimizer.zero_grad()
        b = model.prior.sqrt_rmatmul(aj.mT).mT  # A J L, Σ_θ = L Lᵀ
        k = b @ b.mT + model.noise_variance * torch.eye(n_obs, dtype=torch.float64)
        r = model.residual
        loss = (0.5 * torch.logdet(k) + 0.5 * r.square().sum() / model.noise_variance
                + 0.5 * model.prior.quadratic(scatter=model.theta_scatter))
        loss.backward()
        optimizer.step()

    lin.reset_hyperparameters()
    optimizer = torch.optim.Adam([p for p in model.parameters()], lr=ev["lr"])
    t0 = time.perf_counter()
    for _ in range(steps):
        naive_step(optimizer)
    naive_seconds = (time.perf_counter() - t0) / steps
    naive = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    lin.reset_hyperparameters()
    optimize_evidence(model, EvidenceConfig(steps=steps, lr=ev["lr"], progress=False),
                      structured=lin.structured)
    fast = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    return {"steps": steps, "seconds_per_step": naive_seconds,
            "max_abs_diff_log_hyperparameters": float((naive - fast).abs().max())}


def summarize(records: list[dict]) -> str:
    lines = [f"images: {len(records)}", "",
             "| method | test log-likelihood / pixel (mean ± s.e.) |", "|---|---|"]
    for name in (METHODS[m].label for m in BENCHMARK_METHODS):
        vals = np.array([r["log_likelihood"][name] for r in records])
        se = vals.std(ddof=1) / math.sqrt(len(vals)) if len(vals) > 1 else float("nan")
        lines.append(f"| {name} | {vals.mean():.4f} ± {se:.4f} |")
    for key in ("psnr", "ssim"):
        vals = np.array([r[key] for r in records])
        se = vals.std(ddof=1) / math.sqrt(len(vals)) if len(vals) > 1 else float("nan")
        lines.append(f"\nDIP {key.upper()}: {vals.mean():.3f} ± {se:.3f}")
    lines.append("\nseconds per image (mean over images):")
    for key in records[0]["seconds"]:
        lines.append(f"  {key}: {np.mean([r['seconds'][key] for r in records]):.4g}")
    lines.append(f"peak resident memory: {max(r['peak_memory_mib'] for r in records):.0f} MiB")
    checks = [r["naive_check"] for r in records if "naive_check" in r]
    if checks:
        naive = np.mean([c["seconds_per_step"] for c in checks])
        diff = max(c["max_abs_diff_log_hyperparameters"] for c in checks)
        lines.append(f"naive exact evidence: {naive:.3g} s/step; max |Δ log hyperparameter| after "
                     f"{checks[0]['steps']} steps vs structured: {diff:.2e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="benchmark YAML")
    parser.add_argument("--out", default="outputs/kmnist_benchmark", help="output folder")
    parser.add_argument("--images", type=int, help="first N KMNIST test images")
    parser.add_argument("--quick", action="store_true", help="2 images, short DIP and evidence")
    parser.add_argument("--naive-check", type=int, default=0, metavar="K",
                        help="also time K steps of the naive exact evidence (first image)")
    parser.add_argument("--data-root", help="data folder with kmnist/ (default $BAYES_DIP_DATA)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    config = load_config(args)
    torch.set_num_threads(int(config.get("threads", 2)))
    out = Path(args.out) / ("quick" if args.quick else "full")
    (out / "results").mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    images = load_kmnist(args.data_root, "test", slice(0, config["images"]))
    records = []
    for index in range(config["images"]):
        path = out / "results" / f"image_{index:04d}.json"
        if path.exists():
            records.append(json.loads(path.read_text()))
            continue
        record = run_image(index, images[index:index + 1], config, out,
                           args.naive_check if index == 0 else 0, not args.no_progress)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(path)
        records.append(record)
        lls = ", ".join(f"{k}: {v:.4f}" for k, v in record["log_likelihood"].items())
        print(f"image {index}: {lls}", flush=True)
    summary = summarize(records)
    (out / "summary.md").write_text(summary + "\n")
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
