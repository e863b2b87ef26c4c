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

from bayes_dip.checks import check_int
from bayes_dip.laplace.functional import ModelFunction, ModelJacobian
from bayes_dip.laplace.subsets import WeightSubset
from bayes_dip.linalg import SVDResult, randomized_svd

from .priors import WeightLayout, weight_layout

__all__ = ["NetworkJacobian", "gprior_scale"]


class NetworkJacobian(ModelJacobian):
    """``J`` of ``net(net_input)`` at its current weights ``θ̂`` (of a frozen eval-mode copy):
    the core's :class:`~bayes_dip.laplace.functional.ModelJacobian` of the prior's weights,
    with their :class:`WeightLayout` and the image shape.

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
        params = dict(self.net.named_parameters())
        # θ in the layout's block order (the core's model function of those weights)
        fn = ModelFunction(self.net, WeightSubset(
            self.layout.params, tuple(params[n].shape for n in self.layout.params),
            (None,) * len(self.layout.params)))
        super().__init__(fn, net_input.detach().to(dtype), chunk_size)
        if self.output.dim() != 4 or self.output.shape[:2] != (1, 1):
            raise ValueError("net must output one single-channel image (1, 1, H, W), got "
                             f"{tuple(self.output.shape)}")

    @property
    def num_pixels(self) -> int:
        return self.num_outputs

    @property
    def im_shape(self) -> tuple[int, int]:
        return tuple(self.output.shape[-2:])

    def low_rank(self, rank: int, oversample: int = 10, power_iters: int = 2,
                 generator: torch.Generator | None = None) -> SVDResult:
        """Rank-``rank`` truncated SVD ``J ≈ U diag(S) Vᵀ`` by randomized SVD (JVPs/VJPs only)."""
        return randomized_svd(self.jvp, self.vjp, (self.num_pixels, self.num_params), rank,
                              oversample=oversample, power_iters=power_iters, generator=generator,
                              dtype=self.dtype, device=self.device)


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
