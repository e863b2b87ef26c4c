"""The one-call API: LinearizedDIP / estimate_uncertainty on a tiny problem."""
from __future__ import annotations

import math

import pytest
import torch

from bayes_dip.ct import ParallelBeamGeometry, RayTransform
from bayes_dip.dip import UNet
from bayes_dip.metrics import Prediction
from bayes_dip.linearized import (EvidenceConfig, ExactPredictive, LinearizedDIP,
                                  SampledPredictive, estimate_uncertainty)

F64 = torch.float64


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    net = UNet(channels=(3, 4), skip_channels=(0, 2)).double()
    x = torch.rand(1, 1, 8, 8, dtype=F64)
    rt = RayTransform(ParallelBeamGeometry((8, 8), num_angles=5))
    with torch.no_grad():
        truth = net(x)
    y = rt.A(truth) + 0.02 * torch.randn(1, 1, *rt.obs_shape, dtype=F64)
    return net, x, rt, y, truth


def test_exact_mll_and_tv_map(problem):
    net, x, rt, y, truth = problem
    lin = LinearizedDIP(net, x, rt, y, gamma=1e-3)
    assert lin.resolve_mode("auto") == "exact"
    mll = lin.optimize_hyperparameters(steps=40, progress=False)
    assert mll.history["neg_log_evidence"][-1] < mll.history["neg_log_evidence"][0]
    result = lin.estimate_uncertainty(num_samples=5)
    assert result.mode == "exact" and isinstance(result.predictive, ExactPredictive)
    assert result.std.shape == (1, 1, 8, 8) and result.samples.shape == (5, 1, 8, 8)
    assert bool((result.std > 0).all())
    assert set(result.hyperparameters) == {"inc", "down_0", "up_0", "skip_0", "outc"}
    assert result.noise_variance == pytest.approx(mll.noise_variance)
    pred = Prediction.from_uncertainty(result, 2)
    assert pred.covariance is result.predictive.covariance and pred.gallery.shape[0] == 2
    ll = pred.log_likelihood(truth)
    assert ll.kind == "full" and math.isfinite(ll.per_pixel)
    assert {"structure", "evidence", "predictive"} <= set(result.seconds)

    lin.reset_hyperparameters()  # TV-MAP on the same Grams
    assert float(lin.model.noise_variance.detach()) == pytest.approx(1.0) and lin.evidence is None
    res = lin.optimize_hyperparameters("exact", predcp_scale=1.0, steps=40, progress=False)
    assert all(math.isfinite(v) for v in res.history["predcp"])
    # the PredCP prior pulls the GP lengthscales apart from the MLL solution
    assert res.hyperparameters["down_0"]["lengthscale"] != pytest.approx(
        mll.hyperparameters["down_0"]["lengthscale"], rel=1e-3)


def test_stochastic_mode_and_one_call(problem, tmp_path):
    net, x, rt, y, truth = problem
    result = estimate_uncertainty(net, x, rt, y, gamma=1e-3, steps=5, num_samples=4, progress=False)
    assert result.mode == "exact" and result.evidence.steps == 5
    lin = LinearizedDIP(net, x, rt, y, gamma=1e-3)
    config = EvidenceConfig(num_probes=3, precond_rank=10)
    res = lin.optimize_hyperparameters("stochastic", predcp_scale=1.0, steps=3, progress=False,
                                       config=config, predcp_samples=2,
                                       checkpoint_path=tmp_path / "ev.pt")
    assert len(res.history["cg_iterations"]) == 3 and (tmp_path / "ev.pt").exists()
    result = lin.estimate_uncertainty(num_samples=8, precond_rank=10)
    assert result.mode == "stochastic" and isinstance(result.predictive, SampledPredictive)
    assert result.samples.shape == (8, 1, 8, 8)
    assert result.predictive.cg_report()["solves"] == 1  # 8 samples: one batch, one CG solve
    ll = Prediction.from_uncertainty(result).log_likelihood(truth, patch_size=2)
    assert ll.kind == "patchwise-2" and math.isfinite(ll.per_pixel)
    gprior = LinearizedDIP(net, x, rt, y, gprior=True)
    assert [b.name for b in gprior.model.prior.layout.blocks] == ["gprior"]
    assert gprior.optimize_hyperparameters(steps=3, progress=False).steps == 3
    assert LinearizedDIP(net, x, rt, y, exact_memory=10).resolve_mode("auto") == "lowrank"


