"""DIP-MCDO: seeded sampling, dropout at test time, streamed moments against stored samples.

Oracles: ``torch.cov`` of the stored samples (full covariance), the blocks of that
covariance (patch covariances), :func:`bayes_dip.metrics.patch_covariances_from_samples`,
and a fresh :func:`mcdo_predictive` run (the sample-count helper).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bayes_dip.baselines import (SampleCountStability, fit_mcdo, mcdo_predictive,
                                 sample_count_stability)
from bayes_dip.baselines._moments import PatchGrouping, StreamingMoments
from bayes_dip.dip import DIPConfig, UNet
from bayes_dip.metrics import (image_patches, log_likelihood_diagonal, log_likelihood_full,
                               log_likelihood_patchwise, patch_covariances_from_samples)


def _net(dropout_p=0.2, seed=3):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet(channels=(4, 4), skip_channels=(0, 2), dropout_p=dropout_p)


def _input(h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 1, h, w, generator=g)


def test_samples_reproducible_with_seed_and_global_rng_untouched():
    net, x = _net(), _input()
    state = torch.get_rng_state()
    a = mcdo_predictive(net, x, num_samples=30, seed=5, batch_size=7, store_samples=True,
                        progress=False)
    b = mcdo_predictive(net, x, num_samples=30, seed=5, batch_size=7, store_samples=True,
                        progress=False)
    c = mcdo_predictive(net, x, num_samples=30, seed=6, batch_size=7, store_samples=True,
                        progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.samples, b.samples) and torch.equal(a.covariance, b.covariance)
    assert not torch.equal(a.samples, c.samples)


def test_dropout_active_at_test_time_and_modes_restored():
    net, x = _net(), _input()
    net.eval()
    pred = mcdo_predictive(net, x, num_samples=20, store_samples=True, progress=False)
    flat = pred.samples.flatten(1)
    assert (flat - flat[0]).abs().amax() > 1e-4  # samples differ
    assert not any(m.training for m in net.modules())
    with torch.no_grad():  # eval mode is deterministic again
        assert torch.equal(net(x), net(x))
    net.train()
    mcdo_predictive(net, x, num_samples=4, progress=False)
    assert all(m.training for m in net.modules())


def test_streamed_moments_equal_torch_cov_of_stored_samples():
    net, x = _net(), _input(7, 6)
    pred = mcdo_predictive(net, x, num_samples=53, batch_size=8, full_covariance=True,
                           store_samples=True, progress=False)
    flat = pred.samples.flatten(1).double()
    assert pred.samples.shape == (53, 1, 7, 6) and pred.info["num_samples"] == 53
    torch.testing.assert_close(pred.mean.flatten(), flat.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(pred.covariance, torch.cov(flat.T), rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(pred.std.flatten(), flat.std(0), rtol=1e-9, atol=1e-14)


def test_chan_merge_accurate_for_tiny_variance_on_large_mean():
    g = torch.Generator().manual_seed(0)
    x = 1e4 + 1e-3 * torch.randn(101, 5, generator=g, dtype=torch.float64)
    moments = StreamingMoments(5, True, {}, torch.device("cpu"))
    for chunk in x.split(13):
        moments.update(chunk)
    # variances ~1e-6: E[x²] − x̄² would lose ~1e-8 (1 %) to cancellation; Chan keeps ~1e-16
    torch.testing.assert_close(moments.covariance(), torch.cov(x.T), rtol=0, atol=1e-13)


def test_patch_covariances_are_blocks_of_full_covariance():
    net, x = _net(), _input(8, 8)
    added = 1e-3
    pred = mcdo_predictive(net, x, num_samples=40, batch_size=9, full_covariance=True,
                           patch_sizes=(2, 3), added_variance=added, store_samples=True,
                           progress=False)
    full = pred.covariance
    for p in (2, 3):
        covs = pred.patch_covariances[p]
        patches = image_patches((8, 8), p)
        assert len(covs) == len(patches)
        for idx, cov in zip(patches, covs):
            torch.testing.assert_close(cov, full[idx][:, idx], rtol=1e-10, atol=1e-15)
    assert isinstance(pred.patch_covariances[2], torch.Tensor)  # 2 divides 8: one tensor
    assert isinstance(pred.patch_covariances[3], list)  # 3 does not: patches of 3, 5 px sides
    oracle = patch_covariances_from_samples(pred.samples, 2)
    eye = torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(pred.patch_covariances[2], oracle + added * eye,
                               rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(pred.std.square().flatten(), full.diagonal(), rtol=1e-12, atol=0)


def test_log_likelihood_method_matches_metrics():
    net, x = _net(), _input(8, 8)
    pred = mcdo_predictive(net, x, num_samples=30, patch_sizes=(4,), added_variance=1e-3,
                           progress=False)
    gt = _input(8, 8, seed=9)
    ll = pred.log_likelihood(gt, 4)  # the full covariance comes first
    assert ll.kind == "full" and ll.per_pixel == pytest.approx(
        log_likelihood_full(pred.mean, pred.covariance, gt).per_pixel, abs=1e-12)
    no_full = mcdo_predictive(net, x, num_samples=30, patch_sizes=(4,), added_variance=1e-3,
                              full_covariance=False, progress=False)
    assert no_full.covariance is None
    ll = no_full.log_likelihood(gt, 4)
    assert ll.kind == "patchwise-4" and ll.per_pixel == pytest.approx(
        log_likelihood_patchwise(pred.mean, gt, 4, covariances=pred.patch_covariances[4]).per_pixel,
        abs=1e-12)
    ll = no_full.log_likelihood(gt, 2)  # no patches of 2 stored, no samples: the diagonal
    assert ll.kind == "diagonal" and ll.per_pixel == pytest.approx(
        log_likelihood_diagonal(pred.mean, pred.std, gt.double()), abs=1e-12)


def test_zero_variance_pixels_get_a_clear_error():
    net, x = _net(dropout_p=0.2), _input()
    pred = mcdo_predictive(net, x, num_samples=3, progress=False)
    pred.std[..., 0, 0] = 0.0
    with pytest.raises(ValueError, match="added_variance"):
        pred.log_likelihood(_input())


def test_sample_count_stability_matches_fresh_runs():
    net, x, gt = _net(), _input(), _input(seed=9)
    st = sample_count_stability(net, x, gt, counts=(12, 5), seeds=(0, 4), patch_size=None,
                                added_variance=1e-3, batch_size=1, progress=False)
    assert st.counts.tolist() == [5, 12] and st.log_likelihoods.shape == (2, 2)
    for i, seed in enumerate((0, 4)):
        for j, count in enumerate((5, 12)):
            fresh = mcdo_predictive(net, x, num_samples=count, seed=seed, batch_size=1,
                                    added_variance=1e-3, progress=False)
            assert st.log_likelihoods[i, j] == pytest.approx(
                fresh.log_likelihood(gt).per_pixel, abs=1e-10)


def test_stable_count_logic():
    lls = np.array([[1.00, 1.30, 1.500, 1.505], [1.20, 1.31, 1.502, 1.506]])
    st = SampleCountStability(np.array([10, 100, 1000, 10000]), np.array([0, 1]), lls)
    np.testing.assert_allclose(st.spread(), [0.2, 0.01, 0.002, 0.001])
    np.testing.assert_allclose(st.drift(), [0.505, 0.205, 0.005, 0.0], atol=1e-12)
    assert st.stable_count(0.01) == 1000
    assert st.stable_count(0.0001) is None


def test_patch_grouping_orders_like_image_patches():
    grouping = PatchGrouping((7, 5), 2)
    assert grouping.num_patches == len(image_patches((7, 5), 2))
    flat = [None] * grouping.num_patches
    for ids, pixels in grouping.groups:
        for k, px in zip(ids.tolist(), pixels):
            flat[k] = px
    for got, want in zip(flat, image_patches((7, 5), 2)):
        assert torch.equal(got, want)


class _Dense(nn.Module):
    """``A x = M vec(x)`` with a fixed random matrix (stands in for the ray transform)."""

    def __init__(self, im_shape=(8, 8), obs_shape=(4, 10)):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.im_shape, self.obs_shape = im_shape, obs_shape
        self.M = torch.randn(obs_shape[0] * obs_shape[1], im_shape[0] * im_shape[1],
                             generator=g) / 8

    def A(self, x):
        return (x.flatten(1) @ self.M.T.to(x.dtype)).reshape(-1, 1, *self.obs_shape)


def test_fit_mcdo_trains_dropout_net_without_tv():
    op = _Dense()
    y = op.A(_input())
    cfg = DIPConfig(iterations=3, gamma=0.0, seed=1, unet="kmnist", lr=1e-3)
    res = fit_mcdo(op, y, net_input=_input(seed=2), config=cfg, dropout_p=0.1, progress=False)
    rates = {m.p for m in res.net.modules() if isinstance(m, nn.Dropout2d)}
    assert rates == {0.1}
    again = fit_mcdo(op, y, net_input=_input(seed=2), config=cfg, dropout_p=0.1, progress=False)
    assert torch.equal(res.recon, again.recon)  # seeded init and training masks
    pred = mcdo_predictive(res.net, res.net_input, num_samples=8, progress=False)
    assert pred.mean.shape == (1, 1, 8, 8)


def test_fit_mcdo_rejects_bad_inputs():
    op = _Dense()
    y = op.A(_input())
    with pytest.raises(ValueError, match="gamma must be 0"):
        fit_mcdo(op, y, config=DIPConfig(iterations=1, gamma=1e-4), progress=False)
    with pytest.raises(ValueError, match="no dropout layer"):
        fit_mcdo(op, y, net=_net(dropout_p=0.0), config=DIPConfig(iterations=1, gamma=0.0))
    with pytest.raises(ValueError, match="not dropout_p"):
        fit_mcdo(op, y, net=_net(dropout_p=0.2), dropout_p=0.05,
                 config=DIPConfig(iterations=1, gamma=0.0))
    with pytest.raises(ValueError, match="dropout_p"):
        fit_mcdo(op, y, dropout_p=1.5, config=DIPConfig(iterations=1, gamma=0.0))
    with pytest.raises(TypeError, match="config"):
        fit_mcdo(op, y, config={"gamma": 0.0})


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(num_samples=1), ValueError, "num_samples"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(patch_sizes=(0,)), ValueError, "patch_sizes"),
    (dict(patch_sizes=2), TypeError, "patch_sizes"),
    (dict(added_variance=-1.0), ValueError, "added_variance"),
    (dict(added_variance=float("nan")), ValueError, "added_variance"),
    (dict(full_covariance="yes"), TypeError, "full_covariance"),
])
def test_mcdo_predictive_rejects_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        mcdo_predictive(_net(), _input(), progress=False, **kwargs)


def test_mcdo_predictive_rejects_bad_net_and_input():
    with pytest.raises(ValueError, match="no dropout layer"):
        mcdo_predictive(_net(dropout_p=0.0), _input(), num_samples=4, progress=False)
    with pytest.raises(TypeError, match="net must be"):
        mcdo_predictive("net", _input(), num_samples=4, progress=False)
    with pytest.raises(ValueError, match="net_input"):
        mcdo_predictive(_net(), torch.rand(2, 1, 8, 8), num_samples=4, progress=False)
    with pytest.raises(ValueError, match="ground_truth"):
        sample_count_stability(_net(), _input(), torch.rand(8, 8), counts=(4,), progress=False)
    with pytest.raises(ValueError, match="seeds"):
        sample_count_stability(_net(), _input(), _input(), counts=(4,), seeds=(), progress=False)


class _FailsAfter(nn.Module):
    """The network, failing on its ``calls``-th forward pass (an interrupted run)."""

    def __init__(self, net: nn.Module, calls: int):
        super().__init__()
        self.net, self.left = net, calls

    def forward(self, x):
        self.left -= 1
        if self.left == 0:
            raise RuntimeError("interrupted")
        return self.net(x)


@pytest.mark.parametrize("full", [True, False])
def test_interrupted_sampling_resumes_to_the_uninterrupted_result(tmp_path, full):
    net, x = _net(), _input()
    kwargs = dict(num_samples=40, seed=2, batch_size=4, full_covariance=full,
                  patch_sizes=(2,), progress=False)
    whole = mcdo_predictive(net, x, **kwargs)
    path = tmp_path / "samples.pt"
    with pytest.raises(RuntimeError, match="interrupted"):
        mcdo_predictive(_FailsAfter(net, 6), x, checkpoint_path=path, checkpoint_every=2,
                        **kwargs)
    # 5 batches ran; the file holds the last save, every 2 batches: after 16 samples
    assert torch.load(path, weights_only=False)["moments"]["count"] == 16
    resumed = mcdo_predictive(net, x, checkpoint_path=path, checkpoint_every=2, **kwargs)
    assert resumed.info["num_samples"] == 40
    torch.testing.assert_close(resumed.mean, whole.mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(resumed.std, whole.std, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(resumed.patch_covariances[2], whole.patch_covariances[2],
                               rtol=1e-12, atol=1e-14)
    if full:
        torch.testing.assert_close(resumed.covariance, whole.covariance, rtol=1e-12, atol=1e-14)
    # a finished file returns at once, without a forward pass
    again = mcdo_predictive(_FailsAfter(net, 1), x, checkpoint_path=path, **kwargs)
    assert torch.equal(again.std, resumed.std)
    # another run's file is refused with the argument named
    with pytest.raises(ValueError, match="checkpoint_path.*seed"):
        mcdo_predictive(net, x, checkpoint_path=path, **{**kwargs, "seed": 3})
    with pytest.raises(ValueError, match="store_samples"):
        mcdo_predictive(net, x, checkpoint_path=path, store_samples=True, **kwargs)
