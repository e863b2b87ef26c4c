"""simulate_measurement: noise level, statistics, per-image seeds, Poisson model, bad input."""
import math

import pytest
import torch

from bayes_dip.ct import ParallelBeamGeometry, RayTransform, simulate_measurement


@pytest.fixture(scope="module")
def setup():
    rt = RayTransform(ParallelBeamGeometry((32, 32), num_angles=60))
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return rt, x


def test_gaussian_std_and_statistics(setup):
    rt, x = setup
    y, std = simulate_measurement(x, rt, noise_level=0.1, seed=3)
    clean = rt.A(x)
    torch.testing.assert_close(std, 0.1 * clean.abs().mean(dim=(1, 2, 3)))
    resid = (y - clean).flatten(1)
    n = resid.shape[1]  # 60 * 47 samples: empirical std within ~5 standard errors
    assert torch.all((resid.std(dim=1) / std - 1).abs() < 5 / math.sqrt(2 * n))
    assert torch.all(resid.mean(dim=1).abs() < 5 * std / math.sqrt(n))
    y0, std0 = simulate_measurement(x, rt, noise_level=0.0)
    torch.testing.assert_close(y0, clean)
    torch.testing.assert_close(std0, torch.zeros(3, dtype=x.dtype))


def test_seeds_per_image(setup):
    rt, x = setup
    y, _ = simulate_measurement(x, rt, seed=10)
    torch.testing.assert_close(simulate_measurement(x, rt, seed=10)[0], y)  # reproducible
    torch.testing.assert_close(simulate_measurement(x[1:2], rt, seed=11)[0], y[1:2])  # seed + b
    torch.testing.assert_close(simulate_measurement(x[2:], rt, seed=[12])[0], y[2:])
    assert not torch.allclose(simulate_measurement(x, rt, seed=11)[0], y)
    y32, std32 = simulate_measurement(x.float(), rt, seed=10)
    assert y32.dtype == torch.float32 and std32.dtype == torch.float32


def test_poisson_post_log(setup):
    rt, x = setup
    mu = 0.05 * x  # attenuation: A mu ~ 0..1.5
    clean = rt.A(mu)
    y, std = simulate_measurement(mu, rt, seed=0, noise="poisson", photons_per_pixel=1e5)
    # delta method: var(-log(N/N0)) ≈ 1 / (N0 exp(-A mu))
    torch.testing.assert_close(std, (torch.exp(clean) / 1e5).mean(dim=(1, 2, 3)).sqrt())
    resid = (y - clean) / (torch.exp(clean) / 1e5).sqrt()
    assert (resid.std() - 1).abs() < 0.05 and resid.mean().abs() < 0.05
    y_low, _ = simulate_measurement(mu * 200, rt, seed=0, noise="poisson", photons_per_pixel=10.0)
    assert torch.isfinite(y_low).all() and y_low.max() <= math.log(10.0 / 0.1) + 1e-9  # clamped counts


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(noise_level=-0.1), ValueError, "noise_level"),
    (dict(noise_level=float("nan")), ValueError, "noise_level"),
    (dict(seed=[1, 2]), ValueError, "seed"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(noise="laplace"), ValueError, "noise"),
    (dict(noise="poisson"), ValueError, "photons_per_pixel"),
    (dict(noise="poisson", photons_per_pixel=0), ValueError, "photons_per_pixel"),
])
def test_bad_arguments(setup, kwargs, exc, match):
    rt, x = setup
    with pytest.raises(exc, match=match):
        simulate_measurement(x, rt, **kwargs)


def test_bad_images(setup):
    rt, x = setup
    with pytest.raises(ValueError, match="x contains NaN"):
        simulate_measurement(torch.full_like(x, float("nan")), rt)
    with pytest.raises(ValueError, match="x must have shape"):
        simulate_measurement(x[:, 0], rt)
    with pytest.raises(TypeError, match="ray_trafo"):
        simulate_measurement(x, None)
