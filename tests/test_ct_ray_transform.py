"""RayTransform: exact adjoint, backend agreement, physical scaling, autograd and torch.func."""
import numpy as np
import pytest
import torch

from bayes_dip.ct import BACKENDS, FanBeamGeometry, ParallelBeamGeometry, RayTransform
from bayes_dip.ct.astra_backend import cuda_available
from bayes_dip.ct.odl_backend import odl_ray_transform

GEOMETRIES = {
    # non-square images and non-unit pixels catch transposed / flipped layouts and unit errors
    "parallel": ParallelBeamGeometry((24, 20), num_angles=15, pixel_size=0.5),
    # non-uniform, limited-angle fan
    "fan": FanBeamGeometry((20, 24), np.array([0.0, 0.2, 0.3, 0.7, 1.0, 1.6, 2.0, 2.1]),
                           src_origin_dist=40.0, origin_det_dist=25.0, det_pixel_size=0.6,
                           num_detectors=40, pixel_size=0.5),
}


def _make(geom, backend, **kwargs):
    """CPU astra even where astra sees a GPU: its CUDA pair is only approximately adjoint."""
    return RayTransform(geom, backend, use_cuda=False if backend == "astra" else None, **kwargs)


@pytest.fixture(scope="module")
def ray_trafos():
    return {(g, b): _make(geom, b) for g, geom in GEOMETRIES.items() for b in BACKENDS}


