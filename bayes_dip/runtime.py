"""Process-wide settings of a ``bayes-dip`` run: threads and interrupt signals.

Threads: torch starts one intra-op thread per core and the BLAS underneath numpy/scipy its
own pool; two jobs side by side on two cores then spin-wait against each other and each runs
many times slower (DESIGN.md §8). :func:`set_threads` caps all of them; call it before work.

Interrupts: inside :func:`deferred_interrupts` a first SIGINT (Ctrl-C) or SIGTERM only sets a
flag, so that a checkpointing loop finishes its step, saves a consistent checkpoint and raises
``KeyboardInterrupt`` itself; a second signal raises at once. :func:`terminate_as_interrupt`
makes SIGTERM raise ``KeyboardInterrupt`` everywhere else.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from dataclasses import dataclass
from typing import Iterator

from bayes_dip.checks import check_int

__all__ = ["THREAD_ENV_VARS", "available_cpus", "default_threads", "set_threads",
           "InterruptFlag", "deferred_interrupts", "terminate_as_interrupt", "last_signal"]

#: variables read by OpenMP and the BLAS libraries when they load (set for later loads and
#: for child processes)
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                   "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask; all CPUs where there is none)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_threads() -> int:
    """The default of ``--threads``: ``$OMP_NUM_THREADS`` when set to a positive integer,
    else :func:`available_cpus`."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return available_cpus()


def set_threads(threads: int | None = None) -> int:
    """Use ``threads`` threads (``None``: :func:`default_threads`) in torch and the BLAS/OpenMP
    pools of this process and its children; returns the number set."""
    if threads is None:
        threads = default_threads()
    check_int(threads, "--threads", 1)
    for name in THREAD_ENV_VARS:
        os.environ[name] = str(threads)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)  # pools already loaded (OpenBLAS of numpy, torch's OpenMP)
    return threads


_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_last_signal: int | None = None


def last_signal() -> int | None:
    """The last SIGINT/SIGTERM turned into ``KeyboardInterrupt`` here (``None``: none)."""
    return _last_signal


def _raise_interrupt(signum: int, frame) -> None:
    global _last_signal
    _last_signal = signum
    raise KeyboardInterrupt


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises ``KeyboardInterrupt`` like SIGINT (main thread only),
    so that a terminated run cleans up and reports what it saved."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class InterruptFlag:
    """Set by a signal inside :func:`deferred_interrupts`; ``signum`` is the signal."""

    signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None


@contextlib.contextmanager
def deferred_interrupts(enabled: bool = True) -> Iterator[InterruptFlag]:
    """Defer SIGINT/SIGTERM to the caller's next check of the yielded flag (a second signal
    raises ``KeyboardInterrupt`` at once; one the caller did not act on raises at the block's
    end). Not deferred when ``enabled`` is false or outside the main thread."""
    flag = InterruptFlag()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame) -> None:
        global _last_signal
        _last_signal = signum
        if flag.requested:
            raise KeyboardInterrupt
        flag.signum = signum

    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    for s in _SIGNALS:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if flag.requested:
        raise KeyboardInterrupt
