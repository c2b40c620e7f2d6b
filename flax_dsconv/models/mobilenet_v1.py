"""MobileNetV1 (Howard et al. 2017): the paper's Table 1 as data, and its builder."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from flax_dsconv.models.config import MobileNetConfig, Padding, check_width, make_divisible
from flax_dsconv.models.network import MobileNet
from flax_dsconv.nn import BatchNormConfig, BlockConfig, ConvBNActConfig, SeparableConfig
from flax_dsconv.ops.activations import Activation

# c, s — Table 1: each row is one depthwise separable layer (dw 3x3 with stride s, then 1x1 to c);
# grouped into stages at each stride-2 row, as timm groups them.
V1_TABLE: tuple[tuple[tuple[int, int], ...], ...] = (
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
    act: Activation = "relu",
    dropout: float = 0.0,
    separable: bool = True,
    head: bool = False,
    in_channels: int = 3,
    bn_momentum: float = 0.9,
    bn_epsilon: float = 1e-5,
    padding: Padding = "torch",
    dtype: Any | None = None,
) -> MobileNet:
    """MobileNetV1: 3x3/s2 conv of 32, 13 depthwise separable layers, global average pool, classifier.

    ``width_multiplier`` is the paper's α (channels ``make_divisible(α·c, 8)``, exactly α·c for the
    paper's 1.0/0.75/0.5/0.25); the resolution multiplier ρ is just the input size. ``separable=False``
    builds the paper's full-convolution baseline (Table 4). ``head=True`` adds a 1x1 conv + BN + act of
    ``max(1024, make_divisible(1024·α))`` channels before pooling (timm's ``mobilenetv1_100h``).
    ``bn_momentum`` is Flax's (torch 0.1 → 0.9).
    timm's ``mobilenetv1_*`` use ``act='relu6'``.

    >>> model = mobilenet_v1(0.75)
    >>> variables = model.init(jax.random.key(0), jnp.ones((1, 160, 160, 3)))
    """
    check_width(width_multiplier, "mobilenet_v1")
    ch = lambda c: make_divisible(c * width_multiplier)  # noqa: E731

    def block(c: int, s: int) -> BlockConfig:
        if separable:
            return SeparableConfig(out_channels=ch(c), kernel_size=3, stride=s, act=act, pw_act=True)
        return ConvBNActConfig(out_channels=ch(c), kernel_size=3, stride=s, act=act)

    stages = tuple(tuple(block(c, s) for c, s in stage) for stage in V1_TABLE)
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
    if head:
        config = dataclasses.replace(config, head="pre_pool", head_channels=max(1024, ch(1024)), head_act=act)
    return MobileNet(config, dtype=dtype)


# timm builds these with PyTorch's BatchNorm defaults and no dropout before the classifier.
TIMM_MODELS: dict[str, Callable[..., MobileNet]] = {
    "mobilenetv1_100": functools.partial(mobilenet_v1, 1.0, act="relu6"),
    "mobilenetv1_100h": functools.partial(mobilenet_v1, 1.0, act="relu6", head=True),
    "mobilenetv1_125": functools.partial(mobilenet_v1, 1.25, act="relu6"),
}