def _rand(shape, dtype, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("geom", GEOMETRIES)
def test_adjoint_identity(ray_trafos, geom, backend, dtype):
    """<A x, y> = <x, Aᵀ y>, outputs keep dtype."""
    rt = ray_trafos[geom, backend]
    x = _rand((3, 1, *rt.im_shape), dtype, 0)
    y = _rand((3, 1, *rt.obs_shape), dtype, 1)
    ax, aty = rt.A(x), rt.A_adjoint(y)
    assert ax.shape == (3, 1, *rt.obs_shape) and aty.shape == (3, 1, *rt.im_shape)
    assert ax.dtype == dtype and aty.dtype == dtype
    lhs, rhs = (ax.double() * y.double()).sum(), (x.double() * aty.double()).sum()
    tol = 1e-10 if (backend == "matrix" and dtype == torch.float64) else 1e-5
    assert abs(lhs - rhs) / abs(lhs) < tol


@pytest.mark.parametrize("backend", ["astra", "odl"])
@pytest.mark.parametrize("geom", GEOMETRIES)
def test_matrix_free_agrees_with_matrix(ray_trafos, geom, backend):
    ref, rt = ray_trafos[geom, "matrix"], ray_trafos[geom, backend]
    x = _rand((2, 1, *ref.im_shape), torch.float64, 2)
    y = _rand((2, 1, *ref.obs_shape), torch.float64, 3)
    tol = 1e-5 if backend == "astra" else 1e-4  # ODL rescales in float32
    for a, b in ((rt.A(x), ref.A(x)), (rt.A_adjoint(y), ref.A_adjoint(y))):
        assert ((a - b).abs().max() / b.abs().max()) < tol


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("geom", GEOMETRIES)
def test_matrix_method_is_the_operator(ray_trafos, geom, backend):
    rt = ray_trafos[geom, backend]
    mat = rt.matrix()
    assert mat.layout == torch.sparse_csr and mat.dtype == torch.float64
    assert mat.shape == (np.prod(rt.obs_shape), np.prod(rt.im_shape))
    x = _rand((1, 1, *rt.im_shape), torch.float64, 4)
    torch.testing.assert_close((mat @ x.reshape(-1, 1)).reshape(rt.obs_shape), rt.A(x)[0, 0],
                               rtol=1e-4, atol=1e-4 * rt.A(x).abs().max().item())


@pytest.mark.parametrize("backend,projector,rtol", [
    ("matrix", "strip", 1e-6), ("astra", "strip", 1e-6),  # area weights conserve mass exactly
    ("matrix", "linear", 1e-2), ("astra", "linear", 1e-2), ("odl", None, 1e-2)])
def test_parallel_mass_conservation(backend, projector, rtol):
    """Physical units: per angle, sum_det (A x) * det_spacing = sum_pix x * pixel_size²."""
    g = GEOMETRIES["parallel"]
    rt = _make(g, backend, projector=projector)
    x = torch.zeros(1, 1, *g.im_shape, dtype=torch.float64)
    x[..., 6:18, 5:15] = _rand((12, 10), torch.float64, 5)  # inside the inscribed disc
    mass = x.sum() * g.pixel_size ** 2
    per_angle = rt.A(x).sum(dim=-1).flatten() * g.det_spacing
    torch.testing.assert_close(per_angle, mass.expand_as(per_angle), rtol=rtol, atol=0)


def test_single_pixel_orientation():
    """Row 0 is the top (max y), column 0 the left (min x); at angle 0 rays are vertical."""
    geom = ParallelBeamGeometry((4, 6), angles=[0.0, np.pi / 2], num_detectors=8, det_spacing=1.0)
    x = torch.zeros(1, 1, 4, 6, dtype=torch.float64)
    x[0, 0, 0, 0] = 1.0  # centre at (x, y) = (-2.5, +1.5)
    for backend in BACKENDS:
        y = _make(geom, backend).A(x)[0, 0]
        assert int(y[0].argmax()) == 1  # detector u = -2.5 -> cell 1 of [-4, 4]
        assert int(y[1].argmax()) == 5  # detector u = +1.5 -> cell 5
        assert y[0].sum().item() == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("geom", GEOMETRIES)
def test_gradcheck_matrix_backend(ray_trafos, geom):
    rt = ray_trafos[geom, "matrix"]
    x = _rand((2, 1, *rt.im_shape), torch.float64, 6).requires_grad_()
    y = _rand((2, 1, *rt.obs_shape), torch.float64, 7).requires_grad_()
    assert torch.autograd.gradcheck(rt.A, (x,), fast_mode=True)
    assert torch.autograd.gradcheck(rt.A_adjoint, (y,), fast_mode=True)
    assert torch.autograd.gradgradcheck(rt.A, (x,), fast_mode=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("geom", GEOMETRIES)
def test_backward_is_adjoint(ray_trafos, geom, backend):
    rt = ray_trafos[geom, backend]
    x = _rand((2, 1, *rt.im_shape), torch.float32, 8).requires_grad_()
    u = _rand((2, 1, *rt.obs_shape), torch.float32, 9)
    (rt(x) * u).sum().backward()
    torch.testing.assert_close(x.grad, rt.A_adjoint(u), rtol=1e-6, atol=1e-6)
    y = _rand((2, 1, *rt.obs_shape), torch.float32, 10).requires_grad_()
    v = _rand((2, 1, *rt.im_shape), torch.float32, 11)
    (rt.A_adjoint(y) * v).sum().backward()
    torch.testing.assert_close(y.grad, rt.A(v), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["matrix", "astra"])
def test_torch_func_transforms(ray_trafos, backend):
    """jvp, vjp, vmap, jacrev/jacfwd and forward-mode AD through A against the dense matrix."""
    rt = ray_trafos["fan", backend]
    dense = rt.matrix().to_dense()
    x = _rand((1, 1, *rt.im_shape), torch.float64, 12)
    v = _rand((1, 1, *rt.im_shape), torch.float64, 13)
    u = _rand((1, 1, *rt.obs_shape), torch.float64, 14)
    tol = dict(rtol=1e-5, atol=1e-5 * dense.abs().max().item())
    out, jv = torch.func.jvp(rt.A, (x,), (v,))
    torch.testing.assert_close(jv.flatten(), dense @ v.flatten(), **tol)
    _, pullback = torch.func.vjp(rt.A, x)
    torch.testing.assert_close(pullback(u)[0].flatten(), dense.T @ u.flatten(), **tol)
    _, pullback_t = torch.func.vjp(rt.A_adjoint, u)
    torch.testing.assert_close(pullback_t(x)[0].flatten(), dense @ x.flatten(), **tol)
    jac = torch.func.jacrev(rt.A)(x).reshape(dense.shape)
    torch.testing.assert_close(jac, dense, **tol)
    jac_fwd = torch.func.jacfwd(rt.A)(x).reshape(dense.shape)
    torch.testing.assert_close(jac_fwd, dense, **tol)
    # vmap over a leading dim of directions (as in J-column blocks), any in_dims
    vs = _rand((5, 2, 1, *rt.im_shape), torch.float64, 15)
    ref = rt.A(vs.reshape(10, 1, *rt.im_shape)).reshape(5, 2, 1, *rt.obs_shape)
    torch.testing.assert_close(torch.func.vmap(rt.A)(vs), ref)
    torch.testing.assert_close(torch.func.vmap(rt.A, in_dims=1, out_dims=1)(vs.transpose(0, 1)),
                               ref.transpose(0, 1))
    # Gauss-Newton product: jvp of grad of ||A x||²/2 is Aᵀ A v
    gn = torch.func.jvp(torch.func.grad(lambda z: 0.5 * (rt.A(z) ** 2).sum()), (x,), (v,))[1]
    torch.testing.assert_close(gn.flatten(), dense.T @ (dense @ v.flatten()), **tol)
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(x, v)
        tangent = torch.autograd.forward_ad.unpack_dual(rt.A(dual)).tangent
    torch.testing.assert_close(tangent, jv)


def test_from_odl_matches_geometry():
    geom = GEOMETRIES["fan"]
    wrapped = RayTransform.from_odl(odl_ray_transform(geom))
    assert wrapped.geometry.isclose(geom) and wrapped.backend == "odl"
    par = ParallelBeamGeometry((24, 20), num_angles=15, pixel_size=0.5)
    assert RayTransform.from_odl(odl_ray_transform(par)).geometry.isclose(par)
    assert not par.isclose(ParallelBeamGeometry((24, 20), num_angles=15, pixel_size=0.5001))
    with pytest.raises(ValueError, match="does not match"):
        RayTransform(par, "odl", odl_op=odl_ray_transform(GEOMETRIES["fan"]))


def test_from_odl_rejects_unsupported_geometry():
    import odl
    from odl.applications import tomo
    space = odl.uniform_discr([-1, -1], [1, 1], (8, 8), dtype="float32")
    geom = tomo.Parallel2dGeometry(odl.uniform_partition(0, np.pi, 5), odl.uniform_partition(-1, 2, 10))
    with pytest.raises(ValueError, match="detector not centred"):
        RayTransform.from_odl(tomo.RayTransform(space, geom, impl="astra_cpu"))
    with pytest.raises(TypeError, match="odl_op"):
        RayTransform.from_odl("not an operator")


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs(ray_trafos, backend):
    rt = ray_trafos["parallel", backend]
    h, w = rt.im_shape
    na, nd = rt.obs_shape
    with pytest.raises(ValueError, match="x must have shape"):
        rt.A(torch.rand(2, h, w))
    with pytest.raises(ValueError, match="x must have shape"):
        rt.A(torch.rand(1, 1, w, h))
    with pytest.raises(ValueError, match="x must have shape"):
        rt.A(torch.rand(1, 2, h, w))
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        rt.A(torch.ones(1, 1, h, w, dtype=torch.int64))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        rt.A(np.ones((1, 1, h, w)))
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        rt.A(torch.full((1, 1, h, w), float("inf")))
    with pytest.raises(ValueError, match="y has 16 angle rows but the geometry has 15 angles"):
        rt.A_adjoint(torch.rand(1, 1, na + 1, nd))
    with pytest.raises(ValueError, match="y must have shape"):
        rt.A_adjoint(torch.rand(1, 1, na, nd - 1))
    with pytest.raises(ValueError, match="y contains NaN"):
        rt.A_adjoint(torch.full((1, 1, na, nd), float("nan")))


def test_bad_constructor_arguments():
    geom = GEOMETRIES["parallel"]
    with pytest.raises(ValueError, match="backend"):
        RayTransform(geom, "skimage")
    with pytest.raises(ValueError, match="projector"):
        RayTransform(geom, projector="line_fanflat")
    with pytest.raises(ValueError, match="projector"):
        RayTransform(GEOMETRIES["fan"], projector="linear")
    with pytest.raises(TypeError, match="geometry"):
        RayTransform((24, 20))
    with pytest.raises(ValueError, match="use_cuda"):
        RayTransform(geom, "matrix", use_cuda=True)
    with pytest.raises(ValueError, match="odl_op"):
        RayTransform(geom, "matrix", odl_op=object())
    with pytest.raises(ValueError, match="angles must be strictly increasing for ODL"):
        RayTransform(ParallelBeamGeometry((8, 8), angles=[1.0, 0.5]), "odl")
    with pytest.raises(ValueError, match="projector"):
        RayTransform(geom, "odl", projector="strip")


@pytest.mark.parametrize("projector", ["strip", "line"])
def test_other_projectors_are_matched(projector):
    geom = GEOMETRIES["parallel"]
    rt, rt_free = RayTransform(geom, projector=projector), _make(geom, "astra", projector=projector)
    x = _rand((1, 1, *geom.im_shape), torch.float64, 16)
    y = _rand((1, 1, *geom.obs_shape), torch.float64, 17)
    assert abs((rt.A(x) * y).sum() - (x * rt.A_adjoint(y)).sum()) < 1e-10 * (rt.A(x) * y).sum()
    assert (rt_free.A(x) - rt.A(x)).abs().max() < 1e-5 * rt.A(x).abs().max()


@pytest.mark.parametrize("backend", BACKENDS)
def test_copies_are_independent(backend):
    """deepcopy/pickle work and never share astra objects (deleting a copy keeps the original)."""
    import copy
    import pickle
    rt = _make(GEOMETRIES["parallel"], backend)
    x = _rand((1, 1, *rt.im_shape), torch.float32, 18)
    ref = rt.A(x)
    for clone in (copy.deepcopy, lambda r: pickle.loads(pickle.dumps(r))):
        other = clone(rt)
        torch.testing.assert_close(other.A(x), ref)
        del other
        torch.testing.assert_close(rt.A(x), ref)


@pytest.mark.parametrize("backend", ["matrix", "astra"])
def test_column_block_matmul(ray_trafos, backend):
    """matmul / rmatmul act on (pixels, k) / (measurements, k) blocks like the dense matrix."""
    rt = ray_trafos["fan", backend]
    dense = rt.matrix().to_dense()
    assert rt.shape == tuple(dense.shape)
    v = _rand((dense.shape[1], 3), torch.float64, 19)
    u = _rand((dense.shape[0], 3), torch.float64, 20)
    tol = dict(rtol=1e-5, atol=1e-5 * dense.abs().max().item())
    torch.testing.assert_close(rt.matmul(v), dense @ v, **tol)
    torch.testing.assert_close(rt.rmatmul(u), dense.T @ u, **tol)
    with pytest.raises(ValueError, match="v must be a tensor of shape"):
        rt.matmul(v[:-1])
    with pytest.raises(ValueError, match="u must be a tensor of shape"):
        rt.rmatmul(u.flatten())


@pytest.mark.skipif(not cuda_available(), reason="astra sees no GPU")
@pytest.mark.parametrize("geom", GEOMETRIES)
def test_astra_cuda_close_to_cpu(ray_trafos, geom):
    """astra's CUDA projectors: same operator up to discretisation, nearly adjoint."""
    ref, rt = ray_trafos[geom, "matrix"], RayTransform(GEOMETRIES[geom], "astra", use_cuda=True)
    x = _rand((2, 1, *ref.im_shape), torch.float32, 21)
    y = _rand((2, 1, *ref.obs_shape), torch.float32, 22)
    assert (rt.A(x) - ref.A(x)).norm() / ref.A(x).norm() < 5e-2
    assert (rt.A_adjoint(y) - ref.A_adjoint(y)).norm() / ref.A_adjoint(y).norm() < 5e-2
    lhs, rhs = (rt.A(x) * y).sum(), (x * rt.A_adjoint(y)).sum()
    assert abs(lhs - rhs) / abs(lhs) < 1e-2


def test_matrix_copies_are_lazy_and_shared():
    """Each CSR copy is built on first use, once; float64 shares the float32 indices; a
    float32 forward pass builds neither the transpose nor a float64 copy."""
    rt = RayTransform(GEOMETRIES["fan"])
    backend, cpu = rt._matrix_backend, torch.device("cpu")
    assert backend._cache == {}
    x = _rand((2, 1, *rt.im_shape), torch.float32, 21)
    rt.A(x)
    assert set(backend._cache) == {(torch.float32, cpu, False)}
    assert True not in backend._stored  # no transpose yet
    f32 = backend.csr(torch.float32, cpu, False)
    rt.A(x)
    assert backend.csr(torch.float32, cpu, False) is f32
    rt.A_adjoint(_rand((2, 1, *rt.obs_shape), torch.float32, 22))
    assert set(backend._cache) == {(torch.float32, cpu, False), (torch.float32, cpu, True)}
    f64 = rt.matrix()
    assert f64.col_indices().data_ptr() == f32.col_indices().data_ptr()
    assert f64.crow_indices().data_ptr() == f32.crow_indices().data_ptr()
    assert torch.equal(f64.values(), f32.values().double())


@pytest.mark.parametrize("geom", GEOMETRIES)
def test_matrix_copies_equal_astra_matrix(geom):
    """Both orientations hold astra's weights exactly, in astra's (scipy's transpose's) order."""
    from bayes_dip.ct.astra_backend import system_matrix
    rt = RayTransform(GEOMETRIES[geom])
    ref = system_matrix(rt.geometry, rt.projector)
    for transpose, mat in ((False, ref), (True, ref.T.tocsr())):
        for dtype in (torch.float32, torch.float64):
            csr = rt._matrix_backend.csr(dtype, torch.device("cpu"), transpose)
            assert np.array_equal(csr.crow_indices().numpy(), mat.indptr)
            assert np.array_equal(csr.col_indices().numpy(), mat.indices)
            assert np.array_equal(csr.values().double().numpy(), mat.data)


def test_variance_factor_is_the_truncated_pseudoinverse_diagonal():
    """c_A = Σ_{k ≤ r, s_k ≥ 10⁻³ s_1} s_k⁻² / n_pix from the dense SVD of A."""
    rt = RayTransform(ParallelBeamGeometry((8, 8), num_angles=5))
    s = torch.linalg.svdvals(rt.matrix().to_dense())
    keep = s[:10][s[:10] >= 1e-3 * s[0]]
    assert rt.variance_factor(rank=10) == pytest.approx(float((keep ** -2).sum()) / 64, rel=1e-10)
    # all singular values: the mean diagonal of (AᵀA)⁺ with the same cut-off (on s², 1e-6)
    pinv = torch.linalg.pinv(rt.matrix().to_dense().T @ rt.matrix().to_dense(), rtol=1e-6)
    assert rt.variance_factor(rank=64, rcond=1e-3) == pytest.approx(
        float(pinv.diagonal().mean()), rel=1e-6)
    for bad in (dict(rank=0), dict(rank=True), dict(rcond=1.0), dict(rcond=-0.1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            rt.variance_factor(**bad)


def test_variance_factor_arpack_path_matches_dense(monkeypatch):
    """Above the dense limit the top singular values come from ARPACK on A/Aᵀ products."""
    from bayes_dip.ct import variance_factor as module

    dense = RayTransform(ParallelBeamGeometry((16, 16), num_angles=12)).variance_factor(rank=30)
    monkeypatch.setattr(module, "DENSE_SVD_LIMIT", 0)
    rt = RayTransform(ParallelBeamGeometry((16, 16), num_angles=12), backend="astra")
    assert rt.variance_factor(rank=30) == pytest.approx(dense, rel=1e-6)
    assert rt.variance_factor(rank=30) is rt.variance_factor(rank=30)  # computed once