@pytest.mark.parametrize("mode", ["exact", "lowrank"])
def test_heldout_check_and_recalibration(problem, mode):
    """The held-out check runs in both modes; recalibration scales prior and noise so that
    chi2 becomes 1 and the std map scales by √c (the posterior mean is unchanged)."""
    net, x, rt, y, _ = problem
    lin = LinearizedDIP(net, x, rt, y, gamma=1e-3, subspace_rank=40)
    lin.optimize_hyperparameters(mode, steps=30, progress=False)
    check = lin.heldout("angle")
    assert check.z.numel() == lin.model.num_obs and 0 < check.chi2
    before = lin.estimate_uncertainty(num_samples=4, variance_samples=64)
    c = lin.recalibrate("angle")
    assert c == pytest.approx(check.chi2)
    assert lin.heldout("angle").chi2 == pytest.approx(1.0, rel=1e-8)
    assert lin.heldout("measurement").chi2 > 0
    after = lin.estimate_uncertainty(num_samples=4, variance_samples=64)
    torch.testing.assert_close(after.mean, before.mean)
    if mode == "exact":  # image noise η² ∝ σ_y² scales too: the whole covariance scales by c
        torch.testing.assert_close(after.std, before.std * c ** 0.5)


@pytest.mark.parametrize("mode", ["exact", "lowrank"])
def test_mean_is_dip_output_unless_posterior_is_asked_for(problem, mode):
    net, x, rt, y, _ = problem
    lin = LinearizedDIP(net, x, rt, y, gamma=1e-3, subspace_rank=40)
    lin.optimize_hyperparameters(mode, steps=20, progress=False)
    default = lin.estimate_uncertainty(num_samples=4, variance_samples=16)
    torch.testing.assert_close(default.mean, lin.recon)
    post = lin.estimate_uncertainty(num_samples=4, variance_samples=16, mean="posterior")
    assert float((post.mean - lin.recon).abs().max()) > 1e-6
    torch.testing.assert_close(post.std, default.std)  # the same covariance about either mean
    with pytest.raises(ValueError, match="mean"):
        lin.estimate_uncertainty(mean="median")


def test_lowrank_mode_tv_map(problem):
    net, x, rt, y, truth = problem
    lin = LinearizedDIP(net, x, rt, y, gamma=1e-3, subspace_rank=30)
    res = lin.optimize_hyperparameters("lowrank", predcp_scale=1.0, steps=60, progress=False)
    assert res.history["neg_log_evidence"][-1] < res.history["neg_log_evidence"][0]
    assert all(math.isfinite(v) for v in res.history["predcp"])
    assert lin.subspace().rank == 30 and "structure" in lin.seconds
    result = lin.estimate_uncertainty(num_samples=8, variance_samples=64)
    assert result.mode == "lowrank" and isinstance(result.predictive, SampledPredictive)
    assert result.samples.shape[0] == 8 and result.predictive.samples.shape[0] == 64
    pred = Prediction.from_uncertainty(result)  # all 64 draws, η² added to their covariance
    assert pred.samples.shape[0] == 64 and pred.added_variance == result.image_noise
    assert math.isfinite(pred.log_likelihood(truth, patch_size=2).per_pixel)
    first = lin.subspace()
    lin.reset_subspace()  # sketched again, at the optimised hyperparameters
    assert lin.subspace() is not first and lin.subspace() is lin.subspace()
    # the same model in the exact mode: close optimum of σ_y²
    exact = LinearizedDIP(net, x, rt, y, gamma=1e-3)
    ref = exact.optimize_hyperparameters("exact", steps=60, progress=False)
    mll = LinearizedDIP(net, x, rt, y, gamma=1e-3, subspace_rank=60)
    low = mll.optimize_hyperparameters("lowrank", steps=60, progress=False)
    assert low.noise_variance == pytest.approx(ref.noise_variance, rel=0.05)


def test_bad_inputs(problem):
    net, x, rt, y, _ = problem
    with pytest.raises(ValueError, match="gamma"):
        LinearizedDIP(net, x, rt, y, gamma=-1.0)
    lin = LinearizedDIP(net, x, rt, y)
    with pytest.raises(ValueError, match="gamma"):
        lin.optimize_hyperparameters(predcp_scale=1.0, steps=1, progress=False)
    with pytest.raises(ValueError, match="mode"):
        lin.resolve_mode("fast")
    with pytest.raises(ValueError, match="lengthscale"):
        lin.reset_hyperparameters(lengthscale=0.0)
    with pytest.raises(ValueError, match="y must have shape"):
        LinearizedDIP(net, x, rt, y[..., 1:])
    with pytest.raises(ValueError, match="recon"):
        LinearizedDIP(net, x, rt, y, recon=torch.zeros(1, 1, 4, 4, dtype=F64))
    other = RayTransform(ParallelBeamGeometry((6, 6), num_angles=5))
    with pytest.raises(ValueError, match="im_shape"):
        LinearizedDIP(net, x, other, other.A(torch.zeros(1, 1, 6, 6, dtype=F64)))


