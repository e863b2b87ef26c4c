"""TV-PredCP hyperprior on the GP lengthscales (DESIGN.md §1.5).

For GP block ``d``, ``κ_d = E[TV(x)]`` for images ``x = J_d θ_d``, ``θ_d ~ N(0, Σ_d)`` (only
block ``d`` random; TV anisotropic as :func:`~bayes_dip.dip.tv_loss`). An exponential prior
with rate ``λ`` on ``κ_d``, changed to the variable ``ℓ_d``, gives

    ``−log p(ℓ_d) = λ κ_d(σ_d, ℓ_d) − log |∂κ_d/∂ℓ_d| + const``,

summed over the GP blocks and added to the negative log evidence ("TV-MAP").

The rate (:func:`predcp_rate`, rule ``"residual"``, the default) is the rate of the TV prior
in the DIP's own objective: ``‖A x − y‖² / m + γ TV(x)``, times ``m / (2σ̂²)``, is the negative
log posterior of Gaussian noise of variance ``σ̂²`` and the prior ``∝ exp(−λ TV(x))`` with

    ``λ = scale · γ · m / (2σ̂²)``,   ``σ̂² = ‖y − A x̂‖² / m`` (the DIP's mean squared residual).

It does not change with the units of the scan: ``γ`` and ``σ̂²`` both scale with the square of
the sinogram's unit (line integrals over a pixel size in mm or in pixels, intensities in any
unit). The paper's rate (rule ``"paper"``), ``λ = scale · γ · m``, scales with it: in
geometries with unit pixels the line integrals grow with the image width, the noise variance
and ``γ`` with them, and the paper's rate grows about as the width squared at a fixed scan,
so the same head slice got intervals that held 94 % of its pixels at 128² and 83 % at its
native 256². ``σ̂²`` is the residual the DIP left, not the noise estimate: on simulated scans
they agree (0.88–1.07×), while on a measured scan the fit can stop far above the noise
(HTC2022: 13×), and a rate read from the noise alone would treat the misfit as signal.

* :class:`ExactTVPredCP` (small images, with a :class:`StructuredCovariance`): every image
  difference ``(∇x)_e`` is Gaussian, so ``E|(∇x)_e| = √(2/π) √Var((∇x)_e)`` and
  ``κ_d = √(2/π) Σ_e √(σ_d² Σ_c κ_c(ℓ_d) q_{d,c,e})`` with precomputed ``q = diag(∇ M ∇ᵀ)``:
  exact, deterministic, cheap, differentiable to any order.
* :class:`FixedSampleTVPredCP` (large images, with the ``"lowrank"`` evidence): the sample
  average of ``TV(J_d θ_{d,s}(h))`` over base draws ``ε_s`` drawn once. In the joint block
  basis ``U`` of the 3×3 distance classes, ``θ = σ_d U blockdiag(L_g(ℓ_d)) ε`` with the small
  Cholesky factors ``L_g`` of ``UᵀK(ℓ)U``, so each image is a fixed combination of 14
  precomputed images ``J_d (U_i ⊗ ε_j)`` per sample: ``14 · S`` JVPs per block once, then every
  call is a few TVs and deterministic (exact gradients of the sample-average objective). The
  TV of a large Gaussian image concentrates, so a couple of samples suffice at 128².
* :class:`SampledTVPredCP` (large images): ``κ̂_d`` from reparameterised samples
  ``θ_{d,s} = L_d(h) ε_s``; the TV subgradient ``g_s`` is pushed through ``Jᵀ`` so that
  ``κ̂_d(h) = mean_s ⟨J_dᵀ g_s, θ_{d,s}(h)⟩`` (TV is positively homogeneous) — an unbiased
  estimate of ``κ_d`` whose gradient is unbiased for ``∇κ_d``. ``∂κ̂_d/∂ℓ_d`` is unbiased
  too; the gradient of ``log|∂κ̂_d/∂ℓ_d|`` holds the sign pattern of ``∇x`` fixed and so
  omits the (a.e. invisible) contribution of sign changes: it is a biased estimate.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from bayes_dip.checks import check_choice, check_int, check_number
from bayes_dip.dip import tv_loss

from .covariance import StructuredCovariance, joint_block_basis
from .jacobian import NetworkJacobian
from .priors import WeightPrior, distance_classes, kernel_lengthscale_derivative

__all__ = ["PREDCP_RATES", "predcp_rate", "ExactTVPredCP", "FixedSampleTVPredCP",
           "SampledTVPredCP"]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


#: rules of the PredCP rate (module docs): the DIP objective's TV-prior rate, or the paper's
PREDCP_RATES = ("residual", "paper")


def predcp_rate(scale: float, gamma: float, residual: Tensor, rule: str = "residual") -> float:
    """``λ = scale · γ · m / (2σ̂²)`` with ``σ̂² = mean(residual²)`` (``"residual"``) or the
    paper's ``λ = scale · γ · m`` (``"paper"``); ``residual (m,)`` is ``y − A x̂``."""
    scale, gamma = check_number(scale, "scale", gt=0), check_number(gamma, "gamma", gt=0)
    check_choice(rule, "rule", PREDCP_RATES)
    if not isinstance(residual, Tensor) or residual.numel() == 0:
        raise ValueError("residual must be a non-empty tensor y − A x̂")
    num_obs = residual.numel()
    if rule == "paper":
        return scale * gamma * num_obs
    mean_square = float(residual.detach().double().square().mean())
    if not mean_square > 0:
        raise ValueError("the residual y − A x̂ is zero; the 'residual' PredCP rate needs a "
                         "DIP that did not fit the data exactly (use rule='paper')")
    return scale * gamma * num_obs / (2.0 * mean_square)


