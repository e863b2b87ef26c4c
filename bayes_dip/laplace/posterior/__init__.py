"""Posterior-precision structures ``K = s GGN₀ + diag(δ)``: full, diag, KFAC, low-rank, matrix-free."""
from __future__ import annotations

from .base import Structure
from .dense import Diag, Full
from .kron import KFAC
from .lowrank import LowRank
from .matrix_free import MatrixFree

__all__ = ["Structure", "Full", "Diag", "KFAC", "LowRank", "MatrixFree", "make_structure"]

_NAMES = {"full": Full, "diag": Diag, "kfac": KFAC, "lowrank": LowRank, "matrix_free": MatrixFree}


def make_structure(spec: str | Structure) -> Structure:
    """A fresh :class:`Structure` from its name (default options) or a configured instance."""
    if isinstance(spec, Structure):
        return spec
    if isinstance(spec, str) and spec in _NAMES:
        return _NAMES[spec]()
    raise ValueError(f"structure must be one of {sorted(_NAMES)} or a Structure instance "
                     f"(e.g. LowRank(rank=50), MatrixFree(precond_rank=20)), got {spec!r}")
