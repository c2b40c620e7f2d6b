"""The timm reader's anti-aliased downsampling: a block's or a ConvNormAct's ``aa`` (``AvgPool2d`` or
``BlurPool2d``), read structurally, and the stride it moves off the conv before it."""

from __future__ import annotations

from typing import Any

import numpy as np

from flax_dsconv.convert.errors import ConversionError
from flax_dsconv.convert.torch_layers import TorchReader, expect_type
from flax_dsconv.ops.antialias import BLUR_SIZE, AntiAlias, binomial_filter


def read_anti_alias(r: TorchReader, aa: Any, where: str) -> tuple[AntiAlias, int]:
    """timm's anti-aliasing layer (a block's or a ConvNormAct's ``aa``) and the stride it downsamples by: none
    (absent or ``Identity``; stride 1), ``AvgPool2d(s)`` (``'avg'``: window s, stride s, no padding, floor) or
    ``BlurPool2d`` with zero padding and the 3x3 binomial filter (``'blur'``, timm's ``'blurpc'``)."""
    kind = type(aa).__name__
    if kind in ("NoneType", "Identity"):
        r.identity(aa, where)
        return "none", 1
    if kind == "AvgPool2d":
        stride = aa.stride if isinstance(aa.stride, int) else aa.stride[0]
        settings = (aa.kernel_size, aa.stride, aa.padding, aa.ceil_mode, aa.divisor_override)
        if settings not in ((stride, stride, 0, False, None), ((stride,) * 2, (stride,) * 2, 0, False, None)):
            raise ConversionError(f"{where}: {aa} (ceil_mode={aa.ceil_mode}, divisor_override={aa.divisor_override}); "
                                  "expected AvgPool2d(s) with stride s, no padding, ceil_mode=False (timm's 'avg' "
                                  "anti-aliasing)")  # fmt: skip
        r.claim(aa, where)
        return "avg", stride
    expect_type(aa, where, ("AvgPool2d", "BlurPool2d"), "anti-aliasing")
    pad = ((aa.stride - 1) + (BLUR_SIZE - 1)) // 2
    if (aa.filt_size, aa.pad_mode, list(aa.padding)) != (BLUR_SIZE, "constant", [pad] * 4):
        raise ConversionError(f"{where}: BlurPool2d(filt_size={aa.filt_size}, pad_mode={aa.pad_mode!r}, padding="
                              f"{aa.padding}); expected filt_size={BLUR_SIZE}, pad_mode='constant', padding "
                              f"{[pad] * 4} (timm's 'blurpc')")  # fmt: skip
    if not aa.filt.is_meta and not np.allclose(aa.filt.double().numpy(), binomial_filter(BLUR_SIZE), rtol=0,
                                                atol=1e-7):  # fmt: skip
        raise ConversionError(f"{where}: BlurPool2d's filter is not the {BLUR_SIZE}x{BLUR_SIZE} binomial one")
    r.claim(aa, where)
    return "blur", aa.stride


def with_aa_stride(conv: dict[str, Any], aa: tuple[AntiAlias, int], where: str) -> dict[str, Any]:
    """A conv's settings with the block's stride: its own, or with anti-aliasing the pool's (the conv then at 1)."""
    kind, stride = aa
    if kind == "none":
        return {**conv, "aa": kind}
    if conv["s"] != 1:
        raise ConversionError(f"{where}: stride {conv['s']} before {kind} anti-aliasing; expected 1 (the pool "
                              "downsamples)")  # fmt: skip
    return {**conv, "s": stride, "aa": kind}


def refuse_anti_alias(aa: tuple[AntiAlias, int], where: str, block: str) -> None:
    """Refuse anti-aliasing read off a ``block`` that has no place for it."""
    if aa[0] != "none":
        raise ConversionError(f"{where}.aa: anti-aliased downsampling ({aa[0]}) in a {block} is not supported")
