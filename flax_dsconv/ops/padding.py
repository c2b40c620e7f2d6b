"""Padding conventions, decided in one place.

PyTorch pads symmetrically with an integer ``p``; TensorFlow's ``'SAME'`` pads just enough for
``ceil(n / s)`` outputs and puts the odd pixel at the bottom/right. The two agree in shape but not in
values for stride 2 on even inputs, so every conv in this package takes a padding *mode* and resolves
it here:

* ``'torch'``: symmetric ``dilation * (kernel - 1) // 2`` per side (torchvision's rule; equal to timm's
  ``((s - 1) + d * (k - 1)) // 2`` for the odd kernels MobileNets use).
* ``'SAME'`` / ``'VALID'``: XLA's TF-style padding, needed for TF-ported weights (timm ``tf_*``).
* an ``int`` ``p``: symmetric ``p`` on both spatial axes (what ``nn.Conv2d(padding=p)`` does).
* explicit pairs ``((top, bottom), (left, right))``.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import jax

PaddingLike = str | int | Sequence[tuple[int, int]]
ResolvedPadding = str | tuple[tuple[int, int], ...]

_MODES = ("torch", "SAME", "VALID")


def torch_symmetric_padding(kernel_size: int, dilation: int = 1) -> int:
    """Per-side padding that keeps the size at stride 1, as ``nn.Conv2d(padding=...)`` in torchvision."""
    return dilation * (kernel_size - 1) // 2


def int_index(v: Any) -> int:
    """``operator.index(v)``, refusing bools (ints to Python, never meant as sizes)."""
    if isinstance(v, bool):
        raise TypeError(f"{v!r} is a bool")
    return operator.index(v)


def resolve_padding(padding: PaddingLike, kernel_size: Sequence[int], dilation: Sequence[int]) -> ResolvedPadding:
    """Turn a padding spec into what ``lax.conv_general_dilated`` takes: ``'SAME'``, ``'VALID'`` or pairs."""
    if isinstance(padding, str):
        if padding == "torch":
            pads = (torch_symmetric_padding(k, d) for k, d in zip(kernel_size, dilation, strict=True))
            return tuple((p, p) for p in pads)
        if padding.upper() in ("SAME", "VALID"):
            return padding.upper()
        raise ValueError(f"unknown padding mode {padding!r}; expected one of {_MODES}, an int or pairs")
    if isinstance(padding, bool):  # an int to Python, but never meant as a padding
        raise ValueError(f"padding must be a mode {_MODES}, an int or pairs, got {padding!r}")
    if isinstance(padding, int):
        if padding < 0:
            raise ValueError(f"padding must be non-negative, got {padding}")
        return tuple((padding, padding) for _ in kernel_size)
    expected = f"explicit padding must be {len(kernel_size)} (low, high) pairs of non-negative ints, got {padding!r}"
    try:
        pairs = tuple(tuple(int_index(v) for v in pair) for pair in padding)
    except TypeError:  # not iterable, or a float / bool / non-integer entry
        raise ValueError(f"padding must be a mode {_MODES}, an int or pairs; {expected}") from None
    if len(pairs) != len(kernel_size) or any(len(pair) != 2 or min(pair) < 0 for pair in pairs):
        raise ValueError(expected)
    return pairs  # type: ignore[return-value]


# One spatial axis of a conv window: (kernel size, stride, dilation, padding before, padding after).
Axis = tuple[int, int, int, int, int]


def output_size(size: int, axis: Axis) -> int:
    """Output positions along one axis of an input of ``size``."""
    k, s, d, lo, hi = axis
    return (size + lo + hi - (k - 1) * d - 1) // s + 1


def as_pair(v: int | Sequence[int], name: str = "value") -> tuple[int, int]:
    """``v`` as a pair of positive ints (kernel sizes, strides, dilations), or a ValueError naming ``name``."""
    try:
        t = (int_index(v),) * 2 if not isinstance(v, Sequence) else tuple(int_index(x) for x in v)
    except TypeError:
        t = ()
    if len(t) != 2 or min(t) < 1:
        raise ValueError(f"{name} must be a positive int or a pair of them, got {v!r}")
    return t[0], t[1]


def explicit_pads(
    shape: Sequence[int], kernel_size: Sequence[int], strides: Sequence[int], padding: Any, dilation: Sequence[int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(low, high)`` zero padding per spatial axis of an NHWC ``shape``, for resolved ``padding`` (pairs,
    ``'SAME'``, ``'VALID'``)."""
    if isinstance(padding, str):
        window = tuple((k - 1) * d + 1 for k, d in zip(kernel_size, dilation, strict=True))
        padding = jax.lax.padtype_to_pads(tuple(shape[1:3]), window, tuple(strides), padding)
    (top, bottom), (left, right) = padding
    return (int(top), int(bottom)), (int(left), int(right))


def window_axes(
    shape: Sequence[int], kernel_size: Sequence[int], strides: Sequence[int], padding: Any, dilation: Sequence[int]
) -> tuple[Axis, Axis]:
    """A conv's window per spatial axis of an NHWC ``shape``, padding made explicit."""
    (kh, kw), (sh, sw), (dh, dw) = kernel_size, strides, dilation
    (top, bottom), (left, right) = explicit_pads(shape, kernel_size, strides, padding, dilation)
    return (kh, sh, dh, top, bottom), (kw, sw, dw, left, right)


def past_reach(
    pads: Sequence[tuple[int, int]], kernel_size: Sequence[int], dilation: Sequence[int]
) -> list[tuple[int, int]]:
    """Per spatial axis, how far explicit ``(low, high)`` padding reaches past the kernel's reach ``(k - 1)·d``.

    XLA:CPU computes the input gradient of a conv padded that far (a conv with negative padding) from memory
    outside the cotangent (openxla/xla#48713: NaN or 1e30 gradients at up to 16 channels).
    """
    reach = [(k - 1) * d for k, d in zip(kernel_size, dilation, strict=True)]
    return [(max(lo - r, 0), max(hi - r, 0)) for (lo, hi), r in zip(pads, reach, strict=True)]


def check_window_fits(shape: Sequence[int], axes: tuple[Axis, Axis], where: str) -> None:
    """Raise where the padded input is smaller than the kernel's (dilated) window: there is no output pixel.

    PyTorch raises here too; XLA's conv would return an empty array.
    """
    sizes = tuple(shape[1:3])
    if all(output_size(size, axis) >= 1 for size, axis in zip(sizes, axes, strict=True)):
        return
    padded = "x".join(str(size + lo + hi) for size, (_, _, _, lo, hi) in zip(sizes, axes, strict=True))
    window = "x".join(str((k - 1) * d + 1) for k, _, d, _, _ in axes)
    raise ValueError(
        f"{where}: input {sizes[0]}x{sizes[1]} (padded: {padded}) is smaller than the kernel's {window} window, "
        f"so there is no output; got shape {tuple(shape)}"
    )
