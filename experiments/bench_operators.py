"""Benchmark of the CT operators: milliseconds per ``A`` / ``A_adjoint`` call per backend.

Cases: 128² with 200 angles and 512² with 60 angles (parallel beam, default detector), batch 1
and 16, float32 (plus float64 for the matrix backend); median over repeats after a warm-up,
``torch.set_num_threads(--threads)``. Also reports the time to build the sparse matrix.

    python experiments/bench_operators.py            # full table (minutes; run on a quiet machine)
    python experiments/bench_operators.py --quick    # tiny sizes, checks that everything runs
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from bayes_dip.ct import BACKENDS, ParallelBeamGeometry, RayTransform

FULL_CASES = ((128, 200), (512, 60))
QUICK_CASES = ((32, 20),)


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def operator_rows(size: int, num_angles: int, backends: list[str], batches: list[int],
                  repeats: int, device: torch.device) -> list[dict]:
    """One row per (backend, dtype, batch): ms per A and A_adjoint call, plus build time."""
    geometry = ParallelBeamGeometry((size, size), num_angles=num_angles)
    case = f"{size}²/{num_angles} angles"
    rows = []
    for backend in backends:
        start = time.perf_counter()
        rt = RayTransform(geometry, backend)
        build_s = time.perf_counter() - start
        dtypes = (torch.float32, torch.float64) if backend == "matrix" else (torch.float32,)
        for dtype in dtypes:
            gen = torch.Generator().manual_seed(0)
            x1 = torch.rand(1, 1, size, size, generator=gen, dtype=dtype).to(device)
            start = time.perf_counter()
            rt.A(x1), rt.A_adjoint(rt.A(x1))  # first calls convert/cache the CSR per dtype
            first_s = time.perf_counter() - start
            for batch in batches:
                x = torch.rand(batch, 1, size, size, generator=gen, dtype=dtype).to(device)
                y = rt.A(x)
                sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
                rows.append(dict(
                    case=case, backend=backend, dtype=str(dtype).removeprefix("torch."), batch=batch,
                    a_ms=median_ms(lambda: (rt.A(x), sync()), repeats),
                    at_ms=median_ms(lambda: (rt.A_adjoint(y), sync()), repeats),
                    build_s=build_s + first_s))
        if backend == "matrix":
            nnz = rt.matrix()._nnz()
            print(f"  {case}: matrix build {build_s:.2f} s, {nnz / 1e6:.1f} M non-zeros")
    return rows


def dip_benchmark_rows(args: argparse.Namespace) -> list[dict]:
    """DIP iterations per second (Adam step on ``‖A f(θ) − y‖² + γ TV``, matrix backend).

    28² with the KMNIST U-Net (the paper's network) and 128² with the ``"128"`` preset,
    both at the paper's batch size 1, float32; timed over ``iterations`` steps after a warm-up.
    """
    from bayes_dip.dip import DIPConfig, reconstruct_dip

    device = torch.device(args.device)
    cases = ((28, 20, "kmnist"),) if args.quick else ((28, 20, "kmnist"), (128, 30, "128"))
    iterations = 20 if args.quick else 200
    rows = []
    for size, num_angles, unet in cases:
        rt = RayTransform(ParallelBeamGeometry((size, size), num_angles=num_angles), "matrix")
        x = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(0)).to(device)
        y = rt.A(x)
        for n in (5, iterations):  # the first run warms up caches and allocator
            config = DIPConfig(iterations=n, lr=1e-4, gamma=1e-4, unet=unet, log_every=n,
                               checkpoint_every=n)
            result = reconstruct_dip(rt, y, net_input=x, config=config, progress=False)
        rows.append(dict(case=f"{size}²/{num_angles} angles, U-Net {unet!r}", backend="matrix",
                         dtype="float32", batch=1, it_per_s=iterations / result.seconds))
    return rows


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """``columns``: (key, header, format spec)."""
    widths = [max(len(h), *(len(format(r[k], f)) for r in rows)) for k, h, f in columns]
    print("  ".join(h.rjust(w) for (_, h, _), w in zip(columns, widths)))
    for r in rows:
        print("  ".join(format(r[k], f).rjust(w) for (k, _, f), w in zip(columns, widths)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 3 repeats (smoke run)")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per entry (default 10)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="torch device for the inputs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = QUICK_CASES if args.quick else FULL_CASES
    batches = [1, 2] if args.quick else [1, 16]
    repeats = args.repeats or (3 if args.quick else 10)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {args.threads} threads, device {device}, median of {repeats}")
    rows = [r for size, n in cases
            for r in operator_rows(size, n, args.backends, batches, repeats, device)]
    print_table(rows, [("case", "case", "s"), ("backend", "backend", "s"), ("dtype", "dtype", "s"),
                       ("batch", "batch", "d"), ("a_ms", "A [ms]", ".2f"),
                       ("at_ms", "A_adjoint [ms]", ".2f"), ("build_s", "setup [s]", ".2f")])
    dip_rows = dip_benchmark_rows(args)
    if dip_rows:
        print()
        print_table(dip_rows, [("case", "case", "s"), ("backend", "backend", "s"),
                               ("dtype", "dtype", "s"), ("batch", "batch", "d"),
                               ("it_per_s", "DIP it/s", ".1f")])


if __name__ == "__main__":
    main()
