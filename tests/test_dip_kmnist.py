"""Acceptance: DIP on a KMNIST test image (20 angles, 5 % noise) beats FBP by >= 3 dB."""
from __future__ import annotations

import pytest
import torch

from bayes_dip.ct import ParallelBeamGeometry, RayTransform, fbp, simulate_measurement
from bayes_dip.data import load_kmnist
from bayes_dip.dip import dip_preset, reconstruct_dip


@pytest.fixture(autouse=True)
def _single_thread(_torch_threads):
    """Tiny convolutions gain nothing from threads; on a busy machine two threads made the
    DIP loop 10× slower."""
    torch.set_num_threads(1)


def _psnr(x: torch.Tensor, gt: torch.Tensor) -> float:
    data_range = gt.max() - gt.min()
    return float(10 * torch.log10(data_range ** 2 / (x - gt).pow(2).mean()))


def test_dip_beats_fbp_on_kmnist(data_root):
    x = load_kmnist(data_root / "kmnist", split="test", indices=[0])
    ray_trafo = RayTransform(ParallelBeamGeometry((28, 28), num_angles=20), backend="matrix")
    y, _ = simulate_measurement(x, ray_trafo, noise_level=0.05, seed=0)
    x_fbp = fbp(ray_trafo, y)
    result = reconstruct_dip(ray_trafo, y, config=dip_preset("kmnist-fast"), ground_truth=x,
                             progress=False)
    psnr_fbp, psnr_dip = _psnr(x_fbp, x), _psnr(result.recon, x)
    assert psnr_dip >= psnr_fbp + 3.0, (psnr_fbp, psnr_dip)
    # the progress PSNR of the best iterate is the PSNR of the returned reconstruction
    assert result.history.psnr[result.best_iteration] == pytest.approx(psnr_dip, abs=1e-3)
