"""experiments/bench_memory.py wraps functions by name: every stage it names must exist."""
from __future__ import annotations

from repo_scripts import load_script


def test_every_stage_names_an_existing_function():
    bench = load_script("experiments/bench_memory.py")
    for owner, name, _ in bench.STAGES:
        assert callable(getattr(bench.resolve(owner), name)), (owner, name)
