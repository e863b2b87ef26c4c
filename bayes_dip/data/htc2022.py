"""Helsinki Tomography Challenge 2022 (HTC2022): real measured fan-beam data.

File format (MATLAB v5 ``.mat``, read with ``scipy.io.loadmat(squeeze_me=True,
struct_as_record=False)``): one struct ``CtDataLimited`` (challenge inputs, subsampled) or
``CtDataFull`` (the full 360° scans on Zenodo) with fields ``sinogram`` (n_angles x 560,
already flat-field corrected and log-transformed, i.e. dimensionless line integrals) and
``parameters`` (``angles`` in degrees, ``distanceSourceOrigin``/``distanceSourceDetector``
in mm, ``effectivePixelSizePost`` = detector cell width at the rotation axis in mm,
``geometricMagnification``, ``numDetectorsPost``).

Geometry, following the organisers' ``create_ct_operator_2d_fan_astra``: astra ``fanflat``
with angles ``deg2rad(angles)``, detector cell width ``effectivePixelSizePost *
geometricMagnification`` (0.2 mm at the detector), and the reconstruction target a 512 x 512
grid of ``effectivePixelSizePost`` pixels (0.1483 mm, 75.9 mm across; the discs are 70 mm).
The sinogram is used in the file's row (angle) and column (detector) order and the image in
the segmentation PNG's row/column order (row 0 at the top); forward projecting the scaled
segmentation reproduces the measured sinogram (checked in ``tests/test_data_htc2022.py``).

Units: with ``geometry.pixel_size`` in mm the ray transform gives line integrals for images
in 1/mm; :func:`plastic_attenuation` gives the attenuation of the discs' plastic in 1/mm, so
``scan.ground_truth * plastic_attenuation(...)`` is a ground-truth image in the sinogram's units.

Source: Meaney, Heikkilä et al., HTC2022 open tomographic dataset, Zenodo record 6984868,
CC BY 4.0 (``data_scripts/download_htc2022.py``).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io
import torch
from PIL import Image, UnidentifiedImageError

from bayes_dip.checks import check_choice, check_int
from bayes_dip.ct.geometry import FanBeamGeometry
from bayes_dip.data.paths import require_file

__all__ = ["TARGET_SIZE", "HTC2022Scan", "read_htc2022_mat", "read_segmentation",
           "find_segmentation", "bin_detectors", "load_htc2022", "plastic_attenuation"]

#: Side length in pixels of the challenge's reconstruction target (``effectivePixelSizePost`` each).
TARGET_SIZE = 512
_STRUCT_NAMES = ("CtDataLimited", "CtDataFull")
_NUMERIC_PARAMETERS = ("distanceSourceOrigin", "distanceSourceDetector", "effectivePixelSizePost",
                       "geometricMagnification", "numDetectorsPost")


@dataclass(frozen=True)
class HTC2022Scan:
    """One HTC2022 measurement, ready for :class:`bayes_dip.ct.RayTransform`.

    Attributes:
        sinogram: measured line integrals ``(1, 1, n_angles, n_det)`` float32 (after binning).
        angles: source angles in radians ``(n_angles,)`` (the file's degrees converted).
        geometry: the scanner as a :class:`FanBeamGeometry` in mm on the chosen ``im_size`` grid.
        ground_truth: segmentation ``(1, 1, im_size, im_size)`` float32, the fraction of each
            pixel covered by plastic (block mean of the 512x512 PNG; 1 = plastic, 0 = air), or None.
        pixel_size: reconstruction pixel side in mm (``geometry.pixel_size``).
        target_pixel_size: pixel side of the challenge's 512x512 grid in mm (``effectivePixelSizePost``).
        detector_binning: detector cells merged into one; ``binning_mode``: "mean" or "sum".
        parameters: the file's scalar parameters (numbers and strings), ``angles`` in degrees.
        path: the ``.mat`` file read.
    """

    sinogram: torch.Tensor = field(repr=False)
    angles: np.ndarray = field(repr=False)
    geometry: FanBeamGeometry
    ground_truth: torch.Tensor | None = field(repr=False)
    pixel_size: float
    target_pixel_size: float
    detector_binning: int
    binning_mode: str
    parameters: dict = field(repr=False)
    path: Path


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.item() if value.size == 1 else value.copy()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_htc2022_mat(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Sinogram ``(n_angles, n_det)`` float64 and the ``parameters`` struct as a dict.

    Raises:
        FileNotFoundError: missing file.
        ValueError: not a MATLAB file, no ``CtDataLimited``/``CtDataFull`` struct, missing
            parameters, or a sinogram whose shape disagrees with the angles/detector count.
    """
    p = require_file(path, "HTC2022 .mat file")
    try:
        mat = scipy.io.loadmat(p, squeeze_me=True, struct_as_record=False)
    except (ValueError, TypeError, OSError, NotImplementedError) as exc:
        raise ValueError(f"HTC2022 file {str(p)!r} is not a readable MATLAB v5 .mat file: {exc}") from exc
    struct = next((mat[k] for k in _STRUCT_NAMES if k in mat), None)
    if struct is None or not hasattr(struct, "sinogram") or not hasattr(struct, "parameters"):
        raise ValueError(f"HTC2022 file {str(p)!r} has no struct {' or '.join(_STRUCT_NAMES)} with "
                         f"fields sinogram and parameters (variables: "
                         f"{sorted(k for k in mat if not k.startswith('__'))})")
    params = {name: _plain(getattr(struct.parameters, name))
              for name in getattr(struct.parameters, "_fieldnames", [])}
    missing = [k for k in (*_NUMERIC_PARAMETERS, "angles") if k not in params]
    if missing:
        raise ValueError(f"HTC2022 file {str(p)!r}: parameters lack {missing}")
    sinogram = np.asarray(struct.sinogram, dtype=np.float64)
    angles = np.atleast_1d(np.asarray(params["angles"], dtype=np.float64))
    params["angles"] = angles
    n_det = int(params["numDetectorsPost"])
    if sinogram.ndim == 1 and angles.size == 1:
        sinogram = sinogram[None]
    if sinogram.shape != (angles.size, n_det):
        raise ValueError(f"HTC2022 file {str(p)!r}: sinogram shape {sinogram.shape} does not match "
                         f"{angles.size} angles x numDetectorsPost={n_det}")
    if not np.all(np.isfinite(sinogram)):
        raise ValueError(f"HTC2022 file {str(p)!r}: sinogram contains NaN or inf values")
    return sinogram, params


def read_segmentation(path: str | os.PathLike) -> np.ndarray:
    """A ground-truth segmentation PNG as a bool array (``True`` = plastic), e.g. 512x512."""
    p = require_file(path, "segmentation PNG")
    try:
        with Image.open(p) as im:
            arr = np.asarray(im.convert("L")) if im.mode not in ("1", "L") else np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"segmentation {str(p)!r} is not a readable PNG: {exc}") from exc
    if arr.ndim != 2:
        raise ValueError(f"segmentation {str(p)!r} must be a 2D image, got shape {arr.shape}")
    return arr > (0 if arr.dtype == bool else arr.max() / 2 if arr.max() > 0 else 0)


