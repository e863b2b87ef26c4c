"""Per-layer inputs and back-propagated factor columns for ``nn.Linear`` / ``nn.Conv2d`` layers.

For every column ``r`` of the output-space factor ``L₀`` (``Λ₀ = L₀ L₀ᵀ``) one backward pass
gives, at the output ``z`` of each layer, ``g_r = J_zᵀ L₀[:, r]`` for all examples of a batch
at once (examples do not interact in eval mode). With the layer inputs ``a`` these give
Kronecker factors (KFAC) and the exact GGN diagonal without per-example weight gradients
for most layers. Weight gradients of one example are ``Σ_t g_t a_tᵀ`` over the positions
``t`` sharing the weight; rows below are (example, position) pairs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..batches import Batches
from ..functional import ModelFunction
from .output import OutputCurvature

__all__ = ["SUPPORTED", "Layer", "supported_layers", "check_layers", "HookedForward", "layer_passes",
           "input_rows", "output_rows", "example_weight_grads", "selected_weight_grads", "JacobianTerm",
           "jacobian_terms"]

SUPPORTED = (nn.Linear, nn.Conv2d)


class Layer:
    """A supported module and which of its parameters (``weight``/``bias``) are in the subset."""

    def __init__(self, name: str, module: nn.Module):
        self.name, self.module, self.attrs = name, module, []


def _owner(fn: ModelFunction, local: str) -> tuple[str, nn.Module, str]:
    mod_name, _, attr = local.rpartition(".")
    return mod_name, fn.root.get_submodule(mod_name), attr


def check_layers(fn: ModelFunction, what: str, whole: bool = True) -> None:
    """Raise ValueError naming the parameter/layer if the layer-wise path cannot handle the subset
    (``whole``: also if it selects single entries of a tensor)."""
    if whole and fn.subset.is_partial:
        raise ValueError(f"{what} needs whole parameter tensors; the subset selects single entries "
                         "(use structure='full' or 'diag' for such subnetworks)")
    for name, local in zip(fn.subset.names, fn._local):
        _, module, attr = _owner(fn, local)
        if not isinstance(module, SUPPORTED) or attr not in ("weight", "bias"):
            raise ValueError(f"{what} supports nn.Linear and nn.Conv2d weights and biases; "
                             f"parameter {name!r} belongs to a {type(module).__name__} layer")
        if isinstance(module, nn.Conv2d):
            if module.groups != 1:
                raise ValueError(f"{what} does not support grouped convolutions ({name!r}: groups={module.groups})")
            if module.padding_mode != "zeros":
                raise ValueError(f"{what} supports zero padding only ({name!r}: {module.padding_mode!r})")
            if module.padding == "same" and any(k % 2 == 0 for k in module.kernel_size):
                raise ValueError(f"{what} does not support padding='same' with an even kernel ({name!r})")


def supported_layers(fn: ModelFunction) -> bool:
    """True if every subset parameter is (part of) a weight/bias of a supported layer."""
    try:
        check_layers(fn, "", whole=False)
    except ValueError:
        return False
    return True


def _layers(fn: ModelFunction) -> dict[str, Layer]:
    layers: dict[str, Layer] = {}
    for local in fn._local:
        mod_name, module, attr = _owner(fn, local)
        layers.setdefault(mod_name, Layer(mod_name, module)).attrs.append(attr)
    return layers


def _conv_padding(module: nn.Conv2d) -> tuple[int, int]:
    if module.padding == "valid":
        return (0, 0)
    if module.padding == "same":
        return tuple(d * (k - 1) // 2 for d, k in zip(module.dilation, module.kernel_size))
    return module.padding


def input_rows(module: nn.Module, a: Tensor) -> Tensor:
    """Layer inputs per example and position ``(B, T, in)`` (Conv2d: unfolded patches)."""
    if isinstance(module, nn.Conv2d):
        patches = F.unfold(a, module.kernel_size, dilation=module.dilation,
                           padding=_conv_padding(module), stride=module.stride)
        return patches.transpose(1, 2)
    return a.reshape(a.shape[0], -1, a.shape[-1])


def output_rows(module: nn.Module, g: Tensor) -> Tensor:
    """Output gradients per example and position ``(B, T, out)``."""
    if isinstance(module, nn.Conv2d):
        return g.flatten(2).transpose(1, 2)
    return g.reshape(g.shape[0], -1, g.shape[-1])


def example_weight_grads(a_rows: Tensor, g_rows: Tensor) -> Tensor:
    """Per-example weight gradients ``Σ_t g_t a_tᵀ`` -> ``(B, out, in)``."""
    return g_rows.transpose(1, 2) @ a_rows


def selected_weight_grads(a_rows: Tensor, g_rows: Tensor, idx: Tensor) -> Tensor:
    """Entries ``idx`` (flat, row-major ``(out, in)``) of the per-example weight gradients ``Σ_t g_t a_tᵀ``
    without forming the others: ``a_rows (B, T, in)``, ``g_rows (B, T, out)`` -> ``(B, len(idx))``."""
    idx = idx.to(a_rows.device)
    d_in = a_rows.shape[-1]
    return (g_rows[:, :, idx // d_in] * a_rows[:, :, idx % d_in]).sum(1)


class HookedForward:
    """One forward pass through ``fn`` recording every layer's input and (graph-connected) output.

    Attributes: ``f`` the outputs ``(B, *out)`` (with graph), ``acts`` the detached layer inputs.
    """

    def __init__(self, fn: ModelFunction, layers: dict[str, Layer], theta: Tensor, inputs: Tensor):
        self.layers = layers
        self.acts: dict[str, Tensor] = {}
        self._outs: dict[str, Tensor] = {}

        def make_hook(name: str):
            def hook(mod, inp, out):
                if name in self.acts:
                    raise ValueError(f"layer {name!r} runs more than once per forward pass "
                                     "(shared weights are not supported by the layer-wise curvature)")
                self.acts[name] = inp[0].detach()
                self._outs[name] = out
                return out.clone()  # later in-place ops must not touch the captured output
            return hook

        handles = [layer.module.register_forward_hook(make_hook(name)) for name, layer in layers.items()]
        try:
            with torch.enable_grad():
                self.f = fn(theta.detach().requires_grad_(True), inputs)
        finally:
            for h in handles:
                h.remove()

    def columns(self, cotangents: Tensor) -> Iterator[dict[str, Tensor]]:
        """For each column ``r`` of ``cotangents (B, n_out, R)``: the layer-output gradients
        ``{name: J_zᵀ cotangents[:, :, r]}`` (detached, shaped like the layer outputs)."""
        names = list(self.layers)
        n_cols = cotangents.shape[2]
        for r in range(n_cols):
            grads = torch.autograd.grad(self.f, [self._outs[m] for m in names],
                                        cotangents[:, :, r].reshape(self.f.shape), retain_graph=r < n_cols - 1)
            yield {m: g.detach() for m, g in zip(names, grads)}


def layer_passes(fn: ModelFunction, curv: OutputCurvature, batches: Batches, theta: Tensor,
                 progress: bool, desc: str) -> Iterator[tuple[dict[str, Layer], dict[str, Tensor],
                                                              Iterator[dict[str, Tensor]]]]:
    """Per batch: the layers, their inputs ``{name: a}`` and an iterator over the factor
    columns of ``Λ₀`` yielding the layer-output gradients ``{name: g_r}``."""
    layers = _layers(fn)
    for x, y in tqdm(batches, total=batches.num_batches(), disable=not progress, desc=desc):
        fwd = HookedForward(fn, layers, theta, fn.prepare(x))
        factor = curv.factor(fwd.f.detach(), y)
        yield layers, fwd.acts, fwd.columns(factor.expand(fwd.f.shape[0], *factor.shape[1:]))


@dataclass
class JacobianTerm:
    """Per-example Jacobian of all outputs w.r.t. one parameter tensor.

    ``a is None``: ``g`` is the Jacobian itself ``(B, n_out, size)``; otherwise it is the
    outer product ``J[b, c] = g[b, c] ⊗ a[b]`` of ``g (B, n_out, d_out)`` and ``a (B, d_in)``
    (a linear layer applied once per example).
    """

    g: Tensor
    a: Tensor | None = None

    def dense(self) -> Tensor:
        if self.a is None:
            return self.g
        return (self.g.unsqueeze(3) * self.a[:, None, None, :]).flatten(2)


def jacobian_terms(fn: ModelFunction, theta: Tensor, inputs: Tensor) -> tuple[Tensor, list[JacobianTerm]]:
    """Outputs ``(B, *out)`` and per-example Jacobian terms, one per subset parameter tensor (in order),
    from ``n_out`` batched backward passes (layers must be :func:`supported_layers`)."""
    layers = _layers(fn)
    fwd = HookedForward(fn, layers, theta, inputs)
    f = fwd.f.detach()
    n_out = f[0].numel()
    eye = torch.eye(n_out, dtype=f.dtype, device=f.device).expand(f.shape[0], n_out, n_out)
    per_out: dict[str, list[Tensor]] = {m: [] for m in layers}
    for grads in fwd.columns(eye):
        for m, g in grads.items():
            per_out[m].append(output_rows(layers[m].module, g))  # (B, T, d_out)
    terms = []
    for local, idx in zip(fn._local, fn.subset.indices):
        mod_name, _, attr = local.rpartition(".")
        g = torch.stack(per_out[mod_name], 1)  # (B, n_out, T, d_out)
        if attr == "bias":
            term = JacobianTerm(g.sum(2) if idx is None else g.sum(2)[:, :, idx.to(f.device)])
        else:
            a = input_rows(layers[mod_name].module, fwd.acts[mod_name])  # (B, T, d_in)
            if idx is not None:  # only the chosen entries (subnetwork): Σ_t g[o] a[i] per (o, i)
                i = idx.to(f.device)
                term = JacobianTerm(torch.einsum("bctk,btk->bck", g[..., i // a.shape[2]], a[..., i % a.shape[2]]))
            elif a.shape[1] == 1:
                term = JacobianTerm(g[:, :, 0], a[:, 0])
            else:
                term = JacobianTerm(torch.einsum("bcto,bti->bcoi", g, a).flatten(2))
        terms.append(term)
    return f, terms
