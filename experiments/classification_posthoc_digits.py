"""Held-out post-hoc Laplace protocol: does a Laplace posterior keep a calibrated MAP network calibrated?

scikit-learn digits (8 × 8, no downloads), split per seed into 1,000 train / 300 validation /
497 test images; an MLP (64, 64) trained to MAP with Adam (weight decay 1e-3, i.e. prior
precision 1); then post-hoc Laplace variants on the training set, evaluated on the test set
(accuracy, NLL, ECE with 15 bins) and by OOD AUROC (uniform noise, intensity-inverted
digits). Methods:

- ``MAP``: the network's softmax;
- ``<subset> <structure> evidence``: scalar δ by the Laplace evidence at ``θ̂`` (laplace-torch's default);
- ``<subset> <structure> evidence@θ* layerwise``: recommendations 1 + 2 of Antorán et al. (2022): one δ per
  parameter tensor by 5 MacKay iterations at the linearised mode ``θ*`` (slow: Newton-CG
  passes over the data for every ``θ*``);
- ``<subset> <structure> default``: ``optimize_prior_precision()`` with ``val_data`` (per-group
  evidence, then the validation-NLL multiplier), the library's default recipe.

    python experiments/classification_posthoc_digits.py [--seeds 0 1 2] [--methods NAME ...] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from classification.datasets import Split, load_digits_split, uniform_noise  # noqa: E402
from classification.metrics import classification_metrics, ood_auroc  # noqa: E402
from classification.models import TrainConfig, load_or_train  # noqa: E402

from bayes_dip.laplace import Laplace  # noqa: E402

__all__ = ["METHODS", "run_seed", "main"]

# name: (subset, structure, prior, hyper) with hyper in {"evidence", "evidence@θ*", "default"}
METHODS = {
    "LL KFAC evidence": ("last_layer", "kfac", "scalar", "evidence"),
    "all diag evidence": ("all", "diag", "scalar", "evidence"),
    "all KFAC evidence": ("all", "kfac", "scalar", "evidence"),
    "all KFAC evidence@θ* layerwise": ("all", "kfac", "layerwise", "evidence@θ*"),
    "LL full evidence@θ* layerwise": ("last_layer", "full", "layerwise", "evidence@θ*"),
    "LL KFAC default": ("last_layer", "kfac", "layerwise", "default"),
    "all diag default": ("all", "diag", "layerwise", "default"),
    "all KFAC default": ("all", "kfac", "layerwise", "default"),
}


def _splits(seed: int) -> tuple[Split, Split, Split]:
    train, test = load_digits_split(n_train=1300, seed=seed)
    return Split(train.images[:1000], train.labels[:1000]), Split(train.images[1000:], train.labels[1000:]), test


def _row(probs: torch.Tensor, test: Split, ood_probs: dict[str, torch.Tensor], seconds: float) -> dict:
    row = {k: classification_metrics(probs, test.labels)[k] for k in ("acc", "nll", "ece")}
    row.update({f"auroc_{k}": ood_auroc(probs, p) for k, p in ood_probs.items()})
    row["seconds"] = seconds
    return row


def run_seed(seed: int, cache: Path | None = None, methods: list[str] | None = None) -> dict[str, dict]:
    """Rows ``{method: {acc, nll, ece, auroc_noise, auroc_inverted, seconds}}`` for one seed."""
    train, val, test = _splits(seed)
    ood = {"noise": uniform_noise(len(test), (1, 8, 8), seed + 2), "inverted": 1.0 - test.images}
    config = TrainConfig(arch="mlp", epochs=60, lr=1e-3, batch_size=64, weight_decay=1e-3, seed=seed,
                         model_kwargs={"hidden": [64, 64]})
    model, _ = load_or_train(config, train, 10, cache)
    with torch.no_grad():
        rows = {"MAP": _row(torch.softmax(model(test.images), 1), test,
                            {k: torch.softmax(model(v), 1) for k, v in ood.items()}, 0.0)}
    for name in methods or list(METHODS):
        subset, structure, prior, hyper = METHODS[name]
        start = time.perf_counter()
        la = Laplace(model, "classification", subset=subset, structure=structure).fit((train.images, train.labels))
        if prior == "layerwise":
            la.prior_precision = torch.ones(la.subset.n_groups)
        if hyper == "evidence":
            la.optimize_prior_precision("marglik")
        elif hyper == "evidence@θ*":
            la.optimize_prior_precision("mackay", at="linearized", max_iter=5, tol=1e-2)
        else:
            la.optimize_prior_precision(val_data=(val.images, val.labels))
        with torch.no_grad():
            probs = la.predict(test.images)
            ood_probs = {k: la.predict(v) for k, v in ood.items()}
        rows[name] = _row(probs, test, ood_probs, time.perf_counter() - start)
        print(f"seed {seed} {name:32s} " + " ".join(f"{k}={v:.4f}" for k, v in rows[name].items()), flush=True)
    return rows


def table(results: list[dict[str, dict]]) -> str:
    """Markdown table: mean ± std over seeds per method."""
    keys = ["acc", "nll", "ece", "auroc_noise", "auroc_inverted", "seconds"]
    lines = ["| method | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for method in results[0]:
        cells = []
        for k in keys:
            v = np.array([r[method][k] for r in results])
            cells.append(f"{v.mean():.4f} ± {v.std():.4f}" if k != "seconds" else f"{v.mean():.1f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=None, choices=list(METHODS), help="default: all")
    parser.add_argument("--cache", type=Path, default=None, help="MAP-network cache folder (default: none)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = [run_seed(seed, args.cache, args.methods) for seed in args.seeds]
    print(f"\nDigits post-hoc protocol, {len(args.seeds)} seeds (mean ± std), torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s):\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
