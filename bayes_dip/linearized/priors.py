"""Block-diagonal Gaussian prior over the U-Net weights under the prior (DESIGN.md §1.3).

The weights under the prior are the weights of the convolutions listed by
:meth:`~bayes_dip.dip.UNet.prior_blocks`, flattened block by block, module by module
(``weight.flatten()``): a 3×3 convolution ``(out, in, 3, 3)`` becomes ``out · in`` filters of
``m = 9`` consecutive positions. The prior is ``θ ~ N(0, Σ_θ)`` with

* GP blocks: ``Σ_d = σ_d² I_F ⊗ K(ℓ_d)``, ``K(ℓ)_{pq} = exp(−‖x_p − x_q‖ / ℓ)`` (Matérn-½ over
  the filter positions, unit grid spacing) plus a fixed jitter on the diagonal;
* Normal blocks: ``Σ_d = σ_d² I``;
* optionally a g-prior scaling ``Σ_θ = S Σ̃ S``, ``S = diag(weight_scale)``
  (:func:`gprior_layout` + :func:`~bayes_dip.linearized.jacobian.gprior_scale`).

Hyperparameters are stored as ``log σ_d²`` (all blocks) and ``log ℓ_d`` (GP blocks).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from bayes_dip.checks import check_choice, check_number
from bayes_dip.laplace.function_space import WeightCovariance

__all__ = ["BlockLayout", "WeightLayout", "weight_layout", "gprior_layout", "distance_classes",
           "WeightPrior", "KERNEL_JITTER", "kernel_values", "kernel_lengthscale_derivative"]

KERNEL_JITTER = 1e-6
"""Added to the diagonal of every unit-variance GP kernel ``K(ℓ)`` (invertible for large ℓ)."""


def kernel_values(distance: Tensor, lengthscale: Tensor) -> Tensor:
    """The one kernel formula: ``κ(r; ℓ) = exp(−r/ℓ)`` plus :data:`KERNEL_JITTER` at ``r = 0``
    (broadcasting ``distance`` against ``lengthscale``; differentiable in ``ℓ``)."""
    return torch.exp(-distance / lengthscale) + KERNEL_JITTER * (distance == 0)


def kernel_lengthscale_derivative(distance: Tensor, lengthscale: Tensor) -> Tensor:
    """``∂κ(r; ℓ)/∂ℓ = r/ℓ² · exp(−r/ℓ)`` of :func:`kernel_values` (the jitter is constant)."""
    return distance / lengthscale ** 2 * torch.exp(-distance / lengthscale)


@dataclass(frozen=True)
class BlockLayout:
    """One prior block: its weights are ``θ[start:stop]``.

    ``kind`` is ``"gp"`` (filters of ``kernel_size²`` positions) or ``"normal"``;
    ``params`` are the parameter names in the network, ``shapes`` their shapes.
    """

    name: str
    kind: str
    params: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    start: int
    stop: int
    kernel_size: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def filter_numel(self) -> int:
        """Weights per filter: ``kernel_size²`` for GP blocks, 1 for Normal blocks."""
        return self.kernel_size ** 2 if self.kind == "gp" else 1

    @property
    def num_filters(self) -> int:
        return self.size // self.filter_numel


@dataclass(frozen=True)
class WeightLayout:
    """The blocks of the weights under the prior, in the order of the flat vector ``θ (P,)``."""

    blocks: tuple[BlockLayout, ...]

    @property
    def num_params(self) -> int:
        return self.blocks[-1].stop if self.blocks else 0

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(p for b in self.blocks for p in b.params)

    @property
    def gp_indices(self) -> tuple[int, ...]:
        return tuple(i for i, b in enumerate(self.blocks) if b.kind == "gp")

    def split(self, theta: Tensor) -> list[Tensor]:
        """Views of ``theta (P, ...)`` per block."""
        return [theta[b.start:b.stop] for b in self.blocks]


def weight_layout(net: nn.Module, blocks: Sequence | None = None) -> WeightLayout:
    """The :class:`WeightLayout` of ``net`` for ``blocks`` (default ``net.prior_blocks()``).

    ``blocks``: objects with ``name``, ``kind`` (``"gp"``/``"normal"``) and ``modules``
    (dotted names of ``nn.Conv2d`` modules), like :class:`~bayes_dip.dip.PriorBlock`.
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    if blocks is None:
        if not hasattr(net, "prior_blocks"):
            raise TypeError("net has no prior_blocks(); pass blocks explicitly")
        blocks = net.prior_blocks()
    modules = dict(net.named_modules())
    out: list[BlockLayout] = []
    seen: set[str] = set()
    start = 0
    for block in blocks:
        check_choice(block.kind, f"block {block.name!r}: kind", ("gp", "normal"))
        if not block.modules:
            raise ValueError(f"block {block.name!r} lists no modules")
        names, shapes, sizes = [], [], set()
        for mod_name in block.modules:
            mod = modules.get(mod_name)
            if not isinstance(mod, nn.Conv2d):
                raise ValueError(f"block {block.name!r}: {mod_name!r} is not an nn.Conv2d of net")
            if mod_name in seen:
                raise ValueError(f"module {mod_name!r} appears in more than one block")
            seen.add(mod_name)
            kh, kw = mod.kernel_size
            if kh != kw:
                raise ValueError(f"block {block.name!r}: {mod_name!r} has a non-square kernel "
                                 f"{kh}×{kw}")
            sizes.add(kh)
            names.append(f"{mod_name}.weight")
            shapes.append(tuple(mod.weight.shape))
        if block.kind == "gp" and (len(sizes) != 1 or min(sizes) < 2):
            raise ValueError(f"GP block {block.name!r} needs convolutions sharing one kernel size "
                             f">= 2, got sizes {sorted(sizes)}")
        size = sum(math.prod(s) for s in shapes)
        out.append(BlockLayout(block.name, block.kind, tuple(names), tuple(shapes), start,
                               start + size, max(sizes) if block.kind == "gp" else 1))
        start += size
    if not out:
        raise ValueError("blocks must not be empty")
    return WeightLayout(tuple(out))