class ExactTVPredCP:
    """Exact ``Σ_d −log p(ℓ_d)`` from the Gaussian edge variances of a StructuredCovariance."""

    def __init__(self, structured: StructuredCovariance, prior: WeightPrior, rate: float):
        if not isinstance(structured, StructuredCovariance):
            raise TypeError("structured must be a StructuredCovariance, got "
                            f"{type(structured).__name__}")
        self.rate = check_number(rate, "rate", gt=0)
        q = structured.edge_variance_terms()
        gp = prior.layout.gp_indices
        self._q = [q[[t for t, (d, _) in enumerate(structured.terms) if d == block]]
                   for block in gp]
        self._radii = [getattr(prior, f"_radii_{prior.layout.blocks[d].kernel_size}") for d in gp]

    def kappa(self, prior: WeightPrior) -> tuple[Tensor, Tensor]:
        """``κ_d`` and ``∂κ_d/∂ℓ_d`` per GP block, ``(n_gp,)`` each (differentiable)."""
        kappas, dkappas = [], []
        for g, (q, radii) in enumerate(zip(self._q, self._radii)):
            var, ell = prior.variances[prior.layout.gp_indices[g]], prior.lengthscales[g]
            weights = prior.class_weights(g)  # κ_c(ℓ) (with the kernel jitter at r = 0)
            dweights = kernel_lengthscale_derivative(radii, ell)  # ∂κ_c/∂ℓ
            edge_var = (weights @ q).clamp_min(torch.finfo(q.dtype).tiny)
            std = edge_var.sqrt()
            kappas.append(_SQRT_2_OVER_PI * var.sqrt() * std.sum())
            dkappas.append(_SQRT_2_OVER_PI * var.sqrt() * ((dweights @ q) / (2 * std)).sum())
        return torch.stack(kappas), torch.stack(dkappas)

    def __call__(self, prior: WeightPrior) -> Tensor:
        """``Σ_d [λ κ_d − log|∂κ_d/∂ℓ_d|]`` (scalar, differentiable in the hyperparameters)."""
        kappa, dkappa = self.kappa(prior)
        return (self.rate * kappa - dkappa.abs().log()).sum()


