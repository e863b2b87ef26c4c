"""data_scripts: MD5 table matches the official KMNIST bytes; conversion helpers round-trip."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
import scipy.io

from repo_scripts import load_script
from bayes_dip.data import default_dicom_path, load_htc2022, load_image
from bayes_dip.data.dicom import read_dicom_attenuation


def _script(name: str):
    return load_script(f"data_scripts/{name}.py")


def test_kmnist_md5_table_matches_data(data_root, capsys):
    assert _script("download_kmnist").main(["--root", str(data_root), "--verify"]) == 0
    assert capsys.readouterr().out.count("ok ") == 2


def test_md5_verification_rejects_changed_file(tmp_path, data_root):
    folder = tmp_path / "kmnist"
    folder.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (folder / name).write_bytes((data_root / "kmnist" / name).read_bytes()[:-1])
    assert _script("download_kmnist").main(["--root", str(tmp_path), "--verify"]) == 1


def test_htc2022_limited_angle_cut(tmp_path):
    angles = np.arange(0, 360.5, 0.5)
    sino = np.arange(angles.size * 8, dtype=float).reshape(angles.size, 8)
    params = {"distanceSourceOrigin": 410.66, "distanceSourceDetector": 553.74,
              "effectivePixelSizePost": 0.1483, "geometricMagnification": 1.348,
              "numDetectorsPost": 8, "numberImages": angles.size, "angles": angles}
    full = tmp_path / "htc2022_zz_full.mat"
    scipy.io.savemat(full, {"CtDataFull": {"sinogram": sino, "parameters": params}})
    assert _script("htc2022_limited_angle").main([str(full), "--start", "90", "--opening", "30"]) == 0
    scan = load_htc2022(tmp_path / "htc2022_zz_limited.mat", im_size=64)
    keep = (angles >= 90) & (angles <= 120)
    assert scan.geometry.num_angles == 61 and scan.parameters["numberImages"] == 61
    np.testing.assert_array_equal(scan.angles, np.deg2rad(angles[keep]))
    np.testing.assert_array_equal(scan.sinogram[0, 0].numpy(), sino[keep].astype(np.float32))
    with pytest.raises(ValueError, match="no projection"):
        _script("htc2022_limited_angle").limited_angle(full, tmp_path / "x.mat", 400.0, 10.0)


def test_dicom_series_sorted_by_position(tmp_path):
    convert = _script("dicom_to_npy")
    ds = pydicom.dcmread(default_dicom_path())
    raw = ds.pixel_array
    series = tmp_path / "series"
    series.mkdir()
    for name, z, shift in (("a.dcm", 20.0, 200), ("b.dcm", -5.0, 0), ("c.dcm", 7.5, 100)):
        ds.ImagePositionPatient = [0.0, 0.0, z]
        ds.PixelData = (raw + shift).astype(raw.dtype).tobytes()
        ds.save_as(series / name)
    (series / "notes.txt").write_text("not DICOM")
    assert convert.main([str(series), str(tmp_path / "vol.npy")]) == 0
    vol = np.load(tmp_path / "vol.npy")
    mu0 = read_dicom_attenuation(default_dicom_path())
    assert vol.shape == (3, 128, 128) and vol.dtype == np.float32
    for k, shift in enumerate((0, 100, 200)):  # sorted by z: b, c, a
        np.testing.assert_allclose(vol[k], np.clip(mu0 + 0.02 * shift / 1000, 0, None), atol=1e-6)
    assert convert.main([str(series), str(tmp_path / "one.npy"), "--slice", "1", "--size", "64"]) == 0
    one = load_image(tmp_path / "one.npy")
    assert one.shape == (1, 1, 64, 64) and float(one.max()) == 1.0
