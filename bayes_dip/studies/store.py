"""Result files of a study: one JSON (metrics) + one NPZ (arrays) per (setting, image, method).

Both are written atomically (temporary file in the same folder, fsync, rename); the JSON is
written last, so its presence marks a finished result. Each JSON carries a fingerprint of
the configuration that produced it; a result is reused only under the same fingerprint.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from bayes_dip.output_folder import atomic_write

__all__ = ["fingerprint", "ResultStore"]


def fingerprint(values: Any) -> str:
    """Short stable hash of JSON-serialisable ``values`` (keys sorted)."""
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ResultStore:
    """``root/results/<setting>/<image>/<method>.{json,npz}``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def paths(self, setting: str, image: str, method: str) -> tuple[Path, Path]:
        folder = self.root / "results" / setting / image
        return folder / f"{method}.json", folder / f"{method}.npz"

    def load(self, setting: str, image: str, method: str, expected_fingerprint: str,
             ) -> dict[str, Any] | None:
        """The saved record, ``None`` if absent; ValueError if it came from another config."""
        json_path, npz_path = self.paths(setting, image, method)
        if not json_path.is_file():
            return None
        try:
            record = json.loads(json_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"out_dir: result file {json_path} is not valid JSON ({exc})") from exc
        if record.get("fingerprint") != expected_fingerprint:
            raise ValueError(
                f"out_dir: {json_path} was computed with a different configuration for "
                f"method {method!r}; use a new out_dir or delete that result to recompute it")
        if not npz_path.is_file():
            raise ValueError(f"out_dir: {json_path} has no arrays file {npz_path.name}")
        return record

    def arrays(self, setting: str, image: str, method: str) -> dict[str, np.ndarray]:
        _, npz_path = self.paths(setting, image, method)
        with np.load(npz_path) as data:
            return {k: data[k] for k in data.files}

    def save(self, setting: str, image: str, method: str, record: dict[str, Any],
             arrays: dict[str, np.ndarray]) -> None:
        """Arrays first, then the JSON record (the "finished" marker)."""
        json_path, npz_path = self.paths(setting, image, method)
        atomic_write(npz_path, lambda f: np.savez_compressed(f, **arrays))
        text = json.dumps(record, indent=2, sort_keys=True, default=_plain)
        atomic_write(json_path, lambda f: f.write(text.encode()))


def _plain(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a result JSON")
