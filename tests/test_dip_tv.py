"""Anisotropic TV: closed form on a small array and its autograd subgradient."""
from __future__ import annotations

import pytest
import torch

from bayes_dip.dip import tv_loss


def test_tv_closed_form():
    x = torch.tensor([[1.0, 3.0, 0.0],
                      [2.0, 2.0, 5.0]], dtype=torch.float64).reshape(1, 1, 2, 3)
    # vertical |2-1| + |2-3| + |5-0| = 7; horizontal |3-1| + |0-3| + |2-2| + |5-2| = 8
    assert tv_loss(x).tolist() == [15.0]
    batch = torch.stack([x[0], 2 * x[0], torch.ones_like(x[0])])
    assert tv_loss(batch).tolist() == [15.0, 30.0, 0.0]


def test_tv_gradient_is_the_sign_subgradient():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    tv_loss(x).sum().backward()
    v = torch.sign(x[..., 1:, :] - x[..., :-1, :]).detach()
    h = torch.sign(x[..., :, 1:] - x[..., :, :-1]).detach()
    expected = torch.zeros_like(x)
    expected[..., 1:, :] += v
    expected[..., :-1, :] -= v
    expected[..., :, 1:] += h
    expected[..., :, :-1] -= h
    assert torch.equal(x.grad, expected)


def test_tv_rejects_non_images():
    with pytest.raises(ValueError, match="x must have shape"):
        tv_loss(torch.zeros(4, 4))
