"""The function-space (GP) view of linearised Laplace for a Gaussian likelihood behind a
linear operator.

Linearising a network at ``θ̂``, ``f(θ) ≈ f(θ̂) + J (θ − θ̂)``, and giving its weights a
Gaussian prior ``θ ~ N(μ, Σ_θ)`` makes the outputs a Gaussian process with kernel
``K_ff = J Σ_θ Jᵀ``. With ``y = A f + ε``, ``ε ~ N(0, σ² I)``
(:class:`~bayes_dip.laplace.likelihoods.LinearGaussianLikelihood`), the observations have

    K_yy = A J Σ_θ Jᵀ Aᵀ + σ² I,

the evidence is ``log N(r; 0, K_yy)`` with ``r = y − A (f(θ̂) + J (μ − θ̂))``, and the outputs'
posterior has mean ``f(θ̂) + J (μ − θ̂) + K_ff Aᵀ K_yy⁻¹ r`` and covariance
``K_ff − K_ff Aᵀ K_yy⁻¹ A K_ff``. That is the weight-space :class:`~bayes_dip.laplace.Laplace`
with the full GGN at the linearised model's mode (its evidence ``at="linearized"``), computed
in the ``n_obs``-dimensional observation space instead of the ``P``-dimensional weight space —
the cheaper one when ``P ≫ n_obs``, as for the linearised DIP. A ``K_yy`` product is one
``Aᵀ``, one VJP, one ``Σ_θ`` product, one JVP and one ``A``: nothing is stored.

* :class:`WeightCovariance`: what a Gaussian weight prior provides (``Σ_θ`` products, a
  square root for samples, ``log|Σ_θ|`` and ``θᵀ Σ_θ⁻¹ θ`` for the evidence), so structured
  priors (e.g. the linearised DIP's GP priors over convolution kernels) plug in;
  :class:`DiagonalCovariance` is the core's ``diag(1/δ)``.
* :class:`OutputKernel` ``K_ff``, :class:`ObservationKernel` ``K_yy`` (matrix-free, on
  column blocks), :func:`gaussian_log_evidence` (dense, by Cholesky).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from bayes_dip.checks import check_int
from bayes_dip.linalg import NystromPreconditioner

from .functional import ModelJacobian, columns
from .likelihoods import LinearGaussianLikelihood

__all__ = ["WeightCovariance", "DiagonalCovariance", "OutputKernel", "ObservationKernel",
           "gaussian_log_evidence"]


class WeightCovariance(ABC):
    """A Gaussian weight prior's covariance ``Σ_θ (P × P)``; products on column blocks
    ``V (P, k)`` in ``V``'s dtype, differentiable in the prior's hyperparameters."""

    @abstractmethod
    def matmul(self, v: Tensor) -> Tensor:
        """``Σ_θ V``."""

    @abstractmethod
    def sqrt_matmul(self, v: Tensor) -> Tensor:
        """``L V`` for a square root ``Σ_θ = L Lᵀ``."""

    @abstractmethod
    def logdet(self) -> Tensor:
        """``log |Σ_θ|``."""

    @abstractmethod
    def quadratic(self, theta: Tensor) -> Tensor:
        """``θᵀ Σ_θ⁻¹ θ`` for ``θ (P,)``."""

    def sample(self, num: int, generator: torch.Generator | None = None,
               dtype: torch.dtype | None = None) -> Tensor:
        """``(P, num)`` reparameterised draws ``L ε`` from ``N(0, Σ_θ)``."""
        check_int(num, "num", 1)
        eps = torch.randn(self.num_params, num, generator=generator, dtype=dtype or self.dtype,
                          device=self.device)
        return self.sqrt_matmul(eps)

    @property
    @abstractmethod
    def num_params(self) -> int:
        """``P``."""

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype:
        """dtype of the hyperparameters (and of :meth:`logdet`, :meth:`quadratic`)."""

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """device of the hyperparameters."""


class DiagonalCovariance(WeightCovariance):
    """``Σ_θ = diag(1/δ)`` from per-weight precisions ``δ (P,)`` (e.g.
    :func:`~bayes_dip.laplace.priors.expand_prior_precision` of a scalar or per-group ``δ``)."""

    def __init__(self, precision: Tensor):
        if not isinstance(precision, Tensor) or precision.dim() != 1:
            raise ValueError("precision must be a tensor of shape (P,)")
        if not bool((precision > 0).all()):
            raise ValueError("precision must be > 0")
        self.precision = precision

    @property
    def num_params(self) -> int:
        return self.precision.numel()

    @property
    def dtype(self) -> torch.dtype:
        return self.precision.dtype

    @property
    def device(self) -> torch.device:
        return self.precision.device

    def matmul(self, v: Tensor) -> Tensor:
        return v / self.precision.to(v.dtype).unsqueeze(1)

    def sqrt_matmul(self, v: Tensor) -> Tensor:
        return v * self.precision.to(v.dtype).rsqrt().unsqueeze(1)

    def logdet(self) -> Tensor:
        return -self.precision.log().sum()

    def quadratic(self, theta: Tensor) -> Tensor:
        return (self.precision * theta.to(self.precision.dtype).square()).sum()


class OutputKernel:
    """``K_ff = J Σ_θ Jᵀ`` (``n_out × n_out``), matrix-free; products in the Jacobian's dtype."""

    def __init__(self, jac: ModelJacobian, prior: WeightCovariance):
        if not isinstance(jac, ModelJacobian):
            raise TypeError(f"jac must be a ModelJacobian, got {type(jac).__name__}")
        if not isinstance(prior, WeightCovariance):
            raise TypeError(f"prior must be a WeightCovariance, got {type(prior).__name__}")
        if prior.num_params != jac.num_params:
            raise ValueError(f"prior covers {prior.num_params} weights, jac {jac.num_params}")
        self.jac, self.prior = jac, prior
        self.shape = (jac.num_outputs, jac.num_outputs)
        self.dtype, self.device = jac.dtype, jac.device

    def matmul(self, v: Tensor) -> Tensor:
        """``J Σ_θ Jᵀ V`` for ``V (n_out, k)`` or ``(n_out,)``."""
        v, vector = columns(v, self.shape[0], "v")
        out = self.jac.jvp(self.prior.matmul(self.jac.vjp(v.to(self.dtype))))
        return out.squeeze(1) if vector else out

    __call__ = matmul

    def sample(self, num: int, generator: torch.Generator | None = None) -> Tensor:
        """``(n_out, num)`` zero-mean draws ``J L ε`` from ``N(0, J Σ_θ Jᵀ)``."""
        with torch.no_grad():
            return self.jac.jvp(self.prior.sample(num, generator, dtype=self.dtype))


