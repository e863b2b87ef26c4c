"""Likelihoods ``p(y | f)`` of a network output ``f`` and their output-space curvature.

A likelihood gives the per-example log-likelihood and the Hessian ``Λ(f)`` of the
negative log-likelihood with respect to the output ``f``. The generalised Gauss–Newton
matrix of a network ``f(x; θ)`` is then ``GGN = Σ_n J_nᵀ Λ_n J_n`` with ``J_n = ∂f(x_n)/∂θ``.

Gaussian likelihoods carry the noise standard deviation ``σ`` as a hyperparameter that the
caller passes in (a plain tensor of shape ``()``); their curvature is ``Λ = Λ₀ / σ²`` and
every method below returns the *unit-noise* quantity ``Λ₀`` together with
:meth:`Likelihood.curvature_scale` ``= 1/σ²`` (1 for classification), so that curvature
computed once serves every ``σ``.

Shapes: ``f`` is the model output ``(B, *out)``; "blocks" of vectors in output space are
``(k, B, *out)``; square-root factors ``L₀`` with ``Λ₀ = L₀ L₀ᵀ`` are ``(B, n_out, R)``.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable

import torch
from torch import Tensor

__all__ = [
    "Likelihood",
    "GaussianLikelihood",
    "CategoricalLikelihood",
    "BernoulliLikelihood",
    "LinearGaussianLikelihood",
    "make_likelihood",
]


class Likelihood(ABC):
    """Base class: ``log p(y | f)`` per example and the output-space Hessian of ``−log p``."""

    name: str = "likelihood"
    #: True for Gaussian likelihoods, which have the noise hyperparameter ``σ``.
    has_noise: bool = False

    @abstractmethod
    def log_prob(self, f: Tensor, y: Tensor, sigma_noise: Tensor | float = 1.0) -> Tensor:
        """Per-example log-likelihood ``log p(y_b | f_b)`` -> ``(B,)``."""

    @abstractmethod
    def hessian_factor(self, f: Tensor) -> Tensor:
        """Unit-noise factor ``L₀ (B or 1, n_out, R)`` with ``Λ₀(f_b) = L₀ L₀ᵀ``."""

    @abstractmethod
    def hessian_matmul(self, f: Tensor, v: Tensor) -> Tensor:
        """``Λ₀(f_b) v_b`` for a block ``v (k, B, *out)`` -> ``(k, B, *out)``."""

    @abstractmethod
    def factor_matmul(self, f: Tensor, e: Tensor) -> Tensor:
        """``L₀ e`` for ``e (k, B, R)`` -> ``(k, B, *out)`` (the factor of :meth:`hessian_factor`)."""

    @abstractmethod
    def factor_rank(self, f: Tensor) -> int:
        """Number of columns ``R`` of :meth:`hessian_factor`."""

    @abstractmethod
    def check_target(self, f: Tensor, y: Tensor) -> None:
        """Raise ValueError if targets ``y`` do not fit outputs ``f``."""

    def curvature_scale(self, sigma_noise: Tensor | float = 1.0) -> Tensor | float:
        """Factor ``s`` with ``Λ = s Λ₀``: ``1/σ²`` for Gaussians, 1 otherwise."""
        return 1.0

    def statistics(self, f: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Sufficient statistics of the data fit at ``f``, summed over the batch.

        :meth:`log_likelihood_from_statistics` turns their sum over the data set into
        ``log p(D | θ)`` as a differentiable function of ``σ``.
        """
        return {"log_lik": self.log_prob(f.detach(), y).sum()}

    def log_likelihood_from_statistics(self, stats: dict[str, Tensor],
                                       sigma_noise: Tensor | float = 1.0) -> Tensor:
        """``log p(D | θ)`` from the summed :meth:`statistics`."""
        return stats["log_lik"]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _check_sigma(sigma_noise: Tensor | float) -> None:
    if isinstance(sigma_noise, Tensor):
        if sigma_noise.numel() != 1:
            raise ValueError(f"sigma_noise must be a scalar (shape ()), got shape {tuple(sigma_noise.shape)}")
        if not bool(sigma_noise.detach() > 0):
            raise ValueError(f"sigma_noise must be > 0, got {float(sigma_noise)}")
    elif not sigma_noise > 0:
        raise ValueError(f"sigma_noise must be > 0, got {sigma_noise}")


