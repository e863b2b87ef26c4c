"""The network as a function of its subset weights: ``f(θ, inputs)`` for ``torch.func``, and
the Jacobian products every curvature, evidence and predictive of the package is built from.

Weights outside the subset stay as they are in the model. For a subset with a head module
(last layer) ``inputs`` are the head's input features, computed once by :meth:`prepare`;
otherwise ``inputs`` are the model inputs.

:func:`jvp_rows` / :func:`vjp_rows` are the one implementation of ``J V`` and ``Jᵀ U`` on
blocks of directions (forward- and reverse-mode, batched with ``vmap``): the GGN operator of
classifiers and the linearised DIP's :class:`~bayes_dip.linearized.NetworkJacobian` use them.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from typing import Callable

from torch.func import functional_call, jacrev, jvp, vmap

from .subsets import WeightSubset

__all__ = ["ModelFunction", "jvp_rows", "vjp_rows"]


def jvp_rows(f: Callable[[Tensor], Tensor], theta: Tensor, tangents: Tensor,
             chunk_size: int | None = None) -> Tensor:
    """``J t`` at ``theta`` for every row ``t`` of ``tangents (k, P)`` -> ``(k, *f(θ).shape)``
    (forward mode; ``chunk_size`` rows per vmapped batch, ``None``: all)."""
    return vmap(lambda t: jvp(f, (theta,), (t,))[1], chunk_size=chunk_size)(tangents)


def vjp_rows(pullback: Callable, cotangents: Tensor, chunk_size: int | None = None) -> Tensor:
    """``Jᵀ u`` for every row ``u`` of ``cotangents (k, *out)`` -> ``(k, P)``, with the
    ``pullback`` of ``torch.func.vjp(f, θ)`` (one forward pass serves any number of rows)."""
    return vmap(lambda c: pullback(c)[0], chunk_size=chunk_size)(cotangents)


class ModelFunction:
    """``f(θ, inputs) -> (B, *out)`` with ``θ (P,)`` the flat subset weights.

    Args:
        model: the network (used in eval mode; batch statistics must not couple examples).
        subset: the weights ``θ`` stands for.
    """

    def __init__(self, model: nn.Module, subset: WeightSubset):
        self.model = model
        self.subset = subset
        self.root = model if subset.head is None else model.get_submodule(subset.head)
        cut = 0 if subset.head is None else len(subset.head) + 1
        self._local = tuple(n[cut:] for n in subset.names)
        own = dict(self.root.named_parameters())
        self._base = tuple(own[n] for n in self._local)
        self._frozen = {n: p for n, p in own.items() if n not in set(self._local)}

    @property
    def n_params(self) -> int:
        return self.subset.n_params

    def theta(self) -> Tensor:
        """Current subset weights ``(P,)`` (a detached copy)."""
        return self.subset.vector(self.model)

    def params(self, theta: Tensor) -> dict[str, Tensor]:
        """Parameter tensors of ``root``: subset entries from ``theta``, the rest detached."""
        out = {n: p.detach() for n, p in self._frozen.items()}
        for name, base, idx, part in zip(self._local, self._base, self.subset.indices,
                                         theta.split(self.subset.sizes)):
            if idx is None:
                out[name] = part.view(base.shape)
            else:
                flat = base.detach().reshape(-1).index_put((idx.to(base.device),), part)
                out[name] = flat.view(base.shape)
        return out

    def prepare(self, x: Tensor) -> Tensor:
        """Inputs of ``f``: ``x`` itself, or the head module's input features for ``x``."""
        if self.subset.head is None:
            return x
        captured: list[Tensor] = []
        handle = self.root.register_forward_hook(lambda mod, inp, out: captured.append(inp[0].detach()))
        try:
            with torch.no_grad():
                self.model(x)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise ValueError(f"head module {self.subset.head!r} ran {len(captured)} times in one forward pass")
        return captured[0]

    def __call__(self, theta: Tensor, inputs: Tensor) -> Tensor:
        return functional_call(self.root, self.params(theta), (inputs,))

    def single(self, theta: Tensor, x_b: Tensor) -> Tensor:
        """Output for one example ``x_b`` (no batch dim) -> ``(*out)``."""
        return self(theta, x_b.unsqueeze(0)).squeeze(0)

    def jacobian(self, theta: Tensor, inputs: Tensor) -> Tensor:
        """Per-example Jacobians ``∂f(x_b)/∂θ`` -> ``(B, n_out, P)``."""
        jac = vmap(jacrev(self.single), in_dims=(None, 0))(theta, inputs)
        return jac.reshape(inputs.shape[0], -1, theta.numel())