class SampledTVPredCP:
    """Monte-Carlo ``Σ_d −log p(ℓ_d)`` with fresh reparameterised samples at every call.

    Args:
        jac: the Jacobian (samples are ``J θ``, TV subgradients go back through ``Jᵀ``).
        rate: ``λ``.
        num_samples: samples per GP block and call (the paper: 20 on large images).
        generator: randomness of the samples.

    Each call costs one JVP and one VJP per sample and GP block (batched).
    """

    def __init__(self, jac: NetworkJacobian, rate: float, num_samples: int = 20,
                 generator: torch.Generator | None = None):
        if not isinstance(jac, NetworkJacobian):
            raise TypeError(f"jac must be a NetworkJacobian, got {type(jac).__name__}")
        check_int(num_samples, "num_samples", 1)
        self.jac, self.rate, self.num_samples = jac, check_number(rate, "rate", gt=0), num_samples
        self.generator = generator

    def surrogates(self, prior: WeightPrior) -> Tensor:
        """``κ̂_d(h)`` per GP block ``(n_gp,)``: mean TV of the samples; unbiased gradient."""
        layout, s = prior.layout, self.num_samples
        gp = layout.gp_indices
        factors = prior.block_factors("sqrt")
        thetas, eps_all = [], []
        for d in gp:
            block = layout.blocks[d]
            eps = torch.randn(block.num_filters, block.filter_numel, s, generator=self.generator,
                              dtype=factors[d].dtype, device=factors[d].device)
            theta = torch.einsum("pq,fqk->fpk", factors[d], eps).reshape(block.size, s)
            if prior.weight_scale is not None:
                theta = theta * prior.weight_scale[block.start:block.stop, None]
            thetas.append(theta)
            eps_all.append(eps)
        tangents = torch.zeros(layout.num_params, len(gp) * s, dtype=self.jac.dtype,
                               device=self.jac.device)
        for i, (d, theta) in enumerate(zip(gp, thetas)):
            block = layout.blocks[d]
            tangents[block.start:block.stop, i * s:(i + 1) * s] = theta.detach().to(self.jac.dtype)
        with torch.no_grad():
            images = self.jac.jvp(tangents)
        x = images.mT.reshape(-1, 1, *self.jac.im_shape).detach().requires_grad_(True)
        with torch.enable_grad():
            subgrad, = torch.autograd.grad(tv_loss(x).sum(), x)
        with torch.no_grad():
            back = self.jac.vjp(subgrad.reshape(x.shape[0], -1).mT)  # (P, n_gp · s)
        out = []
        for i, (d, theta) in enumerate(zip(gp, thetas)):
            block = layout.blocks[d]
            w = back[block.start:block.stop, i * s:(i + 1) * s].to(theta.dtype)
            out.append((w * theta).sum() / s)
        return torch.stack(out)

    def __call__(self, prior: WeightPrior) -> Tensor:
        """Estimate of ``Σ_d [λ κ_d − log|∂κ_d/∂ℓ_d|]`` whose autograd gradient is the estimator."""
        return _predcp_value(self.rate, self.surrogates(prior), prior)


def _predcp_value(rate: float, kappa: Tensor, prior: WeightPrior) -> Tensor:
    """``Σ_d [λ κ_d − log|∂κ_d/∂ℓ_d|]`` from ``κ_d(h)`` (autograd, second order kept)."""
    dkappa_dlog, = torch.autograd.grad(kappa.sum(), prior.log_lengthscale, create_graph=True)
    dkappa = dkappa_dlog / prior.lengthscales  # block d's κ depends on its own ℓ_d only
    return (rate * kappa - dkappa.abs().log()).sum()


