"""Keep a torch model's pre-activations away from the kinks of its activations, so gradients are well posed.

ReLU, ReLU6, hard-swish and hard-sigmoid are not differentiable at 0, 6 and ±3. A pre-activation whose exact
(float64) value lies within fp32 rounding of a kink can land on the other side of it in an fp32 run, which
switches that element's gradient on or off: one such element made every upstream gradient of a MobileNetV1
look 5-9% off float64, in one framework and one execution mode (eager XLA on an AVX-512 CPU) but not another.
That is rounding meeting a discontinuity, not a wrong gradient, and which run it hits depends on the machine.

:func:`nudge_off_kinks` makes the comparison well posed: in one float64 forward pass it shifts, channel by
channel, the bias that produces each pre-activation (BatchNorm's, or a biased conv's or linear's) by the
smallest amount that keeps every value of that channel at least ``margin`` (relative to the tensor's largest
value) from every kink. The shifts are found in float64 on the model's own input, so every machine draws the
same model; they are small (at most ``max_shift``), so the model stays a random MobileNet.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

KINKS = (-3.0, 0.0, 3.0, 6.0)  # hard-swish / hard-sigmoid, ReLU, ReLU6


def _channel_shift(centres: np.ndarray, margin: float, floor: float, max_shift: float) -> float:
    """The shift ``s`` nearest 0, ``|s| <= max_shift``, at least ``m`` from every one of ``centres`` (the shifts
    that would put one of the channel's values on a kink), for the largest ``m`` in ``margin, margin/2, ...`` that
    allows one; NaN when ``m`` would go below ``floor``. (A channel with many values has small gaps between them,
    but its values carry less rounding.)"""
    centres = np.sort(centres)
    # Free intervals for s: between consecutive centres (and beyond the outermost), shrunk by m at both ends.
    lows, highs = np.concatenate([[-np.inf], centres]), np.concatenate([centres, [np.inf]])
    m = margin
    while m >= floor:
        a, b = np.maximum(lows + m, -max_shift), np.minimum(highs - m, max_shift)
        ok = a <= b
        if ok.any():
            nearest = np.clip(0.0, a[ok], b[ok])
            return float(nearest[np.argmin(np.abs(nearest))])
        m /= 2
    return float("nan")


def _shifts(values: np.ndarray, margin: float, floor: float, max_shift: float) -> np.ndarray:
    """:func:`_channel_shift` for every row of ``values`` (channels x values)."""
    centres = np.asarray(KINKS) - values[..., None]  # s = k - v puts value v on kink k
    near = np.abs(centres) <= max_shift + margin
    return np.array([_channel_shift(c[n], margin, floor, max_shift) for c, n in zip(centres, near, strict=True)])


def _producers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module, torch.nn.Parameter]]:
    """``(name, module whose output to shift, the bias that shifts it)`` for every bias-carrying layer."""
    out = []
    for name, m in model.named_modules():
        bias = getattr(m, "bias", None)
        if not isinstance(bias, torch.nn.Parameter):
            continue
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            # timm's BatchNormAct2d applies its activation inside forward: shift what reaches `drop`, before it.
            out.append((name, m.drop if hasattr(m, "act") and hasattr(m, "drop") else m, bias))
        elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            out.append((name, m, bias))
    return out


@torch.no_grad()
def nudge_off_kinks(
    model: torch.nn.Module,
    x: torch.Tensor,
    *,
    train: bool = True,
    margin: float = 1e-3,
    floor: float = 1e-5,
    max_shift: float = 0.05,
) -> dict[str, float]:
    """Shift ``model``'s biases (in place) so that, on input ``x`` in train (or eval) mode, no pre-activation lies
    near a kink: each channel keeps the largest of ``margin``, ``margin/2``, ... × (its tensor's max |value|) that a
    shift up to ``max_shift`` allows. Returns each layer's smallest margin (relative to its max |value|); fp32
    rounding at that layer is 100-2000 times smaller (MobileNetV1, batch 4, 64²).

    Raises if a channel keeps less than ``floor`` (try a smaller batch).
    """
    reference = copy.deepcopy(model).double().train(train)
    originals = dict(model.named_modules())
    achieved: dict[str, float] = {}
    hooks = []

    def hook_for(name: str, bias: torch.nn.Parameter) -> Any:
        def hook(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
            values = output.detach().transpose(0, 1).reshape(output.shape[1], -1).numpy()  # (channels, values)
            scale = max(float(np.abs(values).max()), 1e-30)
            shifts = _shifts(values, margin * scale, floor * scale, max_shift)
            if np.isnan(shifts).any():
                raise ValueError(f"{name}: no bias shift up to {max_shift} keeps its values {floor:g} from a kink")
            shifts_t = torch.from_numpy(shifts)
            bias.add_(shifts_t)
            originals[name].bias.add_(shifts_t.to(originals[name].bias.dtype))
            shifted = output + shifts_t.view(1, -1, *([1] * (output.ndim - 2)))
            gaps = np.abs(shifted.transpose(0, 1).reshape(output.shape[1], -1).numpy()[..., None] - np.array(KINKS))
            achieved[name] = float(gaps.min()) / scale
            return shifted

        return hook

    for name, module, bias in _producers(reference):
        hooks.append(module.register_forward_hook(hook_for(name, bias)))
    try:
        reference(x.double())
    finally:
        for h in hooks:
            h.remove()
    return achieved
