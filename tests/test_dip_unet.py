"""U-Net: shapes on odd sizes, the KMNIST preset's prior size, dropout, prior blocks."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bayes_dip.dip import PriorBlock, UNet, unet_preset


def _conv_names(net: nn.Module) -> set[str]:
    return {n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}


@pytest.mark.parametrize("preset,size", [("kmnist", 28), ("kmnist", 27), ("kmnist", 13),
                                         ("128", 128), ("128", 45)])
def test_output_shape_matches_input(preset, size):
    torch.manual_seed(0)
    net = unet_preset(preset)
    out = net(torch.rand(2, 1, size, size + 3))
    assert out.shape == (2, 1, size, size + 3)
    assert out.min() >= 0 and out.max() <= 1  # sigmoid output


def test_kmnist_preset_has_76608_weights_under_the_prior():
    net = unet_preset("kmnist")
    modules = dict(net.named_modules())
    n = sum(modules[m].weight.numel() for b in net.prior_blocks() for m in b.modules)
    # inc 1·32·9; down 2·(2·32·32·9); up 2·(36·32·9 + 32·32·9); skip 2·(32·4); outc 32
    assert n == 288 + 2 * 2 * 9216 + 2 * (10368 + 9216) + 2 * 128 + 32 == 76_608


@pytest.mark.parametrize("preset", ["kmnist", "128", "walnut"])
def test_prior_blocks_cover_exactly_the_convolutions(preset):
    net = unet_preset(preset)
    blocks = net.prior_blocks()
    assert all(isinstance(b, PriorBlock) for b in blocks)
    names = [m for b in blocks for m in b.modules]
    assert len(names) == len(set(names))  # no convolution in two blocks
    assert set(names) == _conv_names(net)
    modules = dict(net.named_modules())
    for b in blocks:
        sizes = {modules[m].kernel_size for m in b.modules}
        assert sizes == ({(3, 3)} if b.kind == "gp" else {(1, 1)}), b


def test_dropout_only_in_train_mode():
    torch.manual_seed(0)
    net = UNet(channels=(8, 8), skip_channels=(0, 2), dropout_p=0.3)
    n_3x3 = sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in net.modules())
    assert sum(isinstance(m, nn.Dropout2d) for m in net.modules()) == n_3x3 == 5
    x = torch.rand(1, 1, 16, 16)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    assert not torch.equal(net(x), net(x))
    assert not any(isinstance(m, nn.Dropout2d) for m in unet_preset("kmnist").modules())


def test_bad_arguments():
    with pytest.raises(ValueError, match="skip_channels"):
        UNet(channels=(8, 8), skip_channels=(0,))
    with pytest.raises(ValueError, match="dropout_p"):
        UNet(dropout_p=1.0)
    with pytest.raises(ValueError, match="name"):
        unet_preset("nope")
