"""Where data lives: an explicit path, else the ``BAYES_DIP_DATA`` environment variable.

Nothing is downloaded at run time; ``data_scripts/`` fetches the files once (see its README).
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_ENV_VAR", "data_root", "require_file"]

DATA_ENV_VAR = "BAYES_DIP_DATA"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root folder: ``root`` if given, else ``$BAYES_DIP_DATA``.

    Raises:
        FileNotFoundError: neither is set, or the folder does not exist (names the folder).
    """
    if root is None:
        env = os.environ.get(DATA_ENV_VAR)
        if not env:
            raise FileNotFoundError(
                f"no data folder given: pass root=... or set {DATA_ENV_VAR} to the folder that "
                "holds kmnist/ and htc2022/ (python data_scripts/download_kmnist.py fetches KMNIST)")
        path, source = Path(env), f"${DATA_ENV_VAR}"
    else:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root must be a path (str or os.PathLike) or None, got {type(root).__name__}")
        path, source = Path(root), "root"
    path = path.expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"data folder {str(path)!r} ({source}) does not exist or is not a folder")
    return path


def require_file(path: str | os.PathLike, what: str) -> Path:
    """``Path(path)`` if it is an existing file, else FileNotFoundError naming ``what`` and the path."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} must be a path (str or os.PathLike), got {type(path).__name__}")
    p = Path(path).expanduser()
    if not p.is_file():
        kind = "is a folder, not a file" if p.is_dir() else "not found"
        raise FileNotFoundError(f"{what} {str(p)!r}: {kind}")
    return p
