"""Evidence modes of the linearised DIP, one object (and file) each.

A mode owns how ``K_yy`` is represented (its structure), how the evidence objective and its
gradient are computed, which TV-PredCP estimator goes with it, how the predictive is drawn,
its default number of steps and the command line's defaults. :data:`EVIDENCE_MODES` maps the
names that :class:`~bayes_dip.linearized.LinearizedDIP`, :class:`~bayes_dip.linearized.EvidenceConfig`,
the study configs and ``bayes-dip reconstruct --evidence`` accept to the objects; a new mode is
one new file with an :class:`EvidenceMode` subclass and a :func:`register_mode` call.

==============  ==================================================================
``exact``       all Gram matrices of ``K_yy``, Cholesky, full-covariance predictive
``lowrank``     the exact algebra in a rank-``r`` observation subspace (a bound)
``stochastic``  Hutchinson probes and preconditioned CG (the paper's large-image mode)
==============  ==================================================================
"""
from __future__ import annotations

from .base import EvidenceMode, Objective
from .exact import ExactMode
from .lowrank import LowRankMode
from .stochastic import StochasticMode

__all__ = ["EvidenceMode", "Objective", "EVIDENCE_MODES", "register_mode", "ExactMode",
           "LowRankMode", "StochasticMode"]

EVIDENCE_MODES: dict[str, EvidenceMode] = {}


def register_mode(mode: EvidenceMode) -> EvidenceMode:
    """Add ``mode`` to :data:`EVIDENCE_MODES` under ``mode.name`` (names must be new)."""
    if not isinstance(mode, EvidenceMode):
        raise TypeError(f"mode must be an EvidenceMode, got {type(mode).__name__}")
    if mode.name in EVIDENCE_MODES or mode.name == "auto":
        raise ValueError(f"mode.name {mode.name!r} is taken")
    EVIDENCE_MODES[mode.name] = mode
    return mode


for _mode in (ExactMode(), LowRankMode(), StochasticMode()):
    register_mode(_mode)
