"""FBP: Shepp–Logan quality, analytic line-integral oracles (parallel and fan beam), agreement
with ODL's fbp_op, arbitrary angle sets, batches, dtypes, bad input."""
import numpy as np
import pytest
import torch
from odl.applications import tomo
from skimage.data import shepp_logan_phantom
from skimage.metrics import peak_signal_noise_ratio
from skimage.transform import resize

from bayes_dip.ct import FBP_FILTERS, FanBeamGeometry, ParallelBeamGeometry, RayTransform, fbp
from bayes_dip.ct.fbp import angle_weights
from bayes_dip.ct.odl_backend import image_from_odl, odl_ray_transform

HTC_MAG = 553.74 / 410.66
# (centre x, centre y, radius, value), mm; row 0 of an image is the top (max y)
DISCS = [(0.0, 0.0, 20.0, 1.0), (5.0, 3.0, 6.0, 0.5), (-8.0, -6.0, 4.0, -0.3), (10.0, -10.0, 3.0, 0.4)]


@pytest.fixture(scope="module")
def phantom128():
    img = resize(shepp_logan_phantom(), (128, 128), anti_aliasing=True)
    return torch.from_numpy(img)[None, None]


def _psnr(ref, rec, data_range=1.0) -> float:
    ref, rec = (np.asarray(t.double().squeeze() if torch.is_tensor(t) else t) for t in (ref, rec))
    return peak_signal_noise_ratio(ref, rec, data_range=data_range)


