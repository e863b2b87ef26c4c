"""Output folders and checkpoint files that appear complete or not at all."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import torch


@contextlib.contextmanager
def atomic_output_folder(path: str | Path) -> Iterator[Path]:
    """Yield a staging folder that replaces ``path`` only if the block finishes.

    Files are written into a hidden sibling folder; on success it is renamed to ``path``
    (an existing folder there is replaced), on any exception it is removed, so a failed
    run never leaves a half-written output folder behind.
    """
    target = Path(path).resolve()
    if target.exists() and not target.is_dir():
        raise ValueError(f"out must be a folder, but {target} is a file")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        target.rename(trash / target.name)
        staging.rename(target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        staging.rename(target)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file through ``write(binary_file)`` so that ``path`` is replaced whole or not at
    all: a temporary sibling is written, flushed to disk, then renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def parameter_digest(module: torch.nn.Module) -> list[float]:
    """Per parameter tensor, its float64 sum: tells one set of weights or hyperparameters
    from another in a checkpoint key."""
    return [float(p.detach().double().sum()) for p in module.parameters()]


class KeyedCheckpoint:
    """The checkpoint file of one stage of one run, keyed by everything its result depends on.

    :meth:`load` returns the state saved by the same run (``None`` when there is no file) and
    refuses another run's file with one error naming ``checkpoint_path``; :meth:`save` writes
    ``key`` and the state atomically. ``what`` names the stage in the error.
    """

    def __init__(self, path: str | os.PathLike, key: dict[str, Any], what: str):
        self.path, self.key, self.what = Path(path), key, what

    def load(self, map_location: Any = None) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        state = torch.load(self.path, map_location=map_location, weights_only=False)
        if state.get("key") != self.key:
            old = state.get("key") or {}
            changed = sorted(k for k in self.key if old.get(k) != self.key[k])
            raise ValueError(f"checkpoint_path: {self.path} holds the {self.what} of another run "
                             f"(different {', '.join(changed) or 'settings'}); delete it to "
                             "start over")
        return state

    def save(self, **state: Any) -> None:
        atomic_write(self.path, lambda f: torch.save(dict(state, key=self.key), f))
