"""Weight subsets: which weights the Laplace approximation covers.

A :class:`WeightSubset` lists parameter tensors by name, optionally restricted to some of
their entries (subnetwork inference), and may name a *head* module: the subset lies
entirely in that module, whose output is the model output, so its input features can be
computed once and the rest of the network skipped (last-layer Laplace).

The flat weight vector ``θ (P,)`` concatenates, in subset order, each tensor's selected
entries in row-major order. *Groups* (for per-group prior precisions) are the subset's
parameter tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor, nn

from ..checks import check_int

if TYPE_CHECKING:  # pragma: no cover
    from .laplace import Laplace

__all__ = ["WeightSubset", "all_weights", "last_layer", "from_names", "largest_variance", "resolve_subset"]


@dataclass(frozen=True)
class WeightSubset:
    """Weights under the Laplace approximation.

    Attributes:
        names: parameter names as in ``model.named_parameters()``.
        shapes: the full shapes of those parameters.
        indices: per parameter, sorted flat indices of the selected entries, or ``None`` for all.
        head: dotted name of a module containing every selected parameter whose output is
            the model output (its inputs are cached as features), or ``None``.
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    indices: tuple[Tensor | None, ...]
    head: str | None = None

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of selected entries per parameter tensor (group sizes)."""
        return tuple(s.numel() if i is None else i.numel() for s, i in zip(self.shapes, self.indices))

    @property
    def n_params(self) -> int:
        """``P``, the length of the flat weight vector."""
        return sum(self.sizes)

    @property
    def n_groups(self) -> int:
        return len(self.names)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Start of each parameter's entries in the flat vector."""
        out, pos = [], 0
        for size in self.sizes:
            out.append(pos)
            pos += size
        return tuple(out)

    @property
    def is_partial(self) -> bool:
        """True if some parameter tensor is only partly selected."""
        return any(i is not None for i in self.indices)

    def check_model(self, model: nn.Module) -> None:
        """Raise ValueError if ``model`` lacks a parameter of the subset or its shape differs."""
        params = dict(model.named_parameters())
        for name, shape, idx in zip(self.names, self.shapes, self.indices):
            if name not in params:
                raise ValueError(f"subset parameter {name!r} is not a parameter of the model")
            if params[name].shape != shape:
                raise ValueError(f"subset parameter {name!r} has shape {tuple(shape)}, "
                                 f"the model's has {tuple(params[name].shape)}")
            if idx is not None and idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= shape.numel()):
                raise ValueError(f"subset indices of {name!r} out of range [0, {shape.numel()})")

    def vector(self, model: nn.Module) -> Tensor:
        """The model's current subset weights as a flat detached vector ``(P,)``."""
        params = dict(model.named_parameters())
        parts = []
        for name, idx in zip(self.names, self.indices):
            flat = params[name].detach().reshape(-1)
            parts.append(flat if idx is None else flat[idx.to(flat.device)])
        return torch.cat(parts).clone()


def _subset(model: nn.Module, names: Sequence[str], head: str | None = None) -> WeightSubset:
    params = dict(model.named_parameters())
    return WeightSubset(tuple(names), tuple(params[n].shape for n in names), (None,) * len(names), head)


