"""Reading torch layers (convs, norms, activations) into the settings of a Flax config, checking that they fit."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from flax_dsconv.convert.errors import ConversionError
from flax_dsconv.models.config import Padding
from flax_dsconv.nn import BatchNormConfig, EvoNormS0Config, GroupNormConfig, LayerNormConfig, NormConfig
from flax_dsconv.nn.norm import EVONORM_ACT
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
    "GELU": "gelu",  # torch's (approximate='none' only: checked in act_name) and timm's, both exact (erf)
    "Identity": "identity",
}


def act_name(module: Any, where: str) -> Activation:
    name = type(module).__name__
    if name not in ACT_CLASSES:
        raise ConversionError(f"{where}: unsupported activation {name}; supported: {sorted(ACT_CLASSES)}")
    approximate = getattr(module, "approximate", "none")
    if name == "GELU" and approximate != "none":
        raise ConversionError(f"{where}: GELU(approximate={approximate!r}); only the exact GELU "
                              "(approximate='none', erf) is supported")  # fmt: skip
    return ACT_CLASSES[name]


def check_zero_padding(conv: Any, where: str) -> None:
    if getattr(conv, "padding_mode", "zeros") != "zeros":
        raise ConversionError(f"{where}: padding_mode={conv.padding_mode!r}; only zero padding is supported")


# The torch classes each rule accepts (by class name, so that timm's subclasses and their lookalikes are explicit).
CONVS = ("Conv2d", "Conv2dSame")
NORMS = ("BatchNorm2d", "BatchNormAct2d")
# timm's other norm-act layers a model may use in place of BatchNorm (norm_layer=), each holding its activation.
OTHER_NORMS = ("GroupNormAct", "LayerNormAct2d", "EvoNorm2dS0")


def _other_norm(norm: Any, where: str) -> tuple[str, float, int, int]:
    """A GroupNormAct / LayerNormAct2d / EvoNorm2dS0's kind, epsilon, group count and channels (one group for
    LayerNorm), checking it is affine over NCHW channels."""
    name = type(norm).__name__
    if name == "LayerNormAct2d":
        if not norm.elementwise_affine or norm.bias is None or len(norm.normalized_shape) != 1:
            raise ConversionError(f"{where}: LayerNormAct2d with elementwise_affine={norm.elementwise_affine}, "
                                  f"bias={norm.bias is not None}, normalized_shape={tuple(norm.normalized_shape)}; "
                                  "expected an affine norm over the channels")  # fmt: skip
        return "layer", norm.eps, 1, norm.normalized_shape[0]
    if name == "GroupNormAct":
        if not norm.affine:
            raise ConversionError(f"{where}: GroupNormAct with affine=False; expected affine")
        return "group", norm.eps, norm.num_groups, norm.num_channels
    return "evonorm_s0", norm.eps, norm.groups, norm.weight.shape[0]


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
        self.other_norms: list[tuple[str, tuple[str, float, int, int]]] = []  # (path, _other_norm's reading)
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
        """A model's norm: a BatchNorm (torch's, or timm's BatchNormAct2d with its activation inside), or timm's
        GroupNormAct, LayerNormAct2d or EvoNorm2dS0 in its place; returns the activation inside (``'identity'``
        for a plain BatchNorm2d; an EvoNorm2dS0's own nonlinearity reads as ``'silu'``, see
        :class:`~flax_dsconv.nn.EvoNormS0`)."""
        if type(bn).__name__ in OTHER_NORMS:
            self.other_norms.append((where, _other_norm(bn, where)))
            self.claim(bn, where)
            if type(bn).__name__ == "EvoNorm2dS0":
                return EVONORM_ACT if bn.apply_act else "identity"
            self.identity(bn.drop, f"{where}.drop")
            return self.act(bn.act, f"{where}.act")
        expect_type(bn, where, NORMS + OTHER_NORMS, "a norm")
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

    def drop_path(self, module: Any, where: str) -> float:
        """timm's stochastic depth (``DropPath``; absent or Identity: none): its rate, which must scale the kept
        examples by ``1 / (1 - rate)`` as the Flax blocks do."""
        if module is None or type(module).__name__ == "Identity":
            self.identity(module, where)
            return 0.0
        expect_type(module, where, ("DropPath",), "drop path")
        if not getattr(module, "scale_by_keep", True):
            raise ConversionError(f"{where}: DropPath(scale_by_keep=False) does not rescale the kept examples; "
                                  "the Flax blocks' stochastic depth does (timm's default)")  # fmt: skip
        self.claim(module, where)
        return float(module.drop_prob)

    def linear(self, module: Any, where: str) -> dict[str, Any]:
        expect_type(module, where, ("Linear",), "a linear layer")
        self.claim(module, where)
        return dict(inp=module.in_features, out=module.out_features, bias=module.bias is not None)

    def padding(self) -> Padding:
        if len(self.paddings) > 1:
            raise ConversionError(f"model mixes TF 'SAME' and torch padding on strided convs: {self.paddings}")
        return next(iter(self.paddings), "torch")

    def norm(self) -> NormConfig:
        if self.other_norms:
            return self._other_norm()
        if len(self.norms) != 1:
            found = [f"eps={n.epsilon:g}, momentum={1 - n.momentum:g} at {listed(paths, 3)}"
                     for n, paths in sorted(self.norms.items(), key=lambda item: -len(item[1]))]  # fmt: skip
            raise ConversionError(f"expected one BatchNorm setting across the model, found {len(found)}: "
                                  + "; ".join(found))  # fmt: skip
        return next(iter(self.norms))

    def _other_norm(self) -> NormConfig:
        """The one GroupNorm / LayerNorm / EvoNorm-S0 setting of every norm: one kind and epsilon, and one group
        size (``group_size``; preferred) or else one group count (``groups``) for all."""
        readings = self.other_norms
        if self.norms:
            batch = [w for paths in self.norms.values() for w in paths]
            raise ConversionError(f"model mixes BatchNorm ({listed(batch, 3)}) and "
                                  f"{readings[0][1][0]} norms ({listed([w for w, _ in readings], 3)}); expected one "
                                  "kind")  # fmt: skip
        settings: dict[tuple[str, float], list[str]] = {}
        for where, (kind, eps, _, _) in readings:
            settings.setdefault((kind, eps), []).append(where)
        if len(settings) != 1:
            found = [f"{kind} eps={eps:g} at {listed(paths, 3)}" for (kind, eps), paths in settings.items()]
            raise ConversionError(f"expected one norm setting across the model, found {len(found)}: "
                                  + "; ".join(found))  # fmt: skip
        (kind, eps), = settings
        if kind == "layer":
            return LayerNormConfig(epsilon=eps)
        config = GroupNormConfig if kind == "group" else EvoNormS0Config
        sizes = {channels // groups for _, (_, _, groups, channels) in readings}
        counts = {groups for _, (_, _, groups, _) in readings}
        if len(sizes) == 1:
            return config(group_size=sizes.pop(), epsilon=eps)
        if len(counts) == 1:
            return config(groups=counts.pop(), epsilon=eps)
        found = [f"{where}: {groups} groups of {channels // groups}" for where, (_, _, groups, channels) in readings]
        raise ConversionError(f"{kind} norms with neither one group size nor one group count: {listed(found, 4)}")


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
