"""Speed of ``bayes_dip.laplace`` against laplace-torch on the same work, side by side in one run.

The MAP network and data of ``experiments/classification_posthoc_digits.py`` (scikit-learn
digits 8 × 8, 1,000 training and 497 test images of seed 0, an MLP (64, 64) trained with Adam),
trained once; then, for each structure and for both libraries on a fresh copy of that network:

- ``fit``: build the Laplace object and compute the curvature on the training set
  (batches of 128);
- ``prior``: a scalar prior precision (from 1) by the Laplace evidence at ``θ̂``, ``--steps``
  Adam steps on ``log δ`` at rate 0.1 (``optimize_prior_precision("marglik")`` in both);
- ``predict``: the linearised (GLM) predictive on the test set with the probit link.

Structures (``--structures``): ``ll_kfac`` (last-layer KFAC), ``diag``, ``kfac`` and ``full``
(all weights, P = 8,970; not by default: ~35 min of laplace-torch on one thread).

Each stage's seconds are the least of ``--repeats`` runs. The two libraries must agree on the
fitted prior precision, the test NLL and ECE (``--tol``); the run exits with 1 when they do not.
laplace-torch is not a dependency of this project; install it in its own environment so that it
cannot replace torch (the command is printed when ``import laplace`` fails, and the run then
exits 0).

    python experiments/bench_laplace_vs_laplace_torch.py --threads 1 [--structures ll_kfac,diag,kfac,full]
"""
from __future__ import annotations

import argparse
import copy
import importlib.metadata
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from classification.datasets import Split  # noqa: E402
from classification.metrics import classification_metrics  # noqa: E402
from classification.models import TrainConfig, load_or_train  # noqa: E402
from classification_posthoc_digits import _splits  # noqa: E402

from bayes_dip.laplace import Laplace  # noqa: E402
from bayes_dip.runtime import set_threads  # noqa: E402

__all__ = ["STRUCTURES", "STAGES", "INSTALL_HINT", "LibraryRun", "import_laplace_torch", "run_ours",
           "run_laplace_torch", "agreement", "table", "main"]

#: name: (subset, our structure, laplace-torch's hessian_structure)
STRUCTURES = {
    "ll_kfac": ("last_layer", "kfac", "kron"),
    "diag": ("all", "diag", "diag"),
    "kfac": ("all", "kfac", "kron"),
    "full": ("all", "full", "full"),
}
DEFAULT_STRUCTURES = "ll_kfac,diag,kfac"  # all-weights full: ~35 min of laplace-torch on one thread
STAGES = ("fit", "prior", "predict")
BATCH_SIZE = 128
LR = 0.1

INSTALL_HINT = """laplace-torch is not importable in this Python (not installed, or a torchvision that
does not match this torch); the comparison is skipped.
Install it in its own environment (so that it cannot pull another torch), then rerun with that Python:

    python -m venv --system-site-packages ltenv
    ltenv/bin/pip install laplace-torch "torch==$(python -c 'import torch; print(torch.__version__.split("+")[0])')"
    ltenv/bin/pip uninstall -y torchvision   # only if `import laplace` then fails in torchvision
    OMP_NUM_THREADS=1 ltenv/bin/python experiments/bench_laplace_vs_laplace_torch.py --threads 1"""


@dataclass
class LibraryRun:
    """One library's best seconds per stage, and its results (from the last repeat)."""

    seconds: dict[str, float] = field(default_factory=dict)
    probs: torch.Tensor | None = None
    prior_precision: float = float("nan")
    log_evidence: float = float("nan")

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = min(seconds, self.seconds.get(stage, float("inf")))


def import_laplace_torch():
    """laplace-torch's ``Laplace`` factory, or ``None`` when it cannot be imported (absent, or
    its torchvision's compiled operators do not match this torch: a ``RuntimeError``)."""
    try:
        from laplace import Laplace as LaplaceTorch
    except (ImportError, RuntimeError):
        return None
    return LaplaceTorch


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run_ours(model: nn.Module, structure: str, train: Split, test: Split, steps: int,
             result: LibraryRun | None = None) -> LibraryRun:
    """Time ``bayes_dip.laplace.Laplace`` on a copy of ``model`` (adds to ``result``)."""
    subset, ours, _ = STRUCTURES[structure]
    result = LibraryRun() if result is None else result
    model = copy.deepcopy(model)
    la, t = _timed(lambda: Laplace(model, "classification", subset=subset, structure=ours).fit(
        (train.images, train.labels), batch_size=BATCH_SIZE))
    result.add("fit", t)
    _, t = _timed(lambda: la.optimize_prior_precision("marglik", n_steps=steps, lr=LR))
    result.add("prior", t)
    with torch.no_grad():
        result.probs, t = _timed(lambda: la.predict(test.images, link="probit"))
    result.add("predict", t)
    result.prior_precision = float(la.prior_precision)
    with torch.no_grad():
        result.log_evidence = float(la.log_marginal_likelihood())
    return result


def run_laplace_torch(laplace_torch, model: nn.Module, structure: str, train: Split, test: Split,
                      steps: int, result: LibraryRun | None = None) -> LibraryRun:
    """Time laplace-torch's ``Laplace`` on a copy of ``model`` (adds to ``result``)."""
    subset, _, theirs = STRUCTURES[structure]
    result = LibraryRun() if result is None else result
    model = copy.deepcopy(model)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(train.images, train.labels),
                                         batch_size=BATCH_SIZE)

    def fit():
        la = laplace_torch(model, "classification", subset_of_weights=subset, hessian_structure=theirs)
        la.fit(loader)
        return la

    la, t = _timed(fit)
    result.add("fit", t)
    with warnings.catch_warnings():  # "By default `link_approx` is `probit`...": it is
        warnings.simplefilter("ignore", UserWarning)
        _, t = _timed(lambda: la.optimize_prior_precision(method="marglik", n_steps=steps, lr=LR,
                                                          pred_type="glm", link_approx="probit"))
    result.add("prior", t)
    with torch.no_grad():
        result.probs, t = _timed(lambda: la(test.images, pred_type="glm", link_approx="probit"))
    result.add("predict", t)
    result.prior_precision = float(la.prior_precision)
    with torch.no_grad():
        result.log_evidence = float(la.log_marginal_likelihood())
    return result


