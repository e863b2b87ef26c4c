"""Covariances of the linearised model: image ``J Σ_θ Jᵀ`` and observation ``K_yy``.

* :class:`ImageCovariance` (the core's :class:`~bayes_dip.laplace.function_space.OutputKernel`
  of the U-Net prior) and :func:`ray_likelihood`: with the core's
  :class:`~bayes_dip.laplace.function_space.ObservationKernel` they give the matrix-free
  ``K_yy`` (one VJP and one JVP per column), prior samples and a Nyström preconditioner.
* :class:`StructuredCovariance`: exact assembly for small images through the block-kernel
  structure of DESIGN.md §7. Every GP block shares one ``m×m`` kernel
  ``σ_d² K(ℓ_d) = σ_d² Σ_c κ_c(ℓ_d) D_c`` (distance classes ``D_c``), so
  ``J Σ_θ Jᵀ = Σ_d σ_d² Σ_c κ_c(ℓ_d) M_{d,c}`` with fixed Gram matrices
  ``M_{d,c} = Σ_filters J_f D_c J_fᵀ`` and ``K_yy = Σ w_t(h) N_t + σ_y² I``, ``N_t = A M_t Aᵀ``.
  The Grams are built once from the dense Jacobian; one evidence evaluation then costs a
  weighted sum of ``T`` matrices and one Cholesky factorisation.

  Building the Grams uses a basis of the filter positions in which all ``D_c`` are jointly
  block diagonal (for 3×3 filters the symmetry group of the square splits the 9 positions
  into blocks of sizes 3, 1, 1, 2, 2), so each GP block needs 14 products ``J̃_i J̃_jᵀ``
  instead of 45 (or one per class and position pair).
"""
from __future__ import annotations

import math
import torch
from torch import Tensor
from tqdm.auto import tqdm

from bayes_dip.laplace.function_space import OutputKernel
from bayes_dip.laplace.likelihoods import LinearGaussianLikelihood

from .heldout import ObservationSpectrum
from .jacobian import NetworkJacobian
from .priors import WeightLayout, WeightPrior, distance_classes, kernel_values

__all__ = ["ImageCovariance", "StructuredCovariance", "TermWeights", "joint_block_basis",
           "ray_likelihood", "term_grams"]


class ImageCovariance(OutputKernel):
    """``J Σ_θ Jᵀ`` (``n_pix × n_pix``): the core's :class:`OutputKernel` of the U-Net weight
    prior (the prior and the Jacobian must cover the same weights in the same order)."""

    def __init__(self, jac: NetworkJacobian, prior: WeightPrior):
        if not isinstance(jac, NetworkJacobian):
            raise TypeError(f"jac must be a NetworkJacobian, got {type(jac).__name__}")
        if not isinstance(prior, WeightPrior):
            raise TypeError(f"prior must be a WeightPrior, got {type(prior).__name__}")
        if prior.layout.params != jac.layout.params:
            raise ValueError("prior and jac must cover the same weights in the same order")
        super().__init__(jac, prior)


def ray_likelihood(ray_trafo) -> LinearGaussianLikelihood:
    """The core's Gaussian likelihood behind the ray transform, ``y = A x + ε`` on
    ``(B, 1, H, W)`` images and ``(B, 1, n_angles, n_det)`` sinograms."""
    return LinearGaussianLikelihood(ray_trafo.A, ray_trafo.A_adjoint,
                                    out_shape=(1, *ray_trafo.im_shape),
                                    obs_shape=(1, *ray_trafo.obs_shape))


