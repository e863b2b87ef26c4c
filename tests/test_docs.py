"""The docs build: ``sphinx-build -W`` of ``docs/`` with the gallery, every example executed."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("sphinx", reason="the docs extra is not installed: pip install -e '.[docs]'")
pytest.importorskip("sphinx_gallery",
                    reason="the docs extra is not installed: pip install -e '.[docs]'")


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
    # a copy, so the gallery's generated files stay out of the checkout
    ignore = shutil.ignore_patterns("_build", "auto_examples", "sg_execution_times.rst",
                                    "__pycache__")
    shutil.copytree(REPO / "docs", tmp_path / "docs", ignore=ignore)
    shutil.copytree(REPO / "examples", tmp_path / "examples", ignore=ignore)
    env = dict(os.environ, MPLBACKEND="Agg")
    shared = REPO.parent / "shared" / "data"
    if "BAYES_DIP_DATA" not in env and shared.is_dir():
        env["BAYES_DIP_DATA"] = str(shared)
    build = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         str(tmp_path / "docs"), str(tmp_path / "html")],
        cwd=tmp_path / "docs", env=env, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-5000:]
    html = tmp_path / "html"
    for name in ("reconstruct_with_error_bars", "calibration_study", "laplace_classifier",
                 "htc2022_real_scan"):
        page = html / "auto_examples" / f"plot_{name}.html"
        assert page.is_file(), name
        # each example shows a figure; without its data the HTC2022 one shows why instead
        figures = list((html / "_images").glob(f"sphx_glr_plot_{name}_0*.png"))
        assert figures or (name == "htc2022_real_scan"
                           and "FileNotFoundError:" in page.read_text()), name
