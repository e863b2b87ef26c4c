"""Direction-resolved uncertainty measures against images with known Fourier content."""
from __future__ import annotations

import numpy as np
import pytest

from bayes_dip.ct import ParallelBeamGeometry, RayTransform
from bayes_dip.studies.directional import (DirectionSpectrum, direction_spectrum,
                                           edge_std_by_visibility, measured_directions,
                                           sector_ratio, sensitivity_spectrum)


@pytest.mark.parametrize("ky, kx", [(0, 5), (5, 0), (4, 4), (-4, 4)])
def test_plane_wave_power_sits_in_its_direction(ky, kx):
    y, x = np.mgrid[:32, :32]
    wave = np.cos(2 * np.pi * (ky * y + kx * x) / 32)
    spec = direction_spectrum(wave, n_bins=8)
    expected = int(np.mod(np.arctan2(ky, kx), np.pi) / np.pi * 8) % 8
    assert np.argmax(spec.power) == expected
    assert np.count_nonzero(spec.power > 1e-12) == 1


def test_white_noise_is_isotropic():
    noise = np.random.default_rng(0).standard_normal((64, 48, 48))
    spec = direction_spectrum(noise, n_bins=12)
    # E|FFT|² = H·W for unit white noise in every direction
    assert np.allclose(spec.power / (48 * 48), 1.0, atol=0.05)


def test_limited_angle_scan_measures_a_sector_of_its_angular_range():
    full = RayTransform(ParallelBeamGeometry((32, 32), num_angles=60))
    limited = RayTransform(ParallelBeamGeometry((32, 32), angles=np.linspace(0, np.pi / 3, 20,
                                                                              endpoint=False)))
    with pytest.raises(ValueError, match="every direction is measured"):
        measured_directions(sensitivity_spectrum(full, n_bins=18, r_min=3))
    mask = measured_directions(sensitivity_spectrum(limited, n_bins=18, r_min=3))
    # the measured directions form one contiguous sector (modulo π) of about 60° (+ leakage)
    assert 4 <= mask.sum() <= 8
    assert np.count_nonzero(mask != np.roll(mask, 1)) == 2


def test_sector_ratio_is_unmeasured_over_measured_power():
    spec = DirectionSpectrum(np.arange(4.0), np.array([1.0, 3.0, 8.0, 4.0]))
    assert sector_ratio(spec, np.array([True, True, False, False])) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="both classes"):
        sector_ratio(spec, np.ones(4, dtype=bool))


def test_edge_std_splits_a_disc_by_normal_direction():
    n = 128
    y, x = np.mgrid[:n, :n] - (n - 1) / 2
    disc = (np.hypot(y, x) < 40).astype(float)
    polar = np.arctan2(y, x)  # the edge normal of a centred disc is the polar angle
    values = 1.0 + 2.0 * np.abs(np.sin(polar))
    bins = 12
    centres = (np.arange(bins) + 0.5) * np.pi / bins
    measured = np.abs(np.cos(centres)) > np.cos(np.pi / 6)  # normals within 30° of the x axis
    result = edge_std_by_visibility(values, disc, measured)
    # means of 1 + 2|sin ψ| over |ψ| < 30° and over 30° < ψ < 150°
    inside = 1 + 2 * (1 - np.cos(np.pi / 6)) / (np.pi / 6)
    outside = 1 + 2 * (2 * np.cos(np.pi / 6)) / (2 * np.pi / 3)
    assert result.measured_mean == pytest.approx(inside, rel=0.1)
    assert result.unmeasured_mean == pytest.approx(outside, rel=0.05)
    assert result.ratio == pytest.approx(outside / inside, rel=0.12)
    assert result.measured_count > 0 and result.unmeasured_count > result.measured_count