def gprior_layout(layout: WeightLayout) -> WeightLayout:
    """All weights of ``layout`` as one Normal block ``"gprior"`` (isotropic g-prior)."""
    whole = BlockLayout("gprior", "normal", layout.params,
                        tuple(s for b in layout.blocks for s in b.shapes), 0, layout.num_params, 1)
    return WeightLayout((whole,))


def distance_classes(kernel_size: int, dtype: torch.dtype = torch.float64,
                     device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Distinct distances ``r (C,)`` on the ``k×k`` grid and 0/1 matrices ``D (C, k², k²)``.

    ``dist = Σ_c r_c D_c`` and so ``exp(−dist/ℓ) = Σ_c exp(−r_c/ℓ) D_c`` (``r_0 = 0``, ``D_0 = I``).
    """
    idx = torch.arange(kernel_size, dtype=torch.float64)
    coords = torch.cartesian_prod(idx, idx)
    dist = torch.cdist(coords, coords)
    radii = torch.unique(torch.round(dist * 1e9) / 1e9)
    mats = torch.stack([(torch.round(dist * 1e9) / 1e9 == r).to(torch.float64) for r in radii])
    return radii.to(dtype=dtype, device=device), mats.to(dtype=dtype, device=device)


class WeightPrior(nn.Module, WeightCovariance):
    """``θ ~ N(0, Σ_θ)`` over the weights of a :class:`WeightLayout` (see the module docs): a
    structured :class:`~bayes_dip.laplace.function_space.WeightCovariance` of the core.

    Args:
        layout: the prior blocks.
        variance: initial ``σ_d²`` of every block (paper: 1).
        lengthscale: initial ``ℓ_d`` of every GP block (paper: 0.1).
        weight_scale: ``(P,)`` positive g-prior scaling ``S`` (``None``: identity).
        dtype, device: of the hyperparameters (float64 by default: evidence in float64).

    Products take column blocks ``V (P, k)`` and keep ``V``'s dtype.
    """

    def __init__(self, layout: WeightLayout, variance: float = 1.0, lengthscale: float = 0.1,
                 weight_scale: Tensor | None = None, *, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None):
        super().__init__()
        if not isinstance(layout, WeightLayout):
            raise TypeError(f"layout must be a WeightLayout, got {type(layout).__name__}")
        for name, value in (("variance", variance), ("lengthscale", lengthscale)):
            check_number(value, name, gt=0)
        self.layout = layout
        n_gp = len(layout.gp_indices)
        self.log_variance = nn.Parameter(
            torch.full((len(layout.blocks),), math.log(variance), dtype=dtype, device=device))
        self.log_lengthscale = nn.Parameter(
            torch.full((n_gp,), math.log(lengthscale), dtype=dtype, device=device))
        if weight_scale is not None:
            if not isinstance(weight_scale, Tensor) or weight_scale.shape != (layout.num_params,):
                raise ValueError(f"weight_scale must be a tensor of shape ({layout.num_params},)")
            if not bool((weight_scale > 0).all()):
                raise ValueError("weight_scale must be strictly positive")
            weight_scale = weight_scale.detach().to(dtype=dtype, device=device)
        self.register_buffer("weight_scale", weight_scale)
        sizes = sorted({layout.blocks[i].kernel_size for i in layout.gp_indices})
        for k in sizes:
            radii, mats = distance_classes(k, dtype, device)
            self.register_buffer(f"_radii_{k}", radii)
            self.register_buffer(f"_dist_{k}", (radii[:, None, None] * mats).sum(0))

    @property
    def num_params(self) -> int:
        return self.layout.num_params

    @property
    def dtype(self) -> torch.dtype:
        return self.log_variance.dtype

    @property
    def device(self) -> torch.device:
        return self.log_variance.device

    # -- hyperparameters ------------------------------------------------------------------
    @property
    def variances(self) -> Tensor:
        """``σ_d² (n_blocks,)``."""
        return self.log_variance.exp()

    @property
    def lengthscales(self) -> Tensor:
        """``ℓ_d (n_gp,)`` of the GP blocks, in the order of ``layout.gp_indices``."""
        return self.log_lengthscale.exp()

    def hyperparameters(self) -> dict[str, dict[str, float]]:
        """``{block: {"variance": σ², "lengthscale": ℓ (GP only)}}`` as plain floats."""
        out: dict[str, dict[str, float]] = {}
        gp = {d: i for i, d in enumerate(self.layout.gp_indices)}
        for d, block in enumerate(self.layout.blocks):
            out[block.name] = {"variance": float(self.variances[d].detach())}
            if d in gp:
                out[block.name]["lengthscale"] = float(self.lengthscales[gp[d]].detach())
        return out

    def class_weights(self, gp_index: int) -> Tensor:
        """``κ_c(ℓ) = exp(−r_c/ℓ)`` (+ jitter at ``r = 0``) of GP block ``gp_index``: ``(C,)``."""
        k = self.layout.blocks[self.layout.gp_indices[gp_index]].kernel_size
        return kernel_values(getattr(self, f"_radii_{k}"), self.lengthscales[gp_index])

    def kernel(self, gp_index: int) -> Tensor:
        """Unit-variance kernel ``K(ℓ) + jitter I`` of GP block ``gp_index``: ``(k², k²)``."""
        k = self.layout.blocks[self.layout.gp_indices[gp_index]].kernel_size
        return kernel_values(getattr(self, f"_dist_{k}"), self.lengthscales[gp_index])

    def block_factors(self, kind: str = "cov") -> list[Tensor]:
        """Per block: ``(m, m)`` matrix (GP) or scalar (Normal) of ``Σ_d`` (``kind="cov"``),
        its lower Cholesky factor (``"sqrt"``) or its inverse (``"inv"``)."""
        check_choice(kind, "kind", ("cov", "sqrt", "inv"))
        out: list[Tensor] = []
        var = self.variances
        gp = {d: i for i, d in enumerate(self.layout.gp_indices)}
        for d in range(len(self.layout.blocks)):
            if d in gp:
                kern = self.kernel(gp[d])
                if kind == "cov":
                    out.append(var[d] * kern)
                elif kind == "sqrt":
                    out.append(var[d].sqrt() * torch.linalg.cholesky(kern))
                else:
                    out.append(torch.cholesky_inverse(torch.linalg.cholesky(kern)) / var[d])
            else:
                out.append({"cov": var[d], "sqrt": var[d].sqrt(), "inv": 1 / var[d]}[kind])
        return out

    # -- products ---------------------------------------------------------------------------
    def _apply(self, v: Tensor, kind: str, transpose: bool = False) -> Tensor:
        v = self._check(v)
        pre = post = None  # diagonal g-prior scalings around the block-diagonal part
        if self.weight_scale is not None:
            s = self.weight_scale.to(v.dtype).unsqueeze(1)
            scalings = {("cov", False): (s, s), ("sqrt", False): (None, s),
                        ("sqrt", True): (s, None), ("inv", False): (1 / s, 1 / s)}
            pre, post = scalings[(kind, transpose)]
        if pre is not None:
            v = v * pre
        parts = []
        for block, fac, part in zip(self.layout.blocks, self.block_factors(kind),
                                    self.layout.split(v)):
            fac = fac.to(v.dtype)
            if fac.dim() == 0:
                parts.append(fac * part)
            else:
                m = fac.shape[0]
                fac = fac.mT if transpose else fac
                filt = part.reshape(block.num_filters, m, part.shape[1])
                parts.append(torch.einsum("pq,fqk->fpk", fac, filt).reshape(part.shape))
        out = torch.cat(parts, 0)
        return out if post is None else out * post

    def matmul(self, v: Tensor) -> Tensor:
        """``Σ_θ V`` for ``V (P, k)``."""
        return self._apply(v, "cov")

    def sqrt_matmul(self, v: Tensor) -> Tensor:
        """``L V`` with ``Σ_θ = L Lᵀ`` (``L = S ⊕_d chol(Σ_d)``): ``L ε ~ N(0, Σ_θ)``."""
        return self._apply(v, "sqrt")

    def sqrt_rmatmul(self, v: Tensor) -> Tensor:
        """``Lᵀ V`` (the transpose of :meth:`sqrt_matmul`)."""
        return self._apply(v, "sqrt", transpose=True)

    def inv_matmul(self, v: Tensor) -> Tensor:
        """``Σ_θ⁻¹ V``."""
        return self._apply(v, "inv")

    def scatter(self, theta: Tensor) -> list[Tensor]:
        """Per block the sufficient statistic of ``θ`` for :meth:`quadratic` (detached):
        ``Θ_dᵀ Θ_d (m, m)`` over the filters ``Θ_d (F, m)`` (GP) or ``‖θ_d‖²`` (Normal),
        after dividing by the g-prior scaling."""
        if not isinstance(theta, Tensor) or theta.shape != (self.layout.num_params,):
            raise ValueError(f"theta must have shape ({self.layout.num_params},)")
        theta = theta.detach().to(self.log_variance.dtype)
        if self.weight_scale is not None:
            theta = theta / self.weight_scale
        out = []
        for block, part in zip(self.layout.blocks, self.layout.split(theta)):
            if block.kind == "gp":
                filt = part.reshape(block.num_filters, block.filter_numel)
                out.append(filt.mT @ filt)
            else:
                out.append(part.square().sum())
        return out

    def quadratic(self, theta: Tensor | None = None, *,
                  scatter: list[Tensor] | None = None) -> Tensor:
        """``θᵀ Σ_θ⁻¹ θ`` for ``θ (P,)`` (or its precomputed :meth:`scatter`); differentiable in
        the hyperparameters; ``O(n_blocks m³)`` given the scatter."""
        if (theta is None) == (scatter is None):
            raise ValueError("give exactly one of theta and scatter")
        if scatter is None:
            scatter = self.scatter(theta)
        if len(scatter) != len(self.layout.blocks):
            raise ValueError(f"scatter must have {len(self.layout.blocks)} entries")
        var = self.variances
        normal = [d for d, b in enumerate(self.layout.blocks) if b.kind == "normal"]
        total = var.new_zeros(())
        if normal:
            total = total + (torch.stack([scatter[d] for d in normal]) / var[normal]).sum()
        gp = list(self.layout.gp_indices)
        for k in sorted({self.layout.blocks[d].kernel_size for d in gp}):
            idx = [i for i, d in enumerate(gp) if self.layout.blocks[d].kernel_size == k]
            blocks = [gp[i] for i in idx]
            kern = kernel_values(getattr(self, f"_dist_{k}"), self.lengthscales[idx, None, None])
            chol = torch.linalg.cholesky(kern)
            stats = torch.stack([scatter[d] for d in blocks])
            traces = torch.cholesky_solve(stats, chol).diagonal(dim1=-2, dim2=-1).sum(-1)
            total = total + (traces / var[blocks]).sum()
        return total

    def logdet(self) -> Tensor:
        """``log |Σ_θ|``."""
        total = self.log_variance.new_zeros(())
        for block, fac in zip(self.layout.blocks, self.block_factors("cov")):
            if fac.dim() == 0:
                total = total + block.size * fac.log()
            else:
                total = total + block.num_filters * torch.logdet(fac)
        if self.weight_scale is not None:
            total = total + 2 * self.weight_scale.log().sum()
        return total

    def _check(self, v: Tensor) -> Tensor:
        if not isinstance(v, Tensor):
            raise TypeError(f"v must be a torch.Tensor, got {type(v).__name__}")
        if v.dim() != 2 or v.shape[0] != self.layout.num_params:
            raise ValueError(f"v must have shape ({self.layout.num_params}, k), "
                             f"got {tuple(v.shape)}")
        return v
