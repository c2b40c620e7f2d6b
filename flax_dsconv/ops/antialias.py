"""Anti-aliased downsampling: a stride-1 conv followed by a low-pass pool that does the striding (Zhang 2019,
"Making Convolutional Networks Shift-Invariant Again"), as timm's ``aa_layer`` does it.

``'avg'``: a ``stride x stride`` average pool with stride ``stride``, no padding, the remainder dropped (torch's
``AvgPool2d(stride)``). ``'blur'``: a depthwise binomial filter (``[1, 2, 1] / 4`` outer itself for size 3),
zero-padded by ``((stride - 1) + (size - 1)) // 2`` per side, at stride ``stride`` (timm's ``BlurPool2d`` with
``pad_mode='constant'``, its ``'blurpc'``).
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import numpy as np

Array = jax.Array
AntiAlias = Literal["none", "avg", "blur"]
ANTI_ALIAS: tuple[AntiAlias, ...] = ("none", "avg", "blur")
BLUR_SIZE = 3  # timm's BlurPool2d default, the only size its models use


def binomial_filter(size: int = BLUR_SIZE) -> np.ndarray:
    """The ``size x size`` binomial low-pass filter, summing to 1: row ``C(size - 1, k) / 2^(size - 1)``, outer
    itself."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise ValueError(f"a binomial filter needs an int size >= 2, got {size!r}")
    row = np.array([math.comb(size - 1, k) for k in range(size)], np.float64) / 2 ** (size - 1)
    return np.outer(row, row)


def blur_pool(x: Array, stride: int = 2, size: int = BLUR_SIZE) -> Array:
    """NHWC ``x`` blurred per channel by :func:`binomial_filter` and subsampled by ``stride``, zero-padded as
    timm pads."""
    pad = ((stride - 1) + (size - 1)) // 2
    # Built in numpy: a constant, never an eager computation per channel count.
    kernel = np.broadcast_to(binomial_filter(size).astype(x.dtype)[:, :, None, None], (size, size, 1, x.shape[-1]))
    return jax.lax.conv_general_dilated(x, kernel, window_strides=(stride, stride), padding=((pad, pad), (pad, pad)),  # type: ignore[arg-type]
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=x.shape[-1])  # fmt: skip


def avg_pool(x: Array, stride: int = 2) -> Array:
    """NHWC ``x`` averaged over ``stride x stride`` windows at stride ``stride`` (a partial last window dropped)."""
    window = (1, stride, stride, 1)
    # A constant zero init (not a traced one), so that JAX sees a window sum and differentiates it.
    total = jax.lax.reduce_window(x, np.zeros((), x.dtype), jax.lax.add, window, window, "VALID")
    return total / stride**2


def anti_alias(x: Array, kind: str, stride: int) -> Array:
    """``x`` downsampled by ``stride`` as ``kind`` says (``'none'``: unchanged; the conv before it strided)."""
    if kind == "none":
        return x
    if kind == "avg":
        return avg_pool(x, stride)
    if kind == "blur":
        return blur_pool(x, stride)
    raise ValueError(f"anti-aliasing must be one of {ANTI_ALIAS}, got {kind!r}")


def check_anti_alias(kind: str, stride: int, where: str) -> None:
    """Raise unless ``kind`` is known and, when set, ``stride`` > 1 (an anti-aliasing pool only downsamples)."""
    if kind not in ANTI_ALIAS:
        raise ValueError(f"{where}: aa must be one of {ANTI_ALIAS}, got {kind!r}")
    if kind != "none" and stride < 2:
        raise ValueError(f"{where}: aa={kind!r} with stride={stride}; anti-aliased downsampling needs stride >= 2 "
                         "(the conv runs at stride 1, the pool strides)")  # fmt: skip