def joint_block_basis(mats: Tensor, tol: float = 1e-10) -> tuple[Tensor, list[list[int]]]:
    """Orthogonal ``Q (m, m)`` and index groups such that every ``Qᵀ D Q`` (``D`` in
    ``mats (C, m, m)``, symmetric) is block diagonal with blocks ``groups``.

    The eigenspaces of a random symmetric matrix commuting with all ``D`` are invariant
    under all of them; the commutant is the null space of ``X ↦ (XD − DX)_D``.
    """
    c, m, _ = mats.shape
    mats = mats.to(torch.float64)
    eye = torch.eye(m, dtype=torch.float64)
    # row-major vec: vec(X D) = (I ⊗ Dᵀ) vec X, vec(D X) = (D ⊗ I) vec X
    system = torch.cat([torch.kron(eye, d.mT.contiguous()) - torch.kron(d, eye) for d in mats])
    evals, evecs = torch.linalg.eigh(system.mT @ system)  # null space of the system
    null = evecs[:, evals <= tol * evals[-1].clamp_min(1.0)].mT
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(null.shape[0], generator=gen, dtype=torch.float64) @ null).reshape(m, m)
    evals, evecs = torch.linalg.eigh(x + x.mT)
    scale = evals.abs().max().clamp_min(1.0)
    groups, start = [], 0
    for i in range(1, m + 1):
        if i == m or evals[i] - evals[i - 1] > 1e-6 * scale:
            groups.append(list(range(start, i)))
            start = i
    inside = torch.zeros(m, m, dtype=torch.bool)
    for g in groups:
        inside[g[0]:g[-1] + 1, g[0]:g[-1] + 1] = True
    rotated = evecs.mT @ mats @ evecs
    off = rotated[:, ~inside]
    if off.numel() and float(off.abs().max()) > 1e-8 * float(mats.abs().max()):
        raise RuntimeError("joint_block_basis: failed to block-diagonalise the matrices")
    return evecs, groups


class _PackedGaussianNLL(torch.autograd.Function):
    """``½ log|K| + ½ rᵀ K⁻¹ r`` with ``K = Σ_t w_t N_t + σ² I`` (lower-packed ``N``), float64.

    ``flat`` are the row-major positions of the packed entries in ``K``, ``mult`` their
    multiplicity in ``⟨G, N_t⟩`` (1 on the diagonal, 2 below), ``buf`` an ``n²`` workspace
    whose upper triangle is never read (Cholesky uses the lower one).
    """

    @staticmethod
    def forward(ctx, weights: Tensor, noise_var: Tensor, grams: Tensor, flat: Tensor,
                mult: Tensor, buf: Tensor, residual: Tensor | None) -> Tensor:
        n = math.isqrt(buf.numel())
        buf.index_copy_(0, flat, weights @ grams)
        k = buf.view(n, n)
        k.diagonal().add_(noise_var)
        chol, info = torch.linalg.cholesky_ex(k)
        if int(info) != 0:
            raise ValueError("K_yy is not positive definite (Cholesky failed at column "
                             f"{int(info)}); the hyperparameters have diverged")
        value = chol.diagonal().log().sum()
        alpha = None
        if residual is not None:
            alpha = torch.cholesky_solve(residual.unsqueeze(1), chol).squeeze(1)
            value = value + 0.5 * residual @ alpha
        ctx.save_for_backward(grams, flat, mult, chol, alpha)
        return value

    @staticmethod
    def backward(ctx, grad: Tensor):
        grams, flat, mult, chol, alpha = ctx.saved_tensors
        g = torch.cholesky_inverse(chol)  # d(½ log|K|)/dK = ½ K⁻¹
        if alpha is not None:
            g = g - torch.outer(alpha, alpha)
        g = 0.5 * g.reshape(-1)
        packed = g.index_select(0, flat) * mult
        grad_w = grams @ packed * grad
        grad_noise = g[::math.isqrt(g.numel()) + 1].sum() * grad
        return grad_w, grad_noise, None, None, None, None, None


def _jacobian_blocks(jac: NetworkJacobian, prior: WeightPrior, cotangents: Tensor,
                     batch_size: int, progress: bool, blocks: list[int],
                     desc: str = "Jacobian") -> dict[int, Tensor]:
    """``Uᵀ J S`` of the prior blocks ``blocks`` for image-space cotangents ``U (n_pix, k)``
    (``U = I``: the dense Jacobian; g-prior scaling ``S``), from ``k`` VJPs: GP blocks as
    ``(m, k, F)`` (position-major, so each position is a contiguous ``k × F`` matrix), Normal
    blocks as ``(k, size)``; in the Jacobian's dtype."""
    k = cotangents.shape[1]
    bufs: dict[int, Tensor] = {}
    for d in blocks:
        block = prior.layout.blocks[d]
        if block.kind == "gp":
            shape = (block.filter_numel, k, block.num_filters)
        else:
            shape = (k, block.size)
        bufs[d] = torch.empty(shape, dtype=jac.dtype, device=jac.device)
    scale = prior.weight_scale
    scale = None if scale is None else scale.to(jac.dtype).unsqueeze(1)
    for i in tqdm(range(0, k, batch_size), desc=desc, disable=not progress, leave=False):
        with torch.no_grad():
            g = jac.vjp(cotangents[:, i:i + batch_size].to(jac.dtype))
        if scale is not None:
            g = g * scale
        c = g.shape[1]
        for d, (block, part) in enumerate(zip(prior.layout.blocks, prior.layout.split(g))):
            if d not in bufs:
                continue
            if block.kind == "gp":
                filters = part.reshape(block.num_filters, block.filter_numel, c)
                bufs[d][:, i:i + c] = filters.permute(1, 2, 0)
            else:
                bufs[d][i:i + c] = part.mT
    return bufs


