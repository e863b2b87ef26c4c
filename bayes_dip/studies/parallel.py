"""Studies on Dask distributed: one task per (setting, image), on any Dask cluster.

:func:`run_distributed` submits the :class:`~bayes_dip.studies.runner.ImageTask` s of a
study to a cluster opened by :func:`open_client`:

* ``workers=N`` (``None``: one per CPU): a ``LocalCluster`` of ``N`` worker processes with
  one thread each (never more workers than tasks);
* ``scheduler="tcp://host:8786"`` or a scheduler file ``*.json`` (``dask scheduler
  --scheduler-file``): a running cluster;
* ``scheduler="cluster.yaml"``: a dask-jobqueue cluster (SLURM or PBS) started for the study
  and closed after it (see :func:`jobqueue_cluster` and ``experiments/README.md``).

Every task runs with one torch thread (set at task start) and saves each result atomically
as soon as it is computed, into the study folder (which the workers must share). A failed
task is reported with its traceback and resubmitted once; the others go on.
"""
from __future__ import annotations

import contextlib
import os
import sys
import traceback
import uuid
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml
from tqdm.auto import tqdm

from bayes_dip.checks import check_int
from bayes_dip.studies.config import StudyConfig
from bayes_dip.studies.methods import METHODS, MethodSpec
from bayes_dip.studies.runner import ImageTask, StudyResults, run_image_task

__all__ = ["ONE_THREAD_ENV", "StudyTasksFailed", "local_workers", "open_client", "jobqueue_spec",
           "jobqueue_cluster", "run_distributed"]

#: geometry quantities kept across the tasks of one worker process (``MethodContext.shared``)
_WORKER_SHARED: dict = {}
#: environment of local workers: single-threaded OpenMP/BLAS pools, whatever this process has
ONE_THREAD_ENV = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                          "OPENBLAS_NUM_THREADS")}


class StudyTasksFailed(RuntimeError):
    """Tasks of a study failed twice. ``failures``: task label -> traceback text;
    ``results``: the :class:`StudyResults` of everything else (tables already written)."""

    def __init__(self, failures: dict[str, str], results: StudyResults):
        self.failures, self.results = failures, results
        lines = [f"{len(failures)} task(s) of study {results.config.name!r} failed twice "
                 f"(their other results are saved; run again to retry them):"]
        for label, text in failures.items():
            lines += [f"--- {label}", text.rstrip()]
        super().__init__("\n".join(lines))


def local_workers(workers: int | None, tasks: int) -> int:
    """Workers of a local cluster for ``tasks`` tasks: ``workers`` (``None``: one per CPU
    this process may use), never more than the tasks."""
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else os.cpu_count() or 1
    return max(1, min(workers, tasks))


def jobqueue_spec(path: str | os.PathLike) -> tuple[type, dict[str, Any], int]:
    """``(cluster class, its keyword arguments, jobs)`` of a YAML file ``{cluster: slurm |
    pbs, jobs: N, ...}``; the other keys go to ``SLURMCluster`` / ``PBSCluster`` (``cores``,
    ``processes``, ``memory``, ``walltime``, ``queue``, ``account``, ``job_script_prologue``,
    ...). Example: ``experiments/configs/cluster_slurm.yaml``."""
    if not Path(path).is_file():
        raise ValueError(f"scheduler: cluster file {str(path)!r} not found")
    values = yaml.safe_load(Path(path).read_text())
    if not isinstance(values, dict):
        raise ValueError(f"scheduler: {path} must hold a mapping (cluster: slurm|pbs, jobs: N, ...)")
    values = dict(values)
    kind, jobs = values.pop("cluster", None), values.pop("jobs", 1)
    if kind not in ("slurm", "pbs"):
        raise ValueError(f"scheduler: {path}: 'cluster' must be slurm or pbs, got {kind!r}")
    check_int(jobs, f"scheduler: {path}: 'jobs'", 1)
    try:
        import dask_jobqueue
    except ImportError as exc:
        raise ValueError(f"scheduler: {path} needs dask-jobqueue "
                         "(pip install 'bayes_dip[cluster]')") from exc
    cls = dask_jobqueue.SLURMCluster if kind == "slurm" else dask_jobqueue.PBSCluster
    return cls, values, jobs


