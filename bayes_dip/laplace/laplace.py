"""``Laplace``: one object from a trained network to posterior, evidence and predictions.

It composes three independent choices instead of one class per combination:

- *likelihood* (:mod:`.likelihoods`): regression, classification, binary, or a Gaussian
  behind a linear operator (CT);
- *subset* (:mod:`.subsets`): all weights, the last layer, named parameters/modules, or
  single entries (subnetwork);
- *structure* (:mod:`.posterior`): full, diag, KFAC, low-rank or matrix-free curvature.

Hyperparameters are plain tensors: ``prior_precision`` of shape ``()``, ``(G,)`` (one per
parameter tensor of the subset) or ``(P,)``; ``sigma_noise`` of shape ``()`` (Gaussian
likelihoods only). The posterior is ``N(θ̂, (s · GGN + diag(δ))⁻¹)`` with ``s = 1/σ²`` for
Gaussian likelihoods and ``s = 1`` otherwise.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.adam import adam
from tqdm.auto import tqdm

from ..checks import check_choice, check_int
from .curvature.output import OutputCurvature
from .batches import Batches
from .evidence import linearized_sse, linearized_step, log_marginal_likelihood, mackay_prior_precision
from .functional import ModelFunction
from .likelihoods import BernoulliLikelihood, Likelihood, make_likelihood
from .linearized_mode import find_linearized_mode
from .posterior import MatrixFree, Structure, make_structure
from .posterior.base import as_number
from .predictive import LINKS, classification_probabilities, glm_moments, sampled_outputs
from .priors import check_prior_mean, check_prior_precision, expand_prior_precision, prior_precision_kind
from .subsets import WeightSubset, resolve_subset

__all__ = ["Laplace"]

_POINTS = ("map", "linearized")


class Laplace:
    """Laplace approximation of a network's weight posterior with a linearised (GGN) curvature.

    Args:
        model: trained network at ``θ̂`` (put in eval mode by :meth:`fit`).
        likelihood: ``"regression" | "classification" | "binary"`` or a :class:`Likelihood`
            such as ``LinearGaussianLikelihood(A, A_adjoint)``.
        subset: ``"all" | "last_layer"``, a list of parameter or module names, or a
            :class:`WeightSubset` (e.g. from :func:`~.subsets.largest_variance`).
        structure: ``"full" | "diag" | "kfac" | "lowrank" | "matrix_free"`` or a configured
            :class:`Structure` (``LowRank(rank=50)``, ``MatrixFree(precond_rank=20)``, ...).
        prior_precision: ``δ``: number or tensor of shape ``()``, ``(G,)`` or ``(P,)``.
        prior_mean: ``μ₀``: number or tensor ``()`` / ``(P,)``.
        sigma_noise: ``σ`` (Gaussian likelihoods), number or tensor ``()``.
        curvature: ``"ggn"`` (generalised Gauss–Newton) or ``"ef"`` (empirical Fisher).
    """

    def __init__(self, model: nn.Module, likelihood: str | Likelihood, *, subset: Any = "all",
                 structure: str | Structure = "full", prior_precision: float | Tensor = 1.0,
                 prior_mean: float | Tensor = 0.0, sigma_noise: float | Tensor = 1.0,
                 curvature: str = "ggn"):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        params = list(model.parameters())
        if not params:
            raise ValueError("model has no parameters")
        self.model = model
        self.likelihood = make_likelihood(likelihood)
        self.curvature = OutputCurvature(self.likelihood, curvature)
        self.structure = make_structure(structure)
        self._subset_spec = subset
        self._dtype, self._device = params[0].dtype, params[0].device
        if not self.likelihood.has_noise and not (isinstance(sigma_noise, (int, float)) and sigma_noise == 1.0):
            raise ValueError(f"sigma_noise applies to Gaussian likelihoods only, not {self.likelihood!r}")
        self._sigma_noise = self._check_sigma(sigma_noise)
        # validated fully once the subset is known (in fit)
        self._prior_precision_init = prior_precision
        self._prior_mean_init = prior_mean
        check_prior_precision(prior_precision, None, None, self._dtype, self._device)
        self._fitted = False

    def __repr__(self) -> str:
        fitted = f"P={self.subset.n_params}" if self._fitted else "not fitted"
        return (f"Laplace({self.likelihood!r}, subset={self._subset_spec!r}, structure={self.structure!r}, "
                f"curvature={self.curvature.kind!r}, {fitted})")

    # ------------------------------------------------------------------ state
    def _check_sigma(self, value: float | Tensor) -> Tensor:
        if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
            raise TypeError(f"sigma_noise must be a number or a tensor of shape (), got {type(value).__name__}")
        sigma = torch.as_tensor(value, dtype=self._dtype, device=self._device)
        if sigma.dim() != 0:
            raise ValueError(f"sigma_noise must have shape (), got {tuple(sigma.shape)}")
        if not bool(torch.isfinite(sigma)) or not bool(sigma > 0):
            raise ValueError(f"sigma_noise must be finite and > 0, got {float(sigma)}")
        return sigma

    def _require_fit(self) -> None:
        if not self._fitted:
            raise RuntimeError("Laplace is not fitted: call fit(data) first")

    def _check_prec(self, value: float | Tensor) -> Tensor:
        n_groups, n_params = self.subset.n_groups, self.subset.n_params
        prec = check_prior_precision(value, n_groups, n_params, self._dtype, self._device)
        if (prior_precision_kind(prec, n_groups, n_params) == "parameter"
                and not self.structure.supports_parameter_prior):
            raise ValueError(f"structure={self.structure.name!r} needs a prior precision that is constant "
                             f"per parameter tensor: shape () or ({n_groups},), got ({n_params},)")
        return prec

    @property
    def n_params(self) -> int:
        """``P``, the number of weights under the posterior."""
        self._require_fit()
        return self.subset.n_params

    @property
    def prior_precision(self) -> Tensor:
        """Prior precision ``δ``: shape ``()``, ``(G,)`` or ``(P,)`` (settable before and after fit)."""
        if not self._fitted:
            return check_prior_precision(self._prior_precision_init, None, None, self._dtype, self._device)
        return self._prior_precision

    @prior_precision.setter
    def prior_precision(self, value: float | Tensor) -> None:
        if not self._fitted:
            check_prior_precision(value, None, None, self._dtype, self._device)
            self._prior_precision_init = value
            return
        self._prior_precision = self._check_prec(value).detach().clone()

    @property
    def prior_precision_diag(self) -> Tensor:
        """Per-weight prior precisions ``δ (P,)``."""
        self._require_fit()
        return self._delta()

    @property
    def sigma_noise(self) -> Tensor:
        """Observation noise std ``σ``, shape ``()`` (1 for classification)."""
        return self._sigma_noise

    @sigma_noise.setter
    def sigma_noise(self, value: float | Tensor) -> None:
        if not self.likelihood.has_noise:
            raise ValueError(f"sigma_noise applies to Gaussian likelihoods only, not {self.likelihood!r}")
        self._sigma_noise = self._check_sigma(value).detach().clone()

    @property
    def mean(self) -> Tensor:
        """Posterior mean ``θ̂ (P,)`` (the trained weights of the subset)."""
        self._require_fit()
        return self.theta_hat

    def _delta(self, prec: Tensor | None = None) -> Tensor:
        return expand_prior_precision(self._prior_precision if prec is None else prec, self.subset.sizes)

    def _scale(self, sigma: Tensor | None = None) -> Tensor | float:
        return self.curvature.scale(self._sigma_noise if sigma is None else sigma)

    # ------------------------------------------------------------------ fit
    def fit(self, data: Any, *, batch_size: int = 128, progress: bool = False) -> "Laplace":
        """Compute the curvature at the model's current weights ``θ̂``.

        Args:
            data: ``(X, y)`` tensors or a re-iterable of ``(x, y)`` batches (DataLoader).
                Matrix-free and low-rank structures keep a reference and pass over it again.
            batch_size: batch size for tensor data.
            progress: show tqdm bars.
        Returns:
            ``self``.
        """
        batches = Batches(data, batch_size, self._device)
        prior_init = self._prior_precision if self._fitted else self._prior_precision_init
        self._fitted = False
        self.model.eval()
        first = next(iter(batches), None)
        if first is None:
            raise ValueError("data is empty")
        self.subset: WeightSubset = resolve_subset(self.model, self._subset_spec, first[0])
        self._fn = ModelFunction(self.model, self.subset)
        self.theta_hat = self._fn.theta()
        self._prior_precision = self._check_prec(prior_init).detach().clone()
        self.prior_mean = check_prior_mean(self._prior_mean_init, self.subset.n_params, self._dtype, self._device)
        self._statistics(batches, progress)
        self.structure.fit(self._fn, self.curvature, batches, self.theta_hat, progress=progress)
        self._batches: Batches | None = batches
        self._mode_cache: tuple[Tensor, Tensor, Tensor] | None = None
        self._fitted = True
        return self

    def _statistics(self, batches: Batches, progress: bool) -> None:
        """Data-fit statistics at ``θ̂``, the number of examples and (Gaussian) ``g₀ = ∇_θ log p(D|θ̂)``."""
        lik = self.likelihood
        stats: dict[str, Tensor] = {}
        grad0 = torch.zeros_like(self.theta_hat) if lik.has_noise else None
        n_data = 0
        for i, (x, y) in enumerate(tqdm(batches, total=batches.num_batches(), disable=not progress,
                                        desc="statistics")):
            inputs = self._fn.prepare(x)
            theta = self.theta_hat.clone().requires_grad_(grad0 is not None)
            with torch.set_grad_enabled(grad0 is not None):
                f = self._fn(theta, inputs)
                if i == 0:
                    lik.check_target(f, y)
                if grad0 is not None:
                    (g,) = torch.autograd.grad(lik.log_prob(f, y, 1.0).sum(), theta)
                    grad0 += g
            for key, value in lik.statistics(f.detach(), y).items():
                stats[key] = stats[key] + value.to(torch.float64) if key in stats else value.to(torch.float64)
            n_data += x.shape[0]
        self._stats, self._grad0, self.n_data = stats, grad0, n_data

    # ------------------------------------------------------------------ posterior
    @property
    def posterior_variance(self) -> Tensor:
        """Marginal posterior variances ``diag Σ`` ``(P,)``."""
        self._require_fit()
        return self.structure.variance(self._scale(), self._delta())

    def posterior_covariance_matmul(self, v: Tensor) -> Tensor:
        """``Σ v`` for ``v (P, k)``."""
        self._require_fit()
        return self.structure.covariance_matmul(v, self._scale(), self._delta())

    def posterior_precision_matmul(self, v: Tensor) -> Tensor:
        """``K v = (s GGN + diag δ) v`` for ``v (P, k)``."""
        self._require_fit()
        return self.structure.precision_matmul(v, self._scale(), self._delta())

    @property
    def posterior_covariance(self) -> Tensor:
        """Dense ``Σ (P, P)`` (for small ``P``)."""
        eye = torch.eye(self.n_params, dtype=torch.float64, device=self._device)
        return self.posterior_covariance_matmul(eye)

    def log_det_posterior_precision(self) -> Tensor:
        """``log|K|`` (float64)."""
        self._require_fit()
        return self.structure.logdet(self._scale(), self._delta())

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` weight samples ``θ̂ + ε``, ``ε ~ N(0, Σ)`` -> ``(n, P)``."""
        self._require_fit()
        check_int(n, "n", 1)
        eps = self.structure.sample(n, self._scale(), self._delta(), generator)
        return self.theta_hat + eps.to(self._dtype)

    # ------------------------------------------------------------------ evidence
    def _hyper(self, prior_precision: Tensor | float | None, sigma_noise: Tensor | float | None
               ) -> tuple[Tensor, Tensor]:
        prec = self._prior_precision if prior_precision is None else self._check_prec(prior_precision)
        if sigma_noise is None:
            sigma = self._sigma_noise
        elif not self.likelihood.has_noise:
            raise ValueError(f"sigma_noise applies to Gaussian likelihoods only, not {self.likelihood!r}")
        else:
            sigma = self._check_sigma(sigma_noise)
        return prec, sigma

    def _check_point(self, at: str) -> None:
        check_choice(at, "at", _POINTS)
        if at == "linearized" and self.likelihood.has_noise and self.curvature.kind != "ggn":
            raise ValueError("at='linearized' with a Gaussian likelihood needs curvature='ggn': only there "
                             "is the linearised model's log-likelihood the GGN quadratic")
        if at == "linearized" and not self.likelihood.has_noise and self._batches is None:
            raise ValueError("at='linearized' needs the training data: pass data= to load_state_dict")

    def _mode_step(self, delta: Tensor) -> tuple[Tensor, Tensor]:
        """``Δ* = θ* − θ̂`` and ``log p(D | θ*)`` of the linearised model for a non-Gaussian likelihood,
        warm-started from the last ``δ`` (cached while ``δ`` is unchanged)."""
        d = delta.detach()
        if self._mode_cache is not None and torch.equal(self._mode_cache[0], d):
            return self._mode_cache[1], self._mode_cache[2]
        init = None if self._mode_cache is None else self._mode_cache[1]
        step, log_lik = find_linearized_mode(self._fn, self.likelihood, self._batches, self.theta_hat,
                                             self.prior_mean, self.structure, self._scale(), d, init=init)
        self._mode_cache = (d.clone(), step, log_lik)
        return step, log_lik

    def linearized_mode(self, prior_precision: Tensor | float | None = None,
                        sigma_noise: Tensor | float | None = None) -> Tensor:
        """Mode ``θ* (P,)`` of the linearised model's posterior under the prior ``prior_precision``.

        Gaussian likelihoods: closed form (one solve with ``K``). Others: preconditioned
        Newton-type ascent over the training data (:mod:`.linearized_mode`).
        """
        self._require_fit()
        self._check_point("linearized")
        prec, sigma = self._hyper(prior_precision, sigma_noise)
        if not self.likelihood.has_noise:
            return self.theta_hat + self._mode_step(self._delta(prec))[0]
        step = linearized_step(self.structure, self._grad0, self.theta_hat - self.prior_mean,
                               self._scale(sigma), self._delta(prec))
        return self.theta_hat + step

    def log_marginal_likelihood(self, prior_precision: Tensor | float | None = None,
                                sigma_noise: Tensor | float | None = None, *, at: str = "map") -> Tensor:
        """Laplace log evidence ``log p(D)``, differentiable in ``prior_precision`` and ``sigma_noise``.

        Args:
            prior_precision: ``δ`` to evaluate at (shape ``()``, ``(G,)`` or ``(P,)``); default current.
            sigma_noise: ``σ`` (shape ``()``) for Gaussian likelihoods; default current.
            at: ``"map"``: at ``θ̂``; ``"linearized"``: at the mode ``θ*`` of the linearised
                model (Antorán et al. 2022, recommendation 1). Gaussian likelihoods: closed form,
                the exact evidence of the linearised model; others: ``θ*`` by Newton steps over the
                training data (warm-started from the last ``δ``) and ``log p(D | θ*)`` of the
                linearised model, with the curvature kept at ``θ̂``.
        Returns:
            float64 scalar.
        """
        self._require_fit()
        self._check_point(at)
        prec, sigma = self._hyper(prior_precision, sigma_noise)
        delta, scale = self._delta(prec), self._scale(sigma)
        dev = self.theta_hat - self.prior_mean
        stats = self._stats
        if at == "linearized" and not self.likelihood.has_noise:
            step, log_lik = self._mode_step(delta)
            return log_marginal_likelihood(log_lik, dev + step, delta, self.structure.logdet(scale, delta))
        if at == "linearized":
            step = linearized_step(self.structure, self._grad0, dev, scale, delta)
            stats = dict(stats, sse=linearized_sse(self.structure, stats["sse"], self._grad0, step))
            dev = dev + step
        log_lik = self.likelihood.log_likelihood_from_statistics(stats, sigma)
        return log_marginal_likelihood(log_lik, dev, delta, self.structure.logdet(scale, delta))

    def optimize_prior_precision(self, method: str = "auto", *, at: str = "map",
                                 optimize_noise: bool | None = None, n_steps: int = 100, lr: float = 0.1,
                                 max_iter: int = 100, tol: float = 1e-6, grid: Tensor | None = None,
                                 val_data: Any = None, link: str = "probit",
                                 progress: bool = False) -> Tensor:
        """Fit ``prior_precision`` (and ``sigma_noise`` for Gaussian likelihoods) by type-II ML.

        The default (``"auto"``) is the recipe measured best on the held-out digits protocol
        (``experiments/classification_posthoc_digits.py``): the evidence fixes the shape of
        ``δ`` (its value per group when ``prior_precision`` has shape ``(G,)``), and with
        ``val_data`` a common multiplier ``c ∈ 10^[0, 6]`` of that ``δ`` is chosen by validation
        NLL, so the predictive is never worse than the evidence's in validation NLL and
        approaches the MAP network's as ``c`` grows.

        Args:
            method: ``"auto"``: ``"marglik"``, then (with ``val_data``) the multiplier of ``δ`` by
                validation NLL over 25 log-spaced values of ``c``;
                ``"marglik"``: Adam on ``log δ`` (and ``log σ``) maximising
                :meth:`log_marginal_likelihood` for ``n_steps`` steps at rate ``lr`` (for ``δ`` alone
                at ``θ̂`` with a structure that has a :meth:`~.Structure.spectrum`, i.e. full with a
                scalar ``δ``, diag, KFAC, low-rank with a scalar ``δ``: the same steps in closed form,
                ``O(P)`` each, without autograd);
                ``"mackay"``: fixed-point updates (at most ``max_iter``, stop when the relative
                change is below ``tol``); ``"grid"``: scalar ``δ`` from ``grid`` (default
                ``10^[-4, 4]``, 41 points) by evidence, or by validation NLL when ``val_data``
                (``(X, y)`` tensors) is given (predictions with ``link``); the grid leaves ``σ`` as is.
            at: evidence at ``"map"`` (``θ̂``) or ``"linearized"`` (``θ*``), see
                :meth:`log_marginal_likelihood`.
            optimize_noise: also fit ``σ`` (default: True for Gaussian likelihoods).
        Returns:
            Tensor: the criterion's history, the log evidence per step or the validation NLL
            per grid value (``"grid"`` with ``val_data``, ``"auto"`` with ``val_data``).
        """
        self._require_fit()
        self._check_point(at)
        if optimize_noise is None:
            optimize_noise = self.likelihood.has_noise
        if optimize_noise and not self.likelihood.has_noise:
            raise ValueError(f"optimize_noise needs a Gaussian likelihood, not {self.likelihood!r}")
        if val_data is not None and not (isinstance(val_data, tuple) and len(val_data) == 2):
            raise TypeError("val_data must be a tuple (X, y) of tensors")
        if method == "auto":
            history = self._optimize_marglik(at, optimize_noise, n_steps, lr, progress)
            return history if val_data is None else self._optimize_multiplier(val_data, link, progress)
        if method == "marglik":
            return self._optimize_marglik(at, optimize_noise, n_steps, lr, progress)
        if method == "mackay":
            return self._optimize_mackay(at, optimize_noise, max_iter, tol, progress)
        if method == "grid":
            return self._optimize_grid(at, grid, val_data, link, progress)
        raise ValueError(f"method must be 'auto', 'marglik', 'mackay' or 'grid', got {method!r}")

    def _optimize_marglik(self, at: str, optimize_noise: bool, n_steps: int, lr: float, progress: bool) -> Tensor:
        check_int(n_steps, "n_steps", 1)
        kind = prior_precision_kind(self._prior_precision, self.subset.n_groups, self.subset.n_params)
        spectrum = None if at != "map" or optimize_noise else self.structure.spectrum(kind)
        if spectrum is not None:
            return self._optimize_marglik_spectral(spectrum, kind, n_steps, lr, progress)
        log_prec = self._prior_precision.log().clone().requires_grad_(True)
        log_sigma = self._sigma_noise.log().clone().requires_grad_(True)
        params = [log_prec] + ([log_sigma] if optimize_noise else [])
        opt = torch.optim.Adam(params, lr=lr)
        history = []
        for _ in tqdm(range(n_steps), disable=not progress, desc="marglik"):
            opt.zero_grad()
            value = self.log_marginal_likelihood(log_prec.exp(), log_sigma.exp() if optimize_noise else None, at=at)
            (-value).backward()
            opt.step()
            history.append(value.detach())
        self.prior_precision = log_prec.detach().exp()
        if optimize_noise:
            self.sigma_noise = log_sigma.detach().exp()
        return torch.stack(history)

    def _optimize_marglik_spectral(self, lam: Tensor, kind: str, n_steps: int, lr: float, progress: bool) -> Tensor:
        """:meth:`_optimize_marglik` over ``δ`` alone at ``θ̂`` from the structure's spectrum
        (``log|K| = Σ_j log(s λ_j + δ_j)``): the evidence and its gradient in ``log δ`` are ``O(P)``
        closed forms, ``−∂ log p(D) / ∂ log δ_g = ½ δ_g (‖θ̂_g − μ_g‖² + Σ_{j∈g} 1/(s λ_j + δ_g)) − ½ P_g``,
        and the steps are torch's Adam (its functional form ``torch.optim.adam.adam``, without the
        optimiser object's per-step overhead; the autograd path's defaults) in float64."""
        f64 = dict(dtype=torch.float64, device=self._device)
        lam = as_number(self._scale()) * lam.to(self._device)
        dev2 = (self.theta_hat - self.prior_mean).detach().to(torch.float64) ** 2
        sizes = self.subset.sizes
        index = None
        if kind == "scalar":
            dev2, count = dev2.sum().reshape(1), torch.tensor([float(sum(sizes))], **f64)
        elif kind == "group":
            index = torch.repeat_interleave(torch.arange(len(sizes), device=self._device),
                                            torch.tensor(list(sizes), device=self._device))
            dev2, count = torch.zeros(len(sizes), **f64).index_add_(0, index, dev2), torch.tensor(sizes, **f64)
        else:
            count = torch.ones_like(dev2)
        shape = self._prior_precision.shape
        log_prec = self._prior_precision.detach().reshape(-1).to(torch.float64).log()
        moments = [torch.zeros_like(log_prec), torch.zeros_like(log_prec)]
        count_steps = torch.zeros((), **f64)
        logdet, quad, logdens = (torch.empty(n_steps, **f64) for _ in range(3))
        for i in tqdm(range(n_steps), disable=not progress, desc="marglik"):
            prec = log_prec.exp()
            k = lam + (prec if index is None else prec[index])
            torch.sum(k.log(), 0, out=logdet[i])
            torch.dot(prec, dev2, out=quad[i])
            torch.dot(count, log_prec, out=logdens[i])
            inv = k.reciprocal()
            if kind == "scalar":
                inv = inv.sum(0, keepdim=True)
            elif kind == "group":
                inv = torch.zeros_like(prec).index_add_(0, index, inv)
            grad = (dev2 + inv).mul_(prec).sub_(count).mul_(0.5)  # of −log p(D)
            adam([log_prec], [grad], moments[:1], moments[1:], [], [count_steps], foreach=False,
                 amsgrad=False, beta1=0.9, beta2=0.999, lr=lr, weight_decay=0.0, eps=1e-8,
                 maximize=False)
        self.prior_precision = log_prec.exp().reshape(shape).to(self._dtype)
        log_lik = self.likelihood.log_likelihood_from_statistics(self._stats, self._sigma_noise).detach()
        return log_lik.to(torch.float64) - 0.5 * quad + 0.5 * logdens - 0.5 * logdet

    def _optimize_mackay(self, at: str, optimize_noise: bool, max_iter: int, tol: float, progress: bool) -> Tensor:
        if self.curvature.kind != "ggn":
            raise ValueError("method='mackay' needs curvature='ggn'")
        history = []
        for _ in tqdm(range(max_iter), disable=not progress, desc="MacKay"):
            delta, scale = self._delta(), self._scale()
            dev = self.theta_hat - self.prior_mean
            sse = self._stats.get("sse")
            if at == "linearized" and not self.likelihood.has_noise:
                dev = dev + self._mode_step(delta)[0]
            elif at == "linearized":
                step = linearized_step(self.structure, self._grad0, dev, scale, delta)
                sse = linearized_sse(self.structure, sse, self._grad0, step)
                dev = dev + step
            gamma = 1 - delta.to(torch.float64) * self.structure.variance(scale, delta).to(torch.float64)
            new_prec = mackay_prior_precision(self._prior_precision, gamma, dev, self.subset.sizes)
            change = ((new_prec - self._prior_precision).abs() / self._prior_precision).max()
            self.prior_precision = new_prec
            if optimize_noise:
                new_sigma = torch.sqrt(sse / (self._stats["n"] - gamma.sum())).to(self._dtype)
                change = torch.maximum(change, (new_sigma - self._sigma_noise).abs() / self._sigma_noise)
                self.sigma_noise = new_sigma
            history.append(self.log_marginal_likelihood(at=at).detach())
            if float(change) < tol:
                break
        return torch.stack(history)

    def _optimize_grid(self, at: str, grid: Tensor | None, val_data: Any, link: str, progress: bool) -> Tensor:
        values = torch.logspace(-4, 4, 41, dtype=self._dtype) if grid is None else torch.as_tensor(grid)
        if values.dim() != 1 or values.numel() == 0 or not bool((values > 0).all()):
            raise ValueError("grid must be a non-empty 1-D tensor of positive prior precisions")
        scores = []
        for value in tqdm(values.tolist(), disable=not progress, desc="grid"):
            prec = torch.tensor(value, dtype=self._dtype, device=self._device)
            if val_data is None:
                scores.append(self.log_marginal_likelihood(prec, at=at).detach())
            else:
                old, self._prior_precision = self._prior_precision, prec
                try:
                    scores.append(-self._validation_nll(val_data, link))
                finally:
                    self._prior_precision = old
        scores_t = torch.stack(scores)
        self.prior_precision = values[int(scores_t.argmax())].to(self._dtype)
        return scores_t if val_data is None else -scores_t

    def _optimize_multiplier(self, val_data: tuple[Tensor, Tensor], link: str, progress: bool) -> Tensor:
        """Scale the current ``δ`` by the ``c ∈ 10^[0, 6]`` of least validation NLL; returns the NLLs."""
        base = self._prior_precision.clone()
        scores = []
        multipliers = torch.logspace(0, 6, 25, dtype=self._dtype, device=self._device)
        for c in tqdm(multipliers, disable=not progress, desc="validation"):
            self._prior_precision = c * base
            scores.append(self._validation_nll(val_data, link))
        nll = torch.stack(scores)
        self._prior_precision = multipliers[int(nll.argmin())] * base
        return nll

    def _validation_nll(self, val_data: tuple[Tensor, Tensor], link: str) -> Tensor:
        x, y = (t.to(self._device) for t in val_data)
        if self.likelihood.has_noise:
            mean, var = self.predict(x, diagonal=True, noise=True)
            var = var.reshape(mean.shape)
            nll = 0.5 * (torch.log(2 * math.pi * var) + (y - mean) ** 2 / var)
            return nll.reshape(x.shape[0], -1).sum(1).mean().to(torch.float64)
        probs = self.predict(x, link=link)
        if probs.dim() == 2 and probs.shape[1] > 1:
            p = probs.gather(1, y.long().unsqueeze(1)).squeeze(1)
        else:
            p = torch.where(y.reshape(probs.shape) > 0.5, probs, 1 - probs)
        return -p.clamp_min(torch.finfo(probs.dtype).tiny).log().mean().to(torch.float64)

    # ------------------------------------------------------------------ prediction
    def glm_predictive(self, x: Tensor, *, diagonal: bool = False) -> tuple[Tensor, Tensor]:
        """Linearised predictive of the model output: mean ``(B, *out)`` and covariance ``(B, n_out, n_out)``
        (variances ``(B, n_out)`` with ``diagonal``), without observation noise."""
        self._require_fit()
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a tensor, got {type(x).__name__}")
        inputs = self._fn.prepare(x.to(self._device))
        return glm_moments(self._fn, self.theta_hat, inputs, self.structure, self._scale(), self._delta(), diagonal)

    def predict(self, x: Tensor, *, pred_type: str = "glm", link: str = "probit", n_samples: int = 100,
                generator: torch.Generator | None = None, diagonal: bool = False,
                noise: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Posterior predictive at inputs ``x``.

        Args:
            x: inputs ``(B, ...)``.
            pred_type: ``"glm"`` (linearised model) or ``"nn"`` (network at ``n_samples`` weight samples).
            link: classification with ``"glm"``: ``"probit" | "bridge" | "mc"`` (``mc`` uses ``n_samples``).
            generator: randomness for ``"mc"`` and ``"nn"``.
            diagonal: regression: return variances ``(B, n_out)`` instead of covariances.
            noise: regression: add ``σ²`` (the observation noise) to the output covariance.
        Returns:
            classification: class probabilities ``(B, C)`` (binary: ``P(y=1)``, logits' shape);
            regression: ``(mean (B, *out), covariance (B, n_out, n_out) or variances (B, n_out))``.
        """
        self._require_fit()
        check_choice(pred_type, "pred_type", ("glm", "nn"))
        check_choice(link, "link", LINKS)
        check_int(n_samples, "n_samples", 1)
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a tensor, got {type(x).__name__}")
        if pred_type == "glm":
            mean, cov = self.glm_predictive(x, diagonal=diagonal and self.likelihood.has_noise)
            if not self.likelihood.has_noise:
                return classification_probabilities(self.likelihood, mean, cov, link, n_samples, generator)
        else:
            outputs = sampled_outputs(self._fn, self.sample(n_samples, generator),
                                      self._fn.prepare(x.to(self._device)))
            if not self.likelihood.has_noise:
                binary = isinstance(self.likelihood, BernoulliLikelihood)
                link_fn = torch.sigmoid if binary else (lambda f: torch.softmax(f, -1))
                return link_fn(outputs).mean(0)
            mean = outputs.mean(0)
            flat = (outputs - mean).reshape(n_samples, x.shape[0], -1)
            cov = ((flat**2).sum(0) if diagonal else torch.einsum("sbi,sbj->bij", flat, flat)) / max(n_samples - 1, 1)
        if noise:
            var = self._sigma_noise**2
            cov = cov + var if diagonal else cov + var * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        return mean, cov

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to restore the fitted posterior on the same model (tensors and plain values)."""
        self._require_fit()
        sub = self.subset
        return {
            "subset": {"names": list(sub.names), "shapes": [list(s) for s in sub.shapes],
                       "indices": list(sub.indices), "head": sub.head},
            "likelihood": self.likelihood.name, "curvature": self.curvature.kind,
            "structure": {"name": self.structure.name, **self.structure.state_dict()},
            "theta_hat": self.theta_hat, "prior_precision": self._prior_precision,
            "prior_mean": self.prior_mean, "sigma_noise": self._sigma_noise,
            "statistics": self._stats, "grad0": self._grad0, "n_data": self.n_data,
        }

    def load_state_dict(self, state: dict[str, Any], data: Any = None, *, batch_size: int = 128) -> "Laplace":
        """Restore :meth:`state_dict` into a ``Laplace`` built with the same model, likelihood and structure.

        ``data`` is needed (and only used) for the matrix-free structure, whose products pass
        over the data.
        """
        if state.get("likelihood") != self.likelihood.name or state.get("curvature") != self.curvature.kind:
            raise ValueError(f"state is for likelihood={state.get('likelihood')!r}, curvature={state.get('curvature')!r}; "
                             f"this Laplace has {self.likelihood.name!r}, {self.curvature.kind!r}")
        if state["structure"]["name"] != self.structure.name:
            raise ValueError(f"state is for structure={state['structure']['name']!r}, "
                             f"this Laplace has {self.structure.name!r}")
        s = state["subset"]
        subset = WeightSubset(tuple(s["names"]), tuple(torch.Size(x) for x in s["shapes"]),
                              tuple(s["indices"]), s["head"])
        subset.check_model(self.model)
        self.model.eval()
        self.subset, self._fn = subset, ModelFunction(self.model, subset)
        self.theta_hat = state["theta_hat"].to(self._device, self._dtype)
        self.prior_mean = state["prior_mean"].to(self._device, self._dtype)
        self._sigma_noise = self._check_sigma(state["sigma_noise"])
        self._stats = {k: v.to(self._device) for k, v in state["statistics"].items()}
        self._grad0 = None if state["grad0"] is None else state["grad0"].to(self._device, self._dtype)
        self.n_data = int(state["n_data"])
        self._batches = None if data is None else Batches(data, batch_size, self._device)
        self._mode_cache = None
        self.structure.load_state_dict({k: v for k, v in state["structure"].items() if k != "name"})
        if isinstance(self.structure, MatrixFree):
            if self._batches is None:
                raise ValueError("structure='matrix_free' needs the training data to load: pass data=")
            self.structure.bind(self._fn, self.curvature, self._batches, self.theta_hat)
        self._fitted = True
        self._prior_precision = self._check_prec(state["prior_precision"]).detach().clone()
        return self