def _passes(sizes: list[int], max_bytes: int | None) -> list[list[int]]:
    """Block indices in as few groups as keep each group's bytes near ``max_bytes``
    (``ceil(total / max_bytes)`` groups, largest blocks first into the lightest group)."""
    count = 1 if max_bytes is None else max(1, math.ceil(sum(sizes) / max_bytes))
    groups: list[list[int]] = [[] for _ in range(count)]
    loads = [0] * count
    for d in sorted(range(len(sizes)), key=lambda d: -sizes[d]):
        lightest = loads.index(min(loads))
        groups[lightest].append(d)
        loads[lightest] += sizes[d]
    return [sorted(g) for g in groups if g]


def term_grams(jac: NetworkJacobian, prior: WeightPrior, cotangents: Tensor, *,
               batch_size: int = 16, progress: bool = False, max_bytes: int | None = 2 ** 29
               ) -> tuple[list[tuple[int, int]], list[float], list[Tensor]]:
    """The Grams ``Uᵀ M_t U`` ``(k, k)`` (float64) of every prior term ``t`` for image-space
    cotangents ``U (n_pix, k)``, with ``terms[t] = (block, class)`` (class ``-1``: Normal
    block) and the class radii; one block's ``Uᵀ J`` is freed before the next one's Grams.

    ``Uᵀ J`` (``k × P`` in the Jacobian's dtype) is held for about ``max_bytes`` at most:
    when it is larger, the blocks are split into groups, each from its own ``k`` VJPs (the
    same Grams, one more pass of VJPs per group; ``None``: one pass)."""
    f64 = torch.float64
    blocks = prior.layout.blocks
    sizes = [cotangents.shape[1] * block.size * jac.theta.element_size() for block in blocks]
    passes = _passes(sizes, max_bytes)
    per_block: dict[int, tuple[list[Tensor], list[float], int]] = {}
    for n, group in enumerate(passes):
        desc = "Jacobian" if len(passes) == 1 else f"Jacobian {n + 1}/{len(passes)}"
        bufs = _jacobian_blocks(jac, prior, cotangents, batch_size, progress, group, desc)
        for d in group:
            buf = bufs.pop(d)  # free as we go
            if blocks[d].kind == "gp":
                block_radii, mats = distance_classes(blocks[d].kernel_size, f64)
                per_block[d] = (_gp_block_grams(buf, mats), block_radii.tolist(), mats.shape[0])
            else:
                jd = buf.to(f64)
                per_block[d] = ([jd @ jd.mT], [0.0], 0)
            del buf
    terms: list[tuple[int, int]] = []
    radii: list[float] = []
    grams: list[Tensor] = []
    for d in range(len(blocks)):
        block_grams, block_radii, classes = per_block.pop(d)
        grams += block_grams
        radii += block_radii
        terms += [(d, c) for c in range(classes)] if classes else [(d, -1)]
    return terms, radii, grams


class TermWeights:
    """``w_t(h)`` of the terms ``(block, class)``: ``σ_d² κ_c(ℓ_d)`` (GP) or ``σ_d²``
    (Normal), so that ``Σ_θ``-weighted Grams are ``Σ_t w_t(h) G_t``; differentiable."""

    def __init__(self, terms: list[tuple[int, int]], radii: list[float], layout: WeightLayout,
                 dtype: torch.dtype = torch.float64, device: torch.device | None = None):
        gp = {d: i for i, d in enumerate(layout.gp_indices)}
        self.terms, self.radii = terms, radii
        self._num_blocks = len(layout.blocks)
        self._block_idx = torch.tensor([d for d, _ in terms], device=device)
        self._gp_idx = torch.tensor([gp[d] if c >= 0 else -1 for d, c in terms], device=device)
        self._radius = torch.tensor(radii, dtype=dtype, device=device)

    def __call__(self, prior: WeightPrior) -> Tensor:
        if prior.log_variance.numel() != self._num_blocks:
            raise ValueError("prior does not match the structure this covariance was built for")
        dtype = self._radius.dtype
        var = prior.variances[self._block_idx]
        if prior.log_lengthscale.numel() == 0:
            return var.to(dtype)
        ell = prior.lengthscales[self._gp_idx.clamp_min(0)]
        kappa = kernel_values(self._radius, ell)
        return (var * torch.where(self._gp_idx >= 0, kappa, torch.ones_like(kappa))).to(dtype)