class _GaussianBase(Likelihood):
    """Shared Gaussian pieces: ``log p = −½ r²/σ² − ½ n log(2πσ²)`` for residual ``r``."""

    has_noise = True

    @abstractmethod
    def residual(self, f: Tensor, y: Tensor) -> Tensor:
        """``y − (model of f)`` per example -> ``(B, n_obs)``."""

    def log_prob(self, f: Tensor, y: Tensor, sigma_noise: Tensor | float = 1.0) -> Tensor:
        _check_sigma(sigma_noise)
        r = self.residual(f, y)
        var = torch.as_tensor(sigma_noise, dtype=r.dtype, device=r.device) ** 2
        return -0.5 * (r**2).sum(1) / var - 0.5 * r.shape[1] * torch.log(2 * math.pi * var)

    def curvature_scale(self, sigma_noise: Tensor | float = 1.0) -> Tensor | float:
        _check_sigma(sigma_noise)
        return 1.0 / sigma_noise**2

    def statistics(self, f: Tensor, y: Tensor) -> dict[str, Tensor]:
        r = self.residual(f.detach(), y)
        return {"sse": (r**2).sum(), "n": torch.tensor(float(r.numel()), dtype=r.dtype, device=r.device)}

    def log_likelihood_from_statistics(self, stats: dict[str, Tensor],
                                       sigma_noise: Tensor | float = 1.0) -> Tensor:
        _check_sigma(sigma_noise)
        var = torch.as_tensor(sigma_noise, dtype=stats["sse"].dtype, device=stats["sse"].device) ** 2
        return -0.5 * stats["sse"] / var - 0.5 * stats["n"] * torch.log(2 * math.pi * var)


class GaussianLikelihood(_GaussianBase):
    """Regression ``y = f(x) + ε``, ``ε ~ N(0, σ² I)``; outputs and targets of any shape ``(B, *out)``."""

    name = "regression"

    def check_target(self, f: Tensor, y: Tensor) -> None:
        if y.shape != f.shape:
            raise ValueError(f"regression targets y must have the model output's shape {tuple(f.shape)}, "
                             f"got {tuple(y.shape)}")

    def residual(self, f: Tensor, y: Tensor) -> Tensor:
        return (y - f).reshape(f.shape[0], -1)

    def hessian_factor(self, f: Tensor) -> Tensor:
        n_out = f[0].numel()
        return torch.eye(n_out, dtype=f.dtype, device=f.device).unsqueeze(0)

    def hessian_matmul(self, f: Tensor, v: Tensor) -> Tensor:
        return v

    def factor_matmul(self, f: Tensor, e: Tensor) -> Tensor:
        return e.reshape(e.shape[0], *f.shape)

    def factor_rank(self, f: Tensor) -> int:
        return f[0].numel()


class CategoricalLikelihood(Likelihood):
    """Multiclass classification: logits ``f (B, C)``, integer labels ``y (B,)``, softmax.

    ``Λ(f) = diag(p) − p pᵀ`` with ``p = softmax(f)``; factor ``L = diag(√p) − p √pᵀ``.
    """

    name = "classification"

    def check_target(self, f: Tensor, y: Tensor) -> None:
        if f.dim() != 2:
            raise ValueError(f"classification needs logits of shape (B, C), got {tuple(f.shape)}")
        if y.shape != f.shape[:1] or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"classification targets y must be integer labels of shape ({f.shape[0]},), "
                             f"got {y.dtype} {tuple(y.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= f.shape[1]):
            raise ValueError(f"classification labels must lie in [0, {f.shape[1] - 1}]")

    def log_prob(self, f: Tensor, y: Tensor, sigma_noise: Tensor | float = 1.0) -> Tensor:
        return torch.log_softmax(f, dim=1).gather(1, y.long().unsqueeze(1)).squeeze(1)

    def hessian_factor(self, f: Tensor) -> Tensor:
        p = torch.softmax(f, dim=1)
        sqrt_p = p.sqrt()
        return torch.diag_embed(sqrt_p) - p.unsqueeze(2) * sqrt_p.unsqueeze(1)

    def hessian_matmul(self, f: Tensor, v: Tensor) -> Tensor:
        p = torch.softmax(f, dim=1)
        return p * v - p * (p * v).sum(-1, keepdim=True)

    def factor_matmul(self, f: Tensor, e: Tensor) -> Tensor:
        p = torch.softmax(f, dim=1)
        sqrt_p = p.sqrt()
        return sqrt_p * e - p * (sqrt_p * e).sum(-1, keepdim=True)

    def factor_rank(self, f: Tensor) -> int:
        return f.shape[1]


