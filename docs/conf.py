"""Sphinx configuration for bayes_dip (build: ``pip install -e .[docs] && sphinx-build docs docs/_build``)."""
import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "bayes_dip"
author = "bayes_dip developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax",
              "sphinx.ext.viewcode"]
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
autodoc_typehints = "description"
napoleon_google_docstring = True
html_theme = "alabaster"
exclude_patterns = ["_build"]
# "Attributes:" sections as :ivar: fields: a separate attribute directive would describe each
# dataclass field a second time (duplicate object descriptions)
napoleon_use_ivar = True
