"""Study bookkeeping: the log-likelihood variant chosen per prediction, result files, tables."""
from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
import torch

from bayes_dip.metrics import log_likelihood_diagonal, log_likelihood_full
from bayes_dip.metrics import Prediction
from bayes_dip.studies import MetricsOptions
from bayes_dip.studies.evaluate import evaluate_prediction
from bayes_dip.studies.store import ResultStore, fingerprint
from bayes_dip.studies.table import aggregate, per_image_csv, table_csv, table_markdown


def _gaussian(h=6, w=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = h * w
    root = torch.randn(n, n, generator=g, dtype=torch.float64) / n
    cov = root @ root.T + 0.01 * torch.eye(n, dtype=torch.float64)
    mean = torch.rand(1, 1, h, w, generator=g, dtype=torch.float64)
    gt = mean + (torch.linalg.cholesky(cov) @ torch.randn(n, 1, generator=g,
                                                          dtype=torch.float64)).reshape(1, 1, h, w)
    return mean, cov, gt, g


def test_full_covariance_is_preferred_and_exact():
    mean, cov, gt, _ = _gaussian()
    std = cov.diagonal().sqrt().reshape(mean.shape)
    pred = Prediction(mean=mean, std=std, covariance=cov)
    ll, kind, _ = pred.log_likelihood(gt)
    assert kind == "full"
    assert ll == pytest.approx(log_likelihood_full(mean, cov, gt).per_pixel, rel=1e-12)
    # closed form of the multivariate normal density
    r = (gt - mean).reshape(-1)
    expected = -0.5 * (36 * math.log(2 * math.pi) + torch.logdet(cov)
                       + r @ torch.linalg.solve(cov, r)) / 36
    assert ll == pytest.approx(float(expected), rel=1e-10)


def test_independent_pixels_use_the_diagonal_as_full():
    mean, _, gt, _ = _gaussian()
    std = torch.full_like(mean, 0.3)
    pred = Prediction(mean=mean, std=std, independent_pixels=True)
    ll, kind, _ = pred.log_likelihood(gt)
    assert kind == "full"
    full = log_likelihood_full(mean, 0.09 * torch.eye(36, dtype=torch.float64), gt).per_pixel
    assert ll == pytest.approx(full, rel=1e-10)


def test_samples_give_full_sample_covariance_only_with_many_samples():
    mean, cov, gt, g = _gaussian(4, 4)
    n = 16
    chol = torch.linalg.cholesky(cov)
    samples = (mean.reshape(-1, 1) + chol @ torch.randn(n, 4000, generator=g, dtype=torch.float64))
    samples = samples.T.reshape(-1, 1, 4, 4)
    std = samples.std(0, keepdim=True)
    many = Prediction(mean=mean, std=std, samples=samples)
    ll, kind, _ = many.log_likelihood(gt, patch_size=2)
    assert kind == "full (sample covariance)"
    assert ll == pytest.approx(log_likelihood_full(mean, cov, gt).per_pixel, abs=0.05)
    few = Prediction(mean=mean, std=std, samples=samples[:100])
    _, kind, _ = few.log_likelihood(gt, patch_size=2)
    assert kind == "patchwise-2"


def test_gallery_samples_from_covariance_have_its_statistics():
    mean, cov, _, _ = _gaussian(3, 3)
    pred = Prediction(mean=mean, std=cov.diagonal().sqrt().reshape(mean.shape), covariance=cov)
    draws = pred.sample(20000, seed=1).reshape(20000, 9)
    assert torch.allclose(torch.cov(draws.T), cov, atol=0.05 * float(cov.diagonal().max()))
    assert pred.sample(0, seed=1) is None
    assert Prediction(mean=mean, std=torch.ones_like(mean)).sample(4, seed=1) is None


def test_evaluate_record_and_curves():
    mean, cov, gt, _ = _gaussian(8, 8)
    std = cov.diagonal().sqrt().reshape(mean.shape)
    record, arrays = evaluate_prediction(Prediction(mean=mean, std=std), gt, MetricsOptions())
    assert record["ll_kind"] == "diagonal"
    assert record["test_ll"] == pytest.approx(log_likelihood_diagonal(mean, std, gt))
    assert 0 <= record["coverage_68"] <= 1 and arrays["coverage"].shape == arrays["coverage_levels"].shape
    record, arrays = evaluate_prediction(Prediction(mean=mean, std=std), None, MetricsOptions())
    assert set(record) == {"mean_std"} and arrays == {}


def test_store_round_trip_and_fingerprint_guard(tmp_path):
    store = ResultStore(tmp_path)
    fp = fingerprint({"a": 1})
    assert store.load("s", "i", "m", fp) is None
    store.save("s", "i", "m", {"fingerprint": fp, "x": np.float64(2.5)}, {"mean": np.ones((2, 2))})
    assert store.load("s", "i", "m", fp)["x"] == 2.5
    assert np.array_equal(store.arrays("s", "i", "m")["mean"], np.ones((2, 2)))
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(ValueError, match="different configuration"):
        store.load("s", "i", "m", fingerprint({"a": 2}))


def _records():
    out = []
    for method, values in (("dip", [1.0, 2.0, 4.0]), ("lin", [3.0, 3.5, None])):
        for k, v in enumerate(values):
            out.append(dict(setting="a5", setting_label="5 angles", image=f"i{k}", method=method,
                            method_label=method.upper(), test_ll=v, psnr=20.0 + k,
                            ll_kind="full", seconds={"dip": 1.0 + k, "total": 2.0}))
    return out


def test_aggregate_mean_and_standard_error():
    rows = aggregate(_records())
    dip, lin = rows
    assert dip["n"] == 3 and dip["test_ll_mean"] == pytest.approx(7 / 3)
    assert dip["test_ll_se"] == pytest.approx(np.std([1, 2, 4], ddof=1) / math.sqrt(3))
    assert lin["test_ll_mean"] == pytest.approx(3.25)  # missing value skipped
    assert dip["seconds_dip"] == pytest.approx(2.0)
    assert math.isnan(dip["coverage_ece_mean"])


def test_markdown_and_csv_tables():
    records = _records()
    rows = aggregate(records)
    text = table_markdown(rows, "T")
    assert "| 5 angles | DIP | 3 | 2.333 ± 0.882 |" in text
    assert "| setting | DIP | LIN |" in text
    parsed = list(csv.DictReader(io.StringIO(table_csv(rows))))
    assert [r["method"] for r in parsed] == ["dip", "lin"]
    assert float(parsed[0]["test_ll_mean"]) == pytest.approx(7 / 3)
    lines = list(csv.DictReader(io.StringIO(per_image_csv(records))))
    assert len(lines) == 6 and lines[1]["seconds_dip"] == "2.0"


def test_prediction_coverage_and_variance():
    """Pixels at known z-scores: |z| = 0.5 inside both intervals, 1.5 only in the 95 % one,
    2.5 in neither."""
    mean = torch.zeros(1, 1, 2, 3, dtype=torch.float64)
    std = torch.full_like(mean, 2.0)
    z = torch.tensor([0.5, -0.5, 1.5, -1.5, 2.5, 0.0], dtype=torch.float64).reshape(1, 1, 2, 3)
    pred = Prediction(mean=mean, std=std)
    assert pred.coverage(mean + z * std) == {"0.68": pytest.approx(3 / 6),
                                             "0.95": pytest.approx(5 / 6)}
    assert torch.equal(pred.variance, std.square())
