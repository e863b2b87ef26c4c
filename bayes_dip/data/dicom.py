"""One CT slice from a DICOM file: Hounsfield units -> linear attenuation -> [0, 1].

Conversion: ``mu = MU_WATER * (1 + HU / 1000)`` clipped at 0 (HU = -1000 is air/vacuum, 0 is
water), with ``MU_WATER = 0.02 / mm`` (20 m^-1, water at roughly 60-70 keV; the value
LoDoPaB-CT uses). :func:`load_dicom_slice` then divides by the slice maximum, so the
returned image does not depend on ``MU_WATER``; :func:`read_dicom_attenuation` keeps 1/mm.

Embedded default: ``pydicom.data.get_testdata_file("CT_small.dcm")``, a real 128x128 CT
slice shipped with pydicom (MIT), stored as int16 with HU = raw - 1024.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from bayes_dip.data.paths import require_file
from bayes_dip.data.transforms import as_image_tensor, check_size, resize_square

__all__ = ["MU_WATER", "default_dicom_path", "hu_to_attenuation", "read_dicom_attenuation",
           "read_dicom_unit", "load_dicom_slice"]

MU_WATER = 0.02  # linear attenuation of water in 1/mm (20 m^-1)


def default_dicom_path() -> str:
    """Path of pydicom's bundled real CT slice ``CT_small.dcm`` (128x128)."""
    from pydicom.data import get_testdata_file
    path = get_testdata_file("CT_small.dcm")
    if path is None:
        raise FileNotFoundError("pydicom's test file CT_small.dcm is missing from this pydicom install")
    return str(path)


def hu_to_attenuation(hu: np.ndarray, mu_water: float = MU_WATER) -> np.ndarray:
    """Linear attenuation ``mu_water * (1 + hu / 1000)``, clipped at 0 (units of ``mu_water``)."""
    if not (np.isfinite(mu_water) and mu_water > 0):
        raise ValueError(f"mu_water must be a positive finite number, got {mu_water!r}")
    return np.clip(mu_water * (1.0 + np.asarray(hu, dtype=np.float64) / 1000.0), 0.0, None)


def read_dicom_attenuation(path: str | os.PathLike, mu_water: float = MU_WATER) -> np.ndarray:
    """Read a single-frame CT DICOM file as linear attenuation ``(H, W)`` float64 in 1/mm.

    The stored values are mapped to HU with the file's modality LUT (RescaleSlope/Intercept).

    Raises:
        FileNotFoundError: missing file.
        ValueError: not DICOM, no pixel data, or not a single 2D frame (names the file).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut

    p = require_file(path, "DICOM file")
    try:
        ds = pydicom.dcmread(p)
        raw = ds.pixel_array
    except (InvalidDicomError, AttributeError, KeyError, OSError, ValueError, TypeError) as exc:
        raise ValueError(f"DICOM file {str(p)!r} is not a readable DICOM image: {exc}") from exc
    if raw.ndim != 2:
        raise ValueError(f"DICOM file {str(p)!r} must hold one 2D grey-value frame, got pixel "
                         f"array shape {raw.shape} (convert series/multi-frame files with "
                         "data_scripts/dicom_to_npy.py)")
    hu = apply_modality_lut(raw, ds).astype(np.float64)
    return hu_to_attenuation(hu, mu_water)


def read_dicom_unit(path: str | os.PathLike) -> np.ndarray:
    """Attenuation of a DICOM slice divided by its maximum: float64 ``(H, W)`` in [0, 1]."""
    mu = read_dicom_attenuation(path)
    peak = float(mu.max())
    return mu / peak if peak > 0 else mu


def load_dicom_slice(path: str | os.PathLike | None = None, size: int | None = 128) -> torch.Tensor:
    """A DICOM CT slice as float32 ``(1, 1, size, size)`` in [0, 1] (attenuation / its maximum).

    Args:
        path: DICOM file (any suffix); None uses the embedded ``CT_small.dcm`` (128x128 real CT).
        size: output side length (linear, anti-aliased resize); None keeps the native shape.
            The slice must be square when ``size`` is set (ValueError otherwise).
    """
    size = check_size(size)
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a DICOM file path or None, got {type(path).__name__}")
    p = default_dicom_path() if path is None else path
    img = read_dicom_unit(p)
    if size is not None:
        img = resize_square(img, size, name=f"DICOM file {str(p)!r}")
    return as_image_tensor(img)
