"""Peak resident memory per stage of the ``bayes-dip reconstruct`` job (issue 14, item 3).

Runs :func:`bayes_dip.reconstruct.run_reconstruct` with the command line's defaults in this
process (a short run: memory does not depend on the step counts) and prints, for each
stage, its peak resident set size (``VmHWM``, reset between stages) and the resident size
at its end (``VmRSS``)::

    OMP_NUM_THREADS=1 python experiments/bench_memory.py
    OMP_NUM_THREADS=1 python experiments/bench_memory.py \\
        --htc2022 /work/shared/data/htc2022/htc2022_ta_sparse_example.mat

Stages end where the functions ``run_reconstruct`` calls return (they are wrapped); a
stage runs from the end of the previous one.
"""
from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

_GIB = 2 ** 30


def memory_status() -> tuple[float, float]:
    """``(peak, current)`` resident memory of this process in GiB (``/proc/self/status``)."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = int(rest.split()[0]) * 1024 / _GIB
    return values["VmHWM"], values["VmRSS"]


def reset_peak() -> bool:
    """Reset ``VmHWM`` to the current resident size (Linux ``clear_refs``); ``False`` where
    that is not allowed (peaks are then cumulative)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class StageLog:
    """Rows ``(stage, peak GiB, current GiB, seconds)``: each stage runs from the end of the
    previous one to its own end; its peak is the highest resident size in that interval."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, float, float]] = []
        self.per_stage = reset_peak()
        self._last = time.perf_counter()

    def record(self, stage: str) -> None:
        now = time.perf_counter()
        row = (stage, *memory_status(), now - self._last)
        self.rows.append(row)
        print(f"[bench_memory] {row[0]}: peak {row[1]:.2f} GiB, now {row[2]:.2f} GiB, "
              f"{row[3]:.1f} s", flush=True)
        if self.per_stage:
            reset_peak()
        self._last = time.perf_counter()

    def wrap(self, owner: Any, name: str, stage: str) -> None:
        """Replace ``owner.name`` by a wrapper that records ``stage`` when it returns."""
        func: Callable = getattr(owner, name)

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            out = func(*args, **kwargs)
            self.record(stage)
            return out

        setattr(owner, name, wrapper)

    def table(self) -> str:
        peak = "peak RSS GiB" if self.per_stage else "peak so far"
        lines = [f"{'stage':<34} {peak:>12} {'RSS GiB':>8} {'s':>7}", "-" * 64]
        lines += [f"{stage:<34} {top:12.2f} {rss:8.2f} {sec:7.1f}"
                  for stage, top, rss, sec in self.rows]
        lines.append(f"{'whole run':<34} {max(r[1] for r in self.rows):12.2f}")
        return "\n".join(lines)


#: ``(module, attribute, stage)``: the stage ends when ``module.attribute`` returns (the names
#: the code of ``run_reconstruct`` calls them by; tests/test_bench_memory.py checks they exist)
STAGES = (
    ("bayes_dip.reconstruct", "load_problem", "problem (system matrix, FBP)"),
    ("bayes_dip.reconstruct", "default_dip_config", "DIP settings from the data"),
    ("bayes_dip.studies.context", "reconstruct_dip", "DIP"),
    ("bayes_dip.linearized.api", "NetworkJacobian", "linearisation (Jacobian setup)"),
    ("bayes_dip.linearized.modes.lowrank", "FixedSampleTVPredCP", "TV-PredCP images"),
    ("bayes_dip.linearized.modes.exact", "ExactTVPredCP", "TV-PredCP (exact)"),
    ("bayes_dip.linearized.api.SubspaceCovariance", "build", "subspace (sketch, Grams, tail)"),
    ("bayes_dip.linearized.api.StructuredCovariance", "build", "structured Grams (exact mode)"),
    ("bayes_dip.linearized.api", "optimize_evidence", "evidence optimisation"),
    ("bayes_dip.linearized.api.LinearizedDIP", "heldout", "held-out check"),
    ("bayes_dip.linearized.modes.lowrank", "subspace_predictive", "predictive (samples, std)"),
    ("bayes_dip.linearized.modes.exact", "exact_predictive", "predictive (exact)"),
    ("bayes_dip.reconstruct", "_uncertainty_metrics", "uncertainty metrics"),
)


def resolve(owner: str) -> Any:
    """The module (or a class in it) named by the dotted path ``owner``."""
    import importlib
    parts = owner.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(owner)


def instrument(log: StageLog) -> None:
    """Record the end of every stage of ``run_reconstruct`` (lin-dip, lowrank or exact mode)."""
    for owner, name, stage in STAGES:
        log.wrap(resolve(owner), name, stage)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--htc2022", metavar="MAT", help="HTC2022 scan instead of the default")
    parser.add_argument("--size", type=int, help="image side (default: the job's 128)")
    parser.add_argument("--iterations", type=int, default=20, help="DIP iterations (20)")
    parser.add_argument("--evidence-steps", type=int, default=5, help="evidence steps (5)")
    parser.add_argument("--threads", type=int, default=1, help="threads (1)")
    args = parser.parse_args()

    from bayes_dip.runtime import set_threads
    set_threads(args.threads)
    from bayes_dip.cli import RECONSTRUCT_DEFAULTS
    from bayes_dip.reconstruct import run_reconstruct

    log = StageLog()
    log.record("imports")
    instrument(log)
    with tempfile.TemporaryDirectory() as tmp:
        settings = dict(RECONSTRUCT_DEFAULTS, htc2022=args.htc2022, size=args.size,
                        iterations=args.iterations, evidence_steps=args.evidence_steps,
                        quiet=True, out=str(Path(tmp) / "out"))
        run_reconstruct(settings)
        log.record("outputs written")
    job = "HTC2022 " + Path(args.htc2022).name if args.htc2022 else "default job"
    print(f"\npeak resident memory per stage ({job}; {args.iterations} DIP iterations, "
          f"{args.evidence_steps} evidence steps)")
    print(log.table())


if __name__ == "__main__":
    main()
