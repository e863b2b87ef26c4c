"""Curvature of the negative log-likelihood: dense GGN rows, KFAC factors, matrix-free GGN products."""
from __future__ import annotations

from .dense import dense_ggn, factor_rows
from .kfac import KronBlock, kfac_blocks
from .layers import check_layers, supported_layers
from .operator import GGNOperator
from .output import CURVATURES, OutputCurvature

__all__ = ["OutputCurvature", "CURVATURES", "factor_rows", "dense_ggn", "KronBlock", "kfac_blocks",
           "check_layers", "supported_layers", "GGNOperator"]
