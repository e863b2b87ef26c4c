"""U-Net used as deep image prior (the architecture of the linearised-DIP paper).

Every stage is a block of 3×3 convolutions (``inc``, ``down.i``, ``up.i``); skip
connections pass through 1×1 convolutions (``up.i.skip_conv``) and the output is a
1×1 convolution (``outc``). :meth:`UNet.prior_blocks` names these groups: they are the
blocks of the block-diagonal weight prior of the linearised model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from bayes_dip.checks import check_choice

__all__ = ["UNet", "unet_preset", "PriorBlock"]


@dataclass(frozen=True)
class PriorBlock:
    """A group of convolutions sharing one prior.

    ``kind`` is ``"gp"`` for 3×3 filters (GP prior over the 9 kernel positions) or
    ``"normal"`` for 1×1 convolutions; ``modules`` are dotted module names in the U-Net.
    """

    name: str
    kind: str
    modules: tuple[str, ...]


def _conv_act(in_ch: int, out_ch: int, stride: int, use_norm: bool, num_groups: int,
              dropout_p: float) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1)]
    if use_norm:
        layers.append(nn.GroupNorm(num_groups=num_groups, num_channels=out_ch))
    layers.append(nn.LeakyReLU(0.2))
    if dropout_p > 0:
        layers.append(nn.Dropout2d(dropout_p))
    return layers


class _InBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, use_norm: bool, dropout_p: float):
        super().__init__()
        self.conv = nn.Sequential(*_conv_act(in_ch, out_ch, 1, use_norm, 2, dropout_p))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class _DownBlock(nn.Module):
    """Two 3×3 convolutions; the first one strides by 2."""

    def __init__(self, in_ch: int, out_ch: int, use_norm: bool, dropout_p: float):
        super().__init__()
        self.conv = nn.Sequential(*_conv_act(in_ch, out_ch, 2, use_norm, 4, dropout_p),
                                  *_conv_act(out_ch, out_ch, 1, use_norm, 4, dropout_p))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class _UpBlock(nn.Module):
    """Bilinear upsampling, concatenation with a 1×1-convolved skip, two 3×3 convolutions."""

    def __init__(self, in_ch: int, out_ch: int, skip_ch: int, use_norm: bool, dropout_p: float):
        super().__init__()
        self.skip_ch = skip_ch
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        if skip_ch > 0:
            skip = [nn.Conv2d(out_ch, skip_ch, 1)]
            if use_norm:
                skip.append(nn.GroupNorm(num_groups=1, num_channels=skip_ch))
            skip.append(nn.LeakyReLU(0.2))
            self.skip_conv = nn.Sequential(*skip)
        pre = [nn.GroupNorm(num_groups=1, num_channels=in_ch + skip_ch)] if use_norm else []
        self.conv = nn.Sequential(*pre,
                                  *_conv_act(in_ch + skip_ch, out_ch, 1, use_norm, 2, dropout_p),
                                  *_conv_act(out_ch, out_ch, 1, use_norm, 2, dropout_p))

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.up(x)
        # odd sizes: upsampled map can be one pixel larger than the skip; crop centrally
        dh, dw = x.shape[-2] - skip.shape[-2], x.shape[-1] - skip.shape[-1]
        if dh or dw:
            x = x[..., dh // 2: dh // 2 + skip.shape[-2], dw // 2: dw // 2 + skip.shape[-1]]
        if self.skip_ch > 0:
            x = torch.cat([x, self.skip_conv(skip)], dim=1)
        return self.conv(x)


class UNet(nn.Module):
    """U-Net ``(B, in_ch, H, W) -> (B, out_ch, H, W)``.

    Args:
        channels: channels per scale; ``len(channels)`` is the number of scales.
        skip_channels: skip channels per scale (``skip_channels[-1]`` feeds the first
            up block, ``skip_channels[0]`` is unused).
        use_norm: GroupNorm after every convolution.
        use_sigmoid: sigmoid at the output (images in [0, 1]).
        dropout_p: channel dropout (``Dropout2d``) after every 3×3 convolution; used by the
            MC-dropout baseline, 0 for the DIP.
    """

    def __init__(self, channels: Sequence[int] = (32, 32, 32),
                 skip_channels: Sequence[int] = (0, 4, 4), use_norm: bool = False,
                 use_sigmoid: bool = True, in_ch: int = 1, out_ch: int = 1,
                 dropout_p: float = 0.0, sigmoid_clamp: float = 9.0):
        super().__init__()
        if len(channels) != len(skip_channels):
            raise ValueError(f"skip_channels must have len(channels)={len(channels)} entries, "
                             f"got {len(skip_channels)}")
        if len(channels) < 1 or any(int(c) < 1 for c in channels):
            raise ValueError(f"channels must be positive integers, got {list(channels)}")
        if not 0.0 <= dropout_p < 1.0:
            raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
        self.scales = len(channels)
        self.use_sigmoid = use_sigmoid
        self.sigmoid_clamp = sigmoid_clamp
        self.inc = _InBlock(in_ch, channels[0], use_norm, dropout_p)
        self.down = nn.ModuleList(
            _DownBlock(channels[i - 1], channels[i], use_norm, dropout_p)
            for i in range(1, self.scales))
        self.up = nn.ModuleList(
            _UpBlock(channels[-i], channels[-i - 1], skip_channels[-i], use_norm, dropout_p)
            for i in range(1, self.scales))
        self.outc = nn.Conv2d(channels[0], out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"x must have shape (B, C, H, W), got {tuple(x.shape)}")
        features = [self.inc(x)]
        for down in self.down:
            features.append(down(features[-1]))
        h = features[-1]
        for i, up in enumerate(self.up):
            h = up(h, features[-2 - i])
        out = self.outc(h)
        if self.use_sigmoid:
            out = torch.sigmoid(out.clamp(-self.sigmoid_clamp, self.sigmoid_clamp))
        return out

    def prior_blocks(self) -> list[PriorBlock]:
        """The convolutions under the prior, one block per stage.

        GP blocks: ``inc``, ``down_i``, ``up_i`` (their 3×3 convolutions); Normal blocks:
        ``skip_i`` (1×1 skip convolutions, where present) and ``outc``.
        """
        def convs(prefix: str, module: nn.Module) -> tuple[str, ...]:
            return tuple(f"{prefix}.{n}" for n, m in module.named_modules()
                         if isinstance(m, nn.Conv2d))

        blocks = [PriorBlock("inc", "gp", convs("inc.conv", self.inc.conv))]
        blocks += [PriorBlock(f"down_{i}", "gp", convs(f"down.{i}.conv", d.conv))
                   for i, d in enumerate(self.down)]
        blocks += [PriorBlock(f"up_{i}", "gp", convs(f"up.{i}.conv", u.conv))
                   for i, u in enumerate(self.up)]
        blocks += [PriorBlock(f"skip_{i}", "normal", convs(f"up.{i}.skip_conv", u.skip_conv))
                   for i, u in enumerate(self.up) if u.skip_ch > 0]
        blocks.append(PriorBlock("outc", "normal", ("outc",)))
        return blocks


_PRESETS: dict[str, dict] = {
    # paper, KMNIST 28×28: 3 scales, 32 channels, skip [0, 4, 4], no norm, sigmoid
    "kmnist": dict(channels=(32, 32, 32), skip_channels=(0, 4, 4), use_norm=False,
                   use_sigmoid=True),
    # 128²: 5 scales, 32-64 channels, GroupNorm
    "128": dict(channels=(32, 32, 64, 64, 128), skip_channels=(0, 0, 4, 4, 4), use_norm=True,
                use_sigmoid=True),
    # 256²–512² (Walnut-like): 6 scales, 128 channels, GroupNorm, no sigmoid
    "walnut": dict(channels=(128,) * 6, skip_channels=(0, 0, 0, 0, 4, 4), use_norm=True,
                   use_sigmoid=False),
}


def unet_preset(name: str, **overrides) -> UNet:
    """A U-Net preset: ``"kmnist"`` (28×28), ``"128"`` (128²), ``"walnut"`` (256²–512²)."""
    check_choice(name, "name", _PRESETS)
    return UNet(**{**_PRESETS[name], **overrides})
