"""Gallery image scraper for the Figures of ``bayes_dip.viz``.

They are built without pyplot, so sphinx-gallery's matplotlib scraper does not see them;
this one saves those that a code block left in the example's globals, each once. It runs
before the matplotlib scraper, which saves (and closes) the figures that pyplot manages.
"""
from __future__ import annotations

from typing import Any


def package_figures(block: Any, block_vars: dict[str, Any], gallery_conf: dict[str, Any]) -> str:
    """reST for the new ``matplotlib.figure.Figure`` objects among the example's globals."""
    from matplotlib.figure import Figure
    from sphinx_gallery.scrapers import figure_rst

    paths = []
    for value in list(block_vars["example_globals"].values()):
        if not isinstance(value, Figure) or getattr(value, "_gallery_shown", False):
            continue
        value._gallery_shown = True
        if value.canvas.manager is None:  # not a pyplot figure
            path = next(block_vars["image_path_iterator"])
            value.savefig(path, dpi=100)
            paths.append(path)
    return figure_rst(paths, gallery_conf["src_dir"])
