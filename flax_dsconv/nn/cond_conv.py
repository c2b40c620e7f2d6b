"""CondConv (Yang et al. 2019, "CondConv: Conditionally Parameterized Convolutions for Efficient Inference"): convs
whose kernel is, per example, a routing-weighted mixture of expert kernels, and the inverted residual built of them
(timm's ``CondConvResidual``, EfficientNet-CondConv)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen.dtypes import promote_dtype

from flax_dsconv.nn import initializers
from flax_dsconv.nn.common import add_residual, bound_kernel_shape, check_nhwc, where
from flax_dsconv.nn.norm import BatchNormConfig, NormConfig, norm_layer
from flax_dsconv.nn.registry import BlockConfig, BlockContext, register_block
from flax_dsconv.nn.squeeze_excite import SqueezeExcite
from flax_dsconv.ops.activations import Activation, activation
from flax_dsconv.ops.condconv import conv_per_example, mix_experts
from flax_dsconv.ops.padding import PaddingLike, as_pair, check_window_fits, resolve_padding, window_axes

# He-normal over each expert's fan-out, as the library's other convs (the expert axis is a batch axis).
expert_kernel_init = initializers.he_normal_fan_out(batch_axis=(0,))


class CondConv(nn.Module):
    """A conditionally parameterised convolution: ``num_experts`` kernels ``(num_experts, k, k, in // groups,
    features)``; example ``b`` is convolved with ``sum_e routing[b, e] * kernel[e]`` (and the bias mixed alike).
    ``depthwise``: one group per input channel, ``features`` = input channels (``features`` is then ignored).

    Called as ``conv(x, routing)`` with ``routing`` ``(batch, num_experts)``. timm's ``CondConv2d`` holds the same
    experts flattened, ``(num_experts, out·in/groups·k·k)`` in torch's OIHW order.

    >>> conv = CondConv(32, num_experts=4)
    >>> y, _ = conv.init_with_output(key, jnp.ones((2, 8, 8, 16)), jnp.ones((2, 4)))
    """

    features: int
    num_experts: int
    kernel_size: int = 1
    strides: int = 1
    padding: PaddingLike = "torch"
    dilation: int = 1
    depthwise: bool = False
    use_bias: bool = False
    dtype: Any | None = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Callable = expert_kernel_init

    @nn.compact
    def __call__(self, x: jax.Array, routing: jax.Array) -> jax.Array:
        bound = bound_kernel_shape(self)
        check_nhwc(x, None if bound is None else bound[-2] * (x.shape[-1] if self.depthwise else 1), where(self))
        if isinstance(self.num_experts, bool) or not isinstance(self.num_experts, int) or self.num_experts < 1:
            raise ValueError(f"{where(self)}: num_experts must be a positive int, got {self.num_experts!r}")
        if routing.shape != (x.shape[0], self.num_experts):
            raise ValueError(f"{where(self)}: routing weights must be (batch, num_experts) = "
                             f"{(x.shape[0], self.num_experts)}, got shape {routing.shape}")  # fmt: skip
        channels = x.shape[-1]
        groups, features = (channels, channels) if self.depthwise else (1, self.features)
        kernel_size, dilation = as_pair(self.kernel_size, "kernel_size"), as_pair(self.dilation, "dilation")
        strides = as_pair(self.strides, "strides")
        kernel = self.param("kernel", self.kernel_init, (self.num_experts, *kernel_size, channels // groups, features),
                            self.param_dtype)  # fmt: skip
        bias = (self.param("bias", initializers.zeros, (self.num_experts, features), self.param_dtype)
                if self.use_bias else None)  # fmt: skip
        x, routing, kernel, bias = promote_dtype(x, routing, kernel, bias, dtype=self.dtype)
        padding = resolve_padding(self.padding, kernel_size, dilation)
        check_window_fits(x.shape, window_axes(x.shape, kernel_size, strides, padding, dilation), where(self))
        y = conv_per_example(x, mix_experts(routing, kernel, self.precision), strides, padding, dilation, groups,
                             self.precision)  # fmt: skip
        return y if bias is None else y + mix_experts(routing, bias, self.precision)[:, None, None, :]


@dataclasses.dataclass(frozen=True, kw_only=True)
class CondConvResidualConfig(BlockConfig):
    """A :class:`CondConvResidual` in a network: an inverted residual ``expand_channels`` wide inside whose three
    convs each mix ``num_experts`` expert kernels; squeeze-excite of ``se_channels`` (0: none) after the depthwise
    conv, with EfficientNet's sigmoid gate by default."""

    kind = "cc"
    expand_channels: int
    num_experts: int
    se_channels: int = 0
    se_act: Activation = "relu"
    se_gate: Activation = "sigmoid"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("num_experts", "expand_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"CondConvResidualConfig: {name} must be a positive int, got {value!r}")


class CondConvResidual(nn.Module):
    """The inverted residual of EfficientNet-CondConv (timm's ``CondConvResidual``).

    ``routing_fn`` (a dense layer with bias on the globally averaged input, then a sigmoid) gives each example its
    expert weights; then as :class:`~flax_dsconv.nn.InvertedResidual`: ``conv_pw`` (1x1 expand) → ``bn1`` → act →
    ``conv_dw`` (k x k depthwise, stride, dilation) → ``bn2`` → act → [``se``] → ``conv_pwl`` → ``bn3``, plus the
    input when ``skip``, each conv a :class:`CondConv` on the same routing weights.

    >>> CondConvResidual(112, 480, num_experts=4, kernel_size=5).init(key, jnp.ones((2, 14, 14, 80)))
    """

    features: int
    expand_channels: int
    num_experts: int
    kernel_size: int = 3
    strides: int = 1
    dilation: int = 1
    padding: PaddingLike = "torch"
    act: str = "relu"
    se_channels: int = 0
    se_act: str = "relu"
    se_gate: str = "sigmoid"
    skip: bool = False
    drop_path: float = 0.0  # stochastic depth of the residual branch (acts only where skip, in training)
    norm: NormConfig = BatchNormConfig()
    axis_name: str | None = None
    dtype: Any | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        bound = bound_kernel_shape(self, ("routing_fn",))
        check_nhwc(x, None if bound is None else bound[0], where(self))
        norm = norm_layer(self.norm, train=train, axis_name=self.axis_name, dtype=self.dtype)
        shortcut = x
        pooled = jnp.mean(x, axis=(1, 2))
        routing_fn = nn.Dense(self.num_experts, dtype=self.dtype, kernel_init=initializers.lecun_normal(),
                              bias_init=initializers.zeros, name="routing_fn")  # fmt: skip
        routing = activation("sigmoid")(routing_fn(pooled))
        x = CondConv(self.expand_channels, self.num_experts, dtype=self.dtype, name="conv_pw")(x, routing)
        x = norm(name="bn1", act=self.act)(x)
        x = CondConv(0, self.num_experts, self.kernel_size, self.strides, self.padding, self.dilation, depthwise=True,
                     dtype=self.dtype, name="conv_dw")(x, routing)  # fmt: skip
        x = norm(name="bn2", act=self.act)(x)
        if self.se_channels:
            x = SqueezeExcite(self.se_channels, self.se_act, self.se_gate, self.dtype, name="se")(x)
        x = CondConv(self.features, self.num_experts, dtype=self.dtype, name="conv_pwl")(x, routing)
        x = norm(name="bn3", act="identity")(x)
        return add_residual(x, shortcut, self.skip, self.drop_path, train)

    @classmethod
    def from_config(cls, config: CondConvResidualConfig, context: BlockContext, name: str) -> CondConvResidual:
        return cls(
            config.out_channels,
            config.expand_channels,
            config.num_experts,
            kernel_size=config.kernel_size,
            strides=config.stride,
            dilation=config.dilation,
            padding=context.padding,
            act=config.act,
            se_channels=config.se_channels,
            se_act=config.se_act,
            se_gate=config.se_gate,
            skip=config.skip,
            drop_path=config.drop_path,
            norm=context.norm,
            axis_name=context.axis_name,
            dtype=context.dtype,
            name=name,
        )


register_block(CondConvResidualConfig, CondConvResidual)
