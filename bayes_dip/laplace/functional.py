"""The network as a function of its subset weights: ``f(θ, inputs)`` for ``torch.func``, and
the Jacobian products every curvature, evidence and predictive of the package is built from.

Weights outside the subset stay as they are in the model. For a subset with a head module
(last layer) ``inputs`` are the head's input features, computed once by :meth:`prepare`;
otherwise ``inputs`` are the model inputs.

:func:`jvp_rows` / :func:`vjp_rows` are the one implementation of ``J V`` and ``Jᵀ U`` on
blocks of directions (forward- and reverse-mode, batched with ``vmap``): the GGN operator of
classifiers and :class:`ModelJacobian` (the column products of the function-space view,
which the linearised DIP's :class:`~bayes_dip.linearized.NetworkJacobian` extends) use them.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from typing import Callable

from torch.func import functional_call, jacrev, jvp, vjp, vmap

from .subsets import WeightSubset

__all__ = ["ModelFunction", "ModelJacobian", "jvp_rows", "vjp_rows"]


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


def columns(v: Tensor, n: int, name: str) -> tuple[Tensor, bool]:
    """``v`` as a column block ``(n, k)`` and whether it was a vector ``(n,)`` (checked)."""
    if not isinstance(v, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
    vector = v.dim() == 1
    v2 = v.unsqueeze(1) if vector else v
    if v2.dim() != 2 or v2.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n}, k) or ({n},), got {tuple(v.shape)}")
    return v2, vector


class ModelJacobian:
    """``J = ∂f(θ, inputs)/∂θ`` at ``θ̂`` as column products (``n_out`` = all output entries).

    ``jvp(V (P, k)) -> (n_out, k)``, ``vjp(U (n_out, k)) -> (P, k)`` (or vectors); outputs in
    row-major order of ``f(θ̂, inputs)``. One forward pass is kept for all VJPs.

    Args:
        fn: the model function; ``θ̂`` is ``fn.theta()``.
        inputs: the fixed inputs of ``fn``.
        chunk_size: columns per vmapped batch (``None``: all at once).

    Attributes: ``theta (P,)`` = θ̂, ``output`` = ``f(θ̂, inputs)`` (detached).
    """

    def __init__(self, fn: ModelFunction, inputs: Tensor, chunk_size: int | None = None):
        self.fn, self.inputs, self.chunk_size = fn, inputs, chunk_size
        self.theta = fn.theta()
        self._pullback = None
        with torch.no_grad():
            self.output = fn(self.theta, inputs).detach()

    @property
    def num_params(self) -> int:
        return self.theta.numel()

    @property
    def num_outputs(self) -> int:
        return self.output.numel()

    @property
    def dtype(self) -> torch.dtype:
        return self.theta.dtype

    @property
    def device(self) -> torch.device:
        return self.theta.device

    def forward(self, theta: Tensor) -> Tensor:
        """``f(θ)`` flattened to ``(n_out,)`` (differentiable in ``θ``)."""
        return self.fn(theta, self.inputs).reshape(-1)

    def jvp(self, v: Tensor) -> Tensor:
        """``J V`` for ``V (P, k)`` or ``(P,)`` -> ``(n_out, k)`` / ``(n_out,)``."""
        v, vector = self._block(v, self.num_params, "v")
        out = jvp_rows(self.forward, self.theta, v.mT.contiguous(), self.chunk_size).mT
        return out.squeeze(1) if vector else out

    def vjp(self, u: Tensor) -> Tensor:
        """``Jᵀ U`` for ``U (n_out, k)`` or ``(n_out,)`` -> ``(P, k)`` / ``(P,)``."""
        u, vector = self._block(u, self.num_outputs, "u")
        if self._pullback is None:
            self._pullback = vjp(self.forward, self.theta)[1]
        out = vjp_rows(self._pullback, u.mT, self.chunk_size).mT
        return out.squeeze(1) if vector else out

    def dense(self, batch_size: int = 256) -> Tensor:
        """The dense Jacobian ``(n_out, P)`` from ``n_out`` VJPs in batches (small models)."""
        eye = torch.eye(self.num_outputs, dtype=self.dtype, device=self.device)
        rows = [self.vjp(eye[:, i:i + batch_size]).mT
                for i in range(0, self.num_outputs, batch_size)]
        return torch.cat(rows, 0)

    def _block(self, v: Tensor, n: int, name: str) -> tuple[Tensor, bool]:
        v2, vector = columns(v, n, name)
        if v2.dtype != self.dtype or v2.device != self.device:
            raise TypeError(f"{name} must have dtype {self.dtype} on {self.device}, "
                            f"got {v2.dtype} on {v2.device}")
        return v2, vector
