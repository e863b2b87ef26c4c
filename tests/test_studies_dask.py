"""Studies on Dask distributed: a 2-worker local cluster (processes, one thread each) gives
the serial results bit for bit; failed tasks are retried once and reported; CLI options."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import torch

from bayes_dip.cli import main
from bayes_dip.metrics import Prediction
from bayes_dip.studies import METHODS, MethodSpec, register_method, run_study
from bayes_dip.studies.parallel import (ONE_THREAD_ENV, StudyTasksFailed, jobqueue_spec,
                                        local_workers, open_client)

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments" / "configs"


def _config(methods, **overrides):
    cfg = dict(
        name="tiny-dask", methods=list(methods),
        settings=[{"angles": 8, "noise": 0.05, "images": ["shepp_logan", "dicom"], "size": 16}],
        unet={"preset": "kmnist", "channels": [4, 4], "skip_channels": [0, 2]},
        dip={"iterations": 40, "lr": 1e-2, "gamma": 1e-4, "log_every": 10},
        mcdo={"num_samples": 64, "iterations": 20}, evidence={"steps": 2},
        figures={"enabled": False})
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def cluster_address():
    """One local cluster for the module, opened as ``workers=2`` opens it (from a process
    whose BLAS/OpenMP variables ask for 2 threads, as after ``bayes-dip --threads 2``)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "2")
        patch.setenv("OPENBLAS_NUM_THREADS", "2")
        with open_client(workers=2, scheduler=None, tasks=2) as client:
            envs = client.run(lambda: {k: os.environ.get(k) for k in ONE_THREAD_ENV})
            assert len(envs) == 2 and all(env == ONE_THREAD_ENV for env in envs.values())
            yield client.scheduler.address


def _saved(out: Path) -> dict[str, tuple[dict, dict]]:
    """Result records (without wall times) and arrays by relative path."""
    saved = {}
    for path in sorted((out / "results").rglob("*.json")):
        if path.name == "problem.json":
            continue
        record = json.loads(path.read_text())
        record.pop("seconds")
        with np.load(path.with_suffix(".npz")) as data:
            saved[path.relative_to(out).as_posix()] = (record, {k: data[k] for k in data.files})
    return saved