def _gp_block_grams(jac_block: Tensor, mats: Tensor) -> list[Tensor]:
    """``M_c = Σ_f J_f D_c J_fᵀ`` for all classes ``c`` of one GP block ``(m, n_pix, F)``.

    In the basis ``Q`` of :func:`joint_block_basis` every ``QᵀD_cQ`` is block diagonal, so
    ``M_c = Σ_{i,j in one group} (QᵀD_cQ)_{ij} J̃_i J̃_jᵀ`` with ``J̃_i = Σ_p Q_{pi} J_p``.
    """
    f64, n = torch.float64, jac_block.shape[1]
    basis, groups = joint_block_basis(mats)
    coef = basis.mT @ mats @ basis  # (C, m, m), block diagonal
    grams = [torch.zeros(n, n, dtype=f64, device=jac_block.device) for _ in range(mats.shape[0])]
    term = torch.empty(jac_block.shape[1:], dtype=f64, device=jac_block.device)
    for group in groups:  # the rotated positions of one group at a time
        rot = {i: _rotate(jac_block, basis[:, i], term) for i in group}
        for a, i in enumerate(group):
            for j in group[a:]:
                prod = rot[i] @ rot[j].mT
                if i != j:
                    prod += prod.mT.clone()
                for c in range(mats.shape[0]):
                    if abs(float(coef[c, i, j])) > 1e-12:
                        grams[c].add_(prod, alpha=float(coef[c, i, j]))
        del rot
    return grams


def _rotate(jac_block: Tensor, weights: Tensor, term: Tensor) -> Tensor:
    """``Σ_p weights[p] · jac_block[p]`` in float64, summed in order with one workspace
    ``term`` (the float64 copies are never all alive at once)."""
    out = torch.empty_like(term).copy_(jac_block[0]).mul_(float(weights[0]))
    for p in range(1, jac_block.shape[0]):
        out.add_(term.copy_(jac_block[p]).mul_(float(weights[p])))
    return out


