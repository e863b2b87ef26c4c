"""Evaluation metrics: image quality, test log-likelihood and calibration of pixelwise uncertainty.

Conventions: images ``(B, 1, H, W)`` or ``(H, W)`` (each function says which); a
predictive is ``mean`` + ``std`` (diagonal), a dense covariance, or patch covariances.
Torch or numpy in, plain floats or small numpy arrays (NamedTuples) out.
"""
from bayes_dip.metrics.calibration import (
    DEFAULT_LEVELS,
    CoverageCurve,
    QQData,
    SparsificationCurve,
    StdErrorCorrelation,
    VarianceCalibrationBins,
    ZScoreHistogram,
    ause,
    coverage_curve,
    coverage_ece,
    miscalibration_area,
    qq_data,
    sparsification_curve,
    std_error_correlation,
    uncertainty_calibration_error,
    variance_calibration_bins,
    z_score_histogram,
    z_scores,
)
from bayes_dip.metrics.image_quality import psnr, ssim
from bayes_dip.metrics.log_likelihood import (
    LogLikelihood,
    image_patches,
    log_likelihood_diagonal,
    log_likelihood_full,
    log_likelihood_patchwise,
    patch_covariances_from_samples,
)
from bayes_dip.metrics.prediction import (SAMPLES_PER_PIXEL_FOR_FULL, Prediction,
                                          PredictiveLogLikelihood)
from bayes_dip.metrics.summary import pixel_calibration

__all__ = [
    "psnr", "ssim",
    "LogLikelihood", "log_likelihood_diagonal", "log_likelihood_full", "log_likelihood_patchwise",
    "image_patches", "patch_covariances_from_samples",
    "DEFAULT_LEVELS", "CoverageCurve", "coverage_curve", "coverage_ece", "miscalibration_area",
    "VarianceCalibrationBins", "variance_calibration_bins", "uncertainty_calibration_error",
    "SparsificationCurve", "sparsification_curve", "ause",
    "StdErrorCorrelation", "std_error_correlation",
    "z_scores", "ZScoreHistogram", "z_score_histogram", "QQData", "qq_data",
    "pixel_calibration", "Prediction", "PredictiveLogLikelihood", "SAMPLES_PER_PIXEL_FOR_FULL",
]
