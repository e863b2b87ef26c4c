"""Kuzushiji-MNIST (KMNIST) from the official IDX ``.gz`` files.

Folder layout (as fetched by ``data_scripts/download_kmnist.py``)::

    <data root>/kmnist/t10k-images-idx3-ubyte.gz    (10,000 x 28 x 28 uint8)
    <data root>/kmnist/t10k-labels-idx1-ubyte.gz    (10,000 uint8, classes 0..9)
    <data root>/kmnist/train-images-idx3-ubyte.gz   (optional, 60,000 images)
    <data root>/kmnist/train-labels-idx1-ubyte.gz

Source: Clanuwat et al. 2018, "Deep Learning for Classical Japanese Literature",
codh.rois.ac.jp/kmnist, CC BY-SA 4.0.
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from bayes_dip.checks import check_choice
from bayes_dip.data.paths import data_root, require_file

__all__ = ["KMNIST_FILES", "kmnist_dir", "read_idx", "load_kmnist", "load_kmnist_labels"]

KMNIST_FILES: dict[str, tuple[str, str]] = {
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
}

# IDX magic: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions.
_IDX_UBYTE = 0x08

Indices = int | slice | Sequence[int] | np.ndarray | torch.Tensor | None


def read_idx(path: str | os.PathLike, ndim: int) -> np.ndarray:
    """Read a gzipped IDX file of unsigned bytes with ``ndim`` dimensions.

    Raises:
        FileNotFoundError: missing file.
        ValueError: not gzip, wrong magic number, wrong dimension count or truncated data.
    """
    p = require_file(path, "IDX file")
    try:
        with gzip.open(p, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"IDX file {str(p)!r} is not a readable gzip file: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"IDX file {str(p)!r}: bad magic number {raw[:4].hex()!r}")
    if raw[2] != _IDX_UBYTE or raw[3] != ndim:
        raise ValueError(f"IDX file {str(p)!r}: magic {raw[:4].hex()} says type 0x{raw[2]:02x} with "
                         f"{raw[3]} dims, expected unsigned bytes (0x08) with {ndim} dims")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"IDX file {str(p)!r} is truncated (header)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) - header != int(np.prod(shape)):
        raise ValueError(f"IDX file {str(p)!r}: header says shape {shape} ({int(np.prod(shape))} "
                         f"bytes) but {len(raw) - header} data bytes follow")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def kmnist_dir(root: str | os.PathLike | None = None) -> Path:
    """The KMNIST folder: ``<root>/kmnist`` (or ``root`` itself if it holds the IDX files).

    ``root=None`` uses ``$BAYES_DIP_DATA``.
    """
    base = data_root(root)
    sub = base / "kmnist"
    if sub.is_dir():
        return sub
    if any((base / name).is_file() for pair in KMNIST_FILES.values() for name in pair):
        return base
    raise FileNotFoundError(f"KMNIST folder {str(sub)!r} not found (run "
                            f"python data_scripts/download_kmnist.py --root {str(base)!r})")


def _split_files(root, split: str) -> tuple[Path, Path]:
    check_choice(split, "split", KMNIST_FILES)
    folder = kmnist_dir(root)
    images, labels = (folder / name for name in KMNIST_FILES[split])
    return (require_file(images, f"KMNIST {split} images"), require_file(labels, f"KMNIST {split} labels"))


def _select(n: int, indices: Indices) -> np.ndarray | slice:
    if indices is None:
        return slice(None)
    if isinstance(indices, slice):
        return indices
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    if isinstance(indices, (bool, np.bool_)):
        raise TypeError("indices must be an int, a slice, a sequence of ints or None, got a bool")
    idx = np.atleast_1d(np.asarray(indices))
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise TypeError(f"indices must be an int, a slice, a sequence of ints or None, got {indices!r}")
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise ValueError(f"indices must lie in [-{n}, {n}) for this split, got min {idx.min()}, max {idx.max()}")
    return idx.astype(np.int64)


def load_kmnist(root: str | os.PathLike | None = None, split: str = "test",
                indices: Indices = None) -> torch.Tensor:
    """KMNIST images as a float32 tensor ``(N, 1, 28, 28)`` in [0, 1] (uint8 / 255).

    Args:
        root: data root holding ``kmnist/`` (or the ``kmnist`` folder); None: ``$BAYES_DIP_DATA``.
        split: ``"test"`` (10,000 images, used by the paper's benchmark) or ``"train"``.
        indices: an int, a slice, a sequence of ints, or None for all images.
    """
    images_path, _ = _split_files(root, split)
    images = read_idx(images_path, ndim=3)
    sel = images[_select(images.shape[0], indices)]
    return torch.from_numpy(sel.astype(np.float32) / 255.0).reshape(-1, 1, *images.shape[1:])


def load_kmnist_labels(root: str | os.PathLike | None = None, split: str = "test",
                       indices: Indices = None) -> torch.Tensor:
    """KMNIST class labels (0..9) as an int64 tensor ``(N,)``; arguments as in :func:`load_kmnist`."""
    _, labels_path = _split_files(root, split)
    labels = read_idx(labels_path, ndim=1)
    return torch.from_numpy(labels[_select(labels.shape[0], indices)].astype(np.int64)).reshape(-1)
