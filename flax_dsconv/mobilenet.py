"""MobileNet V1, V2 and V3 as one Flax module driven by a resolved, serialisable config.

Each builder turns its paper's table into a :class:`MobileNetConfig` whose blocks carry explicit channel
counts, strides and options, so a model converted from torchvision or timm and one built here are the
same module with the same config. Sub-module names follow timm (``conv_stem``, ``bn1``,
``blocks_{stage}_{i}``, ``conv_head``, ``bn2``, ``classifier``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax.numpy as jnp
from flax import linen as nn

from flax_dsconv.blocks import ConvBNAct, InvertedResidual
from flax_dsconv.layers import (
    Array,
    BatchNorm,
    BatchNormConfig,
    DepthwiseSeparableConv,
    Dtype,
    PointwiseConv,
    activation,
    check_nhwc,
    full_conv,
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to a multiple of ``divisor``, never below ``divisor`` nor 10% under ``value``.

    The rounding torchvision and timm apply to every width-multiplied channel count.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """One block, fully resolved.

    ``kind``: ``'ds'`` depthwise separable, ``'ir'`` inverted residual, ``'conv'`` dense conv-BN-act.
    ``skip`` says whether the block adds its input (stride 1 and equal channels, unless disabled).
    ``pw_act``: whether a ``'ds'`` block activates after its pointwise conv (V1 yes, V2/V3 no).
    """

    kind: Literal["ds", "ir", "conv"]
    out_channels: int
    kernel_size: int = 3
    stride: int = 1
    dilation: int = 1
    expand_channels: int = 0
    se_channels: int = 0
    act: str = "relu"
    pw_act: bool = False
    skip: bool = False
    se_act: str = "relu"
    se_gate: str = "hard_sigmoid"


@dataclasses.dataclass(frozen=True)
class MobileNetConfig:
    """A whole network. ``head``: ``'none'``; ``'pre_pool'`` (1x1 conv + BN + act before pooling, V2);
    ``'post_pool'`` (1x1 conv after pooling, then act, V3's Linear(960, 1280) + hard-swish).
    ``padding``: ``'torch'`` (symmetric) or ``'SAME'`` (TF-ported weights)."""

    stages: tuple[tuple[BlockConfig, ...], ...]
    stem_channels: int = 32
    stem_kernel: int = 3
    stem_stride: int = 2
    stem_act: str = "relu"
    head: Literal["none", "pre_pool", "post_pool"] = "none"
    head_channels: int = 0
    head_act: str = "relu"
    head_bias: bool = False
    num_classes: int = 1000
    dropout: float = 0.0
    in_channels: int = 3
    padding: str = "torch"
    norm: BatchNormConfig = BatchNormConfig()

    @property
    def blocks(self) -> tuple[BlockConfig, ...]:
        """Every block, stage after stage."""
        return tuple(b for stage in self.stages for b in stage)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MobileNetConfig:
        d = dict(d)
        d["stages"] = tuple(tuple(BlockConfig(**b) for b in stage) for stage in d["stages"])
        d["norm"] = BatchNormConfig(**d["norm"])
        return cls(**d)


class MobileNet(nn.Module):
    """MobileNet V1/V2/V3 from a :class:`MobileNetConfig`; use the builders (:func:`mobilenet_v2`, ...).

    ``__call__(x, train=False)`` takes NHWC float input. ``train=True`` normalises with batch statistics
    and updates ``batch_stats`` (pass ``mutable=['batch_stats']``) and enables dropout (``rngs={'dropout':
    key}``). Stage outputs are sown into ``'intermediates'`` (``stem``, ``stage0``, ..., ``pre_logits``).
    ``num_classes=0`` returns the pooled features.

    >>> model = mobilenet_v2()
    >>> variables = model.init(jax.random.key(0), jnp.ones((1, 224, 224, 3)))
    >>> logits = jax.jit(model.apply)(variables, images)
    """

    config: MobileNetConfig
    dtype: Dtype | None = None
    axis_name: str | None = None
    depthwise: str = "auto"  # every DepthwiseConv's implementation: 'auto', 'xla', 'shifted' or 'pallas'

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        c = self.config
        check_nhwc(x, c.in_channels, "MobileNet")
        norm = BatchNorm.partial(c.norm, use_running_average=not train, axis_name=self.axis_name, dtype=self.dtype)
        x = full_conv(c.stem_channels, c.stem_kernel, c.stem_stride, c.padding, dtype=self.dtype, name="conv_stem")(x)
        x = activation(c.stem_act)(norm(name="bn1")(x))
        self.sow("intermediates", "stem", x)
        for s, stage in enumerate(c.stages):
            for i, block in enumerate(stage):
                x = self._block(block, f"blocks_{s}_{i}")(x, train)
            self.sow("intermediates", f"stage{s}", x)
        if c.head == "pre_pool":
            x = PointwiseConv(c.head_channels, use_bias=c.head_bias, dtype=self.dtype, name="conv_head")(x)
            x = activation(c.head_act)(norm(name="bn2")(x))
        x = jnp.mean(x, axis=(1, 2), keepdims=True)
        if c.head == "post_pool":
            x = PointwiseConv(c.head_channels, use_bias=c.head_bias, dtype=self.dtype, name="conv_head")(x)
            x = activation(c.head_act)(x)
        x = x.reshape(x.shape[0], -1)
        self.sow("intermediates", "pre_logits", x)
        if not c.num_classes:
            return x
        x = nn.Dropout(c.dropout, deterministic=not train)(x)
        return nn.Dense(c.num_classes, dtype=self.dtype, kernel_init=nn.initializers.normal(0.01), name="classifier")(x)

    def _block(self, b: BlockConfig, name: str) -> nn.Module:
        c = self.config
        common: dict[str, Any] = dict(
            strides=b.stride,
            dilation=b.dilation,
            padding=c.padding,
            act=b.act,
            skip=b.skip,
            norm=c.norm,
            axis_name=self.axis_name,
            dtype=self.dtype,
            name=name,
        )
        if b.kind == "ds":
            return DepthwiseSeparableConv(
                b.out_channels,
                kernel_size=b.kernel_size,
                pw_act=b.pw_act,
                se_channels=b.se_channels,
                se_act=b.se_act,
                se_gate=b.se_gate,
                depthwise=self.depthwise,
                **common,
            )
        if b.kind == "ir":
            return InvertedResidual(
                b.out_channels,
                b.expand_channels,
                kernel_size=b.kernel_size,
                se_channels=b.se_channels,
                se_act=b.se_act,
                se_gate=b.se_gate,
                depthwise=self.depthwise,
                **common,
            )
        if b.kind == "conv":
            if b.se_channels:
                raise ValueError(f"{name}: a 'conv' block has no squeeze-excite, got se_channels={b.se_channels}")
            return ConvBNAct(b.out_channels, kernel_size=b.kernel_size, **common)
        raise ValueError(f"{name}: unknown block kind {b.kind!r}; expected 'ds', 'ir' or 'conv'")


# ---------------------------------------------------------------- MobileNetV1 (Howard et al. 2017)

# c, s — Table 1: each row is one depthwise separable layer (dw 3x3 with stride s, then 1x1 to c);
# grouped into stages at each stride-2 row, as timm groups them.
_V1_TABLE: tuple[tuple[tuple[int, int], ...], ...] = (
    ((64, 1),),
    ((128, 2), (128, 1)),
    ((256, 2), (256, 1)),
    ((512, 2), (512, 1), (512, 1), (512, 1), (512, 1), (512, 1)),
    ((1024, 2), (1024, 1)),
)


def mobilenet_v1(
    width_multiplier: float = 1.0,
    num_classes: int = 1000,
    *,
    act: str = "relu",
    dropout: float = 0.0,
    separable: bool = True,
    in_channels: int = 3,
    bn_momentum: float = 0.9,
    bn_epsilon: float = 1e-5,
    padding: str = "torch",
    dtype: Dtype | None = None,
) -> MobileNet:
    """MobileNetV1: 3x3/s2 conv of 32, 13 depthwise separable layers, global average pool, classifier.

    ``width_multiplier`` is the paper's α (channels ``make_divisible(α·c, 8)``, exactly α·c for the
    paper's 1.0/0.75/0.5/0.25); the resolution multiplier ρ is just the input size. ``separable=False``
    builds the paper's full-convolution baseline (Table 4). ``bn_momentum`` is Flax's (torch 0.1 → 0.9).
    timm's ``mobilenetv1_*`` use ``act='relu6'``.

    >>> model = mobilenet_v1(0.75)
    >>> variables = model.init(jax.random.key(0), jnp.ones((1, 160, 160, 3)))
    """
    ch = lambda c: make_divisible(c * width_multiplier)  # noqa: E731
    kind: Literal["ds", "conv"] = "ds" if separable else "conv"
    stages = tuple(
        tuple(BlockConfig(kind, ch(c), kernel_size=3, stride=s, act=act, pw_act=separable) for c, s in stage)
        for stage in _V1_TABLE
    )
    config = MobileNetConfig(
        stages=stages,
        stem_channels=ch(32),
        stem_act=act,
        num_classes=num_classes,
        dropout=dropout,
        in_channels=in_channels,
        padding=padding,
        norm=BatchNormConfig(bn_momentum, bn_epsilon),
    )
    return MobileNet(config, dtype=dtype)


# ---------------------------------------------------------------- MobileNetV2 (Sandler et al. 2018)

# t, c, n, s — Table 2: expansion, output channels, repeats, first stride; one stage per row.
_V2_TABLE: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def mobilenet_v2(
    width_multiplier: float = 1.0,
    num_classes: int = 1000,
    *,
    dropout: float = 0.2,
    in_channels: int = 3,
    bn_momentum: float = 0.9,
    bn_epsilon: float = 1e-5,
    padding: str = "torch",
    dtype: Dtype | None = None,
) -> MobileNet:
    """MobileNetV2 as torchvision builds it: ReLU6, ``make_divisible(c·w, 8)`` channels, a 1280 head
    (scaled up for w > 1), dropout 0.2, PyTorch's BatchNorm defaults.

    >>> model = mobilenet_v2(width_multiplier=0.5, num_classes=10)
    """
    ch = lambda c: make_divisible(c * width_multiplier)  # noqa: E731
    in_ch = ch(32)
    stages = []
    for t, c, n, s in _V2_TABLE:
        out = ch(c)
        blocks = []
        for i in range(n):
            stride = s if i == 0 else 1
            skip = stride == 1 and in_ch == out
            if t == 1:
                blocks.append(BlockConfig("ds", out, stride=stride, act="relu6", skip=skip))
            else:
                hidden = round(in_ch * t)
                blocks.append(BlockConfig("ir", out, stride=stride, expand_channels=hidden, act="relu6", skip=skip))
            in_ch = out
        stages.append(tuple(blocks))
    config = MobileNetConfig(
        stages=tuple(stages),
        stem_channels=ch(32),
        stem_act="relu6",
        head="pre_pool",
        head_channels=make_divisible(1280 * max(1.0, width_multiplier)),
        head_act="relu6",
        num_classes=num_classes,
        dropout=dropout,
        in_channels=in_channels,
        padding=padding,
        norm=BatchNormConfig(bn_momentum, bn_epsilon),
    )
    return MobileNet(config, dtype=dtype)


# ---------------------------------------------------------------- MobileNetV3 (Howard et al. 2019)


@dataclasses.dataclass(frozen=True)
class Bneck:
    """One row of the MobileNetV3 tables (Tables 1-2): a bottleneck with its expansion size."""

    kernel: int
    expand: int
    out: int
    se: bool
    act: Literal["relu", "hard_swish"]
    stride: int


_RE: Literal["relu"] = "relu"
_HS: Literal["hard_swish"] = "hard_swish"

# MobileNetV3-Large, Table 1; one tuple per stage (the last stage is the one dilation/reduced_tail alter).
_V3_LARGE: tuple[tuple[Bneck, ...], ...] = (
    (Bneck(kernel=3, expand=16, out=16, se=False, act=_RE, stride=1),),
    (
        Bneck(kernel=3, expand=64, out=24, se=False, act=_RE, stride=2),
        Bneck(kernel=3, expand=72, out=24, se=False, act=_RE, stride=1),
    ),
    (
        Bneck(kernel=5, expand=72, out=40, se=True, act=_RE, stride=2),
        Bneck(kernel=5, expand=120, out=40, se=True, act=_RE, stride=1),
        Bneck(kernel=5, expand=120, out=40, se=True, act=_RE, stride=1),
    ),
    (
        Bneck(kernel=3, expand=240, out=80, se=False, act=_HS, stride=2),
        Bneck(kernel=3, expand=200, out=80, se=False, act=_HS, stride=1),
        Bneck(kernel=3, expand=184, out=80, se=False, act=_HS, stride=1),
        Bneck(kernel=3, expand=184, out=80, se=False, act=_HS, stride=1),
    ),
    (
        Bneck(kernel=3, expand=480, out=112, se=True, act=_HS, stride=1),
        Bneck(kernel=3, expand=672, out=112, se=True, act=_HS, stride=1),
    ),
    (
        Bneck(kernel=5, expand=672, out=160, se=True, act=_HS, stride=2),
        Bneck(kernel=5, expand=960, out=160, se=True, act=_HS, stride=1),
        Bneck(kernel=5, expand=960, out=160, se=True, act=_HS, stride=1),
    ),
)

# MobileNetV3-Small, Table 2.
_V3_SMALL: tuple[tuple[Bneck, ...], ...] = (
    (Bneck(kernel=3, expand=16, out=16, se=True, act=_RE, stride=2),),
    (
        Bneck(kernel=3, expand=72, out=24, se=False, act=_RE, stride=2),
        Bneck(kernel=3, expand=88, out=24, se=False, act=_RE, stride=1),
    ),
    (
        Bneck(kernel=5, expand=96, out=40, se=True, act=_HS, stride=2),
        Bneck(kernel=5, expand=240, out=40, se=True, act=_HS, stride=1),
        Bneck(kernel=5, expand=240, out=40, se=True, act=_HS, stride=1),
    ),
    (
        Bneck(kernel=5, expand=120, out=48, se=True, act=_HS, stride=1),
        Bneck(kernel=5, expand=144, out=48, se=True, act=_HS, stride=1),
    ),
    (
        Bneck(kernel=5, expand=288, out=96, se=True, act=_HS, stride=2),
        Bneck(kernel=5, expand=576, out=96, se=True, act=_HS, stride=1),
        Bneck(kernel=5, expand=576, out=96, se=True, act=_HS, stride=1),
    ),
)


def _mobilenet_v3(
    table: tuple[tuple[Bneck, ...], ...],
    head_channels: int,
    width_multiplier: float,
    num_classes: int,
    dilated: bool,
    reduced_tail: bool,
    dropout: float,
    in_channels: int,
    bn_momentum: float,
    bn_epsilon: float,
    padding: str,
    dtype: Dtype | None,
) -> MobileNet:
    ch = lambda c: make_divisible(c * width_multiplier)  # noqa: E731
    divider = 2 if reduced_tail else 1
    in_ch = ch(16)
    stages = []
    for s, stage in enumerate(table):
        tail = s == len(table) - 1
        blocks = []
        for i, row in enumerate(stage):
            # torchvision divides the tail's widths (all but the first block's expansion) by 2.
            out = ch(row.out // divider if tail else row.out)
            expand = ch(row.expand // divider if tail and i > 0 else row.expand)
            dilation = 2 if tail and dilated else 1
            stride = 1 if dilation > 1 else row.stride
            se = make_divisible(expand // 4) if row.se else 0
            skip = row.stride == 1 and in_ch == out  # the table's stride, as torchvision tests it, not dilation's 1
            if expand == in_ch:
                block = BlockConfig("ds", out, row.kernel, stride, dilation, se_channels=se, act=row.act, skip=skip)
            else:
                block = BlockConfig("ir", out, row.kernel, stride, dilation, expand, se, row.act, skip=skip)
            blocks.append(block)
            in_ch = out
        stages.append(tuple(blocks))
    stages.append((BlockConfig("conv", 6 * in_ch, kernel_size=1, act=_HS),))
    config = MobileNetConfig(
        stages=tuple(stages),
        stem_channels=ch(16),
        stem_act=_HS,
        head="post_pool",
        head_channels=ch(head_channels // divider),
        head_act=_HS,
        head_bias=True,
        num_classes=num_classes,
        dropout=dropout,
        in_channels=in_channels,
        padding=padding,
        norm=BatchNormConfig(bn_momentum, bn_epsilon),
    )
    return MobileNet(config, dtype=dtype)


def mobilenet_v3_large(
    width_multiplier: float = 1.0,
    num_classes: int = 1000,
    *,
    dilated: bool = False,
    reduced_tail: bool = False,
    dropout: float = 0.2,
    in_channels: int = 3,
    bn_momentum: float = 0.99,
    bn_epsilon: float = 1e-3,
    padding: str = "torch",
    dtype: Dtype | None = None,
) -> MobileNet:
    """MobileNetV3-Large as torchvision builds it (BN eps 1e-3, torch momentum 0.01 → Flax 0.99).

    ``dilated`` gives the last stage dilation 2 and stride 1; ``reduced_tail`` halves its channels
    (both for segmentation backbones). ``padding='SAME'`` matches TF-ported weights.

    >>> model = mobilenet_v3_large(num_classes=10)
    """
    return _mobilenet_v3(
        _V3_LARGE, 1280, width_multiplier, num_classes, dilated, reduced_tail, dropout,
        in_channels, bn_momentum, bn_epsilon, padding, dtype,
    )  # fmt: skip


def mobilenet_v3_small(
    width_multiplier: float = 1.0,
    num_classes: int = 1000,
    *,
    dilated: bool = False,
    reduced_tail: bool = False,
    dropout: float = 0.2,
    in_channels: int = 3,
    bn_momentum: float = 0.99,
    bn_epsilon: float = 1e-3,
    padding: str = "torch",
    dtype: Dtype | None = None,
) -> MobileNet:
    """MobileNetV3-Small as torchvision builds it; options as :func:`mobilenet_v3_large`.

    >>> model = mobilenet_v3_small(width_multiplier=0.75)
    """
    return _mobilenet_v3(
        _V3_SMALL, 1024, width_multiplier, num_classes, dilated, reduced_tail, dropout,
        in_channels, bn_momentum, bn_epsilon, padding, dtype,
    )  # fmt: skip


BUILDERS = {
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3_large": mobilenet_v3_large,
    "mobilenet_v3_small": mobilenet_v3_small,
}
