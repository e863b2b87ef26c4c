"""Deep-ensemble DIP: members are independently seeded DIPs; moments are those of their outputs."""
from __future__ import annotations

import pytest
import torch

from torch import nn

from bayes_dip.baselines import deep_ensemble
from bayes_dip.dip import DIPConfig, reconstruct_dip


class _Dense(nn.Module):
    """``A x = M vec(x)`` with a fixed random matrix (stands in for the ray transform)."""

    im_shape, obs_shape = (8, 8), (4, 10)

    def __init__(self):
        super().__init__()
        self.M = torch.randn(40, 64, generator=torch.Generator().manual_seed(0)) / 8

    def A(self, x):
        return (x.flatten(1) @ self.M.T.to(x.dtype)).reshape(-1, 1, *self.obs_shape)


def _setup():
    op = _Dense()
    g = torch.Generator().manual_seed(0)
    return op, op.A(torch.rand(1, 1, 8, 8, generator=g)), torch.rand(1, 1, 8, 8, generator=g)


def test_members_are_seeded_dips_and_moments_match(tmp_path):
    op, y, x_in = _setup()
    cfg = DIPConfig(iterations=2, gamma=0.0, seed=4, unet="kmnist", lr=1e-3)
    results, pred = deep_ensemble(op, y, members=3, config=cfg, net_input=x_in,
                                  patch_sizes=(4,), added_variance=1e-4,
                                  checkpoint_dir=tmp_path, progress=False)
    single = reconstruct_dip(op, y, net_input=x_in, config=DIPConfig(
        iterations=2, gamma=0.0, seed=5, unet="kmnist", lr=1e-3), progress=False)
    torch.testing.assert_close(results[1].recon, single.recon, rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["member_0", "member_1", "member_2"]
    recons = torch.cat([r.recon for r in results]).flatten(1).double()
    assert not torch.equal(recons[0], recons[1])
    assert torch.equal(pred.samples, torch.cat([r.recon for r in results]))
    torch.testing.assert_close(pred.mean.flatten(), recons.mean(0), rtol=0, atol=1e-12)
    cov = torch.cov(recons.T) + 1e-4 * torch.eye(64, dtype=torch.float64)
    torch.testing.assert_close(pred.covariance, cov, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(pred.std.square().flatten(), cov.diagonal(), rtol=1e-9, atol=0)
    assert pred.info["num_samples"] == 3 and pred.patch_covariances[4].shape == (4, 16, 16)


def test_bad_inputs_raise():
    op, y, _ = _setup()
    with pytest.raises(ValueError, match="members"):
        deep_ensemble(op, y, members=1)
    with pytest.raises(TypeError, match="config"):
        deep_ensemble(op, y, config={"seed": 0})
    with pytest.raises(ValueError, match="one measurement"):
        deep_ensemble(op, y.repeat(2, 1, 1, 1))
    with pytest.raises(ValueError, match="added_variance"):
        deep_ensemble(op, y, added_variance=-1.0)