def _disc_image(n: int, pixel_size: float, supersample: int = 8) -> np.ndarray:
    m = n * supersample
    c = (np.arange(m) + 0.5 - m / 2) * pixel_size / supersample
    xx, yy = np.meshgrid(c, -c)
    img = sum(v * ((xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2) for cx, cy, r, v in DISCS)
    return img.reshape(n, supersample, n, supersample).mean(axis=(1, 3))


def _disc_line_integrals(point: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Exact line integrals of DISCS along lines ``point + t * direction`` (unit direction)."""
    out = 0.0
    for cx, cy, r, v in DISCS:
        wx, wy = cx - point[0], cy - point[1]
        along = wx * direction[0] + wy * direction[1]
        out = out + v * 2 * np.sqrt(np.clip(r ** 2 - (wx ** 2 + wy ** 2 - along ** 2), 0, None))
    return out


def _analytic_sinogram(geom) -> torch.Tensor:
    """astra convention: parallel detector axis t = (cos θ, sin θ), rays along (-sin θ, cos θ);
    fan source at D (sin β, -cos β), virtual detector through the origin along t."""
    b = geom.angles[:, None]
    n = geom.num_detectors
    if isinstance(geom, ParallelBeamGeometry):
        u = (np.arange(n) + 0.5 - n / 2) * geom.det_spacing
        point = np.stack([u * np.cos(b), u * np.sin(b)])
        direction = np.stack([-np.sin(b) + 0 * u, np.cos(b) + 0 * u])
    else:
        s = (np.arange(n) + 0.5 - n / 2) * geom.det_pixel_size_at_origin
        d = geom.src_origin_dist
        point = np.stack([d * np.sin(b) + 0 * s, -d * np.cos(b) + 0 * s])
        direction = np.stack([s * np.cos(b), s * np.sin(b)]) - point
        direction = direction / np.linalg.norm(direction, axis=0)
    return torch.from_numpy(_disc_line_integrals(point, direction))[None, None]


ANALYTIC_GEOMETRIES = {
    "parallel": ParallelBeamGeometry((64, 64), num_angles=180, num_detectors=280,
                                     det_spacing=0.2966, pixel_size=0.8),
    "fan_htc2022": FanBeamGeometry((64, 64), np.linspace(0, 2 * np.pi, 180, endpoint=False),
                                   src_origin_dist=410.66, origin_det_dist=553.74 - 410.66,
                                   det_pixel_size=2 * 0.1483 * HTC_MAG, num_detectors=280, pixel_size=0.8),
    "fan_wide": FanBeamGeometry((64, 64), np.linspace(0, 2 * np.pi, 360, endpoint=False),
                                src_origin_dist=60.0, origin_det_dist=60.0, det_pixel_size=1.0,
                                num_detectors=200, pixel_size=0.8),
}


@pytest.mark.parametrize("name", ANALYTIC_GEOMETRIES)
def test_analytic_oracle(name):
    """Exact line integrals of discs: A matches them (units, orientation) and FBP inverts them."""
    geom = ANALYTIC_GEOMETRIES[name]
    truth = _disc_image(64, geom.pixel_size)
    y = _analytic_sinogram(geom)
    projector = "strip" if isinstance(geom, ParallelBeamGeometry) else "strip_fanflat"
    ax = RayTransform(geom, "astra", projector=projector).A(torch.from_numpy(truth)[None, None])
    assert (ax - y).norm() / y.norm() < 2e-2  # pixelisation error of the 64² image
    rec = fbp(geom, y, "hann")
    assert _psnr(truth, rec, data_range=1.3) > 35.0
    assert rec.mean().item() == pytest.approx(truth.mean(), rel=1e-3)


def test_parallel_ram_lak_shepp_logan(phantom128):
    """180 noise-free angles, Ram-Lak: PSNR > 28 dB."""
    rt = RayTransform(ParallelBeamGeometry((128, 128), num_angles=180))
    rec = fbp(rt, rt.A(phantom128), filter_type="Ram-Lak")
    assert rec.shape == phantom128.shape and rec.dtype == torch.float64
    assert _psnr(phantom128, rec) > 28.0


def test_parallel_agrees_with_odl_fbp_op(phantom128):
    geom = ParallelBeamGeometry((128, 128), num_angles=180, pixel_size=0.4)  # units: any
    y = RayTransform(geom, "astra", use_cuda=False).A(phantom128.float())
    ref = image_from_odl(tomo.fbp_op(odl_ray_transform(geom), filter_type="Hann")(y[0, 0].numpy()).asarray())
    rec = fbp(geom, y, "hann")
    assert rec.dtype == torch.float32
    assert _psnr(ref, rec) > 38.0


def test_fan_beam_htc2022_like_shepp_logan(phantom128):
    """HTC2022 scanner distances on a 51.2 mm, 128² grid, full circle; line_fanflat data."""
    geom = FanBeamGeometry((128, 128), np.linspace(0, 2 * np.pi, 180, endpoint=False), 410.66, 143.08,
                           0.1483 * HTC_MAG, 560, 0.4)
    rt = RayTransform(geom, "astra", use_cuda=False)
    rec = fbp(rt, rt.A(phantom128.float()), "ram-lak")
    assert rec.dtype == torch.float32 and _psnr(phantom128, rec) > 28.0


def test_arbitrary_angle_sets(phantom128):
    """Clockwise, shuffled and jittered angle sets reconstruct like the sorted uniform set."""
    phantom128 = torch.nn.functional.avg_pool2d(phantom128, 2).float()  # 64² suffices here
    base = (np.arange(90) + 0.5) * np.pi / 90
    rng = np.random.default_rng(0)
    perm = rng.permutation(90)
    ref_geom = ParallelBeamGeometry((64, 64), angles=base)
    ref = fbp(ref_geom, RayTransform(ref_geom, "astra", use_cuda=False).A(phantom128), "hann")
    shuffled = ParallelBeamGeometry((64, 64), angles=base[perm])
    y_shuffled = RayTransform(shuffled, "astra", use_cuda=False).A(phantom128)
    torch.testing.assert_close(fbp(shuffled, y_shuffled, "hann"), ref)
    for angles in (-base, base + rng.uniform(-0.01, 0.01, 90)):
        geom = ParallelBeamGeometry((64, 64), angles=angles)
        rec = fbp(geom, RayTransform(geom, "astra", use_cuda=False).A(phantom128), "hann")
        assert _psnr(ref, rec) > 35.0


def test_angle_weights():
    uniform = (np.arange(10) + 0.5) * np.pi / 10
    np.testing.assert_allclose(angle_weights(uniform), np.full(10, np.pi / 10))
    full_circle = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    np.testing.assert_allclose(angle_weights(full_circle), np.full(20, np.pi / 20))  # redundancy ½
    limited = np.deg2rad(np.arange(0, 60.5, 0.5))
    np.testing.assert_allclose(angle_weights(limited), np.full(121, np.deg2rad(0.5)))
    np.testing.assert_allclose(angle_weights([0.0, 0.1, 0.5]), [0.1, 0.25, 0.4])


def test_limited_angle_is_finite_and_worse(phantom128):
    geom = FanBeamGeometry((128, 128), np.deg2rad(np.arange(0, 60.5, 0.5)), 410.66, 143.08,
                           0.1483 * HTC_MAG, 560, 0.4)
    rt = RayTransform(geom, "astra", use_cuda=False)
    rec = fbp(rt, rt.A(phantom128), "ram-lak")
    assert torch.isfinite(rec).all() and _psnr(phantom128, rec) < 20.0


def test_filters_batches_linearity_and_gradient():
    geom = ParallelBeamGeometry((32, 32), num_angles=40)
    rt = RayTransform(geom)
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = rt.A(x)
    batch = fbp(rt, y, "hann")
    for i in range(3):  # batch = per-image
        torch.testing.assert_close(batch[i:i + 1], fbp(geom, y[i:i + 1], "hann"))
    torch.testing.assert_close(fbp(rt, 2 * y[:1] - y[1:2], "hann"), 2 * batch[:1] - batch[1:2])
    recs = {name: fbp(rt, y, name) for name in set(FBP_FILTERS.values())}
    assert all(r.shape == x.shape for r in recs.values())
    # smoother windows damp high frequencies: less energy than Ram-Lak
    assert all((recs[n] ** 2).sum() < (recs["Ram-Lak"] ** 2).sum() for n in recs if n != "Ram-Lak")
    assert (fbp(rt, y, "ram-lak", frequency_scaling=0.3) ** 2).sum() < (recs["Ram-Lak"] ** 2).sum()
    # differentiable in y; FBP is linear, so <∇_y <fbp(y), v>, d> = <fbp(d), v>
    y_req, v, d = y[:1].clone().requires_grad_(), x[:1], torch.rand_like(y[:1])
    (grad,) = torch.autograd.grad((fbp(rt, y_req, "hann") * v).sum(), y_req)
    torch.testing.assert_close((grad * d).sum(), (fbp(rt, d, "hann") * v).sum())


def test_fbp_bad_inputs():
    rt = RayTransform(ParallelBeamGeometry((16, 16), num_angles=10))
    y = torch.zeros(1, 1, *rt.obs_shape)
    with pytest.raises(ValueError, match="y has 11 angle rows but the geometry has 10 angles"):
        fbp(rt, torch.zeros(1, 1, 11, rt.obs_shape[1]))
    with pytest.raises(ValueError, match="y contains NaN"):
        fbp(rt, torch.full_like(y, float("nan")))
    with pytest.raises(TypeError, match="y must be float32 or float64"):
        fbp(rt, y.to(torch.float16))
    with pytest.raises(ValueError, match="filter_type"):
        fbp(rt, y, filter_type="ramp")
    with pytest.raises(ValueError, match="frequency_scaling"):
        fbp(rt, y, frequency_scaling=0.0)
    with pytest.raises(TypeError, match="ray_trafo"):
        fbp("geometry", y)
