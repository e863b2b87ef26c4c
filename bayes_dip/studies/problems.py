"""CT problems of a study: one per (setting, image id), built from the shared loaders."""
from __future__ import annotations

import zlib
from pathlib import Path

from torch import Tensor

from bayes_dip.data import data_root as resolve_data_root
from bayes_dip.data import load_dicom_slice, load_image, load_kmnist, shepp_logan
from bayes_dip.problem import CTProblem, htc2022_problem, simulated_problem
from bayes_dip.studies.config import Setting

__all__ = ["build_problem", "noise_seed", "image_key"]


def image_key(image_id: str) -> str:
    """File-name-safe form of an image id (``kmnist:3`` -> ``kmnist-3``)."""
    kind, _, arg = image_id.partition(":")
    if kind in ("dicom", "file", "htc2022") and arg:
        arg = Path(arg).stem
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in arg)
    return f"{kind}-{safe}" if arg else kind


def noise_seed(seed: int, image_id: str) -> int:
    """Seed of the simulated noise: fixed per (study seed, image), independent of list order."""
    return (seed * 1_000_003 + zlib.crc32(image_id.encode())) % 2**31


def _load_image(image_id: str, size: int | None, root: str | None) -> Tensor:
    kind, _, arg = image_id.partition(":")
    if kind == "kmnist":
        return load_kmnist(root, split="test", indices=[int(arg)])
    if kind == "dicom":
        return load_dicom_slice(arg or None, size=size)
    if kind == "shepp_logan":
        return shepp_logan(size or 128)
    if kind == "file":
        return load_image(arg, size=size)
    raise ValueError(f"image id {image_id!r} is not a simulated image")


def _htc2022_path(path: str, root: str | None) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else resolve_data_root(root) / p


def build_problem(setting: Setting, image_id: str, seed: int, data_root: str | None) -> CTProblem:
    """The CT problem of ``image_id`` under ``setting`` (noise seeded by :func:`noise_seed`)."""
    if setting.kind == "htc2022":
        return htc2022_problem(_htc2022_path(setting.htc2022, data_root), size=setting.size,
                               detector_binning=setting.detector_binning)
    image = _load_image(image_id, setting.size, data_root).float()
    return simulated_problem(image, num_angles=setting.angles, noise_level=setting.noise,
                             seed=noise_seed(seed, image_id), name=image_id)
