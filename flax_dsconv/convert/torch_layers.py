"""Reading torch layers (convs, norms, activations) into the settings of a Flax config, checking that they fit."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from flax_dsconv.convert.errors import ConversionError
from flax_dsconv.models.config import Padding
from flax_dsconv.nn import BatchNormConfig
from flax_dsconv.ops.activations import Activation
from flax_dsconv.shapes import listed


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


# The torch classes each rule accepts (by class name, so that timm's subclasses and their lookalikes are explicit).
CONVS = ("Conv2d", "Conv2dSame")
NORMS = ("BatchNorm2d", "BatchNormAct2d")


def expect_type(module: Any, where: str, names: tuple[str, ...], what: str) -> None:
    """Raise unless ``module``'s class is one of ``names``, naming the path, the class found and the expected."""
    found = type(module).__name__
    if found not in names:
        raise ConversionError(f"{where}: {found}, expected {what} ({' or '.join(names)})")


class TorchReader:
    """Reads convs, norms, activations, pooling and dropout off a torch model, checking their types and settings
    and that they fit one Flax config, and records every module it read (``claimed``: ids to paths).

    A reader claims each torch module it accounts for; :func:`unclaimed` then lists every module of the model that
    no rule read, which the reader protocol refuses. So a layer that was swapped, added or re-configured in a way
    the config cannot express is an error naming it, not a silently different model.
    """

    def __init__(self) -> None:
        self.norms: dict[BatchNormConfig, list[str]] = {}  # each setting and the paths that have it
        self.paddings: set[Padding] = set()
        self.claimed: dict[int, str] = {}

    def claim(self, module: Any, where: str) -> None:
        self.claimed[id(module)] = where

    def conv(self, conv: Any, where: str, *, kernel: int | None = None, stride: int | None = None,
             depthwise: bool = False, grouped: bool = False, types: tuple[str, ...] = CONVS,
             same: bool = False) -> dict[str, Any]:  # fmt: skip
        """A conv's settings. ``kernel``/``stride``: the values the config implies (e.g. 1 for a 1x1 conv);
        ``depthwise``: one group per input channel; ``grouped``: any group count, which the config records
        (``groups`` in the result); else a dense conv, one group. ``types``: the conv classes accepted here.
        ``same``: the conv pads TF 'SAME' whatever the model's rule (EfficientNet-X's space-to-depth convs):
        checked, and not counted toward the model's padding."""
        expect_type(conv, where, types, "a convolution")
        k, s, d = conv.kernel_size[0], conv.stride[0], conv.dilation[0]
        if len({*conv.kernel_size}) > 1 or len({*conv.stride}) > 1 or len({*conv.dilation}) > 1:
            raise ConversionError(f"{where}: non-square kernels/strides/dilations are not supported: {conv}")
        for name, got, want in (("kernel_size", k, kernel), ("stride", s, stride)):
            if want is not None and got != want:
                raise ConversionError(f"{where}: {name}={conv.kernel_size if name == 'kernel_size' else conv.stride}"
                                      f", expected {want} at this position")  # fmt: skip
        if k == 1 and d != 1:
            raise ConversionError(f"{where}: a 1x1 conv with dilation={conv.dilation} is not supported")
        groups = conv.in_channels if depthwise else conv.groups if grouped else 1
        if conv.groups != groups or (depthwise and conv.out_channels != conv.in_channels):
            what = "a depthwise conv (groups = in = out channels)" if depthwise else "a dense conv (groups=1)"
            raise ConversionError(f"{where}: groups={conv.groups}, in={conv.in_channels}, out={conv.out_channels}; "
                                  f"expected {what}")  # fmt: skip
        check_zero_padding(conv, where)
        is_same = type(conv).__name__ == "Conv2dSame" or conv.padding == "same" or getattr(conv, "dynamic_padding",
                                                                                           False)  # fmt: skip
        if same:
            if not is_same:
                raise ConversionError(f"{where}: padding {conv.padding}; expected TF 'SAME' (Conv2dSame) here")
        elif is_same:
            self.paddings.add("SAME")
        elif tuple(conv.padding) != (d * (k - 1) // 2,) * 2:
            raise ConversionError(f"{where}: padding {conv.padding} is neither symmetric 'torch' nor TF 'SAME'")
        elif s > 1:
            self.paddings.add("torch")
        self.claim(conv, where)
        return dict(out=conv.out_channels, k=k, s=s, d=d, groups=conv.groups, bias=conv.bias is not None)

    def cond_conv(self, conv: Any, where: str, *, kernel: int | None = None, stride: int | None = None,
                  depthwise: bool = False) -> dict[str, Any]:  # fmt: skip
        """timm's ``CondConv2d``: :meth:`conv`'s settings (its dynamic padding is TF 'SAME'), and ``experts``."""
        return {**self.conv(conv, where, kernel=kernel, stride=stride, depthwise=depthwise, types=("CondConv2d",)),
                "experts": conv.num_experts}  # fmt: skip

    def bn(self, bn: Any, where: str) -> Activation:
        """A BatchNorm (torch's, or timm's BatchNormAct2d with its activation inside); returns that activation
        (``'identity'`` for a plain BatchNorm2d)."""
        expect_type(bn, where, NORMS, "a BatchNorm")
        if not (bn.affine and bn.track_running_stats):
            raise ConversionError(f"{where}: BatchNorm with affine={bn.affine}, track_running_stats="
                                  f"{bn.track_running_stats}; expected both True")  # fmt: skip
        self.norms.setdefault(bn_flax(bn, where), []).append(where)
        self.claim(bn, where)
        if type(bn).__name__ != "BatchNormAct2d":
            return "identity"
        self.identity(bn.drop, f"{where}.drop")
        return self.act(bn.act, f"{where}.act")

    def act(self, module: Any, where: str) -> Activation:
        name = act_name(module, where)
        self.claim(module, where)
        return name

    def identity(self, module: Any, where: str) -> None:
        """A module that must do nothing here (absent, or ``nn.Identity``)."""
        if module is not None:
            expect_type(module, where, ("Identity",), "nothing")
            self.claim(module, where)

    def avg_pool(self, module: Any, where: str) -> None:
        """Global average pooling: ``nn.AdaptiveAvgPool2d(1)``, or timm's ``SelectAdaptivePool2d('avg')``."""
        if type(module).__name__ == "SelectAdaptivePool2d":
            if module.pool_type != "avg":
                raise ConversionError(f"{where}: pool_type={module.pool_type!r}; only global average pooling "
                                      "('avg') is supported")  # fmt: skip
            self.claim(module, where)
            self.avg_pool(module.pool, f"{where}.pool")
            if type(module.flatten).__name__ != "Identity":
                self.flatten(module.flatten, f"{where}.flatten")
            else:
                self.claim(module.flatten, f"{where}.flatten")
            return
        expect_type(module, where, ("AdaptiveAvgPool2d", "SelectAdaptivePool2d"), "global average pooling")
        if module.output_size not in (1, (1, 1)):
            raise ConversionError(f"{where}: output_size={module.output_size}; expected 1 (global pooling)")
        self.claim(module, where)

    def flatten(self, module: Any, where: str) -> None:
        if type(module).__name__ == "Identity":
            self.claim(module, where)
            return
        expect_type(module, where, ("Flatten",), "a flatten")
        if (module.start_dim, module.end_dim) != (1, -1):
            raise ConversionError(f"{where}: Flatten(start_dim={module.start_dim}, end_dim={module.end_dim}); "
                                  "expected start_dim=1, end_dim=-1")  # fmt: skip
        self.claim(module, where)

    def dropout(self, module: Any, where: str) -> float:
        expect_type(module, where, ("Dropout",), "dropout")
        self.claim(module, where)
        return float(module.p)

    def drop_path(self, module: Any, where: str) -> None:
        """Stochastic depth: the Flax blocks have none, so only a disabled one (rate 0, or Identity) converts."""
        if module is None or type(module).__name__ == "Identity":
            self.identity(module, where)
            return
        expect_type(module, where, ("DropPath",), "drop path")
        if module.drop_prob:
            raise ConversionError(f"{where}: drop path (stochastic depth) with rate {module.drop_prob}: the Flax "
                                  "blocks have none; build the torch model with drop_path_rate=0")  # fmt: skip
        self.claim(module, where)

    def linear(self, module: Any, where: str) -> dict[str, Any]:
        expect_type(module, where, ("Linear",), "a linear layer")
        self.claim(module, where)
        return dict(inp=module.in_features, out=module.out_features, bias=module.bias is not None)

    def padding(self) -> Padding:
        if len(self.paddings) > 1:
            raise ConversionError(f"model mixes TF 'SAME' and torch padding on strided convs: {self.paddings}")
        return next(iter(self.paddings), "torch")

    def norm(self) -> BatchNormConfig:
        if len(self.norms) != 1:
            found = [f"eps={n.epsilon:g}, momentum={1 - n.momentum:g} at {listed(paths, 3)}"
                     for n, paths in sorted(self.norms.items(), key=lambda item: -len(item[1]))]  # fmt: skip
            raise ConversionError(f"expected one BatchNorm setting across the model, found {len(found)}: "
                                  + "; ".join(found))  # fmt: skip
        return next(iter(self.norms))


def must_be_claimed(module: Any) -> bool:
    """Whether a reader must account for ``module``: a leaf, or a module holding parameters or buffers itself
    (containers that only hold other modules are accounted for through those)."""
    return not any(True for _ in module.children()) or any(
        True for _ in itertools.chain(module.parameters(recurse=False), module.buffers(recurse=False))
    )


def unclaimed(model: Any, claimed: Mapping[int, str]) -> list[str]:
    """``'path (Class)'`` of each module of ``model`` that must be claimed and was not."""
    return [f"{name or '(the model itself)'} ({type(m).__name__})" for name, m in model.named_modules()
            if must_be_claimed(m) and id(m) not in claimed]  # fmt: skip