def test_cluster_run_equals_serial_run(tmp_path, cluster_address, capsys):
    cfg = _config(["dip", "mcdo", "lin-dip-mll"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count: same floating-point reductions
    try:
        serial = run_study(cfg, tmp_path / "serial", progress=False, workers=0)
    finally:
        torch.set_num_threads(threads)
    dask = run_study(cfg, tmp_path / "dask", progress=False, scheduler=cluster_address)
    assert sorted(dask.computed) == sorted(serial.computed) and len(dask.computed) == 6
    a, b = _saved(tmp_path / "serial"), _saved(tmp_path / "dask")
    assert a.keys() == b.keys()
    for name, (record, arrays) in a.items():
        assert b[name][0] == record, name
        assert arrays.keys() == b[name][1].keys()
        for key, value in arrays.items():
            np.testing.assert_array_equal(b[name][1][key], value, err_msg=f"{name}: {key}")
    # resumed: nothing left to compute, so no cluster is contacted
    capsys.readouterr()
    again = run_study(cfg, tmp_path / "dask", progress=False, scheduler="tcp://127.0.0.1:1")
    assert again.computed == [] and len(again.reused) == 6


def _once(ctx) -> Prediction:
    """Fails on the first attempt of each image (a marker file records the attempt)."""
    marker = ctx.cache_dir / "once-failed"
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        raise RuntimeError(f"transient failure at {ctx.image_id}")
    recon = ctx.dip().recon
    return Prediction(mean=recon, std=torch.full_like(recon, 0.1), independent_pixels=True)


def _broken(ctx) -> Prediction:
    if ctx.image_id == "dicom":
        raise RuntimeError("broken at dicom")
    return _once(ctx)


@pytest.fixture
def failing_methods():
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)  # workers cannot import the test module
    specs = [register_method(MethodSpec(name, name, ("dip", "unet"), run))
             for name, run in (("once", _once), ("broken", _broken))]
    yield specs
    for spec in specs:
        del METHODS[spec.name]
    cloudpickle.unregister_pickle_by_value(module)


def test_failed_task_is_reported_retried_once_and_others_kept(tmp_path, cluster_address,
                                                             failing_methods, capsys):
    cfg = _config(["dip", "once", "broken"])
    with pytest.raises(StudyTasksFailed) as info:
        run_study(cfg, tmp_path, progress=True, scheduler=cluster_address)
    err = capsys.readouterr().err
    # the progress bar over tasks ends with both tasks done, one failed, two retried
    assert "2/2" in err and "failed=1" in err and "retried=2" in err
    # both tasks failed on their first attempt, with the worker's traceback
    for image in ("shepp_logan", "dicom"):
        assert f"task a8_n5pct_s16/{image} failed (attempt 1 of 2)" in err
        assert f"RuntimeError: transient failure at {image}" in err
    assert "in _once" in err
    # the retry of shepp_logan succeeded; dicom failed again in `broken` only
    assert list(info.value.failures) == ["a8_n5pct_s16/dicom"]
    assert "RuntimeError: broken at dicom" in info.value.failures["a8_n5pct_s16/dicom"]
    results = info.value.results
    assert sorted((r["image"], r["method"]) for r in results.records) == [
        ("dicom", "dip"), ("dicom", "once"),
        ("shepp_logan", "broken"), ("shepp_logan", "dip"), ("shepp_logan", "once")]
    assert "once" in (tmp_path / "table.md").read_text()


def test_cli_options(tmp_path, cluster_address, capsys):
    cfg = tmp_path / "study.yaml"
    cfg.write_text(json.dumps(_config(["dip"], settings=[
        {"angles": 6, "noise": 0.05, "images": ["shepp_logan"], "size": 16}])))
    out = tmp_path / "study"
    assert main(["calibrate", "--config", str(cfg), "--out", str(out), "--quiet",
                 "--scheduler", cluster_address]) == 0
    assert "DIP (σ²=1)" in capsys.readouterr().out
    assert main(["calibrate", "--config", str(cfg), "--out", str(out), "--workers", "-1"]) == 2
    assert "workers must be an integer >= 0" in capsys.readouterr().err
    assert main(["calibrate", "--config", str(cfg), "--out", str(out), "--workers", "2",
                 "--scheduler", cluster_address]) == 2
    assert "not both" in capsys.readouterr().err


def test_jobqueue_files(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("cluster: lsf\njobs: 2\n")
    with pytest.raises(ValueError, match="'cluster' must be slurm or pbs"):
        jobqueue_spec(bad)
    with pytest.raises(ValueError, match="not found"):
        jobqueue_spec(tmp_path / "none.yaml")
    pytest.importorskip("dask_jobqueue", reason="the cluster extra (dask-jobqueue) is not installed")
    cls, kwargs, jobs = jobqueue_spec(EXPERIMENTS / "cluster_slurm.yaml")
    assert cls.__name__ == "SLURMCluster" and jobs == 8
    cluster = cls(**kwargs)  # builds the job script; submits nothing
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    # 8 single-threaded workers per job, the workers' environment from the prologue
    assert "--nthreads 1" in script and "--nworkers 8" in script
    assert "export BAYES_DIP_DATA=" in script and "#SBATCH -t 04:00:00" in script


def test_default_workers(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert local_workers(None, 10) == 4 and local_workers(None, 3) == 3
    assert local_workers(8, 2) == 2 and local_workers(1, 5) == 1
    # the default (one worker per CPU) on a single task is the serial path: no cluster
    cfg = _config(["dip"], settings=[{"angles": 6, "noise": 0.05, "images": ["shepp_logan"],
                                      "size": 16}])
    assert len(run_study(cfg, tmp_path, progress=False, workers=None).computed) == 1
    assert "Dask:" not in capsys.readouterr().err
