"""Uncertainty baselines for the linearised DIP: DIP-MCDO and homoscedastic DIP predictives.

Every baseline returns the one predictive type, :class:`bayes_dip.metrics.Prediction`.

- :mod:`~bayes_dip.baselines.mcdo`: :func:`fit_mcdo` trains the U-Net with channel dropout
  (no TV) through :func:`bayes_dip.dip.reconstruct_dip`; :func:`mcdo_predictive` fits a
  Gaussian (mean, std, full or patch covariances) to streamed MC-dropout samples;
  :func:`sample_count_stability` measures how the test log-likelihood settles with the
  number of samples.
- :mod:`~bayes_dip.baselines.ensemble`: :func:`deep_ensemble`, ``K`` independently
  initialised DIPs with a Gaussian fitted to their reconstructions.
- :mod:`~bayes_dip.baselines.homoscedastic`: DIP (σ² = 1) and DIP (evidence σ²), the DIP
  reconstruction with ``N(x̂, σ_y² c_A I)``.
"""
from .ensemble import deep_ensemble
from .homoscedastic import (dip_evidence_predictive, dip_fixed_predictive, evidence_noise_variance,
                            homoscedastic_predictive)
from .mcdo import (DEFAULT_DROPOUT_P, DEFAULT_NUM_SAMPLES, SampleCountStability, fit_mcdo,
                   mcdo_predictive, sample_count_stability)

__all__ = [
    "DEFAULT_DROPOUT_P", "DEFAULT_NUM_SAMPLES", "fit_mcdo", "mcdo_predictive",
    "SampleCountStability", "sample_count_stability", "deep_ensemble",
    "homoscedastic_predictive",
    "evidence_noise_variance", "dip_fixed_predictive", "dip_evidence_predictive",
]
