"""Convolution layers: depthwise, pointwise (1x1) and dense k x k, NHWC with Flax's kernel layout.

Kernels are ``(kh, kw, in // groups, out)`` plain Flax params; padding takes this package's modes
(:mod:`flax_dsconv.ops.padding`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax.linen.dtypes import promote_dtype

from flax_dsconv.nn import initializers
from flax_dsconv.nn.common import bound_kernel_shape, check_nhwc, where
from flax_dsconv.ops.depthwise import depthwise, pad_for_depthwise
from flax_dsconv.ops.padding import PaddingLike, as_pair, check_window_fits, past_reach, resolve_padding, window_axes
from flax_dsconv.ops.pointwise import pointwise
from flax_dsconv.ops.sharding import vary_like

Array = jax.Array
Dtype = Any

# torchvision's MobileNet init: He-normal over fan-out for convs.
conv_kernel_init = initializers.he_normal_fan_out()


class DepthwiseConv(nn.Module):
    """Depthwise 2-D convolution: one ``kernel_size`` filter per input channel (times ``depth_multiplier``).

    Kernel shape ``(kh, kw, 1, C * depth_multiplier)``, ``feature_group_count = C``; output channel
    ``c * m + j`` comes from input channel ``c``, as in PyTorch's ``groups=C`` conv. Padding defaults to
    PyTorch's symmetric rule; ``'SAME'`` is TF's (see :mod:`flax_dsconv.ops.padding`).

    ``implementation``: ``'xla'`` is XLA's grouped convolution (the reference, fast on GPU/TPU);
    ``'shifted'`` sums k² strided slices times per-channel weights (fast on CPU); ``'pallas'`` runs the
    Triton kernels of :mod:`flax_dsconv.ops.pallas` on a GPU (depth multiplier 1; other multipliers use
    ``'xla'``; ``precision`` applies to ``'xla'`` only); ``'auto'`` picks ``'shifted'`` on the CPU backend
    and ``'xla'`` elsewhere. Parameters are identical for all of them.
    ``'shifted'`` and ``'pallas'`` have hand-written VJPs: reverse-mode autodiff only (no ``jax.jvp``).

    >>> y, _ = DepthwiseConv(kernel_size=3, strides=2).init_with_output(key, jnp.ones((1, 64, 64, 32)))
    >>> y.shape
    (1, 32, 32, 32)
    """

    kernel_size: int | Sequence[int] = 3
    strides: int | Sequence[int] = 1
    padding: PaddingLike = "torch"
    dilation: int | Sequence[int] = 1
    depth_multiplier: int = 1
    use_bias: bool = False
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    kernel_init: Callable = conv_kernel_init
    bias_init: Callable = initializers.zeros
    implementation: str = "auto"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        bound = bound_kernel_shape(self)
        check_nhwc(x, None if bound is None else bound[-1] // self.depth_multiplier, where(self))
        kernel_size, dilation = as_pair(self.kernel_size, "kernel_size"), as_pair(self.dilation, "dilation")
        multiplier = self.depth_multiplier
        if isinstance(multiplier, bool) or not isinstance(multiplier, int) or multiplier < 1:
            raise ValueError(f"depth_multiplier must be a positive int, got {self.depth_multiplier!r}")
        features = x.shape[-1] * multiplier
        kernel = self.param("kernel", self.kernel_init, (*kernel_size, 1, features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        strides, padding = as_pair(self.strides, "strides"), resolve_padding(self.padding, kernel_size, dilation)
        (kernel,) = vary_like(x, kernel)
        check_window_fits(x.shape, window_axes(x.shape, kernel_size, strides, padding, dilation), where(self))
        y = depthwise(x, kernel, strides, padding, dilation, multiplier=multiplier,
                      implementation=self.implementation, precision=self.precision)  # fmt: skip
        return y if bias is None else y + bias


class PointwiseConv(nn.Module):
    """1x1 convolution as a channel contraction (``dot_general``), kernel ``(1, 1, in, out)``.

    ``strides`` subsamples and an integer ``padding`` zero-pads first, exactly as
    ``nn.Conv2d(kernel_size=1, stride=s, padding=p)`` does (the seed's ``DSConv`` uses ``padding=1``).

    >>> PointwiseConv(128).init_with_output(key, jnp.ones((1, 64, 64, 32)))[0].shape
    (1, 64, 64, 128)
    """

    features: int
    strides: int | Sequence[int] = 1
    padding: PaddingLike = 0
    use_bias: bool = False
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    kernel_init: Callable = conv_kernel_init
    bias_init: Callable = initializers.zeros

    @nn.compact
    def __call__(self, x: Array) -> Array:
        bound = bound_kernel_shape(self)
        check_nhwc(x, None if bound is None else bound[-2], where(self))
        kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        pads = resolve_padding(self.padding, (1, 1), (1, 1))
        if not isinstance(pads, str) and any(p for pair in pads for p in pair):
            x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
        sh, sw = as_pair(self.strides, "strides")
        if (sh, sw) != (1, 1):
            x = x[:, ::sh, ::sw, :]
        (kernel,) = vary_like(x, kernel)
        y = pointwise(x, kernel[0, 0], self.precision)
        return y if bias is None else y + bias


def split_channels(channels: int, splits: int) -> tuple[int, ...]:
    """``channels`` in ``splits`` groups as MixNet splits them (timm's ``_split_channels``): equal, with the
    remainder added to the first. ``split_channels(10, 3) == (4, 3, 3)``."""
    if isinstance(splits, bool) or not isinstance(splits, int) or not 1 <= splits <= channels:
        raise ValueError(f"cannot split {channels} channels into {splits!r} groups; expected 1 to {channels}")
    return (channels // splits + channels % splits, *(channels // splits,) * (splits - 1))


def check_group_size(group_size: int, kernel_sizes: Sequence[int], where: str) -> None:
    """A depthwise conv's ``group_size`` (channels per group; 1: depthwise) is a positive int, and 1 with mixed
    kernels (MixNet's groups are split by kernel size, each depthwise)."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"{where}: group_size must be a positive int (1: depthwise), got {group_size!r}")
    if group_size != 1 and kernel_sizes:
        raise ValueError(f"{where}: group_size={group_size} with mixed kernel_sizes={tuple(kernel_sizes)}; a mixed "
                         "depthwise conv has one channel per group")  # fmt: skip


def check_mixed_kernels(kernel_size: int, kernel_sizes: Sequence[int], where: str) -> tuple[int, ...]:
    """``kernel_sizes`` as a tuple, after checking it holds positive ints and that ``kernel_size`` is its largest
    (the block's reach); empty means one kernel, ``kernel_size``."""
    sizes = tuple(kernel_sizes)
    if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in sizes):
        raise ValueError(f"{where}: kernel_sizes must be positive ints, got {kernel_sizes!r}")
    if sizes and kernel_size != max(sizes):
        raise ValueError(f"{where}: kernel_size={kernel_size} with kernel_sizes={sizes}; expected kernel_size = "
                         f"{max(sizes)}, the largest")  # fmt: skip
    return sizes


def _splits_of(x: Array, sizes: Sequence[int]) -> list[Array]:
    return jnp.split(x, np.cumsum(sizes)[:-1].tolist(), axis=-1)


class MixedDepthwiseConv(nn.Module):
    """Mixed depthwise convolution (MixConv, Tan & Le 2019): the input channels split into one group per kernel size
    (:func:`split_channels`), each group a :class:`DepthwiseConv` of its size, named ``'0'``, ``'1'``, ...; the
    outputs concatenated in order. timm's ``MixedConv2d(depthwise=True)``, key for key (``conv_dw.0.weight``).

    Each group gets its own padding (``'torch'``: ``((s - 1) + d·(k - 1)) // 2`` for its ``k``; ``'SAME'``: TF's for
    its ``k``), so all groups give one output size. On the ``'shifted'`` path each group is padded first, as the
    blocks pad a single depthwise conv (:func:`~flax_dsconv.ops.depthwise.pad_for_depthwise`).

    >>> MixedDepthwiseConv((3, 5, 7), strides=2).init_with_output(key, jnp.ones((1, 32, 32, 48)))[0].shape
    (1, 16, 16, 48)
    """

    kernel_sizes: Sequence[int]
    strides: int = 1
    padding: PaddingLike = "torch"
    dilation: int = 1
    dtype: Dtype | None = None
    precision: Any = None
    implementation: str = "auto"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        sizes = tuple(self.kernel_sizes)
        if not sizes:
            raise ValueError(f"{where(self)}: kernel_sizes is empty; expected one kernel size per group")
        bound = [bound_kernel_shape(self, (str(i),)) for i in range(len(sizes))]
        check_nhwc(x, None if None in bound else sum(b[-1] for b in bound if b), where(self))
        outputs = []
        for i, (k, part) in enumerate(zip(sizes, _splits_of(x, split_channels(x.shape[-1], len(sizes))),
                                          strict=True)):  # fmt: skip
            part, padding = pad_for_depthwise(part, k, self.strides, self.padding, self.dilation, self.implementation)
            outputs.append(DepthwiseConv(k, self.strides, padding, self.dilation, dtype=self.dtype,
                                         precision=self.precision, implementation=self.implementation,
                                         name=str(i))(part))  # fmt: skip
        return jnp.concatenate(outputs, axis=-1)


class MixedPointwiseConv(nn.Module):
    """A grouped 1x1 convolution as MixNet builds it (timm's ``MixedConv2d`` of 1x1 kernels): input and output
    channels each split by :func:`split_channels` into ``splits`` groups, group ``i`` a :class:`PointwiseConv`
    named ``str(i)`` from its input part to its output part; the outputs concatenated.

    >>> MixedPointwiseConv(96, splits=2).init_with_output(key, jnp.ones((1, 8, 8, 16)))[0].shape
    (1, 8, 8, 96)
    """

    features: int
    splits: int = 2
    dtype: Dtype | None = None
    precision: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        bound = [bound_kernel_shape(self, (str(i),)) for i in range(self.splits)]
        check_nhwc(x, None if None in bound else sum(b[-2] for b in bound if b), where(self))
        parts = _splits_of(x, split_channels(x.shape[-1], self.splits))
        outs = split_channels(self.features, self.splits)
        return jnp.concatenate([PointwiseConv(f, dtype=self.dtype, precision=self.precision, name=str(i))(part)
                                for i, (f, part) in enumerate(zip(outs, parts, strict=True))], axis=-1)  # fmt: skip


def block_depthwise(x: Array, kernel_size: int, kernel_sizes: Sequence[int], strides: int, padding: PaddingLike,
                    dilation: int, *, implementation: str, dtype: Dtype | None = None, use_bias: bool = False,
                    group_size: int = 1, name: str = "conv_dw") -> Array:  # fmt: skip
    """A block's depthwise conv applied to ``x`` (call it inside the block's compact ``__call__``): one
    :class:`DepthwiseConv`, its input padded first as :func:`~flax_dsconv.ops.depthwise.pad_for_depthwise` says, or
    with ``kernel_sizes`` a :class:`MixedDepthwiseConv` (which pads each group itself; no bias).

    ``group_size`` > 1 makes it a grouped conv of ``group_size`` channels per group (timm's ``group_size``; the
    ``_g8``/``_g16`` models), in = out channels: lax's grouped convolution (:func:`full_conv`), whatever
    ``implementation`` says (the depthwise kernels are for one channel per group)."""
    if group_size != 1:
        if kernel_sizes or x.shape[-1] % group_size:
            raise ValueError(f"{name}: a grouped conv of group_size={group_size} needs one kernel and input channels "
                             f"that split into such groups, got {x.shape[-1]} channels, kernel_sizes="
                             f"{tuple(kernel_sizes)}")  # fmt: skip
        return full_conv(x.shape[-1], kernel_size, strides, padding, dilation, groups=x.shape[-1] // group_size,
                         use_bias=use_bias, dtype=dtype, name=name)(x)  # fmt: skip
    if kernel_sizes:
        return MixedDepthwiseConv(kernel_sizes, strides, padding, dilation, dtype=dtype, implementation=implementation,
                                  name=name)(x)  # fmt: skip
    x, padding = pad_for_depthwise(x, kernel_size, strides, padding, dilation, implementation)
    return DepthwiseConv(kernel_size, strides, padding, dilation, use_bias=use_bias, dtype=dtype,
                         implementation=implementation, name=name)(x)  # fmt: skip


def pointwise_conv(features: int, splits: int = 1, *, dtype: Dtype | None = None, name: str | None = None
                   ) -> nn.Module:  # fmt: skip
    """A block's 1x1 conv: a :class:`PointwiseConv`, or with ``splits`` > 1 a :class:`MixedPointwiseConv`."""
    if splits == 1:
        return PointwiseConv(features, dtype=dtype, name=name)
    return MixedPointwiseConv(features, splits, dtype=dtype, name=name)


def full_conv(
    features: int,
    kernel_size: int,
    strides: int = 1,
    padding: PaddingLike = "torch",
    dilation: int = 1,
    *,
    groups: int = 1,
    use_bias: bool = False,
    dtype: Dtype | None = None,
    name: str | None = None,
) -> nn.Conv:
    """A k x k ``nn.Conv``, dense unless grouped (kernel ``(k, k, in // groups, out)``), with this package's
    padding modes.

    ``groups`` splits input and output channels into that many groups, each convolved on its own (torch's
    ``groups``, Flax's ``feature_group_count``; both frameworks order the groups alike). The initializer sees the
    grouped kernel shape, so its fans are the ones torch's ``kaiming_normal_`` computes for the same conv:
    ``k·k·in/groups`` in, ``k·k·out`` out.

    Padding past the kernel's reach ``(k - 1)·d`` raises: XLA:CPU computes the input gradient of such a conv
    from memory outside its buffer (see :func:`~flax_dsconv.ops.padding.past_reach`). Pad the input with
    ``jnp.pad`` instead.
    """
    kernel, dil = as_pair(kernel_size, "kernel_size"), as_pair(dilation, "dilation")
    resolved = resolve_padding(padding, kernel, dil)
    if not isinstance(resolved, str) and any(lo or hi for lo, hi in past_reach(resolved, kernel, dil)):
        reach = tuple((k - 1) * d for k, d in zip(kernel, dil, strict=True))
        raise ValueError(
            f"full_conv: padding {padding!r} reaches past the {kernel[0]}x{kernel[1]} kernel's "
            f"{reach} pixels; XLA:CPU gets the input gradient of such a conv wrong "
            "(openxla/xla#48713): pad the input with jnp.pad first"
        )
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or features % groups:
        raise ValueError(f"full_conv: groups must be a positive int dividing features={features}, got {groups!r}")
    return nn.Conv(
        features,
        kernel,
        strides=as_pair(strides, "strides"),
        padding=resolved,
        kernel_dilation=dil,
        feature_group_count=groups,
        use_bias=use_bias,
        dtype=dtype,
        kernel_init=conv_kernel_init,
        bias_init=initializers.zeros,
        name=name,
    )

