"""The edge residual block, or fused MBConv (EfficientNet-EdgeTPU, Gupta & Tan 2019; EfficientNetV2, Tan & Le
2021; MobileNetV4's FusedIB): the inverted residual's 1x1 expansion and depthwise conv fused into one k x k conv."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import linen as nn

from flax_dsconv.nn.common import add_residual, bound_kernel_shape, check_nhwc, where
from flax_dsconv.nn.conv import PointwiseConv, full_conv
from flax_dsconv.nn.global_context import SeKind, channel_attention, check_se_kind
from flax_dsconv.nn.norm import BatchNormConfig, NormConfig, norm_layer
from flax_dsconv.nn.registry import BlockConfig, BlockContext, register_block
from flax_dsconv.ops.activations import Activation
from flax_dsconv.ops.antialias import AntiAlias, anti_alias, check_anti_alias
from flax_dsconv.ops.padding import PaddingLike


@dataclasses.dataclass(frozen=True, kw_only=True)
class EdgeResidualConfig(BlockConfig):
    """An :class:`EdgeResidual` in a network: ``expand_channels`` wide inside, its k x k conv in ``groups``
    groups (1: dense), squeeze-excite of ``se_channels`` (0: none) after it (``se_kind='gc'``: global context).

    The gate defaults to the sigmoid: timm's ``SqueezeExcite`` default, which every EfficientNet uses. ``aa``:
    anti-aliased downsampling (``'avg'``, ``'blur'``: the k x k conv at stride 1, then that pool strides).
    """

    kind = "er"
    expand_channels: int
    groups: int = 1
    se_channels: int = 0
    se_act: Activation = "relu"
    se_gate: Activation = "sigmoid"
    se_kind: SeKind = "se"
    aa: AntiAlias = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_anti_alias(self.aa, self.stride, "EdgeResidualConfig")
        check_se_kind(self.se_kind, "EdgeResidualConfig")


class EdgeResidual(nn.Module):
    """Edge residual / fused MBConv (timm's ``EdgeResidual``).

    ``conv_exp`` (k x k, stride, dilation, ``groups``) → ``bn1`` → act → [``se``] → ``conv_pwl`` (1x1 linear
    projection) → ``bn2``, plus the input when ``skip``. ``aa`` (``'avg'``, ``'blur'``): ``conv_exp`` runs at
    stride 1 and that pool strides after ``bn1`` and its activation (timm's ``aa_layer``).

    >>> EdgeResidual(features=48, expand_channels=128, strides=2).init(key, jnp.ones((1, 56, 56, 32)))
    """

    features: int
    expand_channels: int
    kernel_size: int = 3
    strides: int = 1
    dilation: int = 1
    groups: int = 1
    padding: PaddingLike = "torch"
    act: str = "relu"
    se_channels: int = 0
    se_act: str = "relu"
    se_gate: str = "sigmoid"
    se_kind: SeKind = "se"
    aa: str = "none"
    skip: bool = False
    drop_path: float = 0.0  # stochastic depth of the residual branch (acts only where skip, in training)
    norm: NormConfig = BatchNormConfig()
    axis_name: str | None = None
    dtype: Any | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kernel = bound_kernel_shape(self, ("conv_exp",))
        check_nhwc(x, None if kernel is None else kernel[-2] * self.groups, where(self))
        if x.shape[-1] % self.groups:  # flax.linen.Conv only asserts this
            raise ValueError(f"{where(self)}: {x.shape[-1]} input channels do not split into groups={self.groups}")
        check_anti_alias(self.aa, self.strides, where(self))
        norm = norm_layer(self.norm, train=train, axis_name=self.axis_name, dtype=self.dtype)
        shortcut = x
        strides = 1 if self.aa != "none" else self.strides
        x = full_conv(self.expand_channels, self.kernel_size, strides, self.padding, self.dilation,
                      groups=self.groups, dtype=self.dtype, name="conv_exp")(x)  # fmt: skip
        x = anti_alias(norm(name="bn1", act=self.act)(x), self.aa, self.strides)
        if self.se_channels:
            x = channel_attention(self.se_kind, self.se_channels, self.se_act, self.se_gate, self.dtype)(x)
        x = PointwiseConv(self.features, dtype=self.dtype, name="conv_pwl")(x)
        x = norm(name="bn2", act="identity")(x)
        return add_residual(x, shortcut, self.skip, self.drop_path, train)

    @classmethod
    def from_config(cls, config: EdgeResidualConfig, context: BlockContext, name: str) -> EdgeResidual:
        return cls(
            config.out_channels,
            config.expand_channels,
            kernel_size=config.kernel_size,
            strides=config.stride,
            dilation=config.dilation,
            groups=config.groups,
            padding=context.padding,
            act=config.act,
            se_channels=config.se_channels,
            se_act=config.se_act,
            se_gate=config.se_gate,
            se_kind=config.se_kind,
            aa=config.aa,
            skip=config.skip,
            drop_path=config.drop_path,
            norm=context.norm,
            axis_name=context.axis_name,
            dtype=context.dtype,
            name=name,
        )


register_block(EdgeResidualConfig, EdgeResidual)
