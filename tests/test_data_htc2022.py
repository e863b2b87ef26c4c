"""HTC2022 loader: geometry and data exactly as the file states, binning, grids, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from bayes_dip.ct import FanBeamGeometry
from bayes_dip.data import bin_detectors, load_htc2022, plastic_attenuation, read_htc2022_mat
from bayes_dip.data.htc2022 import find_segmentation

MAT = "htc2022/htc2022_ta_sparse_example.mat"
SEG = "htc2022/htc2022_ta_full_recon_fbp_seg.png"
DISC = "htc2022/htc2022_solid_disc_full_recon_fbp.mat"


@pytest.fixture(scope="module")
def raw(data_root):
    """The file's own numbers, read independently of the loader."""
    s = scipy.io.loadmat(data_root / MAT, squeeze_me=True, struct_as_record=False)["CtDataLimited"]
    return s.sinogram, s.parameters


def test_geometry_and_sinogram_are_the_files(data_root, raw):
    sino, p = raw
    scan = load_htc2022(data_root / MAT, im_size=128)
    g = scan.geometry
    assert isinstance(g, FanBeamGeometry)
    assert g.src_origin_dist == p.distanceSourceOrigin == 410.66
    assert g.origin_det_dist == pytest.approx(p.distanceSourceDetector - p.distanceSourceOrigin, abs=1e-12)
    assert g.magnification == pytest.approx(p.geometricMagnification, rel=1e-12)
    # cell width at the detector: effective (object-side) size x magnification = pixelSizePost (0.2 mm)
    assert g.det_pixel_size == pytest.approx(p.effectivePixelSizePost * p.geometricMagnification, rel=1e-12)
    assert g.det_pixel_size == pytest.approx(p.pixelSizePost, rel=1e-6)
    assert g.num_detectors == p.numDetectorsPost == 560
    np.testing.assert_array_equal(scan.angles, np.deg2rad(p.angles))
    np.testing.assert_array_equal(g.angles, scan.angles)
    assert g.num_angles == 121 and scan.angles[-1] == pytest.approx(np.pi / 3)
    assert g.im_shape == (128, 128)
    assert scan.target_pixel_size == p.effectivePixelSizePost
    assert g.pixel_size == scan.pixel_size == pytest.approx(4 * p.effectivePixelSizePost)
    assert scan.sinogram.shape == (1, 1, 121, 560) and scan.sinogram.dtype == torch.float32
    np.testing.assert_array_equal(scan.sinogram[0, 0].numpy(), sino.astype(np.float32))
    assert scan.parameters["numberImages"] == 121 and scan.parameters["distanceUnit"] == "mm"


def test_ground_truth_is_block_mean_of_segmentation(data_root):
    seg = np.asarray(Image.open(data_root / SEG)).astype(np.float64)
    assert find_segmentation(data_root / MAT) == data_root / SEG
    for n in (128, 256):
        gt = load_htc2022(data_root / MAT, im_size=n).ground_truth
        assert gt.shape == (1, 1, n, n) and gt.dtype == torch.float32
        f = 512 // n
        np.testing.assert_allclose(gt[0, 0].numpy(), seg.reshape(n, f, n, f).mean((1, 3)), atol=1e-7)
    assert load_htc2022(data_root / MAT, segmentation=False).ground_truth is None
    explicit = load_htc2022(data_root / MAT, im_size=64, segmentation=data_root / SEG).ground_truth
    assert explicit.shape == (1, 1, 64, 64)


