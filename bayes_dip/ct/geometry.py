"""2D CT acquisition geometries (parallel beam, flat-detector fan beam) with real units.

Units and conventions (shared by every backend):

* Image: ``im_shape = (H, W)`` pixels, square pixels of side ``pixel_size`` (length unit per
  pixel, e.g. mm). The image covers ``[-W/2, W/2] * pixel_size`` horizontally and
  ``[-H/2, H/2] * pixel_size`` vertically, centred on the rotation axis. Row 0 is the top
  (largest y), column 0 the left (smallest x) — astra's volume convention.
* Detector: ``num_detectors`` cells, centred on the central ray. Parallel beam:
  ``det_spacing`` is the cell width (same length unit as ``pixel_size``). Fan beam:
  ``det_pixel_size`` is the cell width **at the detector plane**; the width seen at the
  rotation axis is ``det_pixel_size / magnification``.
* Angles in radians (astra's convention: at angle 0 a fan-beam source sits at
  ``(0, -src_origin_dist)``; angles increase counter-clockwise).
* Ray transform values are line integrals in the same length unit: an image of attenuation
  coefficients in 1/mm with ``pixel_size`` in mm gives dimensionless sinograms.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from bayes_dip.checks import check_int

__all__ = ["ParallelBeamGeometry", "FanBeamGeometry", "Geometry"]


def _check_im_shape(im_shape: Sequence[int]) -> tuple[int, int]:
    try:
        shape = tuple(int(s) for s in im_shape)
    except TypeError as exc:
        raise TypeError(f"im_shape must be a pair of ints (H, W), got {im_shape!r}") from exc
    if len(shape) != 2 or any(s < 1 for s in shape) or any(
            s != v for s, v in zip(shape, im_shape)):
        raise ValueError(f"im_shape must be two positive ints (H, W), got {im_shape!r}")
    return shape  # type: ignore[return-value]


def _check_positive(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a positive number, got {value!r}") from exc
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    return check_int(value, name, 1, allow_numpy=True)


def _check_angles(angles) -> np.ndarray:
    arr = np.asarray(angles, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"angles must be a non-empty 1D array (radians), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("angles must be finite")
    arr = arr.copy()
    arr.setflags(write=False)
    return arr


class _Geometry:
    """Common attributes: ``im_shape``, ``pixel_size``, ``angles``, ``num_detectors``."""

    im_shape: tuple[int, int]
    pixel_size: float
    angles: np.ndarray
    num_detectors: int

    @property
    def num_angles(self) -> int:
        return int(self.angles.size)

    @property
    def obs_shape(self) -> tuple[int, int]:
        """Sinogram shape ``(num_angles, num_detectors)``."""
        return (self.num_angles, self.num_detectors)

    @property
    def image_extent(self) -> tuple[float, float]:
        """Physical image size ``(height, width)`` in length units."""
        return (self.im_shape[0] * self.pixel_size, self.im_shape[1] * self.pixel_size)

    def _params(self) -> dict:
        raise NotImplementedError

    def _key(self) -> tuple:
        return tuple(v.tobytes() if isinstance(v, np.ndarray) else v for v in self._params().values())

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self._key() == other._key()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._key())

    def isclose(self, other: object, rtol: float = 1e-9) -> bool:
        """Same type and sizes, all lengths and angles equal up to ``rtol`` (relative)."""
        if type(self) is not type(other):
            return False
        mine, theirs = self._params(), other._params()  # type: ignore[attr-defined]
        for name, v in mine.items():
            w = theirs[name]
            if isinstance(v, (int, tuple)):
                if v != w:
                    return False
            elif np.shape(v) != np.shape(w) or not np.allclose(v, w, rtol=rtol, atol=rtol * np.max(np.abs(v))):
                return False
        return True


class ParallelBeamGeometry(_Geometry):
    """2D parallel-beam geometry.

    Args:
        im_shape: image shape ``(H, W)`` in pixels.
        num_angles: number of equispaced angles in ``[0, pi)`` (midpoints of a uniform
            partition, like ODL's ``parallel_beam_geometry``); ignored if ``angles`` given.
            Default: ``ceil(pi * rho / pixel_size)`` with ``rho`` the half-diagonal of the image.
        angles: explicit angles in radians, shape ``(num_angles,)``.
        num_detectors: detector cells. Default ``2 * ceil(rho / pixel_size) + 1`` (ODL's choice).
        det_spacing: detector cell width (length units). Default: the detector spans
            ``[-rho, rho]``, i.e. ``2 * rho / num_detectors``.
        pixel_size: image pixel side (length units per pixel).
    """

    def __init__(self, im_shape: Sequence[int], num_angles: int | None = None, angles=None,
                 num_detectors: int | None = None, det_spacing: float | None = None,
                 pixel_size: float = 1.0) -> None:
        self.im_shape = _check_im_shape(im_shape)
        self.pixel_size = _check_positive("pixel_size", pixel_size)
        rho = 0.5 * math.hypot(*self.im_shape) * self.pixel_size
        if angles is not None:
            self.angles = _check_angles(angles)
            if num_angles is not None and _check_count("num_angles", num_angles) != self.angles.size:
                raise ValueError(f"num_angles={num_angles} does not match len(angles)={self.angles.size}")
        else:
            n = (_check_count("num_angles", num_angles) if num_angles is not None
                 else int(math.ceil(math.pi * rho / self.pixel_size)))
            self.angles = _check_angles((np.arange(n) + 0.5) * (np.pi / n))
        self.num_detectors = (_check_count("num_detectors", num_detectors) if num_detectors is not None
                              else 2 * int(math.ceil(rho / self.pixel_size)) + 1)
        self.det_spacing = (_check_positive("det_spacing", det_spacing) if det_spacing is not None
                            else 2 * rho / self.num_detectors)

    def _params(self) -> dict:
        return dict(im_shape=self.im_shape, pixel_size=self.pixel_size, angles=self.angles,
                    num_detectors=self.num_detectors, det_spacing=self.det_spacing)

    def __repr__(self) -> str:
        return (f"ParallelBeamGeometry(im_shape={self.im_shape}, num_angles={self.num_angles}, "
                f"num_detectors={self.num_detectors}, det_spacing={self.det_spacing:.6g}, "
                f"pixel_size={self.pixel_size:.6g})")


class FanBeamGeometry(_Geometry):
    """2D fan-beam geometry with a flat detector (astra ``fanflat``).

    Args:
        im_shape: image shape ``(H, W)`` in pixels.
        angles: source angles in radians, shape ``(num_angles,)`` (any range, e.g. a 60°
            limited-angle scan or a full circle).
        src_origin_dist: source to rotation-axis distance (length units, e.g. mm).
        origin_det_dist: rotation axis to detector distance (length units).
        det_pixel_size: detector cell width **at the detector plane** (length units).
        num_detectors: detector cells.
        pixel_size: image pixel side (length units per pixel).

    Example (HTC2022 scanner, the ``.mat`` file's parameters; ``effectivePixelSizePost`` is the
    cell width at the object, so multiply by the magnification; the challenge's 512² target
    grid has pixels of ``effectivePixelSizePost`` mm, 75.9 mm across)::

        mag = 553.74 / 410.66
        FanBeamGeometry((512, 512), np.deg2rad(angles_deg), src_origin_dist=410.66,
                        origin_det_dist=553.74 - 410.66, det_pixel_size=0.1483 * mag,
                        num_detectors=560, pixel_size=0.1483)
    """

    def __init__(self, im_shape: Sequence[int], angles, src_origin_dist: float,
                 origin_det_dist: float, det_pixel_size: float, num_detectors: int,
                 pixel_size: float = 1.0) -> None:
        self.im_shape = _check_im_shape(im_shape)
        self.pixel_size = _check_positive("pixel_size", pixel_size)
        self.angles = _check_angles(angles)
        self.src_origin_dist = _check_positive("src_origin_dist", src_origin_dist)
        self.origin_det_dist = _check_positive("origin_det_dist", origin_det_dist)
        self.det_pixel_size = _check_positive("det_pixel_size", det_pixel_size)
        self.num_detectors = _check_count("num_detectors", num_detectors)
        half_diag = 0.5 * math.hypot(*self.im_shape) * self.pixel_size
        if half_diag >= self.src_origin_dist:
            raise ValueError(f"src_origin_dist={self.src_origin_dist} must exceed the image "
                             f"half-diagonal {half_diag:.6g} (source inside the image)")

    @property
    def magnification(self) -> float:
        """``(src_origin_dist + origin_det_dist) / src_origin_dist``."""
        return (self.src_origin_dist + self.origin_det_dist) / self.src_origin_dist

    @property
    def det_pixel_size_at_origin(self) -> float:
        """Detector cell width projected to the rotation axis (``det_pixel_size / magnification``)."""
        return self.det_pixel_size / self.magnification

    def _params(self) -> dict:
        return dict(im_shape=self.im_shape, pixel_size=self.pixel_size, angles=self.angles,
                    src_origin_dist=self.src_origin_dist, origin_det_dist=self.origin_det_dist,
                    det_pixel_size=self.det_pixel_size, num_detectors=self.num_detectors)

    def __repr__(self) -> str:
        return (f"FanBeamGeometry(im_shape={self.im_shape}, num_angles={self.num_angles}, "
                f"src_origin_dist={self.src_origin_dist:.6g}, origin_det_dist={self.origin_det_dist:.6g}, "
                f"det_pixel_size={self.det_pixel_size:.6g}, num_detectors={self.num_detectors}, "
                f"pixel_size={self.pixel_size:.6g})")


Geometry = ParallelBeamGeometry | FanBeamGeometry