class BernoulliLikelihood(Likelihood):
    """Binary classification: one logit per example ``f (B,)`` or ``(B, 1)``, targets in {0, 1}.

    ``Λ(f) = p (1 − p)`` with ``p = σ(f)``.
    """

    name = "binary"

    def check_target(self, f: Tensor, y: Tensor) -> None:
        if not (f.dim() == 1 or (f.dim() == 2 and f.shape[1] == 1)):
            raise ValueError(f"binary classification needs logits of shape (B,) or (B, 1), got {tuple(f.shape)}")
        if y.shape != f.shape:
            raise ValueError(f"binary targets y must have the logits' shape {tuple(f.shape)}, got {tuple(y.shape)}")
        if y.numel() and not bool(((y == 0) | (y == 1)).all()):
            raise ValueError("binary targets y must be 0 or 1")

    def log_prob(self, f: Tensor, y: Tensor, sigma_noise: Tensor | float = 1.0) -> Tensor:
        ll = -torch.nn.functional.binary_cross_entropy_with_logits(f, y.to(f.dtype), reduction="none")
        return ll.reshape(f.shape[0])

    def _curv(self, f: Tensor) -> Tensor:
        p = torch.sigmoid(f)
        return p * (1 - p)

    def hessian_factor(self, f: Tensor) -> Tensor:
        return self._curv(f).sqrt().reshape(f.shape[0], 1, 1)

    def hessian_matmul(self, f: Tensor, v: Tensor) -> Tensor:
        return self._curv(f) * v

    def factor_matmul(self, f: Tensor, e: Tensor) -> Tensor:
        return self._curv(f).sqrt() * e.reshape(e.shape[0], *f.shape)

    def factor_rank(self, f: Tensor) -> int:
        return 1


