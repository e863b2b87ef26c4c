"""Geometries: ODL-compatible defaults, real-unit fan-beam parameters, argument checks."""
import math

import numpy as np
import odl
import pytest
from odl.applications import tomo

from bayes_dip.ct import FanBeamGeometry, ParallelBeamGeometry


@pytest.mark.parametrize("shape,pixel_size", [((128, 128), 1.0), ((30, 40), 0.25)])
def test_parallel_defaults_match_odl(shape, pixel_size):
    h, w = shape
    space = odl.uniform_discr([-w * pixel_size / 2, -h * pixel_size / 2],
                              [w * pixel_size / 2, h * pixel_size / 2], (w, h))
    ref = tomo.parallel_beam_geometry(space)
    geom = ParallelBeamGeometry(shape, pixel_size=pixel_size)
    assert geom.num_angles == ref.angles.size
    np.testing.assert_allclose(geom.angles, ref.angles, rtol=0, atol=1e-12)
    assert geom.num_detectors == ref.det_partition.shape[0]
    assert geom.det_spacing == pytest.approx(ref.det_partition.cell_sides[0], rel=1e-12)
    assert geom.obs_shape == (geom.num_angles, geom.num_detectors)


def test_parallel_explicit_angles_and_counts():
    geom = ParallelBeamGeometry((16, 16), num_angles=10, num_detectors=25, det_spacing=0.7)
    np.testing.assert_allclose(geom.angles, (np.arange(10) + 0.5) * np.pi / 10)
    assert geom.obs_shape == (10, 25) and geom.det_spacing == 0.7
    geom = ParallelBeamGeometry((16, 16), angles=[0.0, 1.0, 2.0])
    assert geom.num_angles == 3 and geom.angles.dtype == np.float64
    assert geom == ParallelBeamGeometry((16, 16), angles=[0.0, 1.0, 2.0])
    assert hash(geom) == hash(ParallelBeamGeometry((16, 16), angles=[0.0, 1.0, 2.0]))
    assert geom != ParallelBeamGeometry((16, 16), angles=[0.0, 1.0, 2.5])


def test_fan_beam_htc2022_units():
    """The HTC2022 scanner: effectivePixelSizePost is the detector cell at the object."""
    d_so, d_sd, eff = 410.66, 553.74, 0.1483
    mag = d_sd / d_so
    angles = np.deg2rad(np.arange(0, 60.5, 0.5))
    geom = FanBeamGeometry((512, 512), angles, src_origin_dist=d_so, origin_det_dist=d_sd - d_so,
                           det_pixel_size=eff * mag, num_detectors=560, pixel_size=0.1)
    assert geom.magnification == pytest.approx(mag)
    assert geom.det_pixel_size_at_origin == pytest.approx(eff)
    assert geom.image_extent == pytest.approx((51.2, 51.2))
    assert geom.obs_shape == (121, 560)
    # the detector covers the reconstruction disc
    assert 560 * eff / 2 > geom.image_extent[0] / 2


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(im_shape=(16,)), ValueError, "im_shape"),
    (dict(im_shape=(16, 0)), ValueError, "im_shape"),
    (dict(im_shape=(16, 16), pixel_size=-1.0), ValueError, "pixel_size"),
    (dict(im_shape=(16, 16), num_angles=0), ValueError, "num_angles"),
    (dict(im_shape=(16, 16), num_angles=2.5), TypeError, "num_angles"),
    (dict(im_shape=(16, 16), angles=[0.0, float("nan")]), ValueError, "angles"),
    (dict(im_shape=(16, 16), angles=[[0.0, 1.0]]), ValueError, "angles"),
    (dict(im_shape=(16, 16), angles=[0.0, 1.0], num_angles=3), ValueError, "num_angles"),
    (dict(im_shape=(16, 16), det_spacing=0.0), ValueError, "det_spacing"),
])
def test_parallel_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ParallelBeamGeometry(**kwargs)


@pytest.mark.parametrize("change,match", [
    (dict(src_origin_dist=5.0), "src_origin_dist"),
    (dict(origin_det_dist=-1.0), "origin_det_dist"),
    (dict(det_pixel_size=math.inf), "det_pixel_size"),
    (dict(angles=[]), "angles"),
])
def test_fan_bad_arguments(change, match):
    kwargs = dict(im_shape=(16, 16), angles=[0.0, 0.5], src_origin_dist=50.0, origin_det_dist=20.0,
                  det_pixel_size=1.0, num_detectors=30)
    kwargs.update(change)
    with pytest.raises(ValueError, match=match):
        FanBeamGeometry(**kwargs)
