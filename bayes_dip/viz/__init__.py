"""Matplotlib figures for reconstructions with uncertainty and calibration diagnostics.

Figures are built with ``matplotlib.figure.Figure`` (Agg canvas; pyplot is never
imported, so no GUI backend is touched). Every function returns the Figure and, given
``save_path``, writes it as PNG and PDF (:func:`save_figure`). Methods are compared
with colour ranges shared across them unless ranges are passed explicitly.
"""
from bayes_dip.viz._figure import save_figure
from bayes_dip.viz.curves import plot_reliability_diagram, plot_sparsification
from bayes_dip.viz.histograms import plot_error_vs_std, plot_z_scores
from bayes_dip.viz.panels import plot_sample_gallery, plot_uncertainty_panels

__all__ = ["save_figure", "plot_uncertainty_panels", "plot_sample_gallery",
           "plot_reliability_diagram", "plot_sparsification", "plot_error_vs_std",
           "plot_z_scores"]
