"""The linearised DIP as a Gaussian model: ``y = A (f(θ̂) + J (θ − θ̂)) + ε``, ``θ ~ N(0, Σ_θ)``."""
from __future__ import annotations

import math
from functools import cached_property

import torch
from torch import Tensor, nn

from bayes_dip.checks import check_number

from bayes_dip.laplace.function_space import ObservationKernel

from .covariance import ImageCovariance, ray_likelihood
from .jacobian import NetworkJacobian
from .priors import WeightPrior

__all__ = ["LinearizedModel"]


class LinearizedModel(nn.Module):
    """Hyperparameters (``prior`` and ``log_noise_variance``) with the fixed parts of the model.

    Args:
        jac: Jacobian at ``θ̂``; ``jac.output`` is the linearisation point ``x̂ = f(θ̂)``.
        prior: the weight prior (its parameters are optimised).
        ray_trafo: object with ``A``/``A_adjoint`` on ``(B, 1, H, W)`` / ``(B, 1, n_a, n_d)``.
        y: measurement ``(1, 1, n_a, n_d)``.
        noise_variance: initial ``σ_y²`` (the paper: 1).

    Attributes: ``y_flat (n_obs,)`` float64; ``likelihood`` (the core's
    ``LinearGaussianLikelihood`` behind ``A``); ``image_cov`` ``J Σ_θ Jᵀ`` and ``obs_cov``
    ``K_yy`` (the core's function-space kernels, matrix-free).
    """

    def __init__(self, jac: NetworkJacobian, prior: WeightPrior, ray_trafo, y: Tensor,
                 noise_variance: float = 1.0):
        super().__init__()
        if not isinstance(y, Tensor) or tuple(y.shape) != (1, 1, *ray_trafo.obs_shape):
            raise ValueError(f"y must have shape (1, 1, {ray_trafo.obs_shape[0]}, "
                             f"{ray_trafo.obs_shape[1]}), got {tuple(getattr(y, 'shape', ()))}")
        if not bool(torch.isfinite(y).all()):
            raise ValueError("y must be finite")
        check_number(noise_variance, "noise_variance", gt=0)
        if tuple(ray_trafo.im_shape) != jac.im_shape:
            raise ValueError(f"ray_trafo.im_shape {tuple(ray_trafo.im_shape)} does not match the "
                             f"network output {jac.im_shape}")
        self.jac, self.prior, self.ray_trafo = jac, prior, ray_trafo
        self.log_noise_variance = nn.Parameter(torch.tensor(
            math.log(noise_variance), dtype=prior.log_variance.dtype, device=jac.device))
        self.image_cov = ImageCovariance(jac, prior)
        self.likelihood = ray_likelihood(ray_trafo)
        self.obs_cov = ObservationKernel(self.image_cov, self.likelihood, self.log_noise_variance)
        self.y_flat = y.detach().reshape(-1).to(torch.float64)

    @property
    def noise_variance(self) -> Tensor:
        return self.log_noise_variance.exp()

    @property
    def num_obs(self) -> int:
        return self.y_flat.numel()

    @cached_property
    def theta_scatter(self) -> list[Tensor]:
        """:meth:`WeightPrior.scatter` of ``θ̂`` (for the weight-norm term)."""
        return self.prior.scatter(self.jac.theta)

    @cached_property
    def residual(self) -> Tensor:
        """``y − A x̂`` ``(n_obs,)`` float64."""
        with torch.no_grad():
            proj = self.likelihood.matmul(self.jac.output.reshape(-1, 1)).reshape(-1)
        return self.y_flat - proj.to(torch.float64)

    @cached_property
    def prior_mean_residual(self) -> Tensor:
        """``y − A (x̂ − J θ̂)``: data minus the prior mean of the linear model, ``(n_obs,)``."""
        with torch.no_grad():
            mean = self.jac.output.reshape(-1) - self.jac.jvp(self.jac.theta)
            proj = self.likelihood.matmul(mean.reshape(-1, 1)).reshape(-1)
        return self.y_flat - proj.to(torch.float64)
