"""The tiny linearised-DIP problem shared by the linearised tests (seeded, float64)."""
from __future__ import annotations

import torch

from bayes_dip.ct import ParallelBeamGeometry, RayTransform
from bayes_dip.dip import UNet
from bayes_dip.linearized import NetworkJacobian


def tiny_jacobian_and_ray_trafo() -> tuple[NetworkJacobian, RayTransform]:
    """A 2-scale U-Net on an 8×8 input (seed 0) and a 5-angle parallel-beam operator."""
    torch.manual_seed(0)
    net = UNet(channels=(3, 4), skip_channels=(0, 2)).double()
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    rt = RayTransform(ParallelBeamGeometry((8, 8), num_angles=5))
    return NetworkJacobian(net, x), rt


def noisy_measurement(jac: NetworkJacobian, rt: RayTransform) -> torch.Tensor:
    """``A f(θ̂) + 0.02 ε`` drawn from the global RNG right after the set-up above."""
    return rt.A(jac.output) + 0.02 * torch.randn(1, 1, *rt.obs_shape, dtype=torch.float64)