@pytest.mark.parametrize("factor", [2, 4])
def test_detector_binning(data_root, raw, factor):
    sino, p = raw
    mean = load_htc2022(data_root / MAT, detector_binning=factor)
    total = load_htc2022(data_root / MAT, detector_binning=factor, binning_mode="sum")
    expected = sino.reshape(121, 560 // factor, factor).mean(-1)
    np.testing.assert_allclose(mean.sinogram[0, 0].numpy(), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(total.sinogram.numpy(), factor * mean.sinogram.numpy(), rtol=1e-6)
    g = mean.geometry
    assert g.num_detectors == 560 // factor and g.obs_shape == (121, 560 // factor)
    assert g.det_pixel_size == pytest.approx(factor * p.pixelSizePost, rel=1e-6)
    # the binned detector spans the same width, centred on the same central ray
    assert g.num_detectors * g.det_pixel_size == pytest.approx(560 * p.pixelSizePost, rel=1e-6)


def test_bin_detectors_arguments():
    y = np.arange(12.0).reshape(2, 6)
    np.testing.assert_array_equal(bin_detectors(y, 3), [[1.0, 4.0], [7.0, 10.0]])
    np.testing.assert_array_equal(bin_detectors(y, 1), y)
    with pytest.raises(ValueError, match="divide"):
        bin_detectors(y, 4)
    with pytest.raises(ValueError, match="binning_mode"):
        bin_detectors(y, 2, mode="median")
    with pytest.raises(ValueError, match="detector_binning"):
        bin_detectors(y, 0)


def test_plastic_attenuation_level(data_root):
    scan = load_htc2022(data_root / MAT, segmentation=False)
    mu = plastic_attenuation(data_root / DISC, scan.target_pixel_size)
    # independent disc mask: a circle from the support's centroid and area, shrunk by 10 px
    recon = scipy.io.loadmat(data_root / DISC)["reconFullFbp"]
    support = recon > 0.2 * recon.max()
    rows, cols = np.nonzero(support)
    radius = np.sqrt(support.sum() / np.pi) - 10
    ii, jj = np.mgrid[:512, :512]
    disc = (ii - rows.mean()) ** 2 + (jj - cols.mean()) ** 2 < radius ** 2
    assert mu == pytest.approx(np.median(recon[disc]) / scan.target_pixel_size, rel=0.02)
    assert 0.02 < mu < 0.05  # acrylic at ~45 kV, in 1/mm
    with pytest.raises(ValueError, match="recon_pixel_size"):
        plastic_attenuation(data_root / DISC, 0.0)


def _write_struct(path, sinogram, angles_deg, n_det=4, name="CtDataLimited"):
    params = {"distanceSourceOrigin": 410.66, "distanceSourceDetector": 553.74,
              "effectivePixelSizePost": 0.1483, "geometricMagnification": 1.348,
              "numDetectorsPost": n_det, "angles": np.asarray(angles_deg, dtype=float)}
    scipy.io.savemat(path, {name: {"sinogram": sinogram, "parameters": params}})


def test_synthetic_full_struct_and_bad_files(tmp_path, data_root):
    _write_struct(tmp_path / "htc2022_xx_full.mat", np.ones((3, 4)), [0, 90, 180], name="CtDataFull")
    sino, params = read_htc2022_mat(tmp_path / "htc2022_xx_full.mat")
    assert sino.shape == (3, 4) and params["angles"].tolist() == [0, 90, 180]
    scan = load_htc2022(tmp_path / "htc2022_xx_full.mat", im_size=64)
    assert scan.ground_truth is None and scan.geometry.num_detectors == 4

    _write_struct(tmp_path / "shape.mat", np.ones((3, 5)), [0, 90, 180])
    with pytest.raises(ValueError, match="sinogram shape"):
        read_htc2022_mat(tmp_path / "shape.mat")
    _write_struct(tmp_path / "nan.mat", np.full((3, 4), np.nan), [0, 90, 180])
    with pytest.raises(ValueError, match="NaN"):
        read_htc2022_mat(tmp_path / "nan.mat")
    scipy.io.savemat(tmp_path / "other.mat", {"x": np.ones(3)})
    with pytest.raises(ValueError, match="CtDataLimited"):
        read_htc2022_mat(tmp_path / "other.mat")
    (tmp_path / "corrupt.mat").write_bytes(b"MATLAB 5.0 MAT-file, garbage" + bytes(200))
    with pytest.raises(ValueError, match="corrupt.mat"):
        read_htc2022_mat(tmp_path / "corrupt.mat")
    with pytest.raises(FileNotFoundError, match="missing.mat"):
        load_htc2022(tmp_path / "missing.mat")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_htc2022(data_root / MAT, segmentation=tmp_path / "nope.png")
    Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match="512x512"):
        load_htc2022(data_root / MAT, segmentation=tmp_path / "small.png")
    with pytest.raises(ValueError, match="im_size"):
        load_htc2022(data_root / MAT, im_size=100)
    with pytest.raises(ValueError, match="detector_binning"):
        load_htc2022(data_root / MAT, detector_binning=3)
