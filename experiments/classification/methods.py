"""Predictive methods compared by the benchmark: the MAP network and Laplace variants.

A :class:`MethodSpec` names the weights (``last_layer`` / ``all`` / ``subnetwork``), the
curvature structure, how the prior precision is set (``marglik`` / ``mackay`` / ``grid`` on
the Laplace evidence, or fixed) and the predictive link. :func:`fit_method` builds it on the
training data and times the curvature fit and the hyperparameter optimisation separately.

The subnetwork recipe (Daxberger et al. 2021): a diagonal Laplace over all weights (with its
own evidence-optimised prior precision) picks the ``subnetwork_size`` weights of largest
marginal variance; a full-covariance Laplace over those is then fitted. Its fit time
includes the diagonal fit, reused from the ``all``/``diag`` method when that ran before.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from bayes_dip.laplace import Laplace, largest_variance

from .datasets import Split

__all__ = ["MethodSpec", "FittedMethod", "fit_method", "predict_probs"]

_SUBSETS = ("map", "last_layer", "all", "subnetwork")
_HYPER = ("marglik", "mackay", "grid", "none")


@dataclass
class MethodSpec:
    """One row of the benchmark.

    Attributes:
        name: label in tables and figures.
        subset: ``"map"`` (no Laplace), ``"last_layer"``, ``"all"`` or ``"subnetwork"``.
        structure: ``"full" | "diag" | "kfac" | ...`` (see :class:`bayes_dip.laplace.Laplace`).
        hyper: prior-precision fit: ``"marglik"`` (Adam on the log evidence, ``n_steps`` at ``lr``),
            ``"mackay"``, ``"grid"`` or ``"none"`` (keep ``prior_precision``).
        prior: ``"scalar"`` (one δ) or ``"layerwise"`` (one δ per parameter tensor).
        prior_precision: initial δ.
        link: ``"probit" | "bridge" | "mc"``.
        subnetwork_size: number of weights of the subnetwork.
    """

    name: str
    subset: str = "last_layer"
    structure: str = "kfac"
    hyper: str = "marglik"
    prior: str = "scalar"
    prior_precision: float = 1.0
    link: str = "probit"
    n_steps: int = 100
    lr: float = 0.1
    subnetwork_size: int = 1000

    def __post_init__(self) -> None:
        if self.subset not in _SUBSETS:
            raise ValueError(f"method {self.name!r}: subset must be one of {_SUBSETS}, got {self.subset!r}")
        if self.hyper not in _HYPER:
            raise ValueError(f"method {self.name!r}: hyper must be one of {_HYPER}, got {self.hyper!r}")
        if self.prior not in ("scalar", "layerwise"):
            raise ValueError(f"method {self.name!r}: prior must be 'scalar' or 'layerwise', got {self.prior!r}")


@dataclass
class FittedMethod:
    """A fitted method: ``laplace`` is None for MAP; timings in seconds; ``info`` for the report."""

    spec: MethodSpec
    model: nn.Module
    laplace: Laplace | None
    fit_seconds: float = 0.0
    hyper_seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @torch.no_grad()
    def _map(self, x: Tensor) -> Tensor:
        return torch.softmax(self.model(x), dim=-1)

    def predict(self, x: Tensor) -> Tensor:
        """Predictive class probabilities ``(B, C)`` for images ``x (B, 1, H, W)``."""
        if self.laplace is None:
            return self._map(x)
        return self.laplace.predict(x, link=self.spec.link).detach()


def predict_probs(method: FittedMethod, images: Tensor, batch_size: int = 1000) -> tuple[Tensor, float]:
    """Probabilities ``(N, C)`` in chunks of ``batch_size`` and the wall time in seconds."""
    start = time.perf_counter()
    probs = torch.cat([method.predict(images[i:i + batch_size]) for i in range(0, images.shape[0], batch_size)])
    return probs, time.perf_counter() - start


def _initial_prior(spec: MethodSpec, la: Laplace) -> None:
    if spec.prior == "layerwise":
        la.prior_precision = torch.full((la.subset.n_groups,), float(spec.prior_precision),
                                        dtype=la.prior_precision.dtype)


def _optimize(spec: MethodSpec, la: Laplace) -> float:
    start = time.perf_counter()
    if spec.hyper == "marglik":
        la.optimize_prior_precision("marglik", n_steps=spec.n_steps, lr=spec.lr)
    elif spec.hyper in ("mackay", "grid"):
        la.optimize_prior_precision(spec.hyper)
    return time.perf_counter() - start


def _laplace(model: nn.Module, spec: MethodSpec, subset: Any, data: tuple[Tensor, Tensor],
             batch_size: int) -> tuple[Laplace, float, float]:
    start = time.perf_counter()
    la = Laplace(model, "classification", subset=subset, structure=spec.structure,
                 prior_precision=spec.prior_precision).fit(data, batch_size=batch_size)
    fit_seconds = time.perf_counter() - start
    _initial_prior(spec, la)
    return la, fit_seconds, _optimize(spec, la)


def fit_method(spec: MethodSpec, model: nn.Module, train: Split, *, batch_size: int = 256,
               shared: dict[str, Any] | None = None) -> FittedMethod:
    """Fit ``spec`` on ``train`` at the MAP weights of ``model``.

    ``shared`` (a dict kept across the methods of one model) passes the fitted all-weights
    diagonal Laplace to the subnetwork method.
    """
    shared = {} if shared is None else shared
    if spec.subset == "map":
        return FittedMethod(spec, model, None)
    data = (train.images, train.labels)
    if spec.subset == "subnetwork":
        if "diag" not in shared:
            diag_spec = MethodSpec("diag", subset="all", structure="diag", hyper=spec.hyper, prior=spec.prior,
                                   prior_precision=spec.prior_precision, n_steps=spec.n_steps, lr=spec.lr)
            la, fit_s, hyper_s = _laplace(model, diag_spec, "all", data, batch_size)
            shared["diag"] = (la, fit_s + hyper_s)
        diag, diag_seconds = shared["diag"]
        start = time.perf_counter()
        subset = largest_variance(diag, min(spec.subnetwork_size, diag.n_params))
        select_seconds = time.perf_counter() - start
        la, fit_s, hyper_s = _laplace(model, spec, subset, data, batch_size)
        fit_s += diag_seconds + select_seconds
    else:
        la, fit_s, hyper_s = _laplace(model, spec, spec.subset, data, batch_size)
        if spec.subset == "all" and spec.structure == "diag":
            shared["diag"] = (la, fit_s + hyper_s)
    prec = la.prior_precision
    info = {"n_params": la.n_params, "log_evidence": float(la.log_marginal_likelihood()),
            "prior_precision": float(prec) if prec.dim() == 0 else prec.tolist()}
    return FittedMethod(spec, model, la, fit_s, hyper_s, info)