def jobqueue_cluster(path: str | os.PathLike):
    """The dask-jobqueue cluster of :func:`jobqueue_spec`, scaled to its ``jobs``."""
    cls, kwargs, jobs = jobqueue_spec(path)
    try:
        cluster = cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"scheduler: {path}: {exc}") from exc
    cluster.scale(jobs=jobs)
    return cluster


@contextlib.contextmanager
def open_client(workers: int | None, scheduler: str | None, tasks: int) -> Iterator[Any]:
    """A ``distributed.Client`` (see the module docstring); prints the dashboard address and
    closes whatever it started on exit."""
    from distributed import Client, LocalCluster

    cluster = None
    if scheduler is None:
        n = local_workers(workers, tasks)
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               env=ONE_THREAD_ENV)
        client = Client(cluster)
        where = f"local cluster of {n} worker process(es), 1 thread each"
    elif scheduler.endswith((".yaml", ".yml")):
        cluster = jobqueue_cluster(scheduler)
        client = Client(cluster)
        where = f"{type(cluster).__name__} from {scheduler}"
    elif scheduler.endswith(".json"):
        if not Path(scheduler).is_file():
            raise ValueError(f"scheduler: scheduler file {scheduler!r} not found")
        client = Client(scheduler_file=scheduler)
        where = f"cluster of scheduler file {scheduler}"
    else:
        try:
            client = Client(scheduler)
        except (OSError, TimeoutError) as exc:
            raise ValueError(f"scheduler: no Dask scheduler reachable at {scheduler!r} ({exc})") from exc
        where = f"cluster at {scheduler}"
    try:
        services = client.scheduler_info().get("services", {})
        dashboard = client.dashboard_link if "dashboard" in services else "none (install bokeh)"
        print(f"Dask: {where}; dashboard: {dashboard}", file=sys.stderr, flush=True)
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _run_task(task: ImageTask, cfg: StudyConfig, out: str, specs: dict[str, MethodSpec],
              ) -> list[tuple[str, str, str]]:
    """Worker side: one torch thread, then the serial code path of one task."""
    torch.set_num_threads(1)
    return run_image_task(task, cfg, Path(out), False, _WORKER_SHARED, specs)


def _format_failure(future) -> str:
    if future.status != "error":  # cancelled: its workers or the scheduler were lost
        return f"task {future.status} by the cluster\n"
    exc = future.exception()
    return "".join(traceback.format_exception(type(exc), exc, future.traceback()))


def run_distributed(tasks: list[ImageTask], cfg: StudyConfig, out: Path, workers: int | None,
                    scheduler: str | None, progress: bool,
                    ) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """Run ``tasks`` on a Dask cluster; returns the computed result keys and the tasks that
    failed twice (label -> traceback)."""
    from distributed import wait

    specs = {name: METHODS[name] for name in cfg.methods}
    folder = str(Path(out).resolve())
    computed: list[tuple[str, str, str]] = []
    failures: dict[str, str] = {}
    with open_client(workers, scheduler, len(tasks)) as client:
        def submit(task: ImageTask, attempt: int):
            key = f"study-{task.label}-try{attempt}-{uuid.uuid4().hex[:8]}"
            return client.submit(_run_task, task, cfg, folder, specs, key=key, pure=False)

        running = {submit(task, 0): (task, 0) for task in tasks}
        bar = tqdm(total=len(tasks), desc=f"study {cfg.name}", unit="task",
                   disable=not progress, dynamic_ncols=True)
        retried = 0
        while running:
            try:
                done, _ = wait(list(running), timeout=1.0, return_when="FIRST_COMPLETED")
            except TimeoutError:
                done = set()
            for future in done:
                task, attempt = running.pop(future)
                if future.status == "finished":
                    computed += future.result()
                    bar.update(1)
                    continue
                text = _format_failure(future)
                tqdm.write(f"task {task.label} failed (attempt {attempt + 1} of 2):\n{text}",
                           file=sys.stderr)
                if attempt == 0:
                    retried += 1
                    running[submit(task, 1)] = (task, 1)
                else:
                    failures[task.label] = text
                    bar.update(1)
            keys = {f.key for f in running}
            active = sum(k in keys for ks in client.processing().values() for k in ks)
            bar.set_postfix(running=active, failed=len(failures), retried=retried, refresh=False)
            bar.refresh()
        bar.close()
    return computed, failures
