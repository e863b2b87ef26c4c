"""Shared fixtures: the data folder (``BAYES_DIP_DATA`` or ``../shared/data`` beside the repo)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def _data_root() -> Path:
    env = os.environ.get("BAYES_DIP_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Root of the read-only data folder; tests needing it fail loudly if it is missing."""
    root = _data_root()
    if not root.is_dir():
        pytest.fail(f"data folder {root} not found: set BAYES_DIP_DATA or place shared/ beside the repo")
    return root


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(2)
    yield