class ObservationKernel:
    """``K_yy = A J Σ_θ Jᵀ Aᵀ + σ² I`` (``n_obs × n_obs``), matrix-free.

    ``log_noise_variance`` is a scalar tensor read at every product (e.g. a parameter being
    optimised); ``likelihood.out_shape`` must be the shape of one model output.
    """

    def __init__(self, kernel: OutputKernel, likelihood: LinearGaussianLikelihood,
                 log_noise_variance: Tensor):
        if not isinstance(kernel, OutputKernel):
            raise TypeError(f"kernel must be an OutputKernel, got {type(kernel).__name__}")
        if not isinstance(likelihood, LinearGaussianLikelihood):
            raise TypeError("likelihood must be a LinearGaussianLikelihood, got "
                            f"{type(likelihood).__name__}")
        if likelihood.num_outputs != kernel.shape[0]:
            raise ValueError(f"likelihood.out_shape {likelihood.out_shape} does not match the "
                             f"{kernel.shape[0]} model outputs")
        if not isinstance(log_noise_variance, Tensor) or log_noise_variance.numel() != 1:
            raise ValueError("log_noise_variance must be a scalar tensor")
        self.kernel, self.likelihood = kernel, likelihood
        self.log_noise_variance = log_noise_variance
        n = likelihood.num_observations
        self.shape = (n, n)
        self.dtype, self.device = kernel.dtype, kernel.device

    @property
    def noise_variance(self) -> Tensor:
        return self.log_noise_variance.exp()

    def cross_matmul(self, u: Tensor) -> Tensor:
        """``K_ff Aᵀ U`` ``(n_out, k)`` for ``U (n_obs, k)``: e.g. ``U = K_yy⁻¹ r`` gives the
        posterior mean's correction."""
        return self.kernel.matmul(self.likelihood.rmatmul(u.to(self.dtype)))

    def matmul_noiseless(self, v: Tensor) -> Tensor:
        """``A J Σ_θ Jᵀ Aᵀ V``."""
        v, vector = columns(v, self.shape[0], "v")
        out = self.likelihood.matmul(self.cross_matmul(v))
        return out.squeeze(1) if vector else out

    def matmul(self, v: Tensor) -> Tensor:
        """``K_yy V`` for ``V (n_obs, k)`` or ``(n_obs,)``."""
        v2, vector = columns(v, self.shape[0], "v")
        out = self.matmul_noiseless(v2) + self.noise_variance.to(self.dtype) * v2.to(self.dtype)
        return out.squeeze(1) if vector else out

    __call__ = matmul

    def bilinear(self, a: Tensor, b: Tensor) -> Tensor:
        """``Σ_i a_iᵀ K_yy b_i`` for columns ``a, b (n_obs, k)``, differentiable in the prior's
        hyperparameters and the noise variance (two VJPs; ``J`` itself needs no autograd): the
        hyperparameter gradients of stochastic evidence estimators, ``aᵀ (∂K_yy) b``."""
        jac, prior = self.kernel.jac, self.kernel.prior
        ja = jac.vjp(self.likelihood.rmatmul(a.to(self.dtype)))
        jb = jac.vjp(self.likelihood.rmatmul(b.to(self.dtype)))
        dtype = prior.dtype
        quad = (ja.to(dtype) * prior.matmul(jb.to(dtype))).sum()
        return quad + self.noise_variance * (a.to(dtype) * b.to(dtype)).sum()

    def to_dense(self, batch_size: int = 64) -> Tensor:
        """Brute-force ``K_yy (n_obs, n_obs)`` from ``n_obs`` products (small problems)."""
        eye = torch.eye(self.shape[0], dtype=self.dtype, device=self.device)
        return torch.cat([self.matmul(eye[:, i:i + batch_size])
                          for i in range(0, self.shape[0], batch_size)], 1)

    def preconditioner(self, rank: int, generator: torch.Generator | None = None,
                       oversample: int = 10) -> NystromPreconditioner:
        """Randomized Nyström ``P = U Λ Uᵀ + σ² I ≈ K_yy`` (``rank + oversample`` products)."""
        with torch.no_grad():
            return NystromPreconditioner(self.matmul_noiseless, self.shape[0], rank,
                                         shift=float(self.noise_variance.detach()),
                                         generator=generator, oversample=oversample,
                                         dtype=self.dtype, device=self.device)


def gaussian_log_evidence(covariance: Tensor, residual: Tensor) -> Tensor:
    """``log N(r; 0, K) = −½ log|K| − ½ rᵀ K⁻¹ r − (n/2) log 2π`` for a dense ``K (n, n)``
    and ``r (n,)`` (Cholesky; differentiable)."""
    if covariance.dim() != 2 or covariance.shape[0] != covariance.shape[1]:
        raise ValueError(f"covariance must be square, got {tuple(covariance.shape)}")
    r = residual.reshape(-1, 1).to(covariance.dtype)
    if r.shape[0] != covariance.shape[0]:
        raise ValueError(f"residual must have {covariance.shape[0]} entries, got {r.shape[0]}")
    chol = torch.linalg.cholesky(covariance)
    alpha = torch.cholesky_solve(r, chol)
    return (-chol.diagonal().log().sum() - 0.5 * (r * alpha).sum()
            - 0.5 * r.shape[0] * math.log(2 * math.pi))
