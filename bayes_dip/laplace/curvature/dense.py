"""Dense GGN and its diagonal from square-root rows ``M = L₀ᵀ J`` (one row per example and factor column).

``GGN₀ = Σ MᵀM`` and ``diag GGN₀ = Σ M²``: exact for every architecture. Rows come from
layer hooks (per-example weight gradients ``Σ_t g_t a_tᵀ``, one batched backward pass per
factor column) when every subset weight sits in an ``nn.Linear``/``nn.Conv2d``, and from
``torch.func`` (one VJP per example and column) otherwise.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.func import vjp, vmap
from tqdm.auto import tqdm

from ..batches import Batches
from ..functional import ModelFunction
from .layers import (example_weight_grads, input_rows, layer_passes, output_rows, selected_weight_grads,
                     supported_layers)
from .output import OutputCurvature

__all__ = ["factor_rows", "dense_ggn"]

#: Elements of square-root rows (examples × P) held at once.
ROW_BUDGET = 2**24


def factor_rows(fn: ModelFunction, theta: Tensor, inputs: Tensor, factor: Tensor) -> Tensor:
    """Rows ``L₀_bᵀ J_b`` for every example by ``torch.func`` -> ``(B, R, P)``.

    Args:
        fn: model function; theta: ``(P,)``; inputs: ``(B, ...)``;
        factor: ``(B, n_out, R)`` output-space factors.
    """
    def rows(x_b: Tensor, l_b: Tensor) -> Tensor:
        out, pullback = vjp(lambda t: fn.single(t, x_b), theta)
        return vmap(pullback)(l_b.T.reshape(-1, *out.shape))[0]

    return vmap(rows)(inputs, factor)


class _Accumulator:
    """``Σ MᵀM`` or ``Σ M²`` over row blocks ``M (k, P)``, products in the rows' dtype, sum in float64."""

    def __init__(self, n: int, diagonal: bool, device: torch.device):
        self.diagonal = diagonal
        self.value = torch.zeros(n if diagonal else (n, n), dtype=torch.float64, device=device)

    def add(self, m: Tensor) -> None:
        self.value += ((m * m).sum(0) if self.diagonal else m.T @ m).to(torch.float64)


