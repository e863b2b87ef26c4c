"""Figures: files written as PNG + PDF, the expected panels and colour bars, shared ranges."""
import numpy as np
import pytest
import torch

from bayes_dip.metrics import coverage_curve, sparsification_curve, z_scores
from bayes_dip.viz import (
    plot_error_vs_std,
    plot_reliability_diagram,
    plot_sample_gallery,
    plot_sparsification,
    plot_uncertainty_panels,
    plot_z_scores,
    save_figure,
)


@pytest.fixture
def case():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 1, (16, 16))
    std_a = rng.uniform(0.05, 0.2, (16, 16))
    std_b = 0.5 * std_a
    recon = gt + std_a * rng.standard_normal(gt.shape)
    return gt, {"lin-DIP": (recon, std_a), "MCDO": (torch.from_numpy(recon)[None, None], std_b)}


def _as_2d(preds, gt):
    return {k: (np.asarray(r).reshape(gt.shape), np.asarray(s)) for k, (r, s) in preds.items()}


def _assert_saved(stem):
    png, pdf = stem.with_suffix(".png"), stem.with_suffix(".pdf")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert pdf.read_bytes()[:4] == b"%PDF"


def test_uncertainty_panels_layout_and_shared_ranges(case, tmp_path):
    gt, preds = case
    fig = plot_uncertainty_panels(preds, gt, fbp=gt, save_path=tmp_path / "panels")
    # reference row: 2 images + 2 colour bars; 2 methods x 3 columns, each with a colour bar
    assert len(fig.axes) == 2 * (2 + 2 * 3)
    _assert_saved(tmp_path / "panels")
    images = [ax.images[0] for ax in fig.axes if ax.images]
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    clims = dict(zip(titles, (im.get_clim() for im in images)))
    std_max = max(float(preds["lin-DIP"][1].max()), float(preds["MCDO"][1].max()))
    assert clims["lin-DIP: std"] == clims["MCDO: std"] == pytest.approx((0.0, std_max))
    assert clims["lin-DIP: reconstruction"] == clims["ground truth"] == (gt.min(), gt.max())
    assert clims["lin-DIP: |error|"] == clims["MCDO: |error|"]
    labels = {ax.get_ylabel() for ax in fig.axes if not ax.images}
    assert {"attenuation [a.u.]", "std [a.u.]", "|error| [a.u.]"} <= labels


def test_uncertainty_panels_without_ground_truth_and_explicit_ranges(case):
    gt, preds = case
    fig = plot_uncertainty_panels(preds, std_range=(0.0, 1.0), image_range=(-1.0, 2.0))
    assert len(fig.axes) == 2 * 2 * 2
    clims = {ax.get_title(): ax.images[0].get_clim() for ax in fig.axes if ax.images}
    assert clims["MCDO: std"] == (0.0, 1.0)
    assert clims["MCDO: reconstruction"] == (-1.0, 2.0)


def test_uncertainty_panels_methods_without_std(case):
    gt, preds = case
    recon = preds["lin-DIP"][0]
    # no method has a std: reconstruction | |error| only
    fig = plot_uncertainty_panels({"DIP": (recon, None)}, gt, fbp=gt)
    titles = sorted(ax.get_title() for ax in fig.axes if ax.images)
    assert titles == ["DIP: reconstruction", "DIP: |error|", "FBP", "ground truth"]
    # mixed: the std panel of the method without one stays empty
    fig = plot_uncertainty_panels({"DIP": (recon, None), "lin-DIP": preds["lin-DIP"]}, gt)
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert "lin-DIP: std" in titles and "DIP: std" not in titles and len(titles) == 6


def test_curves(case, tmp_path):
    gt, preds = case
    preds = _as_2d(preds, gt)
    coverage = {k: coverage_curve(r, s, gt) for k, (r, s) in preds.items()}
    fig = plot_reliability_diagram(coverage, save_path=tmp_path / "rel.png")
    assert len(fig.axes) == 2
    _assert_saved(tmp_path / "rel")
    assert len(plot_reliability_diagram(coverage, show_gap=False).axes) == 1
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[1].startswith("lin-DIP (ECE ")
    spars = {k: sparsification_curve(r, s, gt) for k, (r, s) in preds.items()}
    fig = plot_sparsification(spars, save_path=tmp_path / "sp")
    assert len(fig.axes) == 1
    assert len(fig.axes[0].lines) == 2 * 2 + 1  # curve + oracle per method, oracle legend key
    _assert_saved(tmp_path / "sp")


def test_histograms(case, tmp_path):
    gt, preds = case
    preds = _as_2d(preds, gt)
    fig = plot_error_vs_std(preds, gt, n_bins=10, save_path=tmp_path / "evs")
    assert len(fig.axes) == 2 + 1
    assert fig.axes[0].get_xlim() == fig.axes[1].get_xlim()
    _assert_saved(tmp_path / "evs")
    fig = plot_z_scores({k: z_scores(r, s, gt) for k, (r, s) in preds.items()},
                        save_path=tmp_path / "z")
    assert len(fig.axes) == 2
    _assert_saved(tmp_path / "z")


def test_sample_gallery(tmp_path):
    samples = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    fig = plot_sample_gallery(samples, n_samples=4, n_cols=3, save_path=tmp_path / "gal")
    assert len(fig.axes) == 4 + 1
    assert {ax.images[0].get_clim() for ax in fig.axes if ax.images} == \
        {(float(samples[:4].min()), float(samples[:4].max()))}
    _assert_saved(tmp_path / "gal")


def test_save_figure_formats(case, tmp_path):
    gt, preds = case
    fig = plot_uncertainty_panels(preds, gt)
    written = save_figure(fig, tmp_path / "sub" / "fig.pdf", formats=("png",))
    assert written == [tmp_path / "sub" / "fig.png"] and written[0].stat().st_size > 0
    with pytest.raises(ValueError, match="formats"):
        save_figure(fig, tmp_path / "x", formats=())


def test_validation(case):
    gt, preds = case
    with pytest.raises(ValueError, match="predictions"):
        plot_uncertainty_panels({}, gt)
    with pytest.raises(ValueError, match="std_range"):
        plot_uncertainty_panels(preds, gt, std_range=(1.0, 0.0))
    with pytest.raises(ValueError, match="shape"):
        plot_uncertainty_panels(preds, gt[:8])
    with pytest.raises(ValueError, match="samples"):
        plot_sample_gallery(np.zeros((2, 2, 4, 4)))
    with pytest.raises(TypeError, match="CoverageCurve"):
        plot_reliability_diagram({"a": (np.ones(2), np.ones(2))})
