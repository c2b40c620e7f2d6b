"""A dense conv → BatchNorm → activation block (timm's ``ConvBnAct``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import linen as nn

from flax_dsconv.nn.common import add_residual, bound_kernel_shape, check_nhwc, where
from flax_dsconv.nn.conv import full_conv
from flax_dsconv.nn.norm import BatchNormConfig, NormConfig, norm_layer
from flax_dsconv.nn.registry import BlockConfig, BlockContext, register_block
from flax_dsconv.ops.padding import PaddingLike


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConvBNActConfig(BlockConfig):
    """A :class:`ConvBNAct` in a network (MobileNetV3's last 1x1 stage, the full-convolution MobileNetV1)."""

    kind = "conv"


class ConvBNAct(nn.Module):
    """A dense conv → ``bn1`` → act block (timm's ``ConvBnAct``; the full-convolution MobileNet's layer)."""

    features: int
    kernel_size: int = 1
    strides: int = 1
    dilation: int = 1
    padding: PaddingLike = "torch"
    act: str = "relu"
    skip: bool = False
    drop_path: float = 0.0  # stochastic depth of the residual branch (acts only where skip, in training)
    norm: NormConfig = BatchNormConfig()
    axis_name: str | None = None
    dtype: Any | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kernel = bound_kernel_shape(self, ("conv",))
        check_nhwc(x, None if kernel is None else kernel[-2], where(self))
        shortcut = x
        x = full_conv(
            self.features, self.kernel_size, self.strides, self.padding, self.dilation, dtype=self.dtype, name="conv"
        )(x)
        norm = norm_layer(self.norm, train=train, axis_name=self.axis_name, dtype=self.dtype)
        return add_residual(norm(name="bn1", act=self.act)(x), shortcut, self.skip, self.drop_path, train)

    @classmethod
    def from_config(cls, config: ConvBNActConfig, context: BlockContext, name: str) -> ConvBNAct:
        return cls(
            config.out_channels,
            kernel_size=config.kernel_size,
            strides=config.stride,
            dilation=config.dilation,
            padding=context.padding,
            act=config.act,
            skip=config.skip,
            drop_path=config.drop_path,
            norm=context.norm,
            axis_name=context.axis_name,
            dtype=context.dtype,
            name=name,
        )


register_block(ConvBNActConfig, ConvBNAct)