def find_segmentation(mat_path: str | os.PathLike) -> Path | None:
    """The segmentation PNG that belongs to an HTC2022 ``.mat`` file, if it lies beside it.

    ``htc2022_<id>_{full,limited,sparse_example}.mat`` -> ``htc2022_<id>_full_recon_fbp_seg.png``
    (training data) or ``htc2022_<id>_recon_fbp_seg.png`` (test data). None if neither exists.
    """
    p = Path(mat_path)
    match = re.fullmatch(r"(htc2022_.+?)_(full|limited|sparse_example)", p.stem)
    if match is None:
        return None
    for suffix in ("_full_recon_fbp_seg.png", "_recon_fbp_seg.png"):
        candidate = p.with_name(match.group(1) + suffix)
        if candidate.is_file():
            return candidate
    return None


def bin_detectors(sinogram: np.ndarray, factor: int, mode: str = "mean") -> np.ndarray:
    """Merge groups of ``factor`` adjacent detector cells (last axis).

    ``mode="mean"`` averages the line integrals: the result stays a line integral for a
    detector ``factor`` times wider (what the binned geometry models) and its noise
    variance drops by ``factor``. ``mode="sum"`` adds them (values grow by ``factor``; use only
    with an operator scaled to match).
    """
    check_int(factor, "detector_binning", 1, allow_numpy=True)
    check_choice(mode, "binning_mode", ("mean", "sum"))
    n_det = sinogram.shape[-1]
    if n_det % factor:
        raise ValueError(f"detector_binning={factor} must divide the {n_det} detector cells")
    grouped = sinogram.reshape(*sinogram.shape[:-1], n_det // factor, factor)
    return grouped.mean(-1) if mode == "mean" else grouped.sum(-1)


def _block_mean(image: np.ndarray, size: int) -> np.ndarray:
    f = image.shape[0] // size
    return image.reshape(size, f, size, f).mean(axis=(1, 3))


def load_htc2022(path: str | os.PathLike, im_size: int = 128, detector_binning: int = 1,
                 binning_mode: str = "mean",
                 segmentation: bool | str | os.PathLike = True) -> HTC2022Scan:
    """Load an HTC2022 scan with its fan-beam geometry on an ``im_size × im_size`` grid.

    Args:
        path: ``.mat`` file with ``CtDataLimited`` or ``CtDataFull``.
        im_size: reconstruction grid side; must divide 512 (e.g. 128 or 256). The grid always
            covers the challenge's 512x512 target area, so ``pixel_size = 512 / im_size *
            effectivePixelSizePost`` mm.
        detector_binning: merge this many adjacent detector cells (must divide 560, e.g. 2 or 4);
            the geometry's detector cells widen accordingly.
        binning_mode: ``"mean"`` (default, keeps line-integral units) or ``"sum"``
            (see :func:`bin_detectors`).
        segmentation: True: the ground-truth PNG beside the file if present
            (:func:`find_segmentation`), else ``ground_truth=None``; False: none; a path: that PNG
            (must exist).
    """
    im_size = check_int(im_size, "im_size", 1, allow_numpy=True)
    if TARGET_SIZE % im_size:
        raise ValueError(f"im_size must divide {TARGET_SIZE} (e.g. 128, 256), got {im_size!r}")
    sinogram, params = read_htc2022_mat(path)
    sinogram = bin_detectors(sinogram, detector_binning, binning_mode)
    target_pixel = float(params["effectivePixelSizePost"])
    pixel_size = TARGET_SIZE / im_size * target_pixel
    angles = np.deg2rad(params["angles"])
    dso = float(params["distanceSourceOrigin"])
    geometry = FanBeamGeometry(
        (im_size, im_size), angles, src_origin_dist=dso,
        origin_det_dist=float(params["distanceSourceDetector"]) - dso,
        det_pixel_size=target_pixel * float(params["geometricMagnification"]) * detector_binning,
        num_detectors=sinogram.shape[-1], pixel_size=pixel_size)

    if segmentation is True:
        seg_path = find_segmentation(path)
    elif segmentation is False or segmentation is None:
        seg_path = None
    elif isinstance(segmentation, (str, os.PathLike)):
        seg_path = Path(segmentation)
    else:
        raise TypeError(f"segmentation must be a bool or a PNG path, got {type(segmentation).__name__}")
    ground_truth = None
    if seg_path is not None:
        seg = read_segmentation(seg_path)
        if seg.shape != (TARGET_SIZE, TARGET_SIZE):
            raise ValueError(f"segmentation {str(seg_path)!r} must be {TARGET_SIZE}x{TARGET_SIZE}, "
                             f"got {seg.shape[0]}x{seg.shape[1]}")
        ground_truth = torch.from_numpy(
            _block_mean(seg.astype(np.float64), im_size).astype(np.float32))[None, None]

    return HTC2022Scan(
        sinogram=torch.from_numpy(np.ascontiguousarray(sinogram, dtype=np.float32))[None, None],
        angles=angles, geometry=geometry, ground_truth=ground_truth, pixel_size=pixel_size,
        target_pixel_size=target_pixel, detector_binning=int(detector_binning),
        binning_mode=binning_mode, parameters=params, path=Path(path))


def plastic_attenuation(disc_recon_path: str | os.PathLike, recon_pixel_size: float) -> float:
    """Attenuation of the discs' plastic in 1/mm from the solid disc's full-angle FBP.

    Reads ``reconFullFbp`` (512x512, values per pixel of ``recon_pixel_size`` mm, i.e. per
    ``effectivePixelSizePost``; pass ``scan.target_pixel_size``) from
    ``htc2022_solid_disc_full_recon_fbp.mat`` and returns the median over the disc (pixels
    above half the 99th percentile) divided by ``recon_pixel_size``. About 0.0325 / mm.
    """
    if isinstance(recon_pixel_size, bool) or not (
            isinstance(recon_pixel_size, (int, float, np.integer, np.floating))
            and np.isfinite(recon_pixel_size) and recon_pixel_size > 0):
        raise ValueError(f"recon_pixel_size must be a positive number in mm, got {recon_pixel_size!r}")
    p = require_file(disc_recon_path, "solid disc reconstruction")
    try:
        mat = scipy.io.loadmat(p, squeeze_me=True)
    except (ValueError, TypeError, OSError, NotImplementedError) as exc:
        raise ValueError(f"solid disc file {str(p)!r} is not a readable MATLAB v5 .mat file: {exc}") from exc
    recon = np.asarray(mat.get("reconFullFbp", np.empty(0)), dtype=np.float64)
    if recon.ndim != 2 or recon.size == 0:
        raise ValueError(f"solid disc file {str(p)!r} must hold a 2D array reconFullFbp")
    inside = recon > 0.5 * np.percentile(recon, 99)
    return float(np.median(recon[inside])) / float(recon_pixel_size)
