"""Reading torch layers (convs, norms, activations) into the settings of a Flax config, checking that they fit."""

from __future__ import annotations

from typing import Any

from flax_dsconv.convert.errors import ConversionError
from flax_dsconv.models.config import Padding
from flax_dsconv.nn import BatchNormConfig
from flax_dsconv.ops.activations import Activation


def bn_flax(bn: Any, where: str) -> BatchNormConfig:
    if bn.momentum is None:
        raise ConversionError(f"{where}: BatchNorm momentum=None (cumulative average) has no Flax equivalent")
    return BatchNormConfig(momentum=1.0 - bn.momentum, epsilon=bn.eps)


ACT_CLASSES: dict[str, Activation] = {
    "ReLU": "relu",
    "ReLU6": "relu6",
    "Hardswish": "hard_swish",
    "HardSwish": "hard_swish",
    "HardSwishMe": "hard_swish",
    "Hardsigmoid": "hard_sigmoid",
    "HardSigmoid": "hard_sigmoid",
    "HardSigmoidMe": "hard_sigmoid",
    "SiLU": "silu",
    "Swish": "silu",
    "Sigmoid": "sigmoid",
    "Identity": "identity",
}


def act_name(module: Any, where: str) -> Activation:
    name = type(module).__name__
    if name not in ACT_CLASSES:
        raise ConversionError(f"{where}: unsupported activation {name}; supported: {sorted(ACT_CLASSES)}")
    return ACT_CLASSES[name]


def check_zero_padding(conv: Any, where: str) -> None:
    if getattr(conv, "padding_mode", "zeros") != "zeros":
        raise ConversionError(f"{where}: padding_mode={conv.padding_mode!r}; only zero padding is supported")


class TorchReader:
    """Reads convs, norms and activations off a torch model, checking they fit one Flax config."""

    def __init__(self) -> None:
        self.norms: set[BatchNormConfig] = set()
        self.paddings: set[Padding] = set()

    def conv(self, conv: Any, where: str) -> dict[str, Any]:
        k, s, d = conv.kernel_size[0], conv.stride[0], conv.dilation[0]
        if len({*conv.kernel_size}) > 1 or len({*conv.stride}) > 1 or len({*conv.dilation}) > 1:
            raise ConversionError(f"{where}: non-square kernels/strides/dilations are not supported: {conv}")
        check_zero_padding(conv, where)
        if type(conv).__name__ == "Conv2dSame" or conv.padding == "same":
            self.paddings.add("SAME")
        elif tuple(conv.padding) != (d * (k - 1) // 2,) * 2:
            raise ConversionError(f"{where}: padding {conv.padding} is neither symmetric 'torch' nor TF 'SAME'")
        elif s > 1:
            self.paddings.add("torch")
        return dict(out=conv.out_channels, k=k, s=s, d=d, groups=conv.groups, bias=conv.bias is not None)

    def bn(self, bn: Any, where: str) -> None:
        self.norms.add(bn_flax(bn, where))

    def padding(self) -> Padding:
        if len(self.paddings) > 1:
            raise ConversionError(f"model mixes TF 'SAME' and torch padding on strided convs: {self.paddings}")
        return next(iter(self.paddings), "torch")

    def norm(self) -> BatchNormConfig:
        if len(self.norms) != 1:
            raise ConversionError(f"expected one BatchNorm setting across the model, found {self.norms}")
        return next(iter(self.norms))
