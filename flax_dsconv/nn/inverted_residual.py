"""The inverted residual block (MobileNetV2, Sandler et al. 2018), with MobileNetV3's squeeze-excite."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import linen as nn

from flax_dsconv.nn.common import add_residual, where
from flax_dsconv.nn.conv import block_depthwise, check_group_size, check_mixed_kernels, pointwise_conv
from flax_dsconv.nn.global_context import SeKind, channel_attention, check_se_kind
from flax_dsconv.nn.norm import BatchNormConfig, NormConfig, norm_layer
from flax_dsconv.nn.registry import BlockConfig, BlockContext, check_splits, register_block
from flax_dsconv.ops.activations import Activation
from flax_dsconv.ops.antialias import AntiAlias, anti_alias, check_anti_alias
from flax_dsconv.ops.padding import PaddingLike


@dataclasses.dataclass(frozen=True, kw_only=True)
class InvertedResidualConfig(BlockConfig):
    """An :class:`InvertedResidual` in a network: ``expand_channels`` wide inside, squeeze-excite of
    ``se_channels`` (0: none) after the depthwise conv. MixNet's mixed convs: ``kernel_sizes`` (one per channel
    group of the depthwise conv; ``kernel_size`` is then the largest; empty: one ``kernel_size`` kernel),
    ``expand_splits``/``project_splits`` (groups of the 1x1 expansion/projection; 1: a dense 1x1 conv).
    ``group_size``: channels per group of the k x k conv (1: depthwise; timm's ``_g8`` models: 8). ``se_kind``:
    ``'se'`` squeeze-excite or ``'gc'`` global context (timm's ``gc_`` models). ``aa``:
    anti-aliased downsampling (``'avg'``, ``'blur'``: the depthwise conv at stride 1, then that pool strides;
    :mod:`~flax_dsconv.ops.antialias`)."""

    kind = "ir"
    expand_channels: int
    act: Activation = "relu6"
    se_channels: int = 0
    se_act: Activation = "relu"
    se_gate: Activation = "hard_sigmoid"
    se_kind: SeKind = "se"
    kernel_sizes: tuple[int, ...] = ()
    expand_splits: int = 1
    project_splits: int = 1
    group_size: int = 1
    aa: AntiAlias = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "kernel_sizes", check_mixed_kernels(self.kernel_size, self.kernel_sizes,
                                                                     "InvertedResidualConfig"))  # fmt: skip
        check_splits(self, ("expand_splits", "project_splits"))
        check_se_kind(self.se_kind, "InvertedResidualConfig")
        check_group_size(self.group_size, self.kernel_sizes, "InvertedResidualConfig")
        check_anti_alias(self.aa, self.stride, "InvertedResidualConfig")


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual (Sandler et al. 2018), with MobileNetV3's optional SE.

    ``conv_pw`` (1x1 expand) → ``bn1`` → act → ``conv_dw`` (k x k, stride, dilation) → ``bn2`` → act →
    [``se``] → ``conv_pwl`` (1x1 linear projection) → ``bn3``, plus the input when ``skip``.

    MixNet's variant (Tan & Le 2019): ``kernel_sizes`` makes ``conv_dw`` a :class:`MixedDepthwiseConv` (one
    kernel size per channel group), ``expand_splits``/``project_splits`` > 1 make ``conv_pw``/``conv_pwl`` a
    :class:`MixedPointwiseConv` each. ``group_size`` > 1 makes ``conv_dw`` a grouped conv (timm's ``_g8``
    models), ``se_kind='gc'`` the attention a :class:`GlobalContext`. ``aa`` (``'avg'``, ``'blur'``):
    ``conv_dw`` runs at stride 1 and that pool strides after ``bn2`` and its activation (timm's ``aa_layer``).

    >>> InvertedResidual(features=24, expand_channels=96, strides=2).init(key, jnp.ones((1, 56, 56, 16)))
    """

    features: int
    expand_channels: int
    kernel_size: int = 3
    strides: int = 1
    dilation: int = 1
    padding: PaddingLike = "torch"
    act: str = "relu6"
    se_channels: int = 0
    se_act: str = "relu"
    se_gate: str = "hard_sigmoid"
    se_kind: SeKind = "se"
    kernel_sizes: tuple[int, ...] = ()
    expand_splits: int = 1
    project_splits: int = 1
    group_size: int = 1
    aa: str = "none"
    skip: bool = False
    drop_path: float = 0.0  # stochastic depth of the residual branch (acts only where skip, in training)
    norm: NormConfig = BatchNormConfig()
    axis_name: str | None = None
    dtype: Any | None = None
    depthwise: str = "auto"  # DepthwiseConv's implementation: 'auto', 'xla', 'shifted' or 'pallas'

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        norm = norm_layer(self.norm, train=train, axis_name=self.axis_name, dtype=self.dtype)
        check_anti_alias(self.aa, self.strides, where(self))
        shortcut = x
        x = pointwise_conv(self.expand_channels, self.expand_splits, dtype=self.dtype, name="conv_pw")(x)
        x = norm(name="bn1", act=self.act)(x)
        strides = 1 if self.aa != "none" else self.strides
        x = block_depthwise(x, self.kernel_size, self.kernel_sizes, strides, self.padding, self.dilation,
                            implementation=self.depthwise, dtype=self.dtype, group_size=self.group_size)  # fmt: skip
        x = anti_alias(norm(name="bn2", act=self.act)(x), self.aa, self.strides)
        if self.se_channels:
            x = channel_attention(self.se_kind, self.se_channels, self.se_act, self.se_gate, self.dtype)(x)
        x = pointwise_conv(self.features, self.project_splits, dtype=self.dtype, name="conv_pwl")(x)
        x = norm(name="bn3", act="identity")(x)
        return add_residual(x, shortcut, self.skip, self.drop_path, train)

    @classmethod
    def from_config(cls, config: InvertedResidualConfig, context: BlockContext, name: str) -> InvertedResidual:
        return cls(
            config.out_channels,
            config.expand_channels,
            kernel_size=config.kernel_size,
            strides=config.stride,
            dilation=config.dilation,
            padding=context.padding,
            act=config.act,
            se_channels=config.se_channels,
            se_act=config.se_act,
            se_gate=config.se_gate,
            se_kind=config.se_kind,
            kernel_sizes=config.kernel_sizes,
            expand_splits=config.expand_splits,
            project_splits=config.project_splits,
            group_size=config.group_size,
            aa=config.aa,
            skip=config.skip,
            drop_path=config.drop_path,
            norm=context.norm,
            axis_name=context.axis_name,
            dtype=context.dtype,
            depthwise=context.depthwise,
            name=name,
        )


register_block(InvertedResidualConfig, InvertedResidual)