def _rows_by_func(fn: ModelFunction, curv: OutputCurvature, batches: Batches, theta: Tensor,
                  acc: _Accumulator, progress: bool) -> None:
    n = theta.numel()
    for x, y in tqdm(batches, total=batches.num_batches(), disable=not progress, desc="GGN"):
        inputs = fn.prepare(x)
        with torch.no_grad():
            f = fn(theta, inputs)
        factor = curv.factor(f, y)
        factor = factor.expand(f.shape[0], *factor.shape[1:])
        chunk = max(1, ROW_BUDGET // max(1, factor.shape[2] * n))
        for start in range(0, f.shape[0], chunk):
            sl = slice(start, start + chunk)
            with torch.no_grad():
                acc.add(factor_rows(fn, theta, inputs[sl], factor[sl]).reshape(-1, n))


def _rows_by_layers(fn: ModelFunction, curv: OutputCurvature, batches: Batches, theta: Tensor,
                    acc: _Accumulator, progress: bool) -> None:
    locals_ = [(*local.rpartition("."), idx) for local, idx in zip(fn._local, fn.subset.indices)]
    for layers, acts, columns in layer_passes(fn, curv, batches, theta, progress, "GGN"):
        a_rows = {m: input_rows(layer.module, acts[m]) for m, layer in layers.items() if "weight" in layer.attrs}
        batch = next(iter(acts.values())).shape[0]
        chunk = max(1, ROW_BUDGET // max(1, fn.subset.n_params))
        for grads in columns:
            g_rows = {m: output_rows(layers[m].module, g) for m, g in grads.items()}
            for start in range(0, batch, chunk):
                sl = slice(start, start + chunk)
                parts = []
                for mod_name, _, attr, idx in locals_:
                    g = g_rows[mod_name][sl]
                    if attr == "weight" and idx is not None:  # only the chosen entries (subnetwork)
                        parts.append(selected_weight_grads(a_rows[mod_name][sl], g, idx))
                        continue
                    part = example_weight_grads(a_rows[mod_name][sl], g).flatten(1) if attr == "weight" else g.sum(1)
                    parts.append(part if idx is None else part[:, idx.to(part.device)])
                acc.add(torch.cat(parts, 1))


def _single_linear_ggn(fn: ModelFunction, curv: OutputCurvature, batches: Batches, theta: Tensor,
                       progress: bool) -> Tensor | None:
    """GGN of one linear layer applied once per example (e.g. the last layer), or None if it is not.

    With ``ã = [a, 1]`` (bias included) and the output-space curvature at the layer output
    ``Λ_z = Σ_r g_r g_rᵀ``, the block is ``Σ_n Λ_z,n ⊗ ã_n ã_nᵀ``: ``R`` times cheaper than
    summing ``MᵀM`` over the ``R`` factor columns.
    """
    if fn.subset.is_partial or len({local.rpartition(".")[0] for local in fn._local}) != 1:
        return None
    attrs = [local.rpartition(".")[2] for local in fn._local]
    if attrs[0] != "weight":
        return None
    acc = None
    for layers, acts, columns in layer_passes(fn, curv, batches, theta, progress, "GGN"):
        (name, layer), = layers.items()
        a = input_rows(layer.module, acts[name])
        if a.shape[1] != 1:
            return None
        a = a[:, 0]
        if "bias" in attrs:
            a = torch.cat([a, torch.ones_like(a[:, :1])], 1)
        g = torch.stack([output_rows(layer.module, gr)[:, 0] for gr in (c[name] for c in columns)], 1)
        lam = (g.transpose(1, 2) @ g).flatten(1)  # (B, out²)
        d_out, d_in = g.shape[2], a.shape[1]
        chunk = max(1, ROW_BUDGET // (d_in * d_in))
        for i in range(0, a.shape[0], chunk):
            aa = (a[i:i + chunk, :, None] * a[i:i + chunk, None, :]).flatten(1)
            part = (lam[i:i + chunk].T @ aa).to(torch.float64)
            acc = part if acc is None else acc + part
    h = acc.reshape(d_out, d_out, d_in, d_in).permute(0, 2, 1, 3).reshape(d_out * d_in, d_out * d_in)
    if "bias" in attrs:  # (o, i) with i = d_in − 1 is the bias of output o: move biases last
        idx = torch.arange(d_out * d_in, device=h.device).reshape(d_out, d_in)
        order = torch.cat([idx[:, :-1].reshape(-1), idx[:, -1]])
        h = h[order][:, order]
    return h


def _diagonal_by_layers(fn: ModelFunction, curv: OutputCurvature, batches: Batches, theta: Tensor,
                        progress: bool) -> Tensor:
    """``Σ M²`` per parameter tensor without forming rows: ``(g²)ᵀ(a²)`` for a layer applied once
    per example, squared per-example gradients otherwise."""
    locals_ = [local.rpartition(".") for local in fn._local]
    parts = [torch.zeros(shape.numel(), dtype=torch.float64, device=theta.device) for shape in fn.subset.shapes]
    for layers, acts, columns in layer_passes(fn, curv, batches, theta, progress, "diag GGN"):
        a_rows = {m: input_rows(layer.module, acts[m]) for m, layer in layers.items() if "weight" in layer.attrs}
        for grads in columns:
            g_rows = {m: output_rows(layers[m].module, g) for m, g in grads.items()}
            for part, (mod_name, _, attr) in zip(parts, locals_):
                g = g_rows[mod_name]
                if attr == "bias":
                    d = (g.sum(1) ** 2).sum(0)
                elif g.shape[1] == 1:
                    d = (g[:, 0] ** 2).T @ (a_rows[mod_name][:, 0] ** 2)
                else:
                    a = a_rows[mod_name]
                    chunk = max(1, ROW_BUDGET // max(1, g.shape[2] * a.shape[2]))
                    d = sum((example_weight_grads(a[i:i + chunk], g[i:i + chunk]) ** 2).sum(0)
                            for i in range(0, g.shape[0], chunk))
                part += d.reshape(-1).to(torch.float64)
    return torch.cat([p if idx is None else p[idx.to(p.device)] for p, idx in zip(parts, fn.subset.indices)])


def dense_ggn(fn: ModelFunction, curv: OutputCurvature, batches: Batches, theta: Tensor,
              diagonal: bool, progress: bool = False) -> Tensor:
    """Unit-noise GGN ``(P, P)`` (or its diagonal ``(P,)``) summed over the data, in float64."""
    if diagonal and supported_layers(fn):
        return _diagonal_by_layers(fn, curv, batches, theta, progress)
    if not diagonal and supported_layers(fn):
        single = _single_linear_ggn(fn, curv, batches, theta, progress)
        if single is not None:
            return single
    acc = _Accumulator(theta.numel(), diagonal, theta.device)
    if supported_layers(fn):
        _rows_by_layers(fn, curv, batches, theta, acc, progress)
    else:
        _rows_by_func(fn, curv, batches, theta, acc, progress)
    return acc.value
