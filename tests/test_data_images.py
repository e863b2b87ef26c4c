"""DICOM / PNG / NPY image loading: embedded CT slice, HU conversion, resizing, bad input."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.pixels import apply_modality_lut

from bayes_dip.data import (MU_WATER, default_dicom_path, hu_to_attenuation, is_square,
                            load_dicom_slice, load_image, resize_square)


def test_default_dicom_is_real_128_ct_slice_in_unit_range():
    x = load_dicom_slice()
    assert x.shape == (1, 1, 128, 128) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) == 1.0
    ds = pydicom.dcmread(default_dicom_path())
    mu = MU_WATER * (1 + apply_modality_lut(ds.pixel_array, ds).astype(np.float64) / 1000)
    np.testing.assert_allclose(x[0, 0].numpy(), mu / mu.max(), rtol=0, atol=1e-6)
    assert torch.equal(load_image(default_dicom_path()), x)


def test_hu_to_attenuation_fixed_points():
    mu = hu_to_attenuation(np.array([-2000.0, -1000.0, 0.0, 1000.0]), mu_water=0.02)
    np.testing.assert_allclose(mu, [0.0, 0.0, 0.02, 0.04], atol=1e-15)
    with pytest.raises(ValueError, match="mu_water"):
        hu_to_attenuation(np.zeros(2), mu_water=-1.0)


def test_resize_keeps_range_and_block_means():
    x64 = load_dicom_slice(size=64)
    assert x64.shape == (1, 1, 64, 64) and 0.0 <= float(x64.min()) and float(x64.max()) <= 1.0
    np.testing.assert_array_equal(resize_square(np.full((40, 40), 0.3), 10), np.full((10, 10), 0.3))
    # a linear ramp is reproduced (up to the border) by anti-aliased linear resizing
    ramp = np.tile(np.linspace(0.0, 1.0, 64), (64, 1))
    small = resize_square(ramp, 32)
    block = ramp.reshape(32, 2, 32, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(small[:, 2:-2], block[:, 2:-2], atol=1e-3)


def test_png_npy_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    gray8 = rng.integers(0, 256, size=(12, 12), dtype=np.uint8)
    Image.fromarray(gray8).save(tmp_path / "g8.png")
    np.testing.assert_allclose(load_image(tmp_path / "g8.png")[0, 0].numpy(), gray8 / 255, atol=1e-7)
    gray16 = rng.integers(0, 65536, size=(12, 12)).astype(np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    np.testing.assert_allclose(load_image(tmp_path / "g16.png")[0, 0].numpy(), gray16 / 65535, atol=1e-7)
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 1] = 255
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    # pure green -> ITU-R 601-2 luma 0.587, up to one 8-bit grey level
    np.testing.assert_allclose(load_image(tmp_path / "rgb.png").numpy(), 0.587, atol=1 / 255)

    mu = rng.uniform(0.0, 0.05, size=(10, 10))  # e.g. attenuation in 1/mm: divided by its maximum
    np.save(tmp_path / "mu.npy", mu[None, None])
    np.testing.assert_allclose(load_image(tmp_path / "mu.npy")[0, 0].numpy(), mu / mu.max(), atol=1e-7)
    hu = rng.uniform(-1000, 3000, size=(10, 10))
    np.save(tmp_path / "hu.npy", hu)
    np.testing.assert_allclose(load_image(tmp_path / "hu.npy")[0, 0].numpy(),
                               (hu - hu.min()) / (hu.max() - hu.min()), atol=1e-6)
    assert load_image(tmp_path / "hu.npy", size=4).shape == (1, 1, 4, 4)


def test_non_square_images(tmp_path):
    np.save(tmp_path / "wide.npy", np.zeros((8, 12)))
    x = load_image(tmp_path / "wide.npy")
    assert x.shape == (1, 1, 8, 12) and not is_square(x) and is_square(torch.zeros(1, 1, 5, 5))
    with pytest.raises(ValueError, match=r"8x12 pixels, not square"):
        load_image(tmp_path / "wide.npy", size=8)
    ds = pydicom.dcmread(default_dicom_path())
    ds.PixelData = np.ascontiguousarray(ds.pixel_array[:, :100]).tobytes()
    ds.Columns = 100
    ds.save_as(tmp_path / "crop.dcm")
    assert load_dicom_slice(tmp_path / "crop.dcm", size=None).shape == (1, 1, 128, 100)
    with pytest.raises(ValueError, match="crop.dcm.*not square"):
        load_dicom_slice(tmp_path / "crop.dcm", size=64)


def test_bad_files_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "img.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(ValueError, match=r"unsupported suffix '.jpg'"):
        load_image(tmp_path / "img.jpg")
    for name in ("bad.png", "bad.npy", "bad.dcm"):
        (tmp_path / name).write_bytes(b"definitely not an image")
        with pytest.raises(ValueError, match=name):
            load_image(tmp_path / name)
    np.save(tmp_path / "nan.npy", np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="NaN"):
        load_image(tmp_path / "nan.npy")
    np.save(tmp_path / "vol.npy", np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="2D"):
        load_image(tmp_path / "vol.npy")
    with pytest.raises(FileNotFoundError, match="is a folder"):
        load_image(tmp_path)
    with pytest.raises(TypeError, match="size"):
        load_dicom_slice(size=12.5)
    with pytest.raises(ValueError, match="size"):
        load_dicom_slice(size=1)
    with pytest.raises(TypeError, match="path"):
        load_dicom_slice(path=5)