def test_subspace_checkpoint_is_read_back_for_the_same_model_only(problem, tmp_path,
                                                                   monkeypatch):
    """With a ``checkpoint_dir`` the low-rank subspace is saved once built; a new instance for
    the same network, data, prior and rank reads it back (no sketch, same evidence run); a
    different prior is refused with a clear error."""
    from bayes_dip.linearized import SubspaceCovariance
    net, x, rt, y, truth = problem
    first = LinearizedDIP(net, x, rt, y, gamma=1e-3, subspace_rank=10, checkpoint_dir=tmp_path)
    built = first.subspace(seed=3)
    assert (tmp_path / "subspace.pt").is_file()
    ev_first = first.optimize_hyperparameters("lowrank", steps=20, seed=3, progress=False)

    def no_build(*args, **kwargs):
        raise AssertionError("the subspace was built again")
    monkeypatch.setattr(SubspaceCovariance, "build", no_build)
    again = LinearizedDIP(net, x, rt, y, gamma=1e-3, subspace_rank=10, checkpoint_dir=tmp_path)
    ev_again = again.optimize_hyperparameters("lowrank", steps=20, seed=3, progress=False)
    loaded = again.subspace(seed=3)
    for name in ("basis", "grams", "tail"):
        assert torch.equal(getattr(loaded, name), getattr(built, name))
    assert ev_again.history["objective"] == ev_first.history["objective"]

    other = LinearizedDIP(net, x, rt, y, gamma=1e-3, subspace_rank=10, variance=2.0,
                          checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="subspace of another network, prior or rank"):
        other.subspace(seed=3)


def test_a_new_evidence_mode_is_one_registered_object(problem):
    """A mode registered under a new name works through LinearizedDIP, EvidenceConfig and
    the held-out checks; names are unique."""
    from bayes_dip.linearized import EVIDENCE_MODES, register_mode
    from bayes_dip.linearized.modes import ExactMode

    class HalfStepsExact(ExactMode):
        name = "exact-short"
        default_steps = 7

    register_mode(HalfStepsExact())
    try:
        net, x, rt, y, truth = problem
        lin = LinearizedDIP(net, x, rt, y, gamma=1e-3)
        result = lin.optimize_hyperparameters("exact-short", progress=False)
        assert result.steps == 7 and lin.mode == "exact-short"
        assert EvidenceConfig(mode="exact-short").mode == "exact-short"
        assert lin.heldout("angle").z.numel() > 0
        assert lin.estimate_uncertainty(num_samples=2).mode == "exact-short"
        with pytest.raises(ValueError, match="taken"):
            register_mode(HalfStepsExact())
    finally:
        del EVIDENCE_MODES["exact-short"]
    with pytest.raises(ValueError, match="mode"):
        LinearizedDIP(net, x, rt, y).optimize_hyperparameters("exact-short")


def test_sampling_checkpoint_is_per_hyperparameters_and_removed_when_done(problem, tmp_path,
                                                                          monkeypatch):
    """With a ``checkpoint_dir`` the draws stream into a file named by the hyperparameters (two
    methods on one image never share one) that is gone once the draws are complete; an
    interrupted draw resumes from it."""
    import bayes_dip.linearized.modes.lowrank as lowrank
    net, x, rt, y, truth = problem
    lin = LinearizedDIP(net, x, rt, y, gamma=1e-3, subspace_rank=10, checkpoint_dir=tmp_path)
    lin.optimize_hyperparameters("lowrank", steps=3, progress=False)
    reference = lin.predictive(num_samples=24, batch_size=4, seed=5).samples
    assert not list(tmp_path.glob("predictive-*.pt"))
    original = lowrank.subspace_predictive
    calls = []

    def dies_after_a_checkpoint(*args, **kwargs):
        calls.append(kwargs["checkpoint_path"])
        kwargs["checkpoint_every"] = 1
        with pytest.raises(RuntimeError):  # the image covariance fails at the 3rd batch
            with monkeypatch.context() as m:
                count = iter(range(100))
                sample = lin.model.image_cov.sample

                def failing(*a, **k):
                    if next(count) == 2:
                        raise RuntimeError("killed")
                    return sample(*a, **k)
                m.setattr(lin.model.image_cov, "sample", failing)
                original(*args, **kwargs)
        saved = torch.load(kwargs["checkpoint_path"], weights_only=False)["errors"]
        assert sum(e.shape[0] for e in saved) == 8  # two batches of 4 were kept
        kwargs["generator"] = torch.Generator().manual_seed(5)  # the rerun's fresh generator
        return original(*args, **kwargs)

    monkeypatch.setattr(lowrank, "subspace_predictive", dies_after_a_checkpoint)
    resumed = lin.predictive(num_samples=24, batch_size=4, seed=5).samples
    assert torch.equal(resumed, reference) and not list(tmp_path.glob("predictive-*.pt"))
    with torch.no_grad():
        lin.model.prior.log_variance.add_(0.5)
    lin.predictive(num_samples=24, batch_size=4, seed=5)
    assert len(set(calls)) == 2  # another file for other hyperparameters
