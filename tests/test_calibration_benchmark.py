"""``experiments/calibration_benchmark.py``: its case list reads every development file, and
its "68 % if 95 % held" column is the 68 % coverage of the std map rescaled to hold 95 %."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from repo_scripts import load_script


@pytest.fixture
def bench():
    return load_script("experiments/calibration_benchmark.py")


def test_cases_name_existing_development_files(bench, data_root):
    cases = bench._cases(data_root)
    assert len(cases) == 24 and "CT_small@128" in cases
    for name, given in cases.items():
        for key in ("image", "htc2022"):
            if key in given:
                assert Path(given[key]).is_file(), (name, given[key])


def _folder(tmp_path: Path, truth, mean, std) -> Path:
    for name, array in (("ground_truth", truth), ("reconstruction", mean), ("std", std)):
        np.save(tmp_path / f"{name}.npy", np.asarray(array, dtype=np.float32))
    return tmp_path


def test_68_at_95_is_the_gaussian_value_for_gaussian_errors_at_any_scale(bench, tmp_path):
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.5, 2.0, size=(1, 1, 400, 400))
    error = sigma * rng.standard_normal(sigma.shape)
    # a std map three times too wide is rescaled first: its 68 % coverage here is ~0.997
    value = bench._coverage_68_at_95(_folder(tmp_path, error, 0 * error, 3 * sigma))
    assert value == pytest.approx(0.6827, abs=0.005)


def test_68_at_95_of_heavy_tailed_errors_is_above_68(bench, tmp_path):
    """Laplace errors (kurtosis 6): rescaled to hold 95 %, the 68 % interval holds ~75 %."""
    rng = np.random.default_rng(1)
    error = rng.laplace(size=(1, 1, 400, 400))
    value = bench._coverage_68_at_95(_folder(tmp_path, error, 0 * error, np.ones_like(error)))
    q95 = -math.log(0.05)  # Laplace(1): P(|e| <= q) = 1 - exp(-q)
    expected = 1 - math.exp(-0.994458 * q95 / 1.959964)
    assert value == pytest.approx(expected, abs=0.005) and value > 0.72


def test_object_coverage_leaves_out_the_air(bench, tmp_path):
    """Half the pixels are air (truth 0) reconstructed exactly; the object's errors are
    Gaussian with twice the std: 68 % / 95 % coverage 0.38 / 0.67 inside, whatever the air."""
    rng = np.random.default_rng(2)
    truth = np.zeros((1, 1, 200, 400))
    truth[..., 200:] = 1.0
    mean = truth + np.where(truth > 0, 2.0 * rng.standard_normal(truth.shape), 0.0)
    folder = _folder(tmp_path, truth, mean, np.ones_like(truth))
    inside68, inside95 = bench._object_coverage(folder)
    assert inside68 == pytest.approx(0.3829, abs=0.01) and inside95 == pytest.approx(0.6716, abs=0.01)
    z = np.abs(mean - truth) / 1.0  # over all pixels the air raises both
    assert np.mean(z <= 0.994458) > inside68 + 0.25


def test_68_at_95_without_ground_truth_is_nan(bench, tmp_path):
    np.save(tmp_path / "std.npy", np.ones((4, 4), dtype=np.float32))
    assert math.isnan(bench._coverage_68_at_95(tmp_path))
    assert all(math.isnan(v) for v in bench._object_coverage(tmp_path))
