"""Atomic checkpoint files of a DIP run."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from bayes_dip.output_folder import atomic_write

__all__ = ["CHECKPOINT_NAME", "save_checkpoint", "load_checkpoint"]

CHECKPOINT_NAME = "dip_checkpoint.pt"


def save_checkpoint(checkpoint_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``checkpoint_dir/dip_checkpoint.pt`` atomically.

    The state goes to a temporary file in the same folder, is flushed to disk and then
    renamed over the old checkpoint, so an interruption leaves either the old or the new
    checkpoint, never a partial one.
    """
    folder = Path(checkpoint_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / CHECKPOINT_NAME
    atomic_write(target, lambda f: torch.save(state, f))
    return target


def load_checkpoint(checkpoint_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The state saved in ``checkpoint_dir``, or ``None`` where there is none (on CPU)."""
    path = Path(checkpoint_dir) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unreadable or foreign file
        raise ValueError(f"checkpoint_dir: cannot read checkpoint {path}: {err}") from err
