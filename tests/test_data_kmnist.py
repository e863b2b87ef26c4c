"""KMNIST IDX reader: shapes, range, official label counts, IDX round trip, bad input."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from bayes_dip.data import load_kmnist, load_kmnist_labels, read_idx
from bayes_dip.data.paths import DATA_ENV_VAR


def _write_idx(path, arr: np.ndarray, magic: bytes | None = None) -> None:
    header = magic if magic is not None else bytes([0, 0, 0x08, arr.ndim])
    header += b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_test_split_shapes_range_and_label_counts(data_root):
    x = load_kmnist(data_root)
    y = load_kmnist_labels(data_root)
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert y.shape == (10_000,) and y.dtype == torch.int64
    assert torch.equal(torch.bincount(y, minlength=10), torch.full((10,), 1000))


def test_indices_select_the_same_images(data_root):
    all_x = load_kmnist(data_root, indices=slice(0, 50))
    assert all_x.shape == (50, 1, 28, 28)
    assert torch.equal(load_kmnist(data_root, indices=[3, 7]), all_x[[3, 7]])
    assert torch.equal(load_kmnist(data_root, indices=7), all_x[7:8])
    assert torch.equal(load_kmnist_labels(data_root, indices=torch.tensor([3, 7])),
                       load_kmnist_labels(data_root)[[3, 7]])


def test_env_var_and_kmnist_folder_as_root(data_root, monkeypatch):
    monkeypatch.setenv(DATA_ENV_VAR, str(data_root))
    first = load_kmnist(indices=[0])
    assert torch.equal(first, load_kmnist(data_root / "kmnist", indices=[0]))


def test_idx_round_trip_exact(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) * 10
    _write_idx(tmp_path / "a.gz", arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz", ndim=3), arr)
    folder = tmp_path / "kmnist"
    folder.mkdir()
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", arr)
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.array([4, 9], dtype=np.uint8))
    x = load_kmnist(tmp_path)
    assert x.shape == (2, 1, 3, 4)
    np.testing.assert_allclose(x.numpy()[:, 0], arr / 255.0, rtol=0, atol=1e-7)
    assert load_kmnist_labels(tmp_path).tolist() == [4, 9]


def test_missing_folder_and_files_name_the_path(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_kmnist(missing)
    with pytest.raises(FileNotFoundError, match="kmnist"):
        load_kmnist(tmp_path)
    (tmp_path / "kmnist").mkdir()
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte.gz"):
        load_kmnist(tmp_path)
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError, match=DATA_ENV_VAR):
        load_kmnist()


def test_corrupt_and_malformed_idx_files(tmp_path):
    (tmp_path / "notgz.gz").write_bytes(b"this is not gzip")
    with pytest.raises(ValueError, match="notgz.gz"):
        read_idx(tmp_path / "notgz.gz", ndim=3)
    arr = np.zeros((2, 3, 4), dtype=np.uint8)
    _write_idx(tmp_path / "magic.gz", arr, magic=bytes([0, 0, 0x0D, 3]))
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "magic.gz", ndim=3)
    _write_idx(tmp_path / "labels.gz", np.zeros(5, dtype=np.uint8))
    with pytest.raises(ValueError, match="1 dims"):
        read_idx(tmp_path / "labels.gz", ndim=3)
    with gzip.open(tmp_path / "trunc.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + b"".join(s.to_bytes(4, "big") for s in (2, 3, 4)) + bytes(10))
    with pytest.raises(ValueError, match="24 bytes"):
        read_idx(tmp_path / "trunc.gz", ndim=3)


def test_bad_arguments(data_root):
    with pytest.raises(ValueError, match="split"):
        load_kmnist(data_root, split="validation")
    with pytest.raises(ValueError, match="indices"):
        load_kmnist(data_root, indices=[10_000])
    with pytest.raises(TypeError, match="indices"):
        load_kmnist(data_root, indices=[0.5])
    with pytest.raises(TypeError, match="root"):
        load_kmnist(3)
