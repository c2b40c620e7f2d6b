"""PyTorch reference models for flax_dsconv's parity tests and weight conversion.

* :class:`DSConv` is the seed notebook's class, unchanged in behaviour and ``state_dict`` keys, so its
  checkpoints load with ``strict=True`` (including its quirks: the 1x1 conv is padded by 1 and strided
  again, so 64x64 in gives 66x66 out).
* :class:`DepthwiseSeparableConv` and :class:`MobileNetV1` follow the MobileNet paper, with timm's
  attribute names (``conv_stem``, ``bn1``, ``blocks.{stage}.{i}.conv_dw/bn1/conv_pw/bn2``,
  ``classifier``) so timm's ``mobilenetv1_*`` checkpoints load into them; flax_dsconv mirrors the names.

This package is an independent reference: it shares no code with flax_dsconv.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["ACTIVATIONS", "ConvBNAct", "DSConv", "DepthwiseSeparableConv", "MobileNetV1"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hard_swish": nn.Hardswish,
    "silu": nn.SiLU,
}


def _act(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class DSConv(nn.Module):
    """The seed notebook's depthwise separable conv, reproduced exactly (see the module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.depthwise_sep_conv = nn.Sequential(
            nn.Conv2d(
                in_channels=in_channels,
                out_channels=in_channels,
                kernel_size=kernel_size,
                stride=stride,
                padding=padding,
                groups=in_channels,
            ),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(),
            nn.Conv2d(in_channels=in_channels, out_channels=out_channels, kernel_size=1, stride=stride, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )
        self.config = dict(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                           stride=stride, padding=padding)  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.depthwise_sep_conv(x)


class DepthwiseSeparableConv(nn.Module):
    """Paper-correct block: 3x3 depthwise (stride) → BN → act → 1x1 pointwise → BN → act."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        act: str = "relu",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ):
        super().__init__()
        self.conv_dw = nn.Conv2d(
            in_channels, in_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=in_channels, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_channels, eps=bn_eps, momentum=bn_momentum)
        self.conv_pw = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        self.act = _act(act)
        self.config = dict(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                           stride=stride, act=act, bn_eps=bn_eps, bn_momentum=bn_momentum)  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv_dw(x)))
        return self.act(self.bn2(self.conv_pw(x)))


class ConvBNAct(nn.Module):
    """A dense conv → BN → act layer: the full-convolution MobileNet baseline's block (paper, Table 4)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, act: str,
                 bn_eps: float, bn_momentum: float):  # fmt: skip
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        self.act = _act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn1(self.conv(x)))


def _make_divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


# Howard et al. 2017, Table 1, as (out_channels, stride) of each depthwise separable layer, grouped
# into stages at each stride-2 layer (timm's grouping, hence its `blocks.{stage}.{i}` keys).
_TABLE_1 = (
    ((64, 1),),
    ((128, 2), (128, 1)),
    ((256, 2), (256, 1)),
    ((512, 2), (512, 1), (512, 1), (512, 1), (512, 1), (512, 1)),
    ((1024, 2), (1024, 1)),
)


class MobileNetV1(nn.Module):
    """MobileNetV1 (Howard et al. 2017): conv 3x3/s2 of 32, 13 separable layers, avg pool, classifier.

    ``width_multiplier`` is α; the resolution multiplier ρ is the input size. ``separable=False`` is
    the paper's full-convolution baseline. timm's ``mobilenetv1_100``/``_125`` load into
    ``MobileNetV1(1.0 | 1.25, act='relu6')`` with ``strict=True``.
    """

    def __init__(
        self,
        width_multiplier: float = 1.0,
        num_classes: int = 1000,
        *,
        act: str = "relu",
        dropout: float = 0.0,
        separable: bool = True,
        in_channels: int = 3,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ):
        super().__init__()
        self.config: dict[str, Any] = dict(
            width_multiplier=width_multiplier, num_classes=num_classes, act=act, dropout=dropout,
            separable=separable, in_channels=in_channels, bn_eps=bn_eps, bn_momentum=bn_momentum,
        )  # fmt: skip
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        ch = _make_divisible(32 * width_multiplier)
        self.conv_stem = nn.Conv2d(in_channels, ch, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch, eps=bn_eps, momentum=bn_momentum)
        self.act = _act(act)
        stages = []
        for stage in _TABLE_1:
            layers: list[nn.Module] = []
            for c, s in stage:
                out = _make_divisible(c * width_multiplier)
                if separable:
                    layers.append(DepthwiseSeparableConv(ch, out, 3, s, act, **bn))
                else:
                    layers.append(ConvBNAct(ch, out, 3, s, act, **bn))
                ch = out
            stages.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*stages)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(ch, num_classes) if num_classes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.act(self.bn1(self.conv_stem(x))))
        x = torch.flatten(x.mean(dim=(2, 3)), 1)
        return self.classifier(self.dropout(x))
