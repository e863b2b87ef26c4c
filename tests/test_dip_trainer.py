"""DIP trainer: loss, best-iterate logic, checkpoint/resume, input validation.

A small dense random matrix stands in for the ray transform: these tests check the
training loop, not CT.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bayes_dip.dip import (DIPConfig, UNet, dip_loss, dip_preset, load_checkpoint,
                           reconstruct_dip, save_checkpoint, tv_loss)
from bayes_dip.dip.checkpoint import CHECKPOINT_NAME
from bayes_dip.dip.trainer import _BestIterate, _plateau_stop, _plateaued


@pytest.fixture(autouse=True)
def _single_thread(_torch_threads):
    """Tiny convolutions gain nothing from threads; on a busy machine two threads made the
    DIP loop 10× slower."""
    torch.set_num_threads(1)


class DenseOperator(nn.Module):
    """``A x = M vec(x)`` with a fixed random ``M`` (obs × pixels)."""

    def __init__(self, im_shape=(12, 12), obs_shape=(6, 15), seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.im_shape, self.obs_shape = im_shape, obs_shape
        n_obs, n_pix = obs_shape[0] * obs_shape[1], im_shape[0] * im_shape[1]
        self.register_buffer("M", torch.randn(n_obs, n_pix, generator=g, dtype=torch.float64)
                             / math.sqrt(n_pix))
        self.calls = 0
        self.interrupt_after: int | None = None

    def A(self, x):
        self.calls += 1
        if self.interrupt_after is not None and self.calls > self.interrupt_after:
            raise KeyboardInterrupt
        return (x.flatten(1) @ self.M.T.to(x.dtype)).reshape(-1, 1, *self.obs_shape)

    def A_adjoint(self, y):
        return (y.flatten(1) @ self.M.to(y.dtype)).reshape(-1, 1, *self.im_shape)


def _problem(dtype=torch.float32):
    op = DenseOperator()
    g = torch.Generator().manual_seed(1)
    x = torch.zeros(1, 1, 12, 12, dtype=dtype)
    x[..., 3:9, 4:10] = 1.0
    y = op.A(x) + 0.05 * torch.randn(1, 1, *op.obs_shape, generator=g, dtype=dtype)
    return op, x, y, op.A_adjoint(y)


def _small_net(dropout_p=0.0):
    torch.manual_seed(3)
    return UNet(channels=(8, 8), skip_channels=(0, 2), dropout_p=dropout_p)


def test_dip_loss_is_mse_plus_gamma_tv():
    op, x, y, _ = _problem(torch.float64)
    z = torch.rand_like(x)
    expected = ((op.A(z) - y) ** 2).mean() + 0.3 * tv_loss(z).sum()
    torch.testing.assert_close(dip_loss(op, z, y, 0.3), expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("sync_free", [False, True])
def test_best_iterate_tracks_the_argmin(sync_free):
    p = torch.zeros(3)
    best = _BestIterate([p], torch.tensor(float("inf")), sync_free=sync_free)
    for i, loss in enumerate([3.0, 1.0, 2.0, 0.5, float("nan"), 0.7]):
        p.fill_(i)
        best.update(torch.tensor(loss), [p], i)
    assert int(best.iteration) == 3 and float(best.loss) == 0.5
    assert torch.equal(best.params[0], torch.full((3,), 3.0))


def test_returns_lowest_loss_iterate():
    op, x, y, inp = _problem()
    # a large learning rate makes the loss non-monotone
    cfg = DIPConfig(iterations=60, lr=0.05, gamma=1e-3, log_every=7)
    res = reconstruct_dip(op, y, net=_small_net(), net_input=inp, config=cfg,
                          ground_truth=x, progress=False)
    loss = res.history.loss
    assert loss.shape == (60,) and res.history.psnr.shape == (60,)
    assert res.best_iteration == int(torch.argmin(loss)) < 59
    assert res.best_loss == pytest.approx(float(loss.min()), rel=1e-6)
    assert bool((loss[res.best_iteration + 1:] > res.best_loss).all())
    # the returned net carries the best weights: its loss is the recorded best loss
    with torch.no_grad():
        again = dip_loss(op, res.net(inp), y, cfg.gamma)
        torch.testing.assert_close(res.recon, res.net(inp))
    assert float(again) == pytest.approx(res.best_loss, rel=1e-5)
    assert not res.net.training and res.seconds > 0


def test_net_follows_y_dtype_and_input_net_is_untouched():
    op, x, y, inp = _problem(torch.float64)
    net = _small_net()
    before = [p.clone() for p in net.parameters()]
    res = reconstruct_dip(op, y, net=net, net_input=inp.float(),
                          config=DIPConfig(iterations=3, lr=1e-3), progress=False)
    assert res.recon.dtype == torch.float64 and res.net_input.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in res.net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_seed_controls_default_net():
    op, _, y, inp = _problem()
    runs = [reconstruct_dip(op, y, net_input=inp, progress=False,
                            config=DIPConfig(iterations=2, lr=1e-3, seed=s)) for s in (4, 4, 5)]
    assert torch.equal(runs[0].recon, runs[1].recon)
    assert not torch.equal(runs[0].recon, runs[2].recon)


def _assert_same_run(a, b):
    assert torch.equal(a.recon, b.recon)
    assert a.best_loss == b.best_loss and a.best_iteration == b.best_iteration
    assert torch.equal(a.history.loss, b.history.loss)
    assert torch.equal(a.history.psnr, b.history.psnr)
    for (ka, va), (kb, vb) in zip(a.net.state_dict().items(), b.net.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_interrupted_and_resumed_run_equals_uninterrupted_run(tmp_path, dtype):
    op, x, y, inp = _problem(dtype)
    # dropout makes the loop random: resumption must restore the RNG state too
    cfg = DIPConfig(iterations=40, lr=0.05, gamma=1e-3, checkpoint_every=10, seed=7)
    kwargs = dict(net_input=inp, config=cfg, ground_truth=x, progress=False)
    full = reconstruct_dip(op, y, net=_small_net(0.1), **kwargs)

    op.interrupt_after = op.calls + 27  # dies in iteration 27, last checkpoint at 20
    with pytest.raises(KeyboardInterrupt):
        reconstruct_dip(op, y, net=_small_net(0.1), checkpoint_dir=tmp_path, **kwargs)
    state = load_checkpoint(tmp_path)
    assert state["iteration"] == 20
    assert int(state["best_iteration"]) == int(torch.argmin(full.history.loss[:20]))

    op.interrupt_after = None
    resumed = reconstruct_dip(op, y, net=_small_net(0.1), checkpoint_dir=tmp_path, **kwargs)
    _assert_same_run(full, resumed)
    assert load_checkpoint(tmp_path)["iteration"] == 40

    # a finished run is read back without training
    calls = op.calls
    again = reconstruct_dip(op, y, net=_small_net(0.1), checkpoint_dir=tmp_path, **kwargs)
    _assert_same_run(full, again)
    assert op.calls == calls


def test_plateau_stops_when_the_lowest_loss_stalls(tmp_path):
    """The run stops at the first window end where the lowest loss improved by less than
    ``plateau_tol``; the same run with a fixed count agrees up to there; a resumed finished
    run does not train further."""
    op, x, y, inp = _problem()
    cfg = DIPConfig(iterations=3000, lr=0.003, gamma=1e-3, plateau_window=50,
                    plateau_tol=0.002, checkpoint_every=1000)
    kwargs = dict(net_input=inp, ground_truth=x, progress=False)
    run = reconstruct_dip(op, y, net=_small_net(), config=cfg, checkpoint_dir=tmp_path, **kwargs)
    n = run.history.loss.numel()
    assert 150 <= n < 3000 and n % 50 == 0
    best = [float(run.history.loss[:k].min()) for k in (n - 100, n - 50, n)]
    assert best[2] > 0.998 * best[1]  # stalled in the last window
    assert best[1] <= 0.998 * best[0]  # not in the one before
    halves = [float(run.history.loss[a:b].min()) for a, b in ((n - 50, n - 25), (n - 25, n))]
    assert halves[1] > 0.998 * halves[0]  # and no longer falling inside the last window
    fixed = reconstruct_dip(op, y, net=_small_net(),
                            config=DIPConfig(iterations=n, lr=0.003, gamma=1e-3), **kwargs)
    torch.testing.assert_close(fixed.history.loss, run.history.loss)
    calls = op.calls
    again = reconstruct_dip(op, y, net=_small_net(), config=cfg, checkpoint_dir=tmp_path,
                            **kwargs)
    _assert_same_run(run, again)
    assert op.calls == calls


def test_plateau_waits_for_a_run_recovering_from_a_spike():
    """A lowest loss that stalls because Adam spiked is no plateau while the loss is still
    falling back (the 64² head slice s025 had stopped at 800 iterations that way, 0.2 dB below
    FBP; run on, it ended 1.1 dB above); a flat loss, or one stuck high after a spike, is."""
    cfg = DIPConfig(iterations=1000, plateau_window=100, plateau_tol=0.005, lr_warmup=10)
    it = torch.arange(400, dtype=torch.float64)
    improving = 1.0 + 1.0 / (1.0 + it / 20)
    assert not _plateaued(cfg, improving, 300)
    flat = torch.cat([improving[:300], torch.full((100,), float(improving[299]) * 1.001)])
    assert _plateaued(cfg, flat, 400)
    recovering = improving.clone()
    recovering[300:] = float(improving[299]) * (1.0 + 4.0 * torch.exp(-(it[300:] - 300) / 30))
    assert float(recovering[300:].min()) > float(recovering[:300].min())  # the best stalled
    assert not _plateaued(cfg, recovering, 400)
    stuck = improving.clone()
    stuck[300:] = 2.0 * float(improving[299])
    assert _plateaued(cfg, stuck, 400)
    assert not _plateaued(cfg, improving, 350)  # only at window ends
    # a plateau reached stuck above the best goes back to the best iterate, a flat one stops
    assert _plateau_stop(cfg, flat, 400) and not _plateau_stop(cfg, stuck, 400)
    assert not _plateau_stop(cfg, recovering, 400)


def test_a_run_stuck_after_a_spike_goes_back_to_its_best_iterate(tmp_path):
    """At lr 0.1 (no backtracking) this net's Adam run spikes and does not come back; the
    plateau check then restores the best iterate at half the learning rate (the next loss
    is the best loss) and the run ends lower than without plateau checks; an interrupted
    and resumed run repeats it exactly."""
    op, x, y, inp = _problem()
    kwargs = dict(net_input=inp, ground_truth=x, progress=False)
    plain = DIPConfig(iterations=400, lr=0.1, gamma=1e-3, lr_warmup=5, checkpoint_every=10)
    cfg = DIPConfig.from_dict({**plain.to_dict(), "plateau_window": 40,
                               "plateau_tol": 0.005})
    stuck = reconstruct_dip(op, y, net=_small_net(), config=plain, **kwargs)
    run = reconstruct_dip(op, y, net=_small_net(), config=cfg, **kwargs)
    loss = run.history.loss
    assert len(run.backtracks) >= 1 and run.best_loss < stuck.best_loss
    for it in run.backtracks:
        done = it + 1
        assert done % cfg.plateau_window == 0
        assert float(loss[done - 40:done].min()) > 1.005 * float(loss[:done - 40].min())
        assert loss[done] == pytest.approx(float(loss[:done].min()), rel=1e-6)

    op.interrupt_after = op.calls + run.backtracks[0] + 3
    with pytest.raises(KeyboardInterrupt):
        reconstruct_dip(op, y, net=_small_net(), config=cfg, checkpoint_dir=tmp_path, **kwargs)
    op.interrupt_after = None
    _assert_same_run(run, reconstruct_dip(op, y, net=_small_net(), config=cfg,
                                          checkpoint_dir=tmp_path, **kwargs))


def test_backtracking_restores_the_best_iterate_after_divergence(tmp_path):
    """At lr 0.1 this net's Adam run diverges; with ``backtrack_factor=2`` each loss above
    twice the lowest so far sends the run back to its best iterate (the next loss is the best
    loss again) at half the learning rate, ending far lower; an interrupted and resumed run
    repeats it exactly."""
    op, x, y, inp = _problem()
    kwargs = dict(net_input=inp, ground_truth=x, progress=False)
    plain = DIPConfig(iterations=150, lr=0.1, gamma=1e-3, lr_warmup=5, checkpoint_every=10)
    cfg = DIPConfig.from_dict({**plain.to_dict(), "backtrack_factor": 2.0})
    diverged = reconstruct_dip(op, y, net=_small_net(), config=plain, **kwargs)
    run = reconstruct_dip(op, y, net=_small_net(), config=cfg, **kwargs)
    assert diverged.backtracks == [] and len(run.backtracks) >= 1
    assert run.best_loss < 0.7 * diverged.best_loss
    loss = run.history.loss
    for it in run.backtracks:
        assert it >= 2 * cfg.lr_warmup
        assert loss[it] > 2 * loss[:it].min()
        assert loss[it + 1] == pytest.approx(float(loss[:it].min()), rel=1e-6)

    op.interrupt_after = op.calls + run.backtracks[0] + 3
    with pytest.raises(KeyboardInterrupt):
        reconstruct_dip(op, y, net=_small_net(), config=cfg, checkpoint_dir=tmp_path, **kwargs)
    op.interrupt_after = None
    resumed = reconstruct_dip(op, y, net=_small_net(), config=cfg, checkpoint_dir=tmp_path,
                              **kwargs)
    _assert_same_run(run, resumed)
    assert resumed.backtracks == run.backtracks


def test_checkpoint_extends_to_more_iterations(tmp_path):
    op, x, y, inp = _problem()
    cfg = DIPConfig(iterations=30, lr=0.02, checkpoint_every=100)
    full = reconstruct_dip(op, y, net=_small_net(), net_input=inp, config=cfg, ground_truth=x,
                           progress=False)
    for iterations in (12, 30):
        part = reconstruct_dip(op, y, net=_small_net(), net_input=inp, ground_truth=x,
                               config=DIPConfig(iterations=iterations, lr=0.02,
                                                checkpoint_every=100),
                               checkpoint_dir=tmp_path, progress=False)
    _assert_same_run(full, part)


@pytest.mark.parametrize("warmup,expected_step", [(0, 0.01), (10, 0.001)])
def test_lr_warmup_scales_the_first_adam_step(tmp_path, warmup, expected_step):
    op, _, y, inp = _problem(torch.float64)
    net = _small_net().double()
    cfg = DIPConfig(iterations=1, lr=0.01, lr_warmup=warmup)
    reconstruct_dip(op, y, net=net, net_input=inp, config=cfg, checkpoint_dir=tmp_path,
                    progress=False)
    after = load_checkpoint(tmp_path)["net"]
    # Adam's first step moves every weight with a non-zero gradient by the learning rate
    step = max(float((after[k] - v).abs().max()) for k, v in net.state_dict().items())
    assert step == pytest.approx(expected_step, rel=1e-6)


def test_checkpoint_of_another_run_is_refused(tmp_path):
    op, _, y, inp = _problem()
    cfg = DIPConfig(iterations=4, lr=1e-3, checkpoint_every=2)
    reconstruct_dip(op, y, net=_small_net(), net_input=inp, config=cfg,
                    checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="different y"):
        reconstruct_dip(op, 2 * y, net=_small_net(), net_input=inp, config=cfg,
                        checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="config"):
        reconstruct_dip(op, y, net=_small_net(), net_input=inp, checkpoint_dir=tmp_path,
                        config=DIPConfig(iterations=4, lr=2e-3), progress=False)
    with pytest.raises(ValueError, match="iteration 4 > config.iterations=3"):
        reconstruct_dip(op, y, net=_small_net(), net_input=inp, checkpoint_dir=tmp_path,
                        config=DIPConfig(iterations=3, lr=1e-3), progress=False)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, {"iteration": 1})

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, {"iteration": 2})
    assert load_checkpoint(tmp_path) == {"iteration": 1}
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]


@pytest.mark.parametrize("field,value", [("iterations", -1), ("iterations", 0),
                                         ("iterations", 2.5), ("lr", 0.0), ("lr", -1e-3),
                                         ("lr", float("nan")), ("gamma", -1.0),
                                         ("gamma", float("inf")), ("seed", -1), ("lr_warmup", -1),
                                         ("checkpoint_every", 0), ("log_every", 0),
                                         ("backtrack_factor", 1.0), ("backtrack_factor", -2.0),
                                         ("backtrack_factor", float("inf"))])
def test_bad_config_raises(field, value):
    with pytest.raises(ValueError, match=field):
        DIPConfig(**{field: value})


def test_config_dict_round_trip_and_presets():
    cfg = dip_preset("kmnist-paper", seed=3)
    assert DIPConfig.from_dict(cfg.to_dict()) == cfg and cfg.seed == 3
    assert (cfg.lr, cfg.gamma, cfg.iterations) == (1e-4, 1e-4, 41_000)
    with pytest.raises(ValueError, match="unknown DIPConfig field"):
        DIPConfig.from_dict({"iters": 3})
    with pytest.raises(ValueError, match="name"):
        dip_preset("nope")


def test_bad_inputs_raise():
    op, x, y, inp = _problem()
    cfg = DIPConfig(iterations=1)
    run = dict(net_input=inp, config=cfg, progress=False)
    with pytest.raises(ValueError, match=r"y must have shape \(B, 1, 6, 15\)"):
        reconstruct_dip(op, y[..., :-1], **run)
    with pytest.raises(ValueError, match="y contains NaN"):
        reconstruct_dip(op, torch.where(y > 0, float("nan"), y), **run)
    with pytest.raises(TypeError, match="floating-point"):
        reconstruct_dip(op, y.to(torch.int64), **run)
    with pytest.raises(ValueError, match="net_input must have shape"):
        reconstruct_dip(op, y, net_input=inp[..., 1:], config=cfg, progress=False)
    with pytest.raises(ValueError, match="ground_truth must have shape"):
        reconstruct_dip(op, y, ground_truth=x[0], **run)
    with pytest.raises(TypeError, match="config must be a DIPConfig"):
        reconstruct_dip(op, y, net_input=inp, config={"iterations": 1}, progress=False)
    with pytest.raises(TypeError, match="ray_trafo must have"):
        reconstruct_dip(object(), y, **run)
