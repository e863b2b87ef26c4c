"""bayes_dip.runtime: thread limits and deferred interrupts; the DIP trainer and the evidence
optimiser stop on SIGINT with a checkpoint from which they resume exactly."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys

import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from linearized_problem import noisy_measurement, tiny_jacobian_and_ray_trafo

from bayes_dip.dip import DIPConfig, UNet, load_checkpoint, reconstruct_dip
from bayes_dip.linearized import (EvidenceConfig, LinearizedModel, StructuredCovariance,
                                  WeightPrior, optimize_evidence)
from bayes_dip.runtime import (THREAD_ENV_VARS, available_cpus, default_threads,
                               deferred_interrupts, set_threads)


@pytest.fixture(autouse=True)
def _single_thread(_torch_threads):
    """Tiny problems gain nothing from threads; on a busy machine two made them 10× slower."""
    torch.set_num_threads(1)


@pytest.fixture
def restore_threads(monkeypatch):
    """Undo set_threads: environment (monkeypatch), BLAS pools; torch via conftest."""
    for name in THREAD_ENV_VARS:
        monkeypatch.setenv(name, os.environ.get(name, "1"))
    with threadpool_limits(limits=None):  # restores the pools' limits on exit
        yield


def test_set_threads_limits_torch_blas_and_environment(restore_threads):
    assert set_threads(3) == 3
    assert torch.get_num_threads() == 3
    assert all(os.environ[name] == "3" for name in THREAD_ENV_VARS)
    pools = threadpool_info()
    assert pools and {p["num_threads"] for p in pools} == {3}, pools


def test_set_threads_in_a_fresh_process():
    """Run before torch and numpy load: every thread pool they start is capped."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV_VARS}
    code = ("from bayes_dip.runtime import set_threads; set_threads(1); "
            "import numpy, scipy.linalg, torch; from threadpoolctl import threadpool_info; "
            "print(torch.get_num_threads(), sorted({p['num_threads'] for p in threadpool_info()}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout.split("\n")[-2]
    assert out == "1 [1]"


def test_default_threads_rule(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert default_threads() == 5
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert default_threads() == available_cpus() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "0")  # not a thread count: ignored
    assert default_threads() == available_cpus()


@pytest.mark.parametrize("bad", [0, -2, "2", True, 1.5])
def test_set_threads_rejects_non_positive_integers(bad):
    with pytest.raises(ValueError, match="--threads"):
        set_threads(bad)


@pytest.fixture
def python_sigint_handler():
    """Python's own SIGINT handler, whatever this process inherited (a shell starts
    background jobs with SIGINT ignored)."""
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, inherited)


def test_deferred_interrupts(python_sigint_handler):
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.requested and stop.signum == signal.SIGINT  # deferred, not raised
            with pytest.raises(KeyboardInterrupt):  # a second signal raises at once
                os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGINT) is before
    with deferred_interrupts(enabled=False) as stop, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
    assert not stop.requested


class _SignalAt:
    """Sends SIGINT to this process at the ``at``-th call of ``fn``."""

    def __init__(self, fn, at: int):
        self.fn, self.at, self.calls = fn, at, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return self.fn(*args, **kwargs)


class _Operator(torch.nn.Module):
    """A dense random operator standing in for the ray transform."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.im_shape, self.obs_shape = (12, 12), (6, 15)
        self.M = torch.randn(90, 144, generator=g) / 12

    def A(self, x):
        return (x.flatten(1) @ self.M.T).reshape(-1, 1, *self.obs_shape)


def _dip(op, y, tmp_path):
    torch.manual_seed(3)
    net = UNet(channels=(4, 4), skip_channels=(0, 2))
    cfg = DIPConfig(iterations=30, lr=0.05, gamma=1e-3, checkpoint_every=1000, seed=7)
    return reconstruct_dip(op, y, net=net, net_input=torch.ones(1, 1, 12, 12), config=cfg,
                           checkpoint_dir=tmp_path, progress=False)


def test_sigint_stops_the_dip_with_a_checkpoint_and_resumes_exactly(tmp_path):
    op = _Operator()
    y = op.A(torch.rand(1, 1, 12, 12, generator=torch.Generator().manual_seed(1)))
    reference = _dip(op, y, tmp_path / "reference")
    op.A = _SignalAt(op.A, at=13)  # SIGINT during iteration 12 (0-based)
    with pytest.raises(KeyboardInterrupt):
        _dip(op, y, tmp_path / "run")
    state = load_checkpoint(tmp_path / "run")
    assert state["iteration"] == 13  # the iteration under way finished, then was saved
    resumed = _dip(op, y, tmp_path / "run")
    torch.testing.assert_close(resumed.recon, reference.recon, rtol=0, atol=0)
    torch.testing.assert_close(resumed.history.loss, reference.history.loss, rtol=0, atol=0)
    assert resumed.best_iteration == reference.best_iteration


def test_sigint_stops_the_evidence_with_a_checkpoint_and_resumes_exactly(tmp_path):
    jac, rt = tiny_jacobian_and_ray_trafo()
    y = noisy_measurement(jac, rt)
    sc = StructuredCovariance.build(jac, rt, WeightPrior(jac.layout))
    config = EvidenceConfig(steps=12, progress=False, checkpoint_every=100)

    def run(path, structured):
        model = LinearizedModel(jac, WeightPrior(jac.layout), rt, y, noise_variance=0.05)
        with pytest.warns(RuntimeWarning, match="did not converge"):
            result = optimize_evidence(model, config, structured=structured,
                                       checkpoint_path=path)
        return model, result

    ref_model, ref = run(tmp_path / "reference.pt", sc)
    sc.gaussian_nll = _SignalAt(sc.gaussian_nll, at=5)  # SIGINT during step 4 (0-based)
    try:
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path / "run.pt", sc)
    finally:
        del sc.gaussian_nll
    assert torch.load(tmp_path / "run.pt", weights_only=False)["step"] == 5
    model, resumed = run(tmp_path / "run.pt", sc)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert resumed.history["objective"] == ref.history["objective"]


def test_evidence_reports_convergence(tmp_path):
    jac, rt = tiny_jacobian_and_ray_trafo()
    y = noisy_measurement(jac, rt)
    sc = StructuredCovariance.build(jac, rt, WeightPrior(jac.layout))
    model = LinearizedModel(jac, WeightPrior(jac.layout), rt, y, noise_variance=0.05)
    with pytest.warns(RuntimeWarning, match="did not converge in 10 steps"):
        short = optimize_evidence(model, EvidenceConfig(steps=10, progress=False), structured=sc)
    assert short.convergence["converged"] is False and short.convergence["window"] == 2
    objective = short.history["objective"]
    assert short.convergence["objective_change"] == pytest.approx(
        abs(objective[-1] - objective[-3]) / max(abs(objective[-1]), model.num_obs))
    model = LinearizedModel(jac, WeightPrior(jac.layout), rt, y, noise_variance=0.05)
    long = optimize_evidence(model, EvidenceConfig(steps=300, lr=0.05, progress=False),
                             structured=sc)
    assert long.convergence["converged"] is True
    assert long.convergence["grad_norm"] < 1e-2 and long.convergence["objective_change"] < 1e-3
    # the recorded gradient norm is that of the objective in the log-hyperparameters
    assert all(math.isfinite(g) and g >= 0 for g in long.history["grad_norm"])
