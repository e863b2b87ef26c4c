"""Sphinx configuration for bayes_dip (build: ``pip install -e .[docs] && sphinx-build docs docs/_build``).

The gallery (sphinx-gallery) runs every script in ``examples/`` and renders its output and
figures into ``docs/auto_examples/``.
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.abspath(".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # gallery_scraper

project = "bayes_dip"
author = "bayes_dip developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax",
              "sphinx.ext.viewcode", "sphinx_gallery.gen_gallery"]
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
autodoc_typehints = "description"
napoleon_google_docstring = True
html_theme = "alabaster"
exclude_patterns = ["_build"]
# "Attributes:" sections as :ivar: fields: a separate attribute directive would describe each
# dataclass field a second time (duplicate object descriptions)
napoleon_use_ivar = True


# the HTC2022 example reads the real scan from $BAYES_DIP_DATA; without it the example
# fails with a message saying so, which the gallery shows instead of breaking the build
_HTC2022_SCAN = Path(os.environ.get("BAYES_DIP_DATA", "")) / "htc2022" / "htc2022_ta_sparse_example.mat"

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "image_scrapers": ("gallery_scraper.package_figures", "matplotlib"),
    "expected_failing_examples": ([] if os.environ.get("BAYES_DIP_DATA") and _HTC2022_SCAN.is_file()
                                  else ["../examples/plot_htc2022_real_scan.py"]),
    "remove_config_comments": True,
    "download_all_examples": False,
}