def agreement(ours: LibraryRun, theirs: LibraryRun, labels: torch.Tensor, tol: float = 1e-3) -> dict:
    """Test NLL and ECE of both, and whether the two libraries agree: ``|ΔNLL|``, ``|ΔECE|`` and the
    relative difference of the fitted prior precisions all at most ``tol``."""
    m_ours = classification_metrics(ours.probs, labels)
    m_theirs = classification_metrics(theirs.probs, labels)
    out = {"nll_ours": m_ours["nll"], "nll_theirs": m_theirs["nll"],
           "ece_ours": m_ours["ece"], "ece_theirs": m_theirs["ece"],
           "prec_ours": ours.prior_precision, "prec_theirs": theirs.prior_precision}
    prec_rel = abs(ours.prior_precision - theirs.prior_precision) / abs(theirs.prior_precision)
    out["agree"] = bool(abs(m_ours["nll"] - m_theirs["nll"]) <= tol and abs(m_ours["ece"] - m_theirs["ece"]) <= tol
                        and prec_rel <= tol)
    return out


def table(rows: dict[str, tuple[LibraryRun, LibraryRun, dict]]) -> str:
    """Markdown table: per structure and stage our and laplace-torch's seconds and their ratio,
    then a ``total`` line with both libraries' δ, NLL and ECE."""
    lines = ["| structure | stage | ours (s) | laplace-torch (s) | ratio | δ ours / theirs | "
             "NLL ours / theirs | ECE ours / theirs |", "|---" * 8 + "|"]
    for name, (ours, theirs, check) in rows.items():
        for stage in (*STAGES, "total"):
            a = sum(ours.seconds.values()) if stage == "total" else ours.seconds[stage]
            b = sum(theirs.seconds.values()) if stage == "total" else theirs.seconds[stage]
            extra = " | | |"
            if stage == "total":
                extra = (f" {check['prec_ours']:.4g} / {check['prec_theirs']:.4g} | "
                         f"{check['nll_ours']:.4f} / {check['nll_theirs']:.4f} | "
                         f"{check['ece_ours']:.4f} / {check['ece_theirs']:.4f} |")
            lines.append(f"| {name} | {stage} | {a:.3f} | {b:.3f} | {a / b:.3f} |{extra}")
    return "\n".join(lines)


def _structures(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in STRUCTURES]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"--structures takes a comma-separated list of {', '.join(STRUCTURES)}; "
                                         f"got {text!r}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--structures", type=_structures, default=_structures(DEFAULT_STRUCTURES),
                        help=f"comma-separated subset of {','.join(STRUCTURES)} (default {DEFAULT_STRUCTURES}; "
                             "'full' takes ~35 min of laplace-torch on one thread)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per library; the least seconds count")
    parser.add_argument("--steps", type=int, default=100, help="marginal-likelihood steps")
    parser.add_argument("--tol", type=float, default=1e-3, help="agreement of NLL, ECE and relative δ")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=60, help="MAP training epochs")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64], help="MLP widths")
    parser.add_argument("--cache", type=Path, default=None, help="MAP-network cache folder (default: none)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.steps < 1:
        parser.error("--repeats and --steps must be >= 1")
    laplace_torch = import_laplace_torch()
    if laplace_torch is None:
        print(INSTALL_HINT)
        return 0
    threads = set_threads(args.threads)
    train, _, test = _splits(args.seed)
    config = TrainConfig(arch="mlp", epochs=args.epochs, lr=1e-3, batch_size=64, weight_decay=1e-3,
                         seed=args.seed, model_kwargs={"hidden": list(args.hidden)})
    model, _ = load_or_train(config, train, 10, args.cache)
    rows = {}
    for name in args.structures:
        ours, theirs = LibraryRun(), LibraryRun()
        for _ in range(args.repeats):
            run_ours(model, name, train, test, args.steps, ours)
            run_laplace_torch(laplace_torch, model, name, train, test, args.steps, theirs)
        check = agreement(ours, theirs, test.labels, args.tol)
        rows[name] = (ours, theirs, check)
        print(f"{name}: ours " + " ".join(f"{k}={v:.3f}s" for k, v in ours.seconds.items())
              + " | laplace-torch " + " ".join(f"{k}={v:.3f}s" for k, v in theirs.seconds.items())
              + f" | log evidence {ours.log_evidence:.3f} / {theirs.log_evidence:.3f}"
              + ("" if check["agree"] else "  DISAGREE"), flush=True)
    print(f"\nbayes_dip.laplace vs laplace-torch {_version('laplace-torch')}, digits MLP "
          f"{tuple(args.hidden)}, {len(train)} train / {len(test)} test, {args.steps} marglik steps, best of "
          f"{args.repeats}, torch {torch.__version__}, {threads} thread(s):\n")
    print(table(rows))
    disagree = [name for name, (_, _, check) in rows.items() if not check["agree"]]
    if disagree:
        print(f"\nthe libraries disagree (beyond --tol {args.tol}) on: {', '.join(disagree)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
