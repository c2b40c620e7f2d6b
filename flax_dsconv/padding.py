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
