"""The Jacobian ``J = ∂f(θ)/∂θ`` of a network output w.r.t. the weights under the prior.

``f(θ) = net(net_input)`` with the weights of :func:`~bayes_dip.linearized.priors.weight_layout`
replaced by ``θ`` and every other parameter (biases, norms) and buffer held fixed at the
trained values: the Laplace core's :class:`~bayes_dip.laplace.functional.ModelFunction` of
those weights. ``J v`` is a forward-mode JVP, ``Jᵀ u`` a VJP, both by the core's
:func:`~bayes_dip.laplace.functional.jvp_rows` / ``vjp_rows`` (batched with ``vmap``).
Products take column blocks: ``jvp(V (P, k)) -> (n_pix, k)``, ``vjp(U (n_pix, k)) -> (P, k)``;
pixels are the row-major ``H·W`` pixels of the single output image.
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.func import vjp

from bayes_dip.checks import check_int
from bayes_dip.laplace.functional import ModelFunction, jvp_rows, vjp_rows
from bayes_dip.laplace.subsets import WeightSubset
from bayes_dip.linalg import SVDResult, randomized_svd

from .priors import WeightLayout, weight_layout

__all__ = ["NetworkJacobian", "gprior_scale"]


class NetworkJacobian:
    """``J`` of ``net(net_input)`` at its current weights ``θ̂`` (of a frozen eval-mode copy).

    Args:
        net: the trained network (not modified; a copy is taken).
        net_input: ``(1, C, H, W)`` fixed input.
        blocks: prior blocks (default ``net.prior_blocks()``).
        dtype: computation dtype (default: the network's); the copy and input are cast to it.
        chunk_size: columns per vmapped batch in :meth:`jvp`/:meth:`vjp` (``None``: all at once).

    Attributes: ``layout``, ``theta (P,)`` = θ̂, ``output (1, 1, H, W)`` = ``f(θ̂)``.
    """

    def __init__(self, net: nn.Module, net_input: Tensor, blocks: Sequence | None = None, *,
                 dtype: torch.dtype | None = None, chunk_size: int | None = None):
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        if not isinstance(net_input, Tensor) or net_input.dim() != 4 or net_input.shape[0] != 1:
            raise ValueError("net_input must be a tensor of shape (1, C, H, W), got "
                             f"{tuple(getattr(net_input, 'shape', ()))}")
        if chunk_size is not None and (isinstance(chunk_size, bool)
                                       or not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be None or a positive int, got {chunk_size!r}")
        self.layout: WeightLayout = weight_layout(net, blocks)
        dtype = dtype or next(net.parameters()).dtype
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating dtype, got {dtype}")
        self.net = copy.deepcopy(net).eval().to(dtype=dtype, device=net_input.device)
        self.net.requires_grad_(False)
        self.net_input = net_input.detach().to(dtype)
        self.chunk_size = chunk_size
        params = dict(self.net.named_parameters())
        # θ in the layout's block order (the core's model function of those weights)
        self.fn = ModelFunction(self.net, WeightSubset(
            self.layout.params, tuple(params[n].shape for n in self.layout.params),
            (None,) * len(self.layout.params)))
        self.theta = self.fn.theta()
        self._pullback = None
        with torch.no_grad():
            out = self.fn(self.theta, self.net_input)
        if out.dim() != 4 or out.shape[:2] != (1, 1):
            raise ValueError("net must output one single-channel image (1, 1, H, W), got "
                             f"{tuple(out.shape)}")
        self.output = out.detach()

    @property
    def num_params(self) -> int:
        return self.theta.numel()

    @property
    def num_pixels(self) -> int:
        return self.output.numel()

    @property
    def im_shape(self) -> tuple[int, int]:
        return tuple(self.output.shape[-2:])

    @property
    def dtype(self) -> torch.dtype:
        return self.theta.dtype

    @property
    def device(self) -> torch.device:
        return self.theta.device

    def forward(self, theta: Tensor) -> Tensor:
        """``f(θ)`` flattened to ``(n_pix,)`` (differentiable in ``θ``)."""
        return self.fn(theta, self.net_input).reshape(-1)

    def jvp(self, v: Tensor) -> Tensor:
        """``J V`` for ``V (P, k)`` or ``(P,)`` -> ``(n_pix, k)`` / ``(n_pix,)``."""
        v, vector = self._block(v, self.num_params, "v")
        out = jvp_rows(self.forward, self.theta, v.mT.contiguous(), self.chunk_size).mT
        return out.squeeze(1) if vector else out

    def vjp(self, u: Tensor) -> Tensor:
        """``Jᵀ U`` for ``U (n_pix, k)`` or ``(n_pix,)`` -> ``(P, k)`` / ``(P,)``."""
        u, vector = self._block(u, self.num_pixels, "u")
        if self._pullback is None:  # one forward pass, kept for all later products
            self._pullback = vjp(self.forward, self.theta)[1]
        out = vjp_rows(self._pullback, u.mT, self.chunk_size).mT
        return out.squeeze(1) if vector else out

    def dense(self, batch_size: int = 256) -> Tensor:
        """The dense Jacobian ``(n_pix, P)`` from ``n_pix`` VJPs in batches (small images only)."""
        eye = torch.eye(self.num_pixels, dtype=self.dtype, device=self.device)
        rows = [self.vjp(eye[:, i:i + batch_size]).mT
                for i in range(0, self.num_pixels, batch_size)]
        return torch.cat(rows, 0)

    def low_rank(self, rank: int, oversample: int = 10, power_iters: int = 2,
                 generator: torch.Generator | None = None) -> SVDResult:
        """Rank-``rank`` truncated SVD ``J ≈ U diag(S) Vᵀ`` by randomized SVD (JVPs/VJPs only)."""
        return randomized_svd(self.jvp, self.vjp, (self.num_pixels, self.num_params), rank,
                              oversample=oversample, power_iters=power_iters, generator=generator,
                              dtype=self.dtype, device=self.device)

    def _block(self, v: Tensor, n: int, name: str) -> tuple[Tensor, bool]:
        if not isinstance(v, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
        vector = v.dim() == 1
        v2 = v.unsqueeze(1) if vector else v
        if v2.dim() != 2 or v2.shape[0] != n:
            raise ValueError(f"{name} must have shape ({n}, k) or ({n},), got {tuple(v.shape)}")
        if v2.dtype != self.dtype or v2.device != self.device:
            raise TypeError(f"{name} must have dtype {self.dtype} on {self.device}, "
                            f"got {v2.dtype} on {v2.device}")
        return v2, vector


def gprior_scale(jac: NetworkJacobian, ray_trafo, num_probes: int | None = None,
                 generator: torch.Generator | None = None, batch_size: int = 64,
                 eps: float = 1e-6) -> Tensor:
    """Feature normalisation of the g-prior: ``s_i = (mean_j (A J)_{ji}²)^{-1/2}`` ``(P,)``.

    Exact from all ``n_obs`` rows of ``A J`` (``num_probes=None``), else the Hutchinson
    estimate ``diag((AJ)ᵀ AJ) ≈ mean_s (Jᵀ Aᵀ z_s)²`` with Rademacher ``z_s``. Values of the
    mean below ``eps²`` are clamped (weights the data do not see).
    """
    n_obs = math.prod(ray_trafo.obs_shape)
    total = torch.zeros(jac.num_params, dtype=jac.dtype, device=jac.device)
    if num_probes is None:
        eye = torch.eye(n_obs, dtype=jac.dtype, device=jac.device)
        for i in range(0, n_obs, batch_size):
            rows = jac.vjp(ray_trafo.rmatmul(eye[:, i:i + batch_size]))
            total += rows.square().sum(1)
        mean = total / n_obs
    else:
        check_int(num_probes, "num_probes", 1)
        for i in range(0, num_probes, batch_size):
            k = min(batch_size, num_probes - i)
            z = torch.randint(0, 2, (n_obs, k), generator=generator, device=jac.device)
            z = z.to(jac.dtype) * 2 - 1
            total += jac.vjp(ray_trafo.rmatmul(z)).square().sum(1)
        mean = total / (num_probes * n_obs)
    return mean.clamp_min(eps ** 2).rsqrt()