class FixedSampleTVPredCP:
    """Sample-average ``Σ_d −log p(ℓ_d)`` over base draws fixed at construction (module docs).

    Args:
        jac: the Jacobian.
        prior: the weight prior (its layout fixes the blocks; hyperparameters are read at
            every call).
        rate: ``λ``.
        num_samples: base draws per GP block (``14 · num_samples`` JVPs per GP block once).
        generator: randomness of the base draws.
        batch_size: JVPs per batch while precomputing.
    """

    def __init__(self, jac: NetworkJacobian, prior: WeightPrior, rate: float,
                 num_samples: int = 2, generator: torch.Generator | None = None,
                 batch_size: int = 8):
        if not isinstance(jac, NetworkJacobian):
            raise TypeError(f"jac must be a NetworkJacobian, got {type(jac).__name__}")
        if not isinstance(prior, WeightPrior):
            raise TypeError(f"prior must be a WeightPrior, got {type(prior).__name__}")
        for name, value in (("num_samples", num_samples), ("batch_size", batch_size)):
            check_int(value, name, 1)
        self.rate, self.num_samples = check_number(rate, "rate", gt=0), num_samples
        self.im_shape = jac.im_shape
        layout, f64 = prior.layout, torch.float64
        # per GP block: the joint basis U and, per group, its indices and tril indices
        self._bases: list[tuple[Tensor, list[tuple[Tensor, Tensor]]]] = []
        self._images: list[Tensor] = []  # per GP block (n_pairs, S, n_pix), float64
        for d in layout.gp_indices:
            block = layout.blocks[d]
            _, mats = distance_classes(block.kernel_size, f64)
            basis, groups = joint_block_basis(mats)
            basis = basis.to(prior.log_variance.device)
            eps = torch.randn(num_samples, block.num_filters, block.filter_numel,
                              generator=generator, dtype=f64, device=basis.device)
            tangents = []
            for group in groups:
                for a, i in enumerate(group):
                    for j in group[:a + 1]:
                        # filter f: position weights U[:, i] · ε_{s, f, j}
                        theta = eps[:, :, j, None] * basis[:, i]  # (S, F, m)
                        tangents.append(theta.reshape(num_samples, block.size))
            t = torch.cat(tangents)  # (n_pairs · S, size)
            if prior.weight_scale is not None:
                t = t * prior.weight_scale[block.start:block.stop]
            full = torch.zeros(layout.num_params, t.shape[0], dtype=jac.dtype,
                               device=jac.device)
            full[block.start:block.stop] = t.mT.to(jac.dtype)
            with torch.no_grad():
                images = torch.cat([jac.jvp(full[:, k:k + batch_size])
                                    for k in range(0, full.shape[1], batch_size)], 1)
            self._images.append(images.mT.to(f64).reshape(-1, num_samples, images.shape[0]))
            dev = basis.device
            self._bases.append((basis, [(torch.tensor(g, device=dev),
                                         torch.tril_indices(len(g), len(g), device=dev))
                                        for g in groups]))

    def _coefficients(self, prior: WeightPrior, g: int) -> Tensor:
        """The lower-triangular entries of every ``L_g(ℓ)``, in the precomputed pair order."""
        basis, groups = self._bases[g]
        rotated = basis.mT @ prior.kernel(g) @ basis
        coef = []
        for idx, (rows, cols) in groups:
            coef.append(torch.linalg.cholesky(rotated[idx][:, idx])[rows, cols])
        return torch.cat(coef)

    def kappa(self, prior: WeightPrior) -> Tensor:
        """``κ̂_d(h)`` per GP block ``(n_gp,)``: mean TV of the fixed-draw images."""
        out = []
        for g, d in enumerate(prior.layout.gp_indices):
            coef = self._coefficients(prior, g).to(self._images[g].dtype)
            x = torch.einsum("p,psn->sn", coef, self._images[g])
            tv = tv_loss(x.reshape(self.num_samples, 1, *self.im_shape)).mean()
            out.append(prior.variances[d].sqrt() * tv)
        return torch.stack(out)

    def __call__(self, prior: WeightPrior) -> Tensor:
        """``Σ_d [λ κ̂_d − log|∂κ̂_d/∂ℓ_d|]`` (scalar, differentiable in the hyperparameters)."""
        return _predcp_value(self.rate, self.kappa(prior), prior)