class LinearGaussianLikelihood(_GaussianBase):
    """Gaussian likelihood behind a linear operator: ``y = A f(x) + ε``, ``ε ~ N(0, σ² I)``.

    ``A`` maps outputs ``(B, *out)`` to observations ``(B, *obs)`` and ``A_adjoint`` back
    (e.g. a CT ray transform and its adjoint on ``(B, 1, H, W)`` images). The output-space
    Hessian ``Λ₀ = Aᵀ A`` is applied matrix-free; its factor is ``L₀ = Aᵀ`` (``R = n_obs``
    columns), which :meth:`hessian_factor` materialises only for dense curvature.

    With ``out_shape`` (one output's shape, e.g. ``(1, H, W)``) and ``obs_shape`` the operator
    also acts on column blocks, as the function-space view
    (:mod:`~bayes_dip.laplace.function_space`) needs: :meth:`matmul` ``A V`` for
    ``V (n_out, k)`` and :meth:`rmatmul` ``Aᵀ U`` for ``U (n_obs, k)``.

    Args:
        A: callable ``(B, *out) -> (B, *obs)``, linear.
        A_adjoint: callable ``(B, *obs) -> (B, *out)``, its adjoint.
        batch_size: how many vectors go through ``A``/``A_adjoint`` at once.
        out_shape, obs_shape: shapes of one output and one observation (column products).
    """

    name = "linear_gaussian"

    def __init__(self, A: Callable[[Tensor], Tensor], A_adjoint: Callable[[Tensor], Tensor],
                 batch_size: int = 256, *, out_shape: tuple[int, ...] | None = None,
                 obs_shape: tuple[int, ...] | None = None):
        if not callable(A) or not callable(A_adjoint):
            raise TypeError("A and A_adjoint must be callables mapping (B, *out) <-> (B, *obs)")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if (out_shape is None) != (obs_shape is None):
            raise ValueError("give both out_shape and obs_shape, or neither")
        self.A = A
        self.A_adjoint = A_adjoint
        self.batch_size = batch_size
        self.out_shape = None if out_shape is None else tuple(out_shape)
        self.obs_shape = None if obs_shape is None else tuple(obs_shape)
        self._factor_cache: tuple[tuple, Tensor] | None = None

    @property
    def num_outputs(self) -> int:
        """``n_out`` of one model output (needs ``out_shape``)."""
        return math.prod(self._shapes()[0])

    @property
    def num_observations(self) -> int:
        """``n_obs`` of one observation (needs ``obs_shape``)."""
        return math.prod(self._shapes()[1])

    def _shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        if self.out_shape is None:
            raise ValueError("column products need the likelihood's out_shape and obs_shape")
        return self.out_shape, self.obs_shape

    def matmul(self, v: Tensor) -> Tensor:
        """``A V`` on column blocks: ``(n_out, k) -> (n_obs, k)`` (row-major outputs)."""
        out_shape, _ = self._shapes()
        return self.A(v.mT.reshape(-1, *out_shape)).reshape(v.shape[1], -1).mT

    def rmatmul(self, u: Tensor) -> Tensor:
        """``Aᵀ U`` on column blocks: ``(n_obs, k) -> (n_out, k)``."""
        _, obs_shape = self._shapes()
        return self.A_adjoint(u.mT.reshape(-1, *obs_shape)).reshape(u.shape[1], -1).mT

    def __repr__(self) -> str:
        return f"LinearGaussianLikelihood(A={self.A!r})"

    def _obs_shape(self, f: Tensor) -> torch.Size:
        with torch.no_grad():
            return self.A(f[:1].detach()).shape[1:]

    def check_target(self, f: Tensor, y: Tensor) -> None:
        obs = self._obs_shape(f)
        if y.shape != (f.shape[0], *obs):
            raise ValueError(f"targets y must have the shape of A(f), {(f.shape[0], *obs)}, got {tuple(y.shape)}")

    def residual(self, f: Tensor, y: Tensor) -> Tensor:
        return (y - self.A(f)).reshape(f.shape[0], -1)

    def _chunked(self, op: Callable[[Tensor], Tensor], v: Tensor) -> Tensor:
        return torch.cat([op(chunk) for chunk in v.split(self.batch_size)], 0)

    def hessian_matmul(self, f: Tensor, v: Tensor) -> Tensor:
        flat = v.reshape(-1, *f.shape[1:])
        out = self._chunked(lambda c: self.A_adjoint(self.A(c)), flat)
        return out.reshape(v.shape)

    def factor_matmul(self, f: Tensor, e: Tensor) -> Tensor:
        obs = self._obs_shape(f)
        flat = e.reshape(-1, *obs)
        return self._chunked(self.A_adjoint, flat).reshape(e.shape[0], *f.shape)

    def factor_rank(self, f: Tensor) -> int:
        return self._obs_shape(f).numel()

    def hessian_factor(self, f: Tensor) -> Tensor:
        key = (tuple(f.shape[1:]), f.dtype, f.device)
        if self._factor_cache is None or self._factor_cache[0] != key:
            obs = self._obs_shape(f)
            n_obs = obs.numel()
            basis = torch.eye(n_obs, dtype=f.dtype, device=f.device).reshape(n_obs, *obs)
            with torch.no_grad():
                cols = self._chunked(self.A_adjoint, basis)  # (n_obs, *out): rows of A
            self._factor_cache = (key, cols.reshape(n_obs, -1).T.unsqueeze(0))
        return self._factor_cache[1]


_NAMES = {"regression": GaussianLikelihood, "classification": CategoricalLikelihood,
          "binary": BernoulliLikelihood}


def make_likelihood(spec: str | Likelihood) -> Likelihood:
    """A :class:`Likelihood` from ``"regression" | "classification" | "binary"`` or an instance."""
    if isinstance(spec, Likelihood):
        return spec
    if isinstance(spec, str) and spec in _NAMES:
        return _NAMES[spec]()
    raise ValueError(f"likelihood must be one of {sorted(_NAMES)} or a Likelihood instance "
                     f"(e.g. LinearGaussianLikelihood(A, A_adjoint)), got {spec!r}")