def all_weights(model: nn.Module) -> WeightSubset:
    """Every parameter of ``model`` with ``requires_grad``."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if not names:
        raise ValueError("model has no trainable parameters for subset='all'")
    return _subset(model, names)


def last_layer(model: nn.Module, x: Tensor) -> WeightSubset:
    """The parameters of the module that runs last in ``model(x)``; its output must be the model output.

    Args:
        model: network; ``x``: one example batch of inputs.
    """
    order: list[str] = []
    outputs: dict[str, Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            def hook(mod, inp, out, name=name):
                order.append(name)
                outputs[name] = out
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            y = model(x)
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise ValueError("subset='last_layer': no module with parameters ran in model(x)")
    head = order[-1]
    out = outputs[head]
    if not isinstance(y, Tensor) or out.shape != y.shape or not torch.equal(out, y):
        raise ValueError(f"subset='last_layer': the output of the last module {head!r} is not the model "
                         "output (the model post-processes it); pass parameter names instead")
    names = [f"{head}.{n}" if head else n for n, p in model.get_submodule(head).named_parameters()
             if p.requires_grad]
    if not names:
        raise ValueError(f"subset='last_layer': last module {head!r} has no trainable parameters")
    return _subset(model, names, head=head)


def from_names(model: nn.Module, names: Sequence[str]) -> WeightSubset:
    """Parameters by name; a module name selects all of that module's parameters (recursively)."""
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise TypeError("subset names must be a list of parameter or module names")
    if not names:
        raise ValueError("subset names must not be empty")
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    selected: list[str] = []
    for name in names:
        if name in params:
            found = [name]
        elif name in modules and name:
            found = [f"{name}.{n}" for n, _ in modules[name].named_parameters()]
        else:
            raise ValueError(f"subset name {name!r} is neither a parameter nor a module of the model")
        if not found:
            raise ValueError(f"subset module {name!r} has no parameters")
        selected += [n for n in found if n not in selected]
    order = {n: i for i, n in enumerate(params)}
    return _subset(model, sorted(selected, key=order.__getitem__))


def largest_variance(la: "Laplace", n_params: int, *, rtol: float = 1e-6) -> WeightSubset:
    """Subnetwork by Wasserstein selection (Daxberger et al. 2021) among the weights the data inform.

    With a diagonal posterior ``N(θ̂, diag σ²)`` the 2-Wasserstein distance to the posterior that
    keeps only the weights ``S`` uncertain (the others at ``θ̂``) is ``Σ_{j∉S} σ_j²``, minimised by
    the ``n_params`` largest marginal variances of a fitted ``la`` (diagonal Laplace, or any
    structure). A weight with zero curvature (e.g. one fed by an input that is zero on every
    training example) keeps its prior variance ``1/δ_j``, the largest possible, yet is
    uninformed by the data and, on such inputs, does not change the output: weights with
    ``δ_j σ_j² ≥ 1 − rtol`` (posterior variance equal to the prior's; exactly the zero-curvature
    ones, for any positive semi-definite curvature) are not candidates.

    Args:
        la: fitted :class:`Laplace`; n_params: size of the subnetwork; rtol: tolerance of the
            variance-equals-prior test.
    Raises:
        ValueError: if fewer than ``n_params`` weights have non-zero curvature.
    """
    check_int(n_params, "n_params", 1, maximum=la.n_params)
    var = la.posterior_variance.to(torch.float64)
    informed = var * la.prior_precision_diag.to(torch.float64) < 1 - rtol
    if int(informed.sum()) < n_params:
        raise ValueError(f"n_params={n_params} exceeds the {int(informed.sum())} weights with non-zero curvature")
    top = torch.topk(torch.where(informed, var, torch.full_like(var, -1.0)), n_params).indices.sort().values
    sub = la.subset
    names, shapes, indices = [], [], []
    for g, (offset, size) in enumerate(zip(sub.offsets, sub.sizes)):
        local = top[(top >= offset) & (top < offset + size)] - offset
        if local.numel() == 0:
            continue
        own = sub.indices[g]
        chosen = local.cpu() if own is None else own[local.cpu()]
        names.append(sub.names[g])
        shapes.append(sub.shapes[g])
        indices.append(None if chosen.numel() == sub.shapes[g].numel() else chosen)
    return WeightSubset(tuple(names), tuple(shapes), tuple(indices))


def resolve_subset(model: nn.Module, spec: object, x: Tensor) -> WeightSubset:
    """A :class:`WeightSubset` from ``"all" | "last_layer" | [names] | WeightSubset``."""
    if isinstance(spec, WeightSubset):
        spec.check_model(model)
        return spec
    if spec == "all":
        return all_weights(model)
    if spec == "last_layer":
        return last_layer(model, x)
    if isinstance(spec, (list, tuple)):
        return from_names(model, spec)
    raise ValueError(f"subset must be 'all', 'last_layer', a list of parameter/module names or a "
                     f"WeightSubset, got {spec!r}")
