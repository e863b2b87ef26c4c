"""Linearised deep image prior: a GP over images with kernel ``J Σ_θ Jᵀ`` (DESIGN.md §1).

Linearised Laplace with a ray transform inside a Gaussian likelihood: the Laplace core
supplies the Jacobian products (:class:`~bayes_dip.laplace.ModelJacobian`), the likelihood
(:class:`~bayes_dip.laplace.LinearGaussianLikelihood`) and the function-space kernels
``J Σ_θ Jᵀ`` / ``K_yy`` (:mod:`bayes_dip.laplace.function_space`); this package adds what is
specific to the DIP:

* :mod:`.jacobian` — the U-Net's Jacobian w.r.t. the weights under the prior.
* :mod:`.priors` — block-diagonal GP/Normal weight prior (optional g-prior).
* :mod:`.covariance` — the exact structured ``K_yy`` of small images (Gram trick).
* :mod:`.subspace` — ``K_yy`` in a low-rank observation subspace (large images).
* :mod:`.model` — the linearised Gaussian model and its hyperparameters.
* :mod:`.evidence` — type-II ML (exact / low-rank / stochastic), checkpoint and resume.
* :mod:`.predcp` — TV-PredCP hyperprior (exact / fixed-sample / sampled).
* :mod:`.predictive` — posterior mean, exact full-covariance predictive, Matheron samples.
* :mod:`.heldout` — held-out predictive of the measurements (calibration check, recalibration).
* :mod:`.api` — :class:`LinearizedDIP`, :func:`estimate_uncertainty`.
"""
from .api import LinearizedDIP, UncertaintyResult, estimate_uncertainty
from .covariance import (ImageCovariance, StructuredCovariance, ray_likelihood,
                         joint_block_basis)
from .evidence import EvidenceConfig, EvidenceResult, negative_log_evidence, optimize_evidence
from .jacobian import NetworkJacobian, gprior_scale
from .model import LinearizedModel
from .modes import EVIDENCE_MODES, EvidenceMode, register_mode
from .predcp import (PREDCP_RATES, ExactTVPredCP, FixedSampleTVPredCP, SampledTVPredCP,
                     predcp_rate)
from .heldout import HeldOutPredictive, ObservationSpectrum, heldout_groups, heldout_predictive
from .predictive import (ExactPredictive, SampledPredictive, conditional_mean, exact_predictive,
                         sample_predictive, subspace_predictive)
from .subspace import SubspaceCovariance
from .priors import (KERNEL_JITTER, BlockLayout, WeightLayout, WeightPrior, distance_classes,
                     gprior_layout, kernel_lengthscale_derivative, kernel_values, weight_layout)

__all__ = [
    "LinearizedDIP", "UncertaintyResult", "estimate_uncertainty",
    "NetworkJacobian", "gprior_scale",
    "BlockLayout", "WeightLayout", "weight_layout", "gprior_layout", "distance_classes",
    "WeightPrior", "KERNEL_JITTER", "kernel_values", "kernel_lengthscale_derivative",
    "ImageCovariance", "StructuredCovariance", "ray_likelihood", "joint_block_basis",
    "SubspaceCovariance",
    "LinearizedModel", "EVIDENCE_MODES", "EvidenceMode", "register_mode",
    "EvidenceConfig", "EvidenceResult", "optimize_evidence", "negative_log_evidence",
    "ExactTVPredCP", "FixedSampleTVPredCP", "SampledTVPredCP", "PREDCP_RATES", "predcp_rate",
    "ExactPredictive", "SampledPredictive", "exact_predictive", "sample_predictive",
    "conditional_mean", "subspace_predictive",
    "ObservationSpectrum", "HeldOutPredictive", "heldout_groups", "heldout_predictive",
]
