"""Seconds and peak memory per stage of the linearised DIP as the image grows (issue 12).

Each stage calls the package's own function, timed ``--reps`` times (median; wall seconds, or
with ``--clock cpu`` this process's CPU seconds, for one thread on a shared machine); the memory
is the peak over those calls (CPU: the process's peak resident set, ``VmHWM`` reset before each
stage; GPU: ``torch.cuda.max_memory_allocated``), so it includes everything held by then.

==================  ===========================================================================
stage               what is timed (``k = --columns`` vmapped columns, ``r = --rank``)
==================  ===========================================================================
dip_iteration       ``reconstruct_dip`` runs of 2 and 1 iterations, the difference: forward,
                    ``‖A x − y‖²/m + γ TV``, backward, Adam step (setup and final pass cancel)
jvp_column          ``NetworkJacobian.jvp`` of ``k`` random columns, divided by ``k``
vjp_column          ``NetworkJacobian.vjp`` of ``k`` random columns, divided by ``k`` (after
                    the pullback's one forward pass, built once per Jacobian)
subspace_column     ``SubspaceCovariance.build`` at rank ``r`` (``r`` JVPs, ``r + t`` VJPs, the
                    Grams; ``t = ⌈32 r / 400⌉`` tail probes, the default ratio), divided by ``r``
evidence_step       ``optimize_evidence``, low-rank mode on that subspace: runs of 11 and 1
                    steps, the difference / 10 (MLL: the default command's TV-PredCP term, set
                    up by 28 JVPs per GP block, is left out)
posterior_sample    ``subspace_predictive`` with ``k`` samples less the time of its ``r``
                    products ``G = C Aᵀ U`` (both are timed in the same call), divided by ``k``
==================  ===========================================================================

Problems. The paper's Walnut scale (the default): a 501² image of 0.1 mm pixels (the pydicom CT
slice resized), 60 angles over 360° × 128 detector cells = 7,680 measurements as in the paper's
sub-sampled Walnut data; the paper's cone-beam central slice is modelled by our flat fan beam
with the Walnut scanner's nominal distances (source 66 mm and detector 199 mm from the source,
cells 6 × 0.1496 mm), 5 % noise; the ``"walnut"`` U-Net (6 scales, 128 channels, GroupNorm,
2.97 M weights, 2.96 M under the prior) with the paper's lr 1e-4 and γ 6.5e-6. ``--sizes``: the
default ``bayes-dip reconstruct`` problem at each size (``load_problem(size=n)``: real CT slice,
30 parallel-beam angles, 5 % noise) and its settings (``dip_config_from_data``: the ``"128"``
U-Net above 32 px), with the scaling exponent of every stage's seconds in the number of pixels
(least squares in log-log)::

    python experiments/bench_scale.py                       # the Walnut line
    python experiments/bench_scale.py --sizes 64,128,256,512 [--walnut]
    python experiments/bench_scale.py --quick               # 64² and 128², ~1 min on one thread
    python experiments/bench_scale.py --device cuda         # on a GPU
    python experiments/bench_scale.py --sizes 64,128,256 --threads 1 --clock cpu  # shared CPU
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_memory import memory_status, reset_peak  # noqa: E402

from bayes_dip.ct import FanBeamGeometry, RayTransform, fbp, simulate_measurement  # noqa: E402
from bayes_dip.data import load_dicom_slice  # noqa: E402
from bayes_dip.dip import DIPConfig, dip_config_from_data, reconstruct_dip  # noqa: E402
from bayes_dip.linearized import (EvidenceConfig, LinearizedDIP, SubspaceCovariance,  # noqa: E402
                                  optimize_evidence, subspace_predictive)
from bayes_dip.problem import load_problem  # noqa: E402
from bayes_dip.runtime import default_threads, set_threads  # noqa: E402

STAGES = ("dip_iteration", "jvp_column", "vjp_column", "subspace_column", "evidence_step",
          "posterior_sample")
#: the default command's subspace: rank 400 with 32 tail probes
_TAIL_PER_RANK = 32 / 400
_GIB = 2 ** 30
_CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
#: evidence steps per timed difference (a step takes milliseconds)
_EVIDENCE_STEPS = 10
#: sizes of ``--quick`` (both with the default command's ``"128"`` U-Net)
QUICK_SIZES = (64, 128)


@dataclass(frozen=True)
class BenchSettings:
    """Repetitions per stage, vmapped columns per product (and samples), subspace rank, and
    the clock: ``"wall"`` or ``"cpu"`` (this process's CPU seconds: with one thread on a
    shared machine, close to the wall time the machine would give alone)."""

    reps: int = 3
    columns: int = 4
    rank: int = 8
    clock: str = "wall"

    def __post_init__(self) -> None:
        for name, minimum in (("reps", 1), ("columns", 2), ("rank", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"--{name} must be an integer >= {minimum}, got {value!r}")
        if self.clock not in _CLOCKS:
            raise ValueError(f"--clock must be one of {sorted(_CLOCKS)}, got {self.clock!r}")


@dataclass
class BenchProblem:
    """A measurement ``y (1, 1, n_a, n_d)`` of ``ray_trafo`` with its FBP ``net_input
    (1, 1, H, W)`` and the DIP settings (``unet`` names the network)."""

    name: str
    ray_trafo: RayTransform
    y: Tensor
    net_input: Tensor
    config: DIPConfig


@dataclass
class StageResult:
    """Median seconds per unit (iteration, column, step, sample) and peak memory in GiB."""

    seconds: float
    gib: float


def walnut_geometry() -> FanBeamGeometry:
    """The paper's sub-sampled Walnut scan as a flat fan beam (module docs): 501² pixels of
    0.1 mm, 60 angles over 360°, 128 cells of 6 × 0.1496 mm, source 66 mm from the axis and
    199 mm from the detector."""
    src_origin_mm, src_det_mm = 66.0, 199.0
    return FanBeamGeometry((501, 501), np.linspace(0, 2 * np.pi, 60, endpoint=False),
                           src_origin_dist=src_origin_mm,
                           origin_det_dist=src_det_mm - src_origin_mm,
                           det_pixel_size=6 * 0.1496, num_detectors=128, pixel_size=0.1)


def walnut_problem(seed: int = 0) -> BenchProblem:
    """The paper's Walnut scale (module docs): the pydicom CT slice at 501², 5 % noise, the
    ``"walnut"`` U-Net with the paper's lr 1e-4 and γ 6.5e-6."""
    ray_trafo = RayTransform(walnut_geometry(), backend="matrix")
    y, _ = simulate_measurement(load_dicom_slice(size=501), ray_trafo, noise_level=0.05,
                                seed=seed)
    config = DIPConfig(iterations=1500, lr=1e-4, gamma=6.5e-6, unet="walnut", seed=seed)
    return BenchProblem("walnut 501² fan 60×128", ray_trafo, y, fbp(ray_trafo, y), config)


