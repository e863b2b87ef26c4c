"""Kronecker-factored GGN (KFAC) for ``nn.Linear`` and ``nn.Conv2d`` layers.

For a layer with inputs ``a`` and back-propagated factor columns ``g`` (see
:mod:`.layers`) the weight block of the GGN is ``Σ_n Σ_r (Σ_t g_{nrt} ⊗ a_{nt})(…)ᵀ``.
KFAC ("expand", Eschenhagen et al. 2023) approximates it by ``G ⊗ A / M`` with
``G = Σ g gᵀ``, ``A = Σ a aᵀ`` over all ``M`` (example, position) rows — exact for one
example at one position. The bias block ``Σ_{n,r} (Σ_t g)(Σ_t g)ᵀ`` is kept exactly;
weight–bias cross terms are dropped. Row-major weight flattening matches ``G ⊗ A``
(output index first); a Conv2d weight is flattened like ``F.unfold`` patches.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..batches import Batches
from ..functional import ModelFunction
from .layers import check_layers, input_rows, layer_passes, output_rows
from .output import OutputCurvature

__all__ = ["KronBlock", "kfac_blocks"]


@dataclass
class KronBlock:
    """One parameter tensor's block ``coef · kron(*factors)``; factors are float64 sums."""

    name: str
    factors: list[Tensor]
    coef: float


def kfac_blocks(fn: ModelFunction, curv: OutputCurvature, batches: Batches, theta: Tensor,
                progress: bool = False) -> list[KronBlock]:
    """KFAC blocks of the unit-noise GGN, one per subset parameter tensor, in subset order."""
    check_layers(fn, "structure='kfac'", whole=True)
    sums: dict[tuple[str, str], Tensor] = {}
    rows_total: dict[str, int] = {}

    def add(key: tuple[str, str], value: Tensor) -> None:
        value = value.to(torch.float64)
        sums[key] = sums[key] + value if key in sums else value

    for layers, acts, columns in layer_passes(fn, curv, batches, theta, progress, "KFAC"):
        for grads in columns:
            for m, g in grads.items():
                g_rows = output_rows(layers[m].module, g)
                if "weight" in layers[m].attrs:
                    flat = g_rows.reshape(-1, g_rows.shape[-1])
                    add((m, "G"), flat.T @ flat)
                if "bias" in layers[m].attrs:
                    g_sum = g_rows.sum(1)
                    add((m, "B"), g_sum.T @ g_sum)
        for m, layer in layers.items():
            if "weight" in layer.attrs:
                a_rows = input_rows(layer.module, acts[m])
                flat = a_rows.reshape(-1, a_rows.shape[-1])
                add((m, "A"), flat.T @ flat)
                rows_total[m] = rows_total.get(m, 0) + flat.shape[0]

    blocks = []
    for name, local in zip(fn.subset.names, fn._local):
        mod_name, _, attr = local.rpartition(".")
        if attr == "weight":
            blocks.append(KronBlock(name, [sums[(mod_name, "G")], sums[(mod_name, "A")]],
                                    1.0 / rows_total[mod_name]))
        else:
            blocks.append(KronBlock(name, [sums[(mod_name, "B")]], 1.0))
    return blocks
