"""`bayes-dip reconstruct` interrupted by SIGINT (a real subprocess, twice: in the DIP and in
the evidence) resumes from `<out>.partial/` and ends with the uninterrupted run's result."""
from __future__ import annotations

import os
import re
import select
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _command(data_root, out) -> list[str]:
    return ["reconstruct", "--kmnist", "0", "--data-root", str(data_root), "--angles", "10",
            "--iterations", "600", "--evidence", "exact", "--evidence-steps", "300",
            "--samples", "4", "--threads", "1", "--out", str(out)]


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _run_and_interrupt(args: list[str], stage: str, total: int,
                       timeout: float = 300) -> tuple[int, str]:
    """Run ``bayes-dip args``; send SIGINT once the progress bar of ``stage`` has advanced
    (one update past where it started); return the exit code and stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "bayes_dip.cli", *args], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pattern = re.compile(re.escape(stage) + r": [^\r\n]*?(\d+)/" + str(total))
    err, first, deadline = b"", None, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stderr], [], [], 1.0)
            if ready:
                chunk = os.read(proc.stderr.fileno(), 65536)
                if not chunk:
                    break
                err += chunk
                counts = [int(n) for n in pattern.findall(err.decode(errors="replace"))]
                if counts and first is None:
                    first = counts[0]
                if counts and max(counts) > first:
                    proc.send_signal(signal.SIGINT)
                    break
        _, rest = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return proc.returncode, (err + rest).decode(errors="replace")


def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, data_root):
    reference = tmp_path / "reference"
    subprocess.run([sys.executable, "-m", "bayes_dip.cli", *_command(data_root, reference),
                    "--quiet"], env=_env(), check=True, capture_output=True, timeout=600)
    out = tmp_path / "run"
    args = _command(data_root, out)
    resume = f"resume with: {shlex.join(['bayes-dip', *args])}"

    code, err = _run_and_interrupt(args, "DIP", 600)
    assert code == 128 + signal.SIGINT, err
    last = err.strip().splitlines()[-1]
    assert "interrupted; saved DIP iteration" in last and last.endswith(resume), last
    assert "Traceback" not in err and not out.exists()
    assert (tmp_path / "run.partial" / "dip").is_dir()

    code, err = _run_and_interrupt(args, "evidence (exact)", 300)
    assert code == 128 + signal.SIGINT, err
    assert "resuming the interrupted run" in err
    last = err.strip().splitlines()[-1]
    assert "saved DIP iteration 600 of 600" in last and "evidence step" in last, last

    done = subprocess.run([sys.executable, "-m", "bayes_dip.cli", *args, "--quiet"],
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "resuming the interrupted run" in done.stderr and "evidence step" in done.stderr
    assert not (tmp_path / "run.partial").exists()
    for name in ("reconstruction.npy", "std.npy", "samples.npy"):
        np.testing.assert_array_equal(np.load(out / name), np.load(reference / name), name)


def test_changed_settings_or_restart(tmp_path, data_root):
    out = tmp_path / "run"
    args = _command(data_root, out)
    code, err = _run_and_interrupt(args, "DIP", 600)
    assert code == 128 + signal.SIGINT, err
    other = [a if a != "10" else "12" for a in args]  # --angles 12
    changed = subprocess.run([sys.executable, "-m", "bayes_dip.cli", *other, "--quiet"],
                             env=_env(), capture_output=True, text=True, timeout=60)
    assert changed.returncode == 2
    assert "--angles 10 -> 12" in changed.stderr and "--restart" in changed.stderr
    restarted = subprocess.run([sys.executable, "-m", "bayes_dip.cli", *other, "--restart",
                                "--no-uncertainty", "--iterations", "20", "--quiet"],
                               env=_env(), capture_output=True, text=True, timeout=300)
    assert restarted.returncode == 0, restarted.stderr
    assert "resuming" not in restarted.stderr and not (tmp_path / "run.partial").exists()


def test_interrupted_mc_dropout_sampling_resumes(tmp_path, data_root):
    """SIGINT while the MC-dropout samples stream: the moments so far are kept and the rerun
    ends with the uninterrupted run's std map."""
    def command(out):
        return ["reconstruct", "--kmnist", "0", "--data-root", str(data_root), "--angles", "10",
                "--iterations", "100", "--method", "mcdo", "--mcdo-samples", "20000",
                "--samples", "4", "--threads", "1", "--out", str(out)]

    reference = tmp_path / "reference"
    subprocess.run([sys.executable, "-m", "bayes_dip.cli", *command(reference), "--quiet"],
                   env=_env(), check=True, capture_output=True, timeout=600)
    out = tmp_path / "run"
    code, err = _run_and_interrupt(command(out), "MC dropout", 20000)
    assert code == 128 + signal.SIGINT, err
    last = err.strip().splitlines()[-1]
    assert "interrupted; saved" in last and "MC-dropout samples" in last, last
    assert "of 20000" in last, last
    done = subprocess.run([sys.executable, "-m", "bayes_dip.cli", *command(out), "--quiet"],
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "MC-dropout samples" in done.stderr  # what resumed
    for name in ("reconstruction.npy", "std.npy", "samples.npy"):
        np.testing.assert_array_equal(np.load(out / name), np.load(reference / name), name)


def test_interrupt_message_names_the_posterior_samples_so_far(tmp_path):
    """The sampling stage's checkpoint is reported in words (what the interrupt saved)."""
    import torch

    from bayes_dip.cli import _partial_progress
    from bayes_dip.output_folder import KeyedCheckpoint

    KeyedCheckpoint(tmp_path / "predictive-lowrank.pt", {"num_samples": 512},
                    "posterior samples").save(errors=[torch.zeros(64, 4), torch.zeros(32, 4)])
    assert _partial_progress(tmp_path) == "posterior samples 96 of 512"
