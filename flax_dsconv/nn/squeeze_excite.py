"""Squeeze-and-excitation (Hu et al. 2018) as MobileNetV3 and timm use it."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from flax_dsconv.nn.common import bound_kernel_shape, check_nhwc, where
from flax_dsconv.nn.conv import PointwiseConv
from flax_dsconv.ops.activations import activation


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: global mean → 1x1 reduce → act → 1x1 expand → gate, times the input.

    Names follow timm (``conv_reduce``, ``conv_expand``); both 1x1 convs carry a bias, as in torchvision
    (``fc1``/``fc2``) and timm. MobileNetV3 gates with ``hard_sigmoid``.
    """

    reduced_channels: int
    act: str = "relu"
    gate: str = "hard_sigmoid"
    dtype: Any | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        expand = bound_kernel_shape(self, ("conv_expand",))
        check_nhwc(x, None if expand is None else expand[-1], where(self))
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = PointwiseConv(self.reduced_channels, use_bias=True, dtype=self.dtype, name="conv_reduce")(s)
        s = activation(self.act)(s)
        s = PointwiseConv(x.shape[-1], use_bias=True, dtype=self.dtype, name="conv_expand")(s)
        return x * activation(self.gate)(s)

