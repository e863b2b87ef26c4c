"""Run-time estimate and device check of `bayes_dip.preflight` (the memory estimate is
tested through the command line in test_cli.py)."""
from __future__ import annotations

import pytest
import torch

from bayes_dip.baselines import DEFAULT_NUM_SAMPLES
from bayes_dip.dip.settings import MAX_ITERATIONS, iteration_cap
from bayes_dip.preflight import (FORWARDS_PER_STEP, SETUP_SECONDS, SETUP_STEPS,
                                 UNCERTAINTY_SPREAD, UNCERTAINTY_STEPS, RunTimeEstimate,
                                 check_device, estimate_run_time)


@pytest.fixture
def fixed_step(monkeypatch):
    """A DIP step of exactly 0.1 s, so the estimate is pure arithmetic on the step count."""
    monkeypatch.setattr("bayes_dip.preflight.measure_dip_step", lambda side, device: 0.1)


def test_estimate_counts_dip_steps_and_uncertainty_equivalents(fixed_step):
    dip_only = estimate_run_time(128, None)
    assert dip_only.dip == pytest.approx(0.1 * MAX_ITERATIONS) and dip_only.uncertainty == (0, 0)
    assert dip_only.setup == pytest.approx(SETUP_SECONDS + 0.1 * SETUP_STEPS)
    assert estimate_run_time(128, None, iterations=300).dip == pytest.approx(30.0)
    assert estimate_run_time(64, None).dip == pytest.approx(0.1 * iteration_cap(64))
    lin = estimate_run_time(128, "lin-dip-tvmap")
    steps = UNCERTAINTY_STEPS["lin-dip-tvmap"]
    assert lin.uncertainty == pytest.approx((0.1 * steps * UNCERTAINTY_SPREAD[0],
                                             0.1 * steps * UNCERTAINTY_SPREAD[1]))
    mcdo = estimate_run_time(128, "mcdo")  # a second DIP and the dropout forward passes
    expected = 0.1 * (MAX_ITERATIONS + DEFAULT_NUM_SAMPLES / FORWARDS_PER_STEP)
    assert mcdo.uncertainty == pytest.approx((expected, expected))
    assert estimate_run_time(128, "mcdo", mcdo_samples=300).uncertainty[0] < expected
    assert estimate_run_time(128, "dip").uncertainty == (0, 0)


def test_estimate_measures_a_real_step():
    """The measured step is a real U-Net step: positive, and larger for 4× the pixels."""
    small, large = (estimate_run_time(side, None, iterations=1).step for side in (32, 128))
    assert 0 < small < large < 30


def test_estimate_description():
    text = RunTimeEstimate(step=0.15, setup=60.0, dip=300.0, uncertainty=(200.0, 400.0)).describe()
    assert text == ("about 8–13 min (DIP at most 5 min, uncertainty 3–7 min; "
                    "one DIP step here: 0.15 s)")
    long = RunTimeEstimate(step=3.0, setup=0.0, dip=6000.0, uncertainty=(0.0, 0.0)).describe()
    assert long == "about 1.2–1.7 h (DIP at most 1.7 h; one DIP step here: 3 s)"


@pytest.mark.parametrize("device, expect", [
    ("bogus", "--device must be a torch device such as cpu or cuda, got 'bogus'"),
    ("cuda:99", "--device cuda:99"),
])
def test_check_device(device, expect):
    assert check_device("cpu") == "cpu"
    with pytest.raises(ValueError, match=expect.replace("(", r"\(")):
        check_device(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_check_device_without_cuda():
    with pytest.raises(ValueError, match="--device cuda: this torch has no CUDA device"):
        check_device("cuda")
