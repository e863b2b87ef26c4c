"""The study loop: settings × images × methods, resumable, then tables and figures."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm.auto import tqdm

from bayes_dip.checks import check_int
from bayes_dip.studies.config import Setting, StudyConfig, load_study_config
from bayes_dip.studies.context import MethodContext
from bayes_dip.studies.evaluate import evaluate_prediction
from bayes_dip.studies.figures import plot_ll_vs_angles, setting_figures
from bayes_dip.studies.methods import METHODS, MethodSpec
from bayes_dip.studies.problems import build_problem, image_key
from bayes_dip.output_folder import atomic_write
from bayes_dip.studies.store import ResultStore, fingerprint
from bayes_dip.studies.table import aggregate, per_image_csv, table_csv, table_markdown

__all__ = ["StudyResults", "ImageTask", "run_study", "plan_tasks", "run_image_task",
           "collect_results"]


@dataclass
class StudyResults:
    """Outcome of :func:`run_study`.

    Attributes:
        config: the validated study.
        out_dir: its output folder.
        records: one dict per (setting, image, method): metrics, ``seconds`` per stage,
            ``info`` of the method, ``setting``/``image``/``method`` keys and labels.
        rows: aggregated table rows (see :func:`bayes_dip.studies.table.aggregate`).
        computed, reused: (setting, image, method) keys computed in this call / loaded.
        files: tables and figures written.
    """

    config: StudyConfig
    out_dir: Path
    records: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    computed: list[tuple[str, str, str]] = field(default_factory=list)
    reused: list[tuple[str, str, str]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    @property
    def table_markdown(self) -> str:
        return (self.out_dir / "table.md").read_text()


def _result_fingerprint(config: StudyConfig, setting: Setting, image_id: str, method: str) -> str:
    spec = METHODS[method]
    return fingerprint({"setting": setting.params(), "image": image_id, "method": method,
                        "seed": config.seed, "device": config.device,
                        "sections": {s: config.section(s) for s in ("metrics", *spec.sections)}})


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def run_study(config: StudyConfig | dict | str | os.PathLike, out_dir: str | os.PathLike,
              progress: bool = True, report_only: bool = False, workers: int | None = 0,
              scheduler: str | None = None) -> StudyResults:
    """Run (or resume) a calibration study and write its tables and figures.

    Args:
        config: a :class:`StudyConfig`, a mapping in the YAML schema of
            :mod:`bayes_dip.studies.config`, or the path of such a YAML file.
        out_dir: output folder. Every finished (setting, image, method) result is saved
            there atomically (``results/<setting>/<image>/<method>.json`` + ``.npz``) and is
            never recomputed: a second call, e.g. after an interruption or with more images
            or settings, computes only what is missing. A result saved under a different
            configuration of that method raises ``ValueError``. The DIP of each image is
            checkpointed under ``cache/`` and shared by the methods built on it.
        progress: progress bars (study loop and the stages inside; over tasks on a cluster).
        report_only: compute nothing; write the tables and figures of the results finished
            so far (e.g. of a long study stopped part-way). ``ValueError`` where ``out_dir``
            holds none (missing or empty folder).
        workers: ``0`` runs the images one after another in this process; ``N > 0`` runs
            them on a Dask ``LocalCluster`` of ``N`` single-threaded worker processes;
            ``None`` one worker per CPU, or serial where that is one worker (one task or
            one CPU; see :mod:`bayes_dip.studies.parallel`).
        scheduler: run on an existing Dask cluster instead: a scheduler address
            (``tcp://host:8786``), a scheduler file (``.json``) or a dask-jobqueue cluster
            file (``.yaml``; SLURM/PBS). ``out_dir`` must then be on a file system that the
            workers share.

    One task is one (setting, image) with all its missing methods: they share the image's
    DIP and linearisation (per-method tasks would train the same DIP side by side). With
    the same seeds and thread count, cluster and serial runs give identical results. On a
    cluster a failed task is reported with its traceback and retried once; the others go
    on, the tables are written, and :class:`~bayes_dip.studies.parallel.StudyTasksFailed`
    is raised at the end.

    Writes ``study.yaml`` (the expanded config), ``table.md``, ``table.csv`` (mean ±
    standard error per setting and method), ``per_image.csv`` and figures under
    ``figures/<setting>/`` (PNG and PDF), plus ``figures/test_ll_vs_angles`` for grids.
    """
    if workers is not None:
        check_int(workers, "workers", 0)
    if scheduler is not None and workers:
        raise ValueError("workers: give either workers (a local cluster) or scheduler "
                         f"(an existing cluster), not both (workers={workers}, scheduler={scheduler!r})")
    cfg = load_study_config(config)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir must be a folder, but {out} is a file")
    tasks, reused = plan_tasks(cfg, ResultStore(out))
    if report_only and not reused:
        raise ValueError(f"out_dir: no finished results of study {cfg.name!r} in {out}; "
                         "nothing to report (run the study first)")
    out.mkdir(parents=True, exist_ok=True)
    _write_text(out / "study.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    computed: list[tuple[str, str, str]] = []
    failures: dict[str, str] = {}
    if tasks and not report_only:
        if workers is None and scheduler is None:
            from bayes_dip.studies.parallel import local_workers
            workers = 0 if local_workers(None, len(tasks)) == 1 else None
        if workers == 0 and scheduler is None:
            shared: dict = {}
            bar = tqdm(tasks, desc=f"study {cfg.name}", disable=not progress, dynamic_ncols=True)
            for task in bar:
                bar.set_postfix_str(task.label)
                computed += run_image_task(task, cfg, out, progress, shared)
        else:
            from bayes_dip.studies.parallel import run_distributed
            computed, failures = run_distributed(tasks, cfg, out, workers, scheduler, progress)
    records = collect_results(cfg, out)
    rows = aggregate(records)
    files = [out / "table.md", out / "table.csv", out / "per_image.csv"]
    _write_text(files[0], table_markdown(rows, f"Study {cfg.name}"))
    _write_text(files[1], table_csv(rows))
    _write_text(files[2], per_image_csv(records))
    if cfg.figures.enabled:
        changed = {s.key for s in cfg.settings} if report_only else {k[0] for k in computed}
        files += _figures(cfg, out, rows, changed)
    results = StudyResults(cfg, out, records, rows, computed, reused, files)
    if failures:
        from bayes_dip.studies.parallel import StudyTasksFailed
        raise StudyTasksFailed(failures, results)
    return results


@dataclass(frozen=True)
class ImageTask:
    """The missing methods of one (setting, image): ``methods`` holds ``(method,
    fingerprint)`` pairs in study order."""

    setting: Setting
    image_id: str
    methods: tuple[tuple[str, str], ...]

    @property
    def label(self) -> str:
        return f"{self.setting.key}/{image_key(self.image_id)}"


def plan_tasks(cfg: StudyConfig, store: ResultStore,
               ) -> tuple[list[ImageTask], list[tuple[str, str, str]]]:
    """The tasks of the results missing from ``store`` and the keys of those it has."""
    tasks, reused = [], []
    for setting in cfg.settings:
        for image_id in setting.images:
            key = image_key(image_id)
            pending = []
            for method in cfg.methods:
                fp = _result_fingerprint(cfg, setting, image_id, method)
                if store.load(setting.key, key, method, fp) is None:
                    pending.append((method, fp))
                else:
                    reused.append((setting.key, key, method))
            if pending:
                tasks.append(ImageTask(setting, image_id, tuple(pending)))
    return tasks, reused


def run_image_task(task: ImageTask, cfg: StudyConfig, out: Path, progress: bool, shared: dict,
                   specs: dict[str, MethodSpec] | None = None) -> list[tuple[str, str, str]]:
    """Compute and save the methods of ``task`` (one DIP, shared); returns their keys.
    Methods saved meanwhile (by an earlier attempt of the task) are skipped.

    ``shared`` is kept across the tasks of one process (quantities of one geometry);
    ``specs`` the method specs by name (default :data:`METHODS`; a worker process gets
    those of the client, so methods registered there run too)."""
    specs = METHODS if specs is None else specs
    key = image_key(task.image_id)
    problem = build_problem(task.setting, task.image_id, cfg.seed, cfg.data_root)
    _save_problem(out / "results" / task.setting.key / key, problem)
    ctx = MethodContext(problem, cfg, task.setting, task.image_id,
                        out / "cache" / task.setting.key / key, progress, shared)
    store = ResultStore(out)
    done = []
    for method, fp in task.methods:
        if store.load(task.setting.key, key, method, fp) is not None:
            continue
        _run_method(ctx, store, specs[method], fp, key)
        done.append((task.setting.key, key, method))
    return done


def _save_problem(folder: Path, problem) -> None:
    path = folder / "problem.npz"
    if path.is_file():
        return
    arrays = {"fbp": problem.fbp.detach().cpu().numpy()[0, 0],
              "sinogram": problem.sinogram.detach().cpu().numpy()[0, 0]}
    if problem.ground_truth is not None:
        arrays["ground_truth"] = problem.ground_truth.detach().cpu().numpy()[0, 0]
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
    _write_text(folder / "problem.json", json.dumps(problem.info, indent=2, default=str))


def _run_method(ctx: MethodContext, store: ResultStore, spec: MethodSpec, fp: str, key: str,
                ) -> None:
    method = spec.name
    start = time.perf_counter()
    pred = spec.run(ctx)
    record, arrays = evaluate_prediction(pred, ctx.ground_truth, ctx.config.metrics)
    seconds = dict(pred.seconds)
    seconds["metrics"] = record.pop("seconds_metrics", 0.0)
    seconds["total"] = time.perf_counter() - start
    record.update(setting=ctx.setting.key, setting_label=ctx.setting.label, image=ctx.image_id,
                  method=method, method_label=spec.label, fingerprint=fp, seconds=seconds,
                  info=pred.info)
    arrays["mean"] = pred.mean.detach().cpu().float().numpy()[0, 0]
    arrays["std"] = pred.std.detach().cpu().float().numpy()[0, 0]
    samples = pred.sample(ctx.config.figures.gallery_samples, ctx.seed(17))
    if samples is not None:
        arrays["samples"] = samples.detach().cpu().float().numpy()[:, 0]
    store.save(ctx.setting.key, key, method, record, arrays)


def collect_results(config: StudyConfig | dict | str | os.PathLike, out_dir: str | os.PathLike,
                    ) -> list[dict[str, Any]]:
    """The saved records of ``config`` in ``out_dir`` (study order; missing ones skipped)."""
    cfg = load_study_config(config)
    store = ResultStore(out_dir)
    records = []
    for setting in cfg.settings:
        for image_id in setting.images:
            for method in cfg.methods:
                fp = _result_fingerprint(cfg, setting, image_id, method)
                record = store.load(setting.key, image_key(image_id), method, fp)
                if record is not None:
                    records.append(record)
    return records


def _figures(cfg: StudyConfig, out: Path, rows: list[dict[str, Any]], changed: set[str],
             ) -> list[Path]:
    """Figures of the settings with new results (or without figures yet)."""
    store = ResultStore(out)
    files: list[Path] = []
    for setting in cfg.settings:
        if setting.key not in changed and (out / "figures" / setting.key).is_dir():
            continue
        images = []
        for image_id in setting.images:
            key = image_key(image_id)
            folder = out / "results" / setting.key / key
            if not (folder / "problem.npz").is_file():
                continue
            with np.load(folder / "problem.npz") as problem:
                gt = problem["ground_truth"] if "ground_truth" in problem.files else None
                fbp = problem["fbp"]
            preds = {}
            for method in cfg.methods:
                if store.paths(setting.key, key, method)[0].is_file():
                    preds[METHODS[method].label] = store.arrays(setting.key, key, method)
            if preds:
                images.append((key, gt, fbp, preds))
        if not images:
            continue
        info_path = out / "results" / setting.key / images[0][0] / "problem.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        files += setting_figures(
            images, out / "figures" / setting.key, title=setting.label,
            units=info.get("image_unit") or "a.u.",
            value_label="material" if info.get("image_unit") == "plastic fraction" else "attenuation",
            panel_images=cfg.figures.images, formats=cfg.figures.formats,
            file_names={METHODS[m].label: m for m in cfg.methods})
    summary = out / "figures" / "test_ll_vs_angles"
    if not changed and summary.with_suffix(f".{cfg.figures.formats[0]}").is_file():
        return files
    params = {s.key: {**s.params(), "kind": s.kind} for s in cfg.settings}
    files += plot_ll_vs_angles(rows, params, out / "figures" / "test_ll_vs_angles",
                               cfg.figures.formats)
    return files
