"""Classification metrics of predictive class probabilities ``probs (N, C)`` against labels ``(N,)``.

- accuracy: fraction of ``argmax`` predictions equal to the label;
- NLL: mean ``−log p(y_n | x_n)``;
- Brier score: mean over examples of ``Σ_c (p_c − 1[y = c])²`` (in ``[0, 2]``);
- ECE (Guo et al. 2017): equal-width bins on the confidence ``max_c p_c``, bin ``b`` holds
  confidences in ``(b/B, (b+1)/B]``, ``ECE = Σ_b (n_b / N) |acc_b − conf_b|``;
- OOD AUROC: how well the max-probability score separates in- from out-of-distribution
  inputs (``sklearn.metrics.roc_auc_score`` with OOD as the positive class, score
  ``−max_c p_c``); 0.5 is chance, 1 perfect.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor

__all__ = ["ReliabilityBins", "accuracy", "nll", "brier", "ece", "reliability_bins", "ood_auroc",
           "classification_metrics"]

ECE_BINS = 15


class ReliabilityBins(NamedTuple):
    """Per-bin counts ``(B,)``, mean confidence and accuracy (NaN in empty bins), bin edges ``(B + 1,)``."""

    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    edges: np.ndarray


def _check(probs: Tensor, labels: Tensor | None = None) -> None:
    if not isinstance(probs, Tensor) or not probs.is_floating_point() or probs.dim() != 2:
        raise ValueError(f"probs must be a floating-point tensor of shape (N, C), got "
                         f"{getattr(probs, 'shape', type(probs).__name__)}")
    if probs.shape[0] == 0:
        raise ValueError("probs must hold at least one example")
    if labels is not None:
        if not isinstance(labels, Tensor) or labels.shape != probs.shape[:1] or labels.is_floating_point():
            raise ValueError(f"labels must be an integer tensor of shape ({probs.shape[0]},), got "
                             f"{getattr(labels, 'shape', type(labels).__name__)}")
        if int(labels.min()) < 0 or int(labels.max()) >= probs.shape[1]:
            raise ValueError(f"labels must lie in [0, {probs.shape[1] - 1}]")


def accuracy(probs: Tensor, labels: Tensor) -> float:
    """Fraction of examples whose most probable class is the label."""
    _check(probs, labels)
    return float((probs.argmax(1) == labels).double().mean())


def nll(probs: Tensor, labels: Tensor) -> float:
    """Mean negative log predictive probability of the label (probabilities floored at 1e-300)."""
    _check(probs, labels)
    p = probs.double().gather(1, labels.long().unsqueeze(1)).squeeze(1)
    return float(-p.clamp_min(1e-300).log().mean())


def brier(probs: Tensor, labels: Tensor) -> float:
    """Mean over examples of ``Σ_c (p_c − onehot_c)²``."""
    _check(probs, labels)
    onehot = torch.nn.functional.one_hot(labels.long(), probs.shape[1]).double()
    return float(((probs.double() - onehot) ** 2).sum(1).mean())


def reliability_bins(probs: Tensor, labels: Tensor, n_bins: int = ECE_BINS) -> ReliabilityBins:
    """Confidence histogram for reliability diagrams and the ECE (bins ``(lo, hi]``, the first also takes 0)."""
    _check(probs, labels)
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    conf, pred = probs.double().max(1)
    conf_np = conf.cpu().numpy()
    correct = (pred == labels).cpu().numpy().astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges, conf_np, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=conf_np, minlength=n_bins) / counts
        mean_acc = np.bincount(index, weights=correct, minlength=n_bins) / counts
    return ReliabilityBins(counts, mean_conf, mean_acc, edges)


def ece(probs: Tensor, labels: Tensor, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error with ``n_bins`` equal-width confidence bins (default 15)."""
    bins = reliability_bins(probs, labels, n_bins)
    full = bins.counts > 0
    weights = bins.counts[full] / bins.counts.sum()
    return float(np.sum(weights * np.abs(bins.accuracy[full] - bins.confidence[full])))


def ood_auroc(probs_in: Tensor, probs_out: Tensor) -> float:
    """AUROC of detecting OOD inputs by low max-probability (``probs_*`` are ``(N, C)``)."""
    _check(probs_in)
    _check(probs_out)
    if probs_in.shape[1] != probs_out.shape[1]:
        raise ValueError(f"probs_in and probs_out must have the same classes, got {probs_in.shape[1]} "
                         f"and {probs_out.shape[1]}")
    score = -torch.cat([probs_in.double().max(1).values, probs_out.double().max(1).values]).cpu().numpy()
    is_ood = np.concatenate([np.zeros(probs_in.shape[0]), np.ones(probs_out.shape[0])])
    return float(roc_auc_score(is_ood, score))


def classification_metrics(probs: Tensor, labels: Tensor) -> dict[str, float]:
    """``{"acc", "nll", "ece", "brier"}`` of one predictive."""
    return {"acc": accuracy(probs, labels), "nll": nll(probs, labels),
            "ece": ece(probs, labels), "brier": brier(probs, labels)}