class StructuredCovariance:
    """Exact ``J Σ_θ(h) Jᵀ`` and ``K_yy(h)`` from precomputed Grams (see module docs).

    Build with :meth:`build`. ``terms[t] = (block index, class index)`` (class ``-1`` for
    Normal blocks); ``image_grams (T, n_pix, n_pix)`` ``M_t``; the observation Grams
    ``N_t = A M_t Aᵀ`` are kept lower-packed, ``(T, n_obs (n_obs + 1) / 2)``. All float64.
    ``weights(prior)`` gives ``w_t(h)`` (:class:`TermWeights`).
    """

    def __init__(self, terms: list[tuple[int, int]], radii: list[float], layout: WeightLayout,
                 image_grams: Tensor, obs_grams: Tensor, n_obs: int, im_shape: tuple[int, int],
                 ray_trafo):
        self.terms = terms
        device = obs_grams.device
        self.weights = TermWeights(terms, radii, layout, obs_grams.dtype, device)
        self.image_grams = image_grams
        self.obs_grams = obs_grams
        self.n_obs = n_obs
        self.im_shape = im_shape
        self.ray_trafo = ray_trafo
        rows, cols = torch.tril_indices(n_obs, n_obs, device=device)
        self._rows, self._cols = rows, cols
        self._flat = rows * n_obs + cols
        self._mult = torch.where(rows == cols, 1.0, 2.0).to(obs_grams.dtype)
        self._buf = torch.zeros(n_obs * n_obs, dtype=obs_grams.dtype, device=device)

    @classmethod
    def build(cls, jac: NetworkJacobian, ray_trafo, prior: WeightPrior, *, batch_size: int = 16,
              progress: bool = False) -> "StructuredCovariance":
        """Grams from ``n_pix`` VJPs (the dense ``J`` in the Jacobian's dtype, held once) and
        per GP block 14 (3×3 filters) products ``n_pix × F × n_pix`` in float64."""
        ImageCovariance(jac, prior)  # validates jac/prior
        if tuple(ray_trafo.im_shape) != jac.im_shape:
            raise ValueError("ray_trafo.im_shape does not match the network output")
        f64 = torch.float64
        eye = torch.eye(jac.num_pixels, dtype=jac.dtype, device=jac.device)
        terms, radii, grams = term_grams(jac, prior, eye, batch_size=batch_size,
                                         progress=progress)
        n = jac.num_pixels
        image_grams = torch.empty(len(grams), n, n, dtype=f64, device=jac.device)
        for t in range(len(grams)):  # copy term by term: never two full sets of Grams
            image_grams[t] = grams[t]
            grams[t] = None  # type: ignore[call-overload]
        del grams
        n_obs = math.prod(ray_trafo.obs_shape)
        rows, cols = torch.tril_indices(n_obs, n_obs, device=jac.device)
        obs = torch.empty(len(terms), rows.numel(), dtype=f64, device=jac.device)
        for t in range(len(terms)):
            am = ray_trafo.matmul(image_grams[t])  # A M (M symmetric)
            obs[t] = ray_trafo.matmul(am.mT)[rows, cols]  # A (A M)ᵀ = A M Aᵀ
        return cls(terms, radii, prior.layout, image_grams, obs, n_obs, jac.im_shape,
                   ray_trafo)

    def image_covariance(self, prior: WeightPrior) -> Tensor:
        """``J Σ_θ Jᵀ`` ``(n_pix, n_pix)``."""
        return torch.einsum("t,tij->ij", self.weights(prior), self.image_grams)

    def observation_covariance(self, prior: WeightPrior, noise_variance: Tensor | float) -> Tensor:
        """``K_yy = A J Σ_θ Jᵀ Aᵀ + σ_y² I`` ``(n_obs, n_obs)`` (full symmetric)."""
        packed = self.weights(prior) @ self.obs_grams
        k = packed.new_zeros(self.n_obs, self.n_obs)
        k = k.index_put((self._rows, self._cols), packed)
        k = k + k.tril(-1).mT
        return k + noise_variance * torch.eye(self.n_obs, dtype=k.dtype, device=k.device)

    def spectrum(self, prior: WeightPrior, noise_variance: Tensor | float) -> ObservationSpectrum:
        """Eigen-structure of ``A J Σ_θ Jᵀ Aᵀ`` (full basis) for held-out checks."""
        with torch.no_grad():
            evals, evecs = torch.linalg.eigh(self.observation_covariance(prior, 0.0))
        return ObservationSpectrum(evecs, evals.clamp_min(0.0), 0.0, float(noise_variance))

    def cross_covariance(self, prior: WeightPrior) -> Tensor:
        """``J Σ_θ Jᵀ Aᵀ`` ``(n_pix, n_obs)``."""
        return self.ray_trafo.matmul(self.image_covariance(prior)).mT

    def gaussian_nll(self, prior: WeightPrior, noise_variance: Tensor,
                     residual: Tensor | None = None) -> Tensor:
        """``½ log|K_yy| (+ ½ rᵀ K_yy⁻¹ r)``, differentiable in the hyperparameters (float64).

        The gradient costs one inverse from the Cholesky factor and one pass over the Grams.
        """
        if residual is not None:
            residual = residual.reshape(-1).to(self.obs_grams.dtype)
            if residual.numel() != self.n_obs:
                raise ValueError(f"residual must have {self.n_obs} entries, got {residual.numel()}")
        nv = noise_variance.to(self.obs_grams.dtype).reshape(())
        return _PackedGaussianNLL.apply(self.weights(prior), nv, self.obs_grams, self._flat,
                                        self._mult, self._buf, residual)

    def edge_variance_terms(self) -> Tensor:
        """``q_t (T, n_edges)``: ``Var`` of each image difference (vertical then horizontal, as
        in :func:`~bayes_dip.dip.tv_loss`) per unit weight of term ``t``: ``diag(∇ M_t ∇ᵀ)``."""
        h, w = self.im_shape
        idx = torch.arange(h * w, device=self.image_grams.device).reshape(h, w)
        a = torch.cat([idx[1:, :].reshape(-1), idx[:, 1:].reshape(-1)])
        b = torch.cat([idx[:-1, :].reshape(-1), idx[:, :-1].reshape(-1)])
        diag = self.image_grams.diagonal(dim1=1, dim2=2)
        return diag[:, a] + diag[:, b] - 2 * self.image_grams[:, a, b]
