"""A CT reconstruction problem: operator, sinogram, FBP and (when known) the ground truth.

This is where ``data`` meets ``ct``: simulated problems project an image and add noise,
real ones (HTC2022) bring a measured sinogram with the scanner's fan-beam geometry.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bayes_dip.checks import check_int
from bayes_dip.ct import ParallelBeamGeometry, RayTransform, fbp, simulate_measurement
from bayes_dip.data import load_dicom_slice, load_htc2022, load_image, load_kmnist

__all__ = ["CTProblem", "simulated_problem", "htc2022_problem", "load_problem"]


@dataclass
class CTProblem:
    """Everything a reconstructor needs.

    Attributes:
        name: short description (``"dicom:CT_small.dcm"``, ``"kmnist:0"``, ...).
        ray_trafo: forward operator ``A``.
        sinogram: measurement ``y`` of shape ``(1, 1, n_angles, n_det)``.
        fbp: filtered back-projection of ``y``, ``(1, 1, H, W)``.
        ground_truth: ``(1, 1, H, W)`` or ``None`` (real data without reference).
        noise_std: standard deviation of the simulated white noise (``None`` for real data).
        info: plain values describing the problem (for the metrics JSON).
    """

    name: str
    ray_trafo: RayTransform
    sinogram: Tensor
    fbp: Tensor
    ground_truth: Tensor | None
    noise_std: float | None
    info: dict = field(default_factory=dict)


def simulated_problem(image: Tensor, num_angles: int = 30, noise_level: float = 0.05,
                      seed: int = 0, name: str = "image", backend: str = "matrix",
                      fbp_filter: str = "hann") -> CTProblem:
    """Parallel-beam problem: ``y = A x + ε``, ``ε ~ N(0, (level · mean|A x|)² I)``.

    Args:
        image: ground truth ``(1, 1, H, W)``, square.
        num_angles: equispaced angles in ``[0, π)``.
        noise_level: relative noise level (0.05 = 5 %).
        seed: seed of the noise.
    """
    if not isinstance(image, Tensor) or image.ndim != 4 or image.shape[:2] != (1, 1):
        raise ValueError(f"image must be a tensor of shape (1, 1, H, W), got "
                         f"{getattr(image, 'shape', type(image).__name__)}")
    if image.shape[-1] != image.shape[-2]:
        raise ValueError(f"image must be square, got {image.shape[-2]}x{image.shape[-1]} "
                         "(crop or resize it first)")
    check_int(num_angles, "angles", 1)
    if not 0 <= float(noise_level) < 1:
        raise ValueError(f"noise must be a relative level in [0, 1), got {noise_level!r}")
    geometry = ParallelBeamGeometry(tuple(image.shape[-2:]), num_angles=num_angles)
    ray_trafo = RayTransform(geometry, backend=backend)
    sinogram, noise_std = simulate_measurement(image, ray_trafo, noise_level=noise_level, seed=seed)
    noise_std = float(torch.as_tensor(noise_std).reshape(-1)[0])
    info = dict(source=name, geometry="parallel", angles=num_angles,
                detectors=geometry.num_detectors, image_size=int(image.shape[-1]),
                noise_level=float(noise_level), noise_std=noise_std, seed=seed)
    return CTProblem(name=name, ray_trafo=ray_trafo, sinogram=sinogram,
                     fbp=fbp(ray_trafo, sinogram, filter_type=fbp_filter),
                     ground_truth=image, noise_std=noise_std, info=info)


def htc2022_problem(path: str | os.PathLike, size: int = 128, detector_binning: int = 4,
                    fbp_filter: str = "hann") -> CTProblem:
    """Real measured fan-beam problem from an HTC2022 ``.mat`` file (no simulation).

    The ground truth (when the segmentation PNG lies beside the file) is the plastic
    fraction per pixel; the image unit is the attenuation of the plastic, so the sinogram
    is divided by it when the solid-disc calibration file is found beside the scan.
    """
    scan = load_htc2022(path, im_size=size, detector_binning=detector_binning)
    ray_trafo = RayTransform(scan.geometry, backend="matrix")
    sinogram = scan.sinogram
    mu = _plastic_attenuation_beside(Path(path), scan.target_pixel_size)
    if mu is not None:
        sinogram = sinogram / mu
    info = dict(source=f"htc2022:{Path(path).name}", geometry="fan", angles=scan.geometry.num_angles,
                angle_range_deg=float(np.rad2deg(np.ptp(scan.angles))),
                detectors=scan.geometry.num_detectors, image_size=size,
                pixel_size_mm=scan.pixel_size, detector_binning=detector_binning,
                image_unit="plastic fraction" if mu is not None else "1/mm",
                plastic_attenuation_per_mm=mu)
    return CTProblem(name=info["source"], ray_trafo=ray_trafo, sinogram=sinogram,
                     fbp=fbp(ray_trafo, sinogram, filter_type=fbp_filter),
                     ground_truth=scan.ground_truth, noise_std=None, info=info)


def _plastic_attenuation_beside(path: Path, target_pixel_size: float) -> float | None:
    from bayes_dip.data import plastic_attenuation
    disc = path.with_name("htc2022_solid_disc_full_recon_fbp.mat")
    return plastic_attenuation(disc, target_pixel_size) if disc.is_file() else None


def load_problem(*, image: str | None = None, kmnist: int | None = None, htc2022: str | None = None,
                 data_root: str | None = None, size: int | None = None, angles: int = 30,
                 noise: float = 0.05, seed: int = 0, fbp_filter: str = "hann") -> CTProblem:
    """Build the problem a command line describes (at most one source; default: the
    embedded real CT slice of pydicom at 128²)."""
    given = [n for n, v in (("image", image), ("kmnist", kmnist), ("htc2022", htc2022)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"give at most one data source, got {', '.join(given)}")
    if htc2022 is not None:
        return htc2022_problem(htc2022, size=size or 128, fbp_filter=fbp_filter)
    if kmnist is not None:
        check_int(kmnist, "kmnist", 0)
        x = load_kmnist(data_root, split="test", indices=[kmnist])
        name = f"kmnist:{kmnist}"
        if size is not None and size != x.shape[-1]:
            raise ValueError(f"size: KMNIST images are 28x28, got size={size}")
    elif image is not None:
        x = load_image(image, size=size)
        name = f"image:{Path(image).name}"
    else:
        x = load_dicom_slice(None, size=size or 128)
        name = "dicom:CT_small.dcm"
    return simulated_problem(x.float(), num_angles=angles, noise_level=noise, seed=seed,
                             name=name, fbp_filter=fbp_filter)
