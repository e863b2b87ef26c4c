"""Generic Laplace / GGN core.

Textbook Laplace (:mod:`.explicit`, :mod:`.transforms`), predictive links (:mod:`.links`),
and neural-network Laplace: likelihoods × weight subsets × curvature structures composed
by :class:`Laplace`; online marginal-likelihood training (:func:`train_marglik`).
"""
from .curvature import GGNOperator, OutputCurvature
from .evidence import mackay_prior_precision
from .explicit import *  # noqa: F401,F403
from .explicit import __all__ as _explicit_all
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
    "train_marglik", "MarglikConfig", "MarglikResult",
    "probit_binary", "probit_multiclass", "laplace_bridge", "laplace_bridge_predictive", "mc_predictive",
    *_explicit_all, *_transforms_all,
]