def default_problem(size: int, seed: int = 0) -> BenchProblem:
    """The default command's problem and DIP settings at ``size``² (module docs); ``γ`` is
    given (its value does not change the cost) instead of balanced by 600 TV iterations."""
    problem = load_problem(size=size, seed=seed)
    config, _ = dip_config_from_data(problem.ray_trafo, problem.sinogram, problem.fbp,
                                     problem.noise_std, gamma=DIPConfig().gamma, seed=seed)
    return BenchProblem(f"default {size}²", problem.ray_trafo, problem.sinogram, problem.fbp,
                        config)


class _Meter:
    """Stage results on ``device``: median seconds of repeated calls and their peak memory;
    ``log`` gets a line per stage."""

    def __init__(self, device: torch.device, clock: str, problem: str,
                 log: Callable[[str], None]):
        self.device, self.now, self.problem, self.log = device, _CLOCKS[clock], problem, log
        self.results: dict[str, StageResult] = {}
        self.per_stage = True  # False where the CPU peak could not be reset (peak so far)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def elapsed(self, fn: Callable[[], object]) -> float:
        """Seconds of ``fn()`` on the clock (device work included)."""
        self._sync()
        start = self.now()
        fn()
        self._sync()
        return self.now() - start

    def difference(self, run: Callable[[int], object], count: int) -> float:
        """Seconds per unit of ``run(n)`` (``n`` units plus a fixed cost):
        ``(t(1 + count) − t(1)) / count``."""
        return (self.elapsed(lambda: run(1 + count)) - self.elapsed(lambda: run(1))) / count

    def stage(self, name: str, timed: Callable[[], float], reps: int) -> None:
        """Record stage ``name``: ``timed()`` returns the seconds of one repetition."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.per_stage &= reset_peak()
        seconds = statistics.median(timed() for _ in range(reps))
        if self.device.type == "cuda":
            gib = torch.cuda.max_memory_allocated(self.device) / _GIB
        else:
            gib = memory_status()[0]
        self.results[name] = StageResult(seconds, gib)
        self.log(f"[bench_scale] {self.problem} {name}: {seconds:.3g} s, {gib:.2f} GiB")


class _CallTimer:
    """Seconds spent in ``owner.name(...)`` while active (an instance attribute wraps it)."""

    def __init__(self, owner: object, name: str, meter: _Meter):
        self.owner, self.name, self.meter = owner, name, meter
        self.seconds, self.calls = 0.0, 0

    def __enter__(self) -> "_CallTimer":
        func = getattr(self.owner, self.name)

        def timed(*args, **kwargs):
            out: list = []
            self.seconds += self.meter.elapsed(lambda: out.append(func(*args, **kwargs)))
            self.calls += 1
            return out[0]

        setattr(self.owner, self.name, timed)
        return self

    def __exit__(self, *exc: object) -> None:
        delattr(self.owner, self.name)


def bench_problem(problem: BenchProblem, settings: BenchSettings, device: torch.device,
                  log: Callable[[str], None] = print) -> dict[str, StageResult]:
    """Every stage of :data:`STAGES` on ``problem`` (module docs); ``log`` gets a line per
    stage."""
    meter = _Meter(device, settings.clock, problem.name, log)
    k, rank, reps = settings.columns, settings.rank, settings.reps
    ray_trafo = problem.ray_trafo.to(device)
    y, net_input = problem.y.to(device), problem.net_input.to(device)
    dips = []

    def dip_run(iterations: int) -> None:
        dips[:] = [reconstruct_dip(ray_trafo, y, net_input=net_input, progress=False,
                                   config=replace(problem.config, iterations=iterations))]

    meter.stage("dip_iteration", lambda: meter.difference(dip_run, 1), reps)
    lin = LinearizedDIP(dips[0].net, dips[0].net_input, ray_trafo, y, gamma=problem.config.gamma)
    del dips
    jac, model = lin.jac, lin.model
    gen = torch.Generator(device=device).manual_seed(0)
    v = torch.randn(jac.num_params, k, generator=gen, dtype=jac.dtype, device=device)
    u = torch.randn(jac.num_pixels, k, generator=gen, dtype=jac.dtype, device=device)
    meter.stage("jvp_column", lambda: meter.elapsed(lambda: jac.jvp(v)) / k, reps)
    jac.vjp(u[:, 0])  # builds the pullback (one forward pass per Jacobian), held from here on
    meter.stage("vjp_column", lambda: meter.elapsed(lambda: jac.vjp(u)) / k, reps)
    del v, u
    tail = math.ceil(_TAIL_PER_RANK * rank)
    subspaces = []

    def build() -> float:
        subspaces.clear()  # free the previous one before building the next
        return meter.elapsed(lambda: subspaces.append(SubspaceCovariance.build(
            jac, ray_trafo, model.prior, rank, tail_probes=tail, batch_size=k,
            generator=gen))) / rank

    meter.stage("subspace_column", build, reps)
    subspace = subspaces[0]

    def evidence_run(steps: int) -> None:
        with warnings.catch_warnings():  # a few steps never "converge"
            warnings.simplefilter("ignore", RuntimeWarning)
            optimize_evidence(model, EvidenceConfig(mode="lowrank", steps=steps, progress=False),
                              structured=subspace)

    meter.stage("evidence_step", lambda: meter.difference(evidence_run, _EVIDENCE_STEPS), reps)
    spectrum = subspace.spectrum(model.prior, float(model.noise_variance.detach()))

    def sample() -> float:
        with _CallTimer(model.image_cov, "matmul", meter) as products:
            total = meter.elapsed(lambda: subspace_predictive(
                model, spectrum, k, mean="dip", image_noise=0.0, batch_size=k, generator=gen))
        if products.calls == 0:
            raise RuntimeError("subspace_predictive no longer forms G through "
                               "model.image_cov.matmul; update bench_scale's posterior_sample")
        return (total - products.seconds) / k

    meter.stage("posterior_sample", sample, reps)
    if not meter.per_stage:
        log("[bench_scale] the peak resident set could not be reset: GiB are peaks so far")
    return meter.results


def scaling_exponents(pixels: list[int], rows: list[dict[str, StageResult]]) -> dict[str, float]:
    """Per stage, the slope ``p`` of ``log seconds ≈ p log pixels + c`` (least squares); NaN
    where a time is not positive (a stage timed as a difference of two runs that came out
    below the clock's noise)."""
    if len(pixels) < 2:
        raise ValueError("sizes: the scaling exponent needs at least two sizes")
    x = np.log(np.asarray(pixels, dtype=np.float64))
    out = {}
    for stage in STAGES:
        seconds = np.asarray([row[stage].seconds for row in rows])
        out[stage] = float(np.polyfit(x, np.log(seconds), 1)[0]) if (seconds > 0).all() \
            else float("nan")
    return out


@dataclass
class BenchTable:
    """Stage results per problem (``names[i]``: ``rows[i]``) and the scaling exponent per stage
    over the default problem's sizes (``None`` with fewer than two sizes)."""

    names: list[str]
    rows: list[dict[str, StageResult]]
    exponents: dict[str, float] | None
    device: torch.device
    clock: str

    def markdown(self) -> str:
        """One row per problem with ``seconds / GiB`` per stage, then the exponents."""
        memory = "CUDA max allocated" if self.device.type == "cuda" else "peak resident set"
        lines = [f"{self.clock} seconds per unit / GiB ({memory}) on {self.device}", "",
                 "| problem | " + " | ".join(f"{s} s / GiB" for s in STAGES) + " |",
                 "|---|" + "---|" * len(STAGES)]
        for name, row in zip(self.names, self.rows):
            cells = [f"{row[s].seconds:.3g} / {row[s].gib:.2f}" for s in STAGES]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if self.exponents is not None:
            lines.append("| exponent p (s ∝ pixels^p) | "
                         + " | ".join(f"{self.exponents[s]:.2f}" for s in STAGES) + " |")
        return "\n".join(lines)


def check_sizes(sizes: list[int]) -> list[int]:
    """``sizes`` ascending without repeats; each an integer >= 16."""
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 16 for s in sizes):
        raise ValueError(f"sizes must be integers >= 16, got {sizes!r}")
    return sorted(set(sizes))


