"""Phantoms: Shepp-Logan matches scikit-image, random phantoms are seeded and in [0, 1]."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.data import shepp_logan_phantom

from bayes_dip.data import random_ellipses, rectangles, shepp_logan


def test_shepp_logan_native_size_is_skimage_phantom():
    np.testing.assert_allclose(shepp_logan(400)[0, 0].numpy(), shepp_logan_phantom(), atol=1e-7)
    x = shepp_logan(128)
    assert x.shape == (1, 1, 128, 128) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert abs(float(x.mean()) - shepp_logan_phantom().mean()) < 1e-3  # resizing keeps the mean


@pytest.mark.parametrize("make", [random_ellipses, rectangles])
def test_random_phantoms_seeded_and_unit_range(make):
    a, b, c = make(64, 4, seed=1), make(64, 4, seed=1), make(64, 4, seed=2)
    assert a.shape == (1, 1, 64, 64) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) == 0.0 and float(a.max()) == 1.0
    with pytest.raises(ValueError, match="num"):
        make(64, 0, seed=1)
    with pytest.raises(ValueError, match="seed"):
        make(64, 2, seed=-1)


def test_ellipses_stay_inside_inscribed_disc():
    x = random_ellipses(64, 20, seed=3)[0, 0].numpy()
    c = (np.arange(64) + 0.5) / 32 - 1
    outside = c[None, :] ** 2 + c[:, None] ** 2 > 1.0
    assert x[outside].max() == 0.0 and x.max() == 1.0
