"""Generic Laplace / GGN core.

Textbook Laplace (:mod:`.explicit`, :mod:`.transforms`), predictive links (:mod:`.links`),
and neural-network Laplace: likelihoods × weight subsets × curvature structures composed
by :class:`Laplace`; online marginal-likelihood training (:func:`train_marglik`); and the
function-space (GP) view of linearised Laplace behind a linear operator
(:mod:`.function_space`: ``K_yy = A J Σ_θ Jᵀ Aᵀ + σ² I``), on which the linearised DIP is built.

Choosing the prior precision: ``Laplace.optimize_prior_precision()`` defaults to ``"auto"``:
the Laplace evidence sets ``δ`` (one value per parameter tensor when ``prior_precision`` has
shape ``(G,)``, Antorán et al. 2022's recommendation 2), and with ``val_data=(X, y)`` a common
multiplier ``c ∈ 10^[0, 6]`` of that ``δ`` is chosen by validation NLL. On the held-out digits
protocol (``experiments/classification_posthoc_digits.py``) the evidence alone (at ``θ̂`` or
at the linearised mode ``θ*``, ``at="linearized"``, recommendation 1) made a calibrated MAP
MLP worse in NLL and ECE for every structure; with validation data the default returns the
MAP's NLL and ECE (the multiplier goes to the top of the grid: the GGN posterior's spread
only cost in-distribution NLL there), so pass ``val_data`` whenever in-distribution
calibration matters, and leave it out when the evidence's wider, OOD-sensitive posterior is wanted.
"""
from .curvature import GGNOperator, OutputCurvature
from .evidence import mackay_prior_precision
from .explicit import *  # noqa: F401,F403
from .explicit import __all__ as _explicit_all
from .function_space import (DiagonalCovariance, ObservationKernel, OutputKernel, WeightCovariance,
                             gaussian_log_evidence)
from .functional import ModelFunction, ModelJacobian
from .laplace import Laplace
from .likelihoods import (BernoulliLikelihood, CategoricalLikelihood, GaussianLikelihood, Likelihood,
                          LinearGaussianLikelihood, make_likelihood)
from .marglik_training import MarglikConfig, MarglikResult, train_marglik
from .links import (laplace_bridge, laplace_bridge_predictive, mc_predictive, probit_binary,
                    probit_multiclass)
from .posterior import KFAC, Diag, Full, LowRank, MatrixFree, Structure, make_structure
from .subsets import WeightSubset, all_weights, from_names, largest_variance, last_layer
from .transforms import *  # noqa: F401,F403
from .transforms import __all__ as _transforms_all

__all__ = [
    "Laplace",
    "Likelihood", "GaussianLikelihood", "CategoricalLikelihood", "BernoulliLikelihood",
    "LinearGaussianLikelihood", "make_likelihood",
    "Structure", "Full", "Diag", "KFAC", "LowRank", "MatrixFree", "make_structure",
    "WeightSubset", "all_weights", "last_layer", "from_names", "largest_variance",
    "OutputCurvature", "GGNOperator", "mackay_prior_precision",
    "ModelFunction", "ModelJacobian", "WeightCovariance", "DiagonalCovariance", "OutputKernel",
    "ObservationKernel", "gaussian_log_evidence",
    "train_marglik", "MarglikConfig", "MarglikResult",
    "probit_binary", "probit_multiclass", "laplace_bridge", "laplace_bridge_predictive", "mc_predictive",
    *_explicit_all, *_transforms_all,
]