def run_benchmark(sizes: list[int], settings: BenchSettings, device: torch.device,
                  walnut: bool = False, log: Callable[[str], None] = print) -> BenchTable:
    """The default problem at each of ``sizes``, then (``walnut``) the Walnut problem; a 16²
    run first, not reported, takes the one-off costs of first calls (library set-up)."""
    sizes = check_sizes(sizes)
    bench_problem(default_problem(16), replace(settings, reps=1), device, log=lambda _: None)
    names, rows = [], []
    for size in sizes + ([None] if walnut else []):
        problem = walnut_problem() if size is None else default_problem(size)
        start = time.perf_counter()
        rows.append(bench_problem(problem, settings, device, log))
        names.append(problem.name)
        log(f"[bench_scale] {problem.name}: {time.perf_counter() - start:.0f} s")
    exponents = scaling_exponents([s * s for s in sizes], rows[:len(sizes)]) \
        if len(sizes) >= 2 else None
    return BenchTable(names, rows, exponents, device, settings.clock)


def _sizes(text: str) -> list[int]:
    try:
        return check_sizes([int(s) for s in text.split(",") if s.strip()])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers >= 16 separated by commas, got {text!r}") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=_sizes, default=[],
                        help="image sides of the default problem, e.g. 64,128,256,512")
    parser.add_argument("--walnut", action="store_true",
                        help="add the Walnut line to --sizes (it runs alone without --sizes)")
    parser.add_argument("--quick", action="store_true",
                        help="sizes 64,128, 2 repetitions, rank 4 (about a minute)")
    parser.add_argument("--reps", type=int, help="repetitions per stage (3; --quick 2)")
    parser.add_argument("--columns", type=int, help="vmapped columns / samples per call (4)")
    parser.add_argument("--rank", type=int, help="subspace rank (8; --quick 4)")
    parser.add_argument("--clock", choices=sorted(_CLOCKS),
                        help="wall (default) or cpu: this process's CPU seconds, for one "
                             "thread on a shared machine")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int,
                        help="torch/BLAS threads (default: $OMP_NUM_THREADS, else all CPUs)")
    args = parser.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device: {args.device!r} is not a torch device")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device: {args.device!r} requested but torch sees no CUDA GPU "
                     f"(torch {torch.__version__}, CUDA build: {torch.version.cuda})")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device: cpu or cuda, got {args.device!r}")
    if args.quick and args.sizes:
        parser.error("--quick: runs its own sizes; leave out --sizes")
    defaults = BenchSettings(reps=2, rank=4) if args.quick else BenchSettings()
    given = {k: getattr(args, k) for k in ("reps", "columns", "rank", "clock")
             if getattr(args, k) is not None}
    try:
        settings = replace(defaults, **given)
    except ValueError as exc:
        parser.error(str(exc))
    threads = default_threads() if args.threads is None else args.threads
    if settings.clock == "cpu" and (threads != 1 or device.type != "cpu"):
        parser.error(f"--clock: cpu needs --threads 1 on --device cpu, got {threads} thread(s) "
                     f"on {device}")
    try:
        set_threads(threads)
    except ValueError as exc:
        parser.error(str(exc))
    sizes = list(QUICK_SIZES) if args.quick else args.sizes
    walnut = args.walnut or not sizes
    print(f"[bench_scale] {device}, {threads} thread(s), {settings}", flush=True)
    table = run_benchmark(sizes, settings, device, walnut=walnut,
                          log=lambda m: print(m, flush=True))
    print(table.markdown())


if __name__ == "__main__":
    main()
