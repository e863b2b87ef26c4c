"""Kronecker-factored GGN (KFAC) for ``nn.Linear`` and ``nn.Conv2d`` layers.

For a layer with inputs ``a`` and back-propagated output-space factor columns ``g``
(``g = J_zᵀ L₀[:, r]`` at the layer output ``z``), the weight block of the GGN is
``Σ_n Σ_r (Σ_t g_{nrt} ⊗ a_{nt})(…)ᵀ`` (``t``: positions sharing the weight, e.g. the
pixels of a convolution). KFAC ("expand", Eschenhagen et al. 2023) approximates it by
``G ⊗ A / M`` with ``G = Σ g gᵀ``, ``A = Σ a aᵀ`` over all ``M`` (example, position) rows —
exact for one example at one position. The bias block ``Σ_{n,r} (Σ_t g)(Σ_t g)ᵀ`` is
kept exactly; weight–bias cross terms are dropped. Row-major weight flattening matches
``G ⊗ A`` (output index first); a Conv2d weight is flattened like ``F.unfold`` patches.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..data import Batches
from ..functional import ModelFunction
from .output import OutputCurvature

__all__ = ["KronBlock", "kfac_blocks", "check_kfac_layers"]

SUPPORTED = (nn.Linear, nn.Conv2d)


@dataclass
class KronBlock:
    """One parameter tensor's block ``coef · kron(*factors)``; factors are float64 sums."""

    name: str
    factors: list[Tensor]
    coef: float


def _owner(fn: ModelFunction, local: str) -> tuple[str, nn.Module, str]:
    mod_name, _, attr = local.rpartition(".")
    return mod_name, fn.root.get_submodule(mod_name), attr


def check_kfac_layers(fn: ModelFunction) -> None:
    """Raise ValueError naming the layer if KFAC cannot handle a subset parameter."""
    if fn.subset.is_partial:
        raise ValueError("structure='kfac' needs whole parameter tensors; the subset selects single "
                         "entries (use structure='full' or 'diag' for such subnetworks)")
    for name, local in zip(fn.subset.names, fn._local):
        _, module, attr = _owner(fn, local)
        if not isinstance(module, SUPPORTED) or attr not in ("weight", "bias"):
            raise ValueError(f"structure='kfac' supports nn.Linear and nn.Conv2d weights and biases; "
                             f"parameter {name!r} belongs to a {type(module).__name__} layer")
        if isinstance(module, nn.Conv2d):
            if module.groups != 1:
                raise ValueError(f"structure='kfac' does not support grouped convolutions ({name!r}: groups={module.groups})")
            if module.padding_mode != "zeros":
                raise ValueError(f"structure='kfac' supports zero padding only ({name!r}: {module.padding_mode!r})")
            if module.padding == "same" and any(k % 2 == 0 for k in module.kernel_size):
                raise ValueError(f"structure='kfac' does not support padding='same' with an even kernel ({name!r})")


def _conv_padding(module: nn.Conv2d) -> tuple[int, int]:
    if module.padding == "valid":
        return (0, 0)
    if module.padding == "same":
        return tuple(d * (k - 1) // 2 for d, k in zip(module.dilation, module.kernel_size))
    return module.padding


def _input_rows(module: nn.Module, a: Tensor) -> Tensor:
    """Layer inputs as rows ``(M, in)``: one per (example, position)."""
    if isinstance(module, nn.Conv2d):
        patches = F.unfold(a, module.kernel_size, dilation=module.dilation,
                           padding=_conv_padding(module), stride=module.stride)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    return a.reshape(-1, a.shape[-1])


def _output_rows(module: nn.Module, g: Tensor) -> tuple[Tensor, Tensor]:
    """Output gradients as rows ``(M, out)`` and summed over positions ``(B, out)``."""
    if isinstance(module, nn.Conv2d):
        return g.permute(0, 2, 3, 1).reshape(-1, g.shape[1]), g.sum((2, 3))
    flat = g.reshape(g.shape[0], -1, g.shape[-1])
    return flat.reshape(-1, g.shape[-1]), flat.sum(1)


def kfac_blocks(fn: ModelFunction, curv: OutputCurvature, batches: Batches, theta: Tensor,
                progress: bool = False) -> list[KronBlock]:
    """KFAC blocks of the unit-noise GGN, one per subset parameter tensor, in subset order."""
    check_kfac_layers(fn)
    owners = {}
    for local in fn._local:
        mod_name, module, attr = _owner(fn, local)
        owners.setdefault(mod_name, (module, []))[1].append(attr)
    sums: dict[tuple[str, str], Tensor] = {}
    rows_total: dict[str, int] = {m: 0 for m in owners}

    def add(key: tuple[str, str], value: Tensor) -> None:
        value = value.to(torch.float64)
        sums[key] = sums[key] + value if key in sums else value

    for x, y in tqdm(batches, total=batches.num_batches(), disable=not progress, desc="KFAC"):
        inputs = fn.prepare(x)
        acts: dict[str, Tensor] = {}
        outs: dict[str, Tensor] = {}

        def make_hook(mod_name: str):
            def hook(mod, inp, out):
                if mod_name in acts:
                    raise ValueError(f"structure='kfac': layer {mod_name!r} runs more than once per forward "
                                     "pass (shared weights are not supported)")
                acts[mod_name] = inp[0].detach()
                outs[mod_name] = out
                return out.clone()  # later in-place ops must not touch the captured output
            return hook

        handles = [module.register_forward_hook(make_hook(m)) for m, (module, _) in owners.items()]
        try:
            with torch.enable_grad():
                f = fn(theta.detach().requires_grad_(True), inputs)
        finally:
            for h in handles:
                h.remove()
        factor = curv.factor(f.detach(), y)
        factor = factor.expand(f.shape[0], *factor.shape[1:])
        names = list(owners)
        n_cols = factor.shape[2]
        for r in range(n_cols):
            grads = torch.autograd.grad(f, [outs[m] for m in names], factor[:, :, r].reshape(f.shape),
                                        retain_graph=r < n_cols - 1)
            for m, g in zip(names, grads):
                module, attrs = owners[m]
                g_rows, g_sum = _output_rows(module, g.detach())
                if "weight" in attrs:
                    add((m, "G"), g_rows.T @ g_rows)
                if "bias" in attrs:
                    add((m, "B"), g_sum.T @ g_sum)
        for m, (module, attrs) in owners.items():
            if "weight" in attrs:
                a_rows = _input_rows(module, acts[m])
                add((m, "A"), a_rows.T @ a_rows)
                rows_total[m] += a_rows.shape[0]

    blocks = []
    for name, local in zip(fn.subset.names, fn._local):
        mod_name, _, attr = _owner(fn, local)
        if attr == "weight":
            blocks.append(KronBlock(name, [sums[(mod_name, "G")], sums[(mod_name, "A")]],
                                    1.0 / rows_total[mod_name]))
        else:
            blocks.append(KronBlock(name, [sums[(mod_name, "B")]], 1.0))
    return blocks
