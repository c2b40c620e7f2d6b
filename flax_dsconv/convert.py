"""PyTorch ↔ Flax weight conversion, strict in both directions.

How it works: the Flax module is built first (from a torch module's own structure, or from a torch
skeleton built with the user's ``arch``/config when only a state_dict is given). Its abstract variables
give a *plan*: for every Flax leaf, the torch key, the torch shape and one layout rule
(``conv`` HWIO↔OIHW, ``linear`` (in,out)↔(out,in), ``conv_as_linear`` for a 1x1 conv that torch holds
as ``nn.Linear``, ``vector``). Module names map to torch prefixes by one rule per source: timm and
torch_ref use the same names as Flax (``blocks_1_0`` ↔ ``blocks.1.0``); torchvision and the seed's
``DSConv`` have explicit maps. Every missing, unexpected and mis-shaped key is reported in one error,
and nothing is returned half-loaded. ``num_batches_tracked`` is the only key ignored.

torch is imported inside the functions that need it, so ``import flax_dsconv`` works without torch.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from flax_dsconv import mobilenet
from flax_dsconv.layers import BatchNormConfig, DepthwiseSeparableConv, seed_dsconv, separable_in_channels
from flax_dsconv.mobilenet import _V2_TABLE, _V3_LARGE, _V3_SMALL, BlockConfig, MobileNet, MobileNetConfig, mobilenet_v1
from flax_dsconv.shapes import abstract_variables, listed, misfits

if TYPE_CHECKING:
    import torch

SOURCES = ("torch_ref", "timm", "torchvision")
TORCH_REF_ARCHS = ("dsconv", "depthwise_separable", "mobilenet_v1")
TIMM_PREFIXES = ("mobilenetv1_", "mobilenetv2_", "mobilenetv3_", "tf_mobilenetv3_")
TORCHVISION_ARCHS = ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")

Variables = dict[str, Any]
StateDict = Mapping[str, Any]


class ConversionError(ValueError):
    """A checkpoint or module that does not fit the architecture; the message lists every problem."""


# ------------------------------------------------------------------------------------------ plan

_LEAF_NAMES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}

_TO_TORCH: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "conv": lambda k: k.transpose(3, 2, 0, 1),
    "linear": lambda k: k.T,
    "conv_as_linear": lambda k: k[0, 0].T,
    "vector": lambda k: k,
}
_TO_FLAX: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "conv": lambda w: w.transpose(2, 3, 1, 0),
    "linear": lambda w: w.T,
    "conv_as_linear": lambda w: w.T[None, None],
    "vector": lambda w: w,
}


@dataclasses.dataclass(frozen=True)
class _Entry:
    flax_key: tuple[str, ...]
    torch_key: str
    torch_shape: tuple[int, ...]
    layout: str


# A name map takes a Flax module path (without collection and leaf) and returns the torch prefix
# and whether torch holds that layer as nn.Linear.
NameMap = Callable[[tuple[str, ...]], tuple[str, bool]]


def _dotted(path: tuple[str, ...]) -> tuple[str, bool]:
    """timm/torch_ref rule: same names, with Flax's ``blocks_1_0`` spelling torch's ``blocks.1.0``."""
    parts = []
    for segment in path:
        m = re.fullmatch(r"([A-Za-z][A-Za-z0-9]*?(?:_[A-Za-z][A-Za-z0-9]*)*)((?:_\d+)+)", segment)
        parts.extend([m.group(1), *m.group(2)[1:].split("_")] if m else [segment])
    return ".".join(parts), False


_SEED_NAMES = {"conv_dw": "0", "bn1": "1", "conv_pw": "3", "bn2": "4"}


def _seed(path: tuple[str, ...]) -> tuple[str, bool]:
    return f"depthwise_sep_conv.{_SEED_NAMES[path[0]]}", False


# torchvision MobileNetV2 block internals: Sequential positions of each Flax sub-module.
_TV_V2_DS = {"conv_dw": "0.0", "bn1": "0.1", "conv_pw": "1", "bn2": "2"}
_TV_V2_IR = {"conv_pw": "0.0", "bn1": "0.1", "conv_dw": "1.0", "bn2": "1.1", "conv_pwl": "2", "bn3": "3"}


def _torchvision_names(config: MobileNetConfig) -> NameMap:
    """torchvision's layout: ``features.{i}`` per block, Sequential positions inside each."""
    v3 = config.head == "post_pool"
    names: dict[tuple[str, ...], tuple[str, bool]] = {
        ("conv_stem",): ("features.0.0", False),
        ("bn1",): ("features.0.1", False),
    }
    blocks = [(f"blocks_{s}_{i}", b) for s, stage in enumerate(config.stages) for i, b in enumerate(stage)]
    for idx, (f, b) in enumerate(blocks, start=1):
        p = f"features.{idx}"
        if b.kind == "conv":
            names[(f, "conv")] = (f"{p}.0", False)
            names[(f, "bn1")] = (f"{p}.1", False)
            continue
        ir = b.kind == "ir"
        if v3:
            seq: list[Any] = [("conv_pw", "bn1")] if ir else []
            seq.append(("conv_dw", "bn2" if ir else "bn1"))
            if b.se_channels:
                seq.append("se")
            seq.append(("conv_pwl", "bn3") if ir else ("conv_pw", "bn2"))
            for j, item in enumerate(seq):
                if item == "se":
                    names[(f, "se", "conv_reduce")] = (f"{p}.block.{j}.fc1", False)
                    names[(f, "se", "conv_expand")] = (f"{p}.block.{j}.fc2", False)
                else:
                    names[(f, item[0])] = (f"{p}.block.{j}.0", False)
                    names[(f, item[1])] = (f"{p}.block.{j}.1", False)
        else:
            for name, pos in (_TV_V2_IR if ir else _TV_V2_DS).items():
                names[(f, name)] = (f"{p}.conv.{pos}", False)
    if v3:
        names[("conv_head",)] = ("classifier.0", True)
        names[("classifier",)] = ("classifier.3", False)
    else:
        names[("conv_head",)] = (f"features.{len(blocks) + 1}.0", False)
        names[("bn2",)] = (f"features.{len(blocks) + 1}.1", False)
        names[("classifier",)] = ("classifier.1", False)

    def lookup(path: tuple[str, ...]) -> tuple[str, bool]:
        if path not in names:
            raise ConversionError(f"torchvision has no layer for Flax module {'/'.join(path)}")
        return names[path]

    return lookup


def _plan(abstract: Variables, name_map: NameMap) -> list[_Entry]:
    entries = []
    for key, leaf in traverse_util.flatten_dict(abstract).items():
        collection, *path, leaf_name = key
        if (collection, leaf_name) not in _LEAF_NAMES:
            raise ConversionError(f"no torch counterpart for Flax variable {'/'.join(key)}")
        prefix, linear = name_map(tuple(path))
        if leaf_name != "kernel":
            layout = "vector"
        elif len(leaf.shape) == 2:
            layout = "linear"
        else:
            layout = "conv_as_linear" if linear else "conv"
        torch_shape = _TO_TORCH[layout](np.empty(leaf.shape, np.bool_)).shape
        entries.append(_Entry(key, f"{prefix}.{_LEAF_NAMES[(collection, leaf_name)]}", torch_shape, layout))
    return entries


# ------------------------------------------------------------------------------------------ helpers


def _to_numpy(value: Any, key: str) -> np.ndarray:
    """A checkpoint tensor as a float numpy array; float types numpy lacks (bfloat16, float8) become float32."""
    if hasattr(value, "detach"):  # a torch tensor
        if value.is_meta:
            raise ConversionError(f"{key}: a meta tensor holds no data; materialise the model's weights first")
        if not value.is_floating_point():
            raise ConversionError(f"{key}: expected a floating-point tensor, got dtype {value.dtype}")
        value = value.detach().cpu()
        if str(value.dtype) not in ("torch.float16", "torch.float32", "torch.float64"):
            value = value.float()
        value = value.numpy()
    arr = np.asarray(value)
    if not jnp.issubdtype(arr.dtype, jnp.floating):  # jnp's also knows ml_dtypes' bfloat16 and float8 types
        raise ConversionError(f"{key}: expected a floating-point tensor, got dtype {arr.dtype}")
    return arr if arr.dtype in (np.float16, np.float32, np.float64) else arr.astype(np.float32)


def _common_prefix_hint(missing: list[str], unexpected: list[str]) -> str:
    """If every expected key is present under one prefix (DataParallel's 'module.', torch.compile's '_orig_mod.'),
    say so: the keys fit once it is stripped."""
    prefixes = {u[: -len(m)] for m in missing[:1] for u in unexpected if u.endswith("." + m)}
    given = set(unexpected)
    for prefix in sorted(prefixes):
        if all(prefix + m in given for m in missing):
            return (
                f"\n  every expected key is present with the prefix {prefix!r} (DataParallel/DDP: 'module.', "
                f"torch.compile: '_orig_mod.'); strip it: {{k.removeprefix({prefix!r}): v for k, v in sd.items()}}"
            )
    return ""


def _check_keys(entries: list[_Entry], state_dict: StateDict, what: str) -> None:
    not_tensors = sorted(k for k, v in state_dict.items() if not hasattr(v, "shape"))
    if not_tensors:
        raise ConversionError(f"state_dict values must be tensors or arrays; not: {listed(not_tensors)}")
    expected = {e.torch_key: e.torch_shape for e in entries}
    given = {k: tuple(v.shape) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    mismatched = sorted(k for k in expected.keys() & given.keys() if expected[k] != given[k])
    if not (missing or unexpected or mismatched):
        return
    lines = [f"state_dict does not fit {what}:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): " + listed(missing))
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): " + listed(unexpected))
    if mismatched:
        lines.append(f"  shape mismatches ({len(mismatched)}):")
        lines += [f"    {k}: checkpoint {given[k]}, expected {expected[k]}" for k in mismatched]
    raise ConversionError("\n".join(lines) + _common_prefix_hint(missing, unexpected))


# ------------------------------------------------------------------------------------------ loading


def load_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``.safetensors`` (no torch needed) or ``.pth``/``.pt``/``.bin`` file into a state_dict.

    Torch files are read with ``torch.load(weights_only=True)``: never a full unpickle. A checkpoint that
    wraps its weights (``{'state_dict': ...}``, ``{'model': ...}``) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.numpy import load_file

            obj: Any = load_file(path)
        elif suffix in (".pth", ".pt", ".bin", ".ckpt"):
            import torch

            obj = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise ConversionError(
                f"{path}: unknown checkpoint type {suffix!r}; expected .safetensors, .pth, .pt, .bin or .ckpt"
            )
    except ConversionError:
        raise
    except Exception as e:  # torch and safetensors raise assorted errors for corrupt files
        raise ConversionError(f"could not read checkpoint {path} (truncated or not a checkpoint?): {e}") from e
    return _unwrap(obj, str(path))


def _unwrap(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, Mapping):
        raise ConversionError(
            f"{where}: expected a state_dict (a mapping of names to tensors), got {type(obj).__name__}"
        )
    if all(hasattr(v, "shape") for v in obj.values()):
        return dict(obj)
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj.get(wrapper), Mapping):
            return _unwrap(obj[wrapper], f"{where}[{wrapper!r}]")
    raise ConversionError(f"{where}: no state_dict found; top-level keys are {sorted(obj)[:10]}")


# ------------------------------------------------------------------------------------------ torch → config


def _bn_flax(bn: Any, where: str) -> BatchNormConfig:
    if bn.momentum is None:
        raise ConversionError(f"{where}: BatchNorm momentum=None (cumulative average) has no Flax equivalent")
    return BatchNormConfig(momentum=1.0 - bn.momentum, epsilon=bn.eps)


_ACT_CLASSES = {
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


def _act_name(module: Any, where: str) -> str:
    name = type(module).__name__
    if name not in _ACT_CLASSES:
        raise ConversionError(f"{where}: unsupported activation {name}; supported: {sorted(_ACT_CLASSES)}")
    return _ACT_CLASSES[name]


def _check_zero_padding(conv: Any, where: str) -> None:
    if getattr(conv, "padding_mode", "zeros") != "zeros":
        raise ConversionError(f"{where}: padding_mode={conv.padding_mode!r}; only zero padding is supported")


class _TorchReader:
    """Reads convs, norms and activations off a torch model, checking they fit one Flax config."""

    def __init__(self) -> None:
        self.norms: set[BatchNormConfig] = set()
        self.paddings: set[str] = set()

    def conv(self, conv: Any, where: str) -> dict[str, Any]:
        k, s, d = conv.kernel_size[0], conv.stride[0], conv.dilation[0]
        if len({*conv.kernel_size}) > 1 or len({*conv.stride}) > 1 or len({*conv.dilation}) > 1:
            raise ConversionError(f"{where}: non-square kernels/strides/dilations are not supported: {conv}")
        _check_zero_padding(conv, where)
        if type(conv).__name__ == "Conv2dSame" or conv.padding == "same":
            self.paddings.add("SAME")
        elif tuple(conv.padding) != (d * (k - 1) // 2,) * 2:
            raise ConversionError(f"{where}: padding {conv.padding} is neither symmetric 'torch' nor TF 'SAME'")
        elif s > 1:
            self.paddings.add("torch")
        return dict(out=conv.out_channels, k=k, s=s, d=d, groups=conv.groups, bias=conv.bias is not None)

    def bn(self, bn: Any, where: str) -> None:
        self.norms.add(_bn_flax(bn, where))

    def padding(self) -> str:
        if len(self.paddings) > 1:
            raise ConversionError(f"model mixes TF 'SAME' and torch padding on strided convs: {self.paddings}")
        return next(iter(self.paddings), "torch")

    def norm(self) -> BatchNormConfig:
        if len(self.norms) != 1:
            raise ConversionError(f"expected one BatchNorm setting across the model, found {self.norms}")
        return next(iter(self.norms))


def _timm_config(model: Any) -> MobileNetConfig:
    r = _TorchReader()
    kind = type(model).__name__
    if kind not in ("EfficientNet", "MobileNetV3"):
        raise ConversionError(f"unsupported timm model class {kind}; expected timm MobileNet V1/V2/V3")
    stem = r.conv(model.conv_stem, "conv_stem")
    r.bn(model.bn1, "bn1")
    stages = []
    for s, stage in enumerate(model.blocks):
        blocks = []
        for i, blk in enumerate(stage):
            where = f"blocks.{s}.{i}"
            name = type(blk).__name__
            if type(getattr(blk, "aa", None)).__name__ not in ("NoneType", "Identity"):
                raise ConversionError(f"{where}: anti-aliased downsampling ({type(blk.aa).__name__}) is not supported")
            se: dict[str, Any] = {}
            if getattr(blk, "se", None) is not None and type(blk.se).__name__ != "Identity":
                se = dict(se_channels=blk.se.conv_reduce.out_channels, se_act=_act_name(blk.se.act1, where + ".se"),
                          se_gate=_act_name(blk.se.gate, where + ".se"))  # fmt: skip
            if name == "DepthwiseSeparableConv":
                dw, pw = r.conv(blk.conv_dw, where), r.conv(blk.conv_pw, where)
                r.bn(blk.bn1, where)
                r.bn(blk.bn2, where)
                act, pw_act = _act_name(blk.bn1.act, where), _act_name(blk.bn2.act, where)
                if pw_act not in ("identity", act):
                    raise ConversionError(f"{where}: pointwise activation {pw_act} differs from {act}")
                block = BlockConfig("ds", pw["out"], dw["k"], dw["s"], dw["d"], act=act, pw_act=pw_act != "identity",
                                    skip=blk.has_skip, **se)  # fmt: skip
            elif name == "InvertedResidual":
                pw, dw, pwl = r.conv(blk.conv_pw, where), r.conv(blk.conv_dw, where), r.conv(blk.conv_pwl, where)
                for bn in (blk.bn1, blk.bn2, blk.bn3):
                    r.bn(bn, where)
                act = _act_name(blk.bn1.act, where)
                if (_act_name(blk.bn2.act, where), _act_name(blk.bn3.act, where)) != (act, "identity"):
                    raise ConversionError(f"{where}: activations {blk.bn1.act}, {blk.bn2.act}, {blk.bn3.act}; "
                                          f"expected {act} after the expansion and depthwise convs, none after the "
                                          "projection")  # fmt: skip
                block = BlockConfig("ir", pwl["out"], dw["k"], dw["s"], dw["d"], pw["out"], act=act, skip=blk.has_skip,
                                    **se)  # fmt: skip
            elif name == "ConvBnAct":
                conv = r.conv(blk.conv, where)
                r.bn(blk.bn1, where)
                block = BlockConfig("conv", conv["out"], conv["k"], conv["s"], conv["d"], 0, 0,
                                    _act_name(blk.bn1.act, where), False, blk.has_skip)  # fmt: skip
            else:
                raise ConversionError(f"{where}: unsupported timm block {name}")
            blocks.append(block)
        stages.append(tuple(blocks))

    head: Literal["none", "pre_pool", "post_pool"] = "none"
    head_channels, head_act, head_bias = 0, "relu", False
    if type(model.conv_head).__name__ != "Identity":
        h = r.conv(model.conv_head, "conv_head")
        head_channels, head_bias = h["out"], h["bias"]
        if kind == "EfficientNet":
            r.bn(model.bn2, "bn2")
            head, head_act = "pre_pool", _act_name(model.bn2.act, "bn2")
        else:
            if type(model.norm_head).__name__ != "Identity":
                raise ConversionError("timm norm_head after pooling is not supported")
            head, head_act = "post_pool", _act_name(model.act2, "act2")
    if getattr(model.global_pool, "pool_type", "avg") != "avg":
        raise ConversionError(f"only average pooling is supported, got {model.global_pool}")
    classifier = model.classifier
    return MobileNetConfig(
        stages=tuple(stages),
        stem_channels=stem["out"],
        stem_kernel=stem["k"],
        stem_stride=stem["s"],
        stem_act=_act_name(model.bn1.act, "bn1"),
        head=head,
        head_channels=head_channels,
        head_act=head_act,
        head_bias=head_bias,
        num_classes=getattr(classifier, "out_features", 0),
        dropout=float(model.drop_rate),
        in_channels=model.conv_stem.in_channels,
        padding=r.padding(),
        norm=r.norm(),
    )


def _cna(r: _TorchReader, seq: Any, where: str) -> tuple[dict[str, Any], str]:
    """torchvision's Conv2dNormActivation: (conv, bn[, act])."""
    conv = r.conv(seq[0], where)
    r.bn(seq[1], where)
    return conv, _act_name(seq[2], where) if len(seq) > 2 else "identity"


def _torchvision_config(model: Any) -> MobileNetConfig:
    r = _TorchReader()
    v3 = type(model).__name__ == "MobileNetV3"
    if type(model).__name__ not in ("MobileNetV2", "MobileNetV3"):
        raise ConversionError(f"unsupported torchvision model class {type(model).__name__}")
    feats = list(model.features)
    stem, stem_act = _cna(r, feats[0], "features.0")
    flat: list[BlockConfig] = []
    for idx, blk in enumerate(feats[1:-1], start=1):
        where = f"features.{idx}"
        layers = list(blk.block if v3 else blk.conv)
        if not v3:  # V2 ends in a bare conv + bn; view it as one (conv, bn) pair
            layers = [*layers[:-2], [layers[-2], layers[-1]]]
        se: dict[str, Any] = {}
        convs = []
        for layer in layers:
            if type(layer).__name__ == "SqueezeExcitation":
                se = dict(se_channels=layer.fc1.out_channels, se_act=_act_name(layer.activation, where),
                          se_gate=_act_name(layer.scale_activation, where))  # fmt: skip
            else:
                convs.append(_cna(r, layer, where))
        *expand, (dw, act), (pwl, _) = convs
        if expand:
            flat.append(BlockConfig("ir", pwl["out"], dw["k"], dw["s"], dw["d"], expand[0][0]["out"], act=act,
                                    skip=blk.use_res_connect, **se))  # fmt: skip
        else:
            flat.append(BlockConfig("ds", pwl["out"], dw["k"], dw["s"], dw["d"], act=act, skip=blk.use_res_connect,
                                    **se))  # fmt: skip
    last, last_act = _cna(r, feats[-1], f"features.{len(feats) - 1}")
    cls = list(model.classifier)
    if v3:
        flat.append(BlockConfig("conv", last["out"], last["k"], act=last_act))
        head = dict(head="post_pool", head_channels=cls[0].out_features, head_act=_act_name(cls[1], "classifier.1"),
                    head_bias=cls[0].bias is not None, num_classes=cls[3].out_features, dropout=cls[2].p)  # fmt: skip
    else:
        head = dict(head="pre_pool", head_channels=last["out"], head_act=last_act,
                    num_classes=cls[1].out_features, dropout=cls[0].p)  # fmt: skip
    return MobileNetConfig(
        stages=_group_stages(flat, _TORCHVISION_STAGES.get((type(model).__name__, len(feats)))),
        stem_channels=stem["out"],
        stem_kernel=stem["k"],
        stem_stride=stem["s"],
        stem_act=stem_act,
        in_channels=feats[0][0].in_channels,
        padding=r.padding(),
        norm=r.norm(),
        **head,
    )


# Blocks per stage of torchvision's tables (by class and len(features)), as the Flax builders group them: the
# parameter names (blocks_{stage}_{i}) then agree even where neighbouring stages round to one width.
_TORCHVISION_STAGES = {
    ("MobileNetV2", 19): tuple(n for _, _, n, _ in _V2_TABLE),
    ("MobileNetV3", 17): (*(len(stage) for stage in _V3_LARGE), 1),
    ("MobileNetV3", 13): (*(len(stage) for stage in _V3_SMALL), 1),
}


def _group_stages(blocks: list[BlockConfig], sizes: tuple[int, ...] | None) -> tuple[tuple[BlockConfig, ...], ...]:
    """Group a flat block list into stages of ``sizes``; for a custom block list (other sizes), a new stage at
    each stride > 1, width or kind change."""
    if sizes is not None and sum(sizes) == len(blocks):
        ends = list(itertools.accumulate(sizes))
        return tuple(tuple(blocks[end - n : end]) for n, end in zip(sizes, ends, strict=True))
    stages: list[list[BlockConfig]] = []
    for b in blocks:
        prev = stages[-1][-1] if stages else None
        if (
            prev is None
            or b.stride > 1
            or b.out_channels != prev.out_channels
            or (b.kind == "conv") != (prev.kind == "conv")
        ):
            stages.append([])
        stages[-1].append(b)
    return tuple(tuple(s) for s in stages)


# ------------------------------------------------------------------------------------------ identify


def _check_torch_ref(model: Any, cfg: dict[str, Any]) -> None:
    """A torch_ref model converts from its constructor ``config``: refuse one whose layers were changed since."""
    eps, momentum, act = cfg.get("bn_eps", 1e-5), cfg.get("bn_momentum", 0.1), cfg.get("act", "relu")
    for name, m in model.named_modules():
        kind = type(m).__name__
        if kind == "BatchNorm2d" and (m.eps, m.momentum) != (eps, momentum):
            raise ConversionError(f"{name}: BatchNorm eps={m.eps}, momentum={m.momentum}, but the model's config "
                                  f"says {eps}, {momentum} (torch_ref models convert from their config)")  # fmt: skip
        if kind in _ACT_CLASSES and _ACT_CLASSES[kind] != act:
            raise ConversionError(f"{name}: activation {kind}, but the model's config says {act!r}")
        if kind == "Conv2d":
            _check_zero_padding(m, name)


@dataclasses.dataclass(frozen=True)
class _Described:
    arch: str
    source: str
    module: nn.Module
    in_channels: int
    name_map: NameMap


def _describe(model: Any) -> _Described:
    """Infer arch, source and the equivalent Flax module from a torch module."""
    cls = type(model)
    origin = cls.__module__.split(".")[0]
    if origin == "torch":
        wrapped = {"DataParallel": "module", "DistributedDataParallel": "module", "OptimizedModule": "_orig_mod"}
        if cls.__name__ in wrapped:
            raise ConversionError(f"{cls.__name__} wraps the model: pass model.{wrapped[cls.__name__]}")
    if origin == "torch_ref":
        cfg = model.config
        _check_torch_ref(model, cfg)
        flax: nn.Module
        if cls.__name__ == "DSConv":
            flax = seed_dsconv(cfg["out_channels"], cfg["kernel_size"], cfg["stride"], cfg["padding"])
            return _Described("dsconv", "torch_ref", flax, cfg["in_channels"], _seed)
        bn = dict(bn_momentum=1.0 - cfg["bn_momentum"], bn_epsilon=cfg["bn_eps"])
        if cls.__name__ == "DepthwiseSeparableConv":
            flax = DepthwiseSeparableConv(
                cfg["out_channels"], cfg["kernel_size"], cfg["stride"], act=cfg["act"],
                norm=BatchNormConfig(bn["bn_momentum"], bn["bn_epsilon"]),
            )  # fmt: skip
            return _Described("depthwise_separable", "torch_ref", flax, cfg["in_channels"], _dotted)
        if cls.__name__ == "MobileNetV1":
            kw = {k: v for k, v in cfg.items() if k not in ("bn_momentum", "bn_eps")}
            flax = mobilenet_v1(**kw, **bn)
            return _Described("mobilenet_v1", "torch_ref", flax, cfg["in_channels"], _dotted)
    elif origin == "timm":
        config = _timm_config(model)
        arch = getattr(model, "pretrained_cfg", {}).get("architecture", cls.__name__)
        return _Described(arch, "timm", MobileNet(config), config.in_channels, _dotted)
    elif origin == "torchvision":
        config = _torchvision_config(model)
        v3 = cls.__name__ == "MobileNetV3"
        arch = "mobilenet_v2" if not v3 else "mobilenet_v3_large" if len(model.features) > 14 else "mobilenet_v3_small"
        return _Described(arch, "torchvision", MobileNet(config), config.in_channels, _torchvision_names(config))
    raise ConversionError(
        f"cannot convert {cls.__module__}.{cls.__name__}: expected a torch_ref, timm or torchvision MobileNet"
    )


def _skeleton(arch: str | None, source: str | None, state_dict: StateDict, config: dict[str, Any]) -> Any:
    """Build the torch model a bare state_dict claims to be, to read its structure."""
    if source not in SOURCES:
        raise ConversionError(f"a state_dict needs source= one of {SOURCES}, got {source!r}")
    if source == "torch_ref":
        import torch_ref

        classes = {"dsconv": torch_ref.DSConv, "depthwise_separable": torch_ref.DepthwiseSeparableConv,
                   "mobilenet_v1": torch_ref.MobileNetV1}  # fmt: skip
        if arch not in classes:
            raise ConversionError(f"torch_ref has no arch {arch!r}; expected one of {TORCH_REF_ARCHS}")
        if arch in ("dsconv", "depthwise_separable"):
            dw, pw = ("depthwise_sep_conv.0.weight", "depthwise_sep_conv.3.weight") if arch == "dsconv" else (
                "conv_dw.weight", "conv_pw.weight")  # fmt: skip
            # Channels and kernel size are in the weights; stride and padding are not.
            if dw in state_dict and pw in state_dict:
                config = {"in_channels": state_dict[dw].shape[0], "out_channels": state_dict[pw].shape[0],
                          "kernel_size": state_dict[dw].shape[-1], **config}  # fmt: skip
            elif "in_channels" not in config or "out_channels" not in config:
                raise ConversionError(f"state_dict has no {dw!r}/{pw!r}: not a {arch} checkpoint?")
        return classes[arch](**config)
    if source == "timm":
        import timm

        if not arch or not arch.startswith(TIMM_PREFIXES):
            raise ConversionError(
                f"timm arch must be a MobileNet model name ({', '.join(TIMM_PREFIXES)}...), got {arch!r}"
            )
        return timm.create_model(arch, pretrained=False, **config)
    import torchvision

    if arch not in TORCHVISION_ARCHS:
        raise ConversionError(f"torchvision arch must be one of {TORCHVISION_ARCHS}, got {arch!r}")
    # torchvision's MobileNetV3 swallows unknown keywords (a misspelt dilated= would be ignored): check them.
    from torchvision.models import mobilenetv2, mobilenetv3

    takes = (mobilenetv2.MobileNetV2.__init__,) if arch == "mobilenet_v2" else (
        mobilenetv3._mobilenet_v3_conf, mobilenetv3.MobileNetV3.__init__)  # fmt: skip
    allowed = {n for f in takes for n, p in inspect.signature(f).parameters.items()
               if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - {"self", "arch", "inverted_residual_setting",
                                                                       "last_channel"}  # fmt: skip
    unknown = sorted(config.keys() - allowed)
    if unknown:
        raise ConversionError(f"torchvision {arch} takes no argument {unknown}; it takes {sorted(allowed)}")
    return getattr(torchvision.models, arch)(weights=None, **config)


# ------------------------------------------------------------------------------------------ public API


def from_torch(
    src: Any,
    *,
    arch: str | None = None,
    source: str | None = None,
    **config: Any,
) -> tuple[nn.Module, Variables]:
    """Convert PyTorch weights into ``(flax_module, {'params', 'batch_stats'})``.

    ``src`` is a ``torch.nn.Module`` (arch, source and config are read off it), a state_dict, or a path to
    a ``.safetensors``/``.pth``/``.pt``/``.bin`` file. For a state_dict or file, name the ``source``
    (``'torch_ref'``, ``'timm'``, ``'torchvision'``), the ``arch`` (``'dsconv'``, ``'depthwise_separable'`` or
    ``'mobilenet_v1'`` for torch_ref, a timm model name such as ``'mobilenetv3_large_100'``, or a torchvision
    builder name) and any non-default constructor arguments of that torch model (``width_mult=0.75``,
    ``num_classes=10``...).

    Raises :class:`ConversionError` listing every missing, unexpected and mis-shaped key.

    >>> model, variables = from_torch(torchvision.models.mobilenet_v3_small())
    >>> logits = jax.jit(model.apply)(variables, images_nhwc)
    """
    if isinstance(src, (str, os.PathLike)):
        src = load_state_dict(src)
    if isinstance(src, Mapping):
        state_dict = src
        torch_model = _skeleton(arch, source, state_dict, config)
    else:
        if config:
            raise TypeError(f"from a torch module everything is inferred; unexpected arguments {sorted(config)}")
        torch_model, state_dict = src, src.state_dict()
    described = _describe(torch_model)
    if source is not None and source != described.source:
        raise ConversionError(f"source={source!r} but the module is a {described.source} model")
    if arch is not None and not isinstance(src, Mapping) and arch != described.arch:
        raise ConversionError(f"arch={arch!r} but the module is {described.arch!r}")
    entries = _plan(abstract_variables(described.module, described.in_channels), described.name_map)
    _check_keys(entries, state_dict, f"{described.source} {described.arch}")
    flat, problems = {}, []
    for e in entries:
        try:
            arr = _TO_FLAX[e.layout](_to_numpy(state_dict[e.torch_key], e.torch_key))
        except ConversionError as error:  # every bad tensor in one error, as for the keys
            problems.append(str(error))
            continue
        # Copy: numpy views torch's memory and jnp.asarray may alias it on CPU, so a later in-place torch
        # update (a train-mode forward's running statistics) would silently change the Flax variables.
        flat[e.flax_key] = jnp.array(arr, dtype=jnp.float32, copy=True)
    if problems:
        raise ConversionError(f"{len(problems)} tensors cannot be converted:\n  " + "\n  ".join(problems))
    return described.module, traverse_util.unflatten_dict(flat)


# What a module computes beyond its weights' shapes, compared field by field when exporting. Left out: dropout,
# BatchNorm momentum and running-variance rule, dtype, the depthwise implementation and axis_name — training
# or execution choices that the torch model makes for itself, which do not change its eval-mode outputs.
_NOT_COMPARED = "dropout, BatchNorm momentum and running-variance rule, dtype, depthwise implementation, axis_name"


def _computation(module: nn.Module) -> dict[str, Any]:
    if isinstance(module, MobileNet):
        c = module.config
        fields = {
            f.name: getattr(c, f.name) for f in dataclasses.fields(c) if f.name not in ("stages", "dropout", "norm")
        }
        fields["number of blocks"] = len(c.blocks)
        fields.update({f"block {i}": b for i, b in enumerate(c.blocks)})
        fields["BatchNorm epsilon"] = c.norm.epsilon
        return fields
    if isinstance(module, DepthwiseSeparableConv):
        skip = ("parent", "name", "norm", "axis_name", "dtype", "depthwise")
        fields = {f.name: getattr(module, f.name) for f in dataclasses.fields(module) if f.name not in skip}
        return {**fields, "BatchNorm epsilon": module.norm.epsilon}
    raise ConversionError(
        f"no torch counterpart for {type(module).__name__}; expected a MobileNet or DepthwiseSeparableConv"
    )


def _target_for(module: nn.Module, variables: Variables, source: str | None, arch: str | None,
                config: dict[str, Any]) -> Any:  # fmt: skip
    """The torch model to export to, built from ``source``/``arch``/``config`` with defaults read off ``module``."""
    if source not in SOURCES:
        raise ConversionError(f"to_torch_state_dict needs model= (a torch module) or source= one of {SOURCES}, "
                              f"got source={source!r}")  # fmt: skip
    if isinstance(module, DepthwiseSeparableConv):
        if source != "torch_ref":
            raise ConversionError(f"{source} has no DepthwiseSeparableConv layout; use source='torch_ref'")
        channels = separable_in_channels(variables)
        if channels is None:
            raise ConversionError("exporting a DepthwiseSeparableConv needs its params (a 4-D conv_dw/kernel)")
        if arch is None:
            arch = "dsconv" if module.use_bias and module.pointwise_padding == 1 else "depthwise_separable"
        base: dict[str, Any] = dict(in_channels=channels, out_channels=module.features,
                                    kernel_size=module.kernel_size, stride=module.strides)  # fmt: skip
        if arch == "dsconv":
            base["padding"] = module.padding
        else:
            base.update(act=module.act, bn_eps=module.norm.epsilon, bn_momentum=1.0 - module.norm.momentum)
    elif isinstance(module, MobileNet):
        c = module.config
        base = {"num_classes": c.num_classes}
        if source == "torch_ref":
            arch = arch or "mobilenet_v1"
            base.update(width_multiplier=c.blocks[-1].out_channels / 1024, act=c.stem_act, dropout=c.dropout,
                        separable=c.blocks[0].kind == "ds", in_channels=c.in_channels, bn_eps=c.norm.epsilon,
                        bn_momentum=1.0 - c.norm.momentum)  # fmt: skip
        elif source == "timm":
            if arch is None:
                raise ConversionError("a timm export needs arch= (the timm model name, e.g. 'mobilenetv3_large_100') "
                                      "or model= (the timm model to load into)")  # fmt: skip
            base["in_chans"] = c.in_channels
        else:
            if arch is None:  # torchvision's V3 small has 11 bottlenecks and a conv, large 15 and a conv
                v3 = "mobilenet_v3_large" if len(c.blocks) > 12 else "mobilenet_v3_small"
                arch = "mobilenet_v2" if c.head == "pre_pool" else v3
            if arch != "mobilenet_v2":
                base["dilated"] = any(b.dilation > 1 for b in c.blocks)
            if arch in mobilenet.BUILDERS and "width_mult" not in config:
                base["width_mult"] = _torchvision_width(module, arch, {**base, **config})
    else:
        _computation(module)  # raises for anything else
    try:
        return _skeleton(arch, source, {}, {**base, **config})
    except ConversionError:
        raise
    except Exception as e:  # a constructor rejecting an argument the module implies
        raise ConversionError(
            f"cannot build the {source} {arch} this module exports to, from arguments "
            f"{ {**base, **config} }: {e}; pass model= (the torch module to load into)"
        ) from e


def _channels(config: MobileNetConfig) -> tuple[Any, ...]:
    return (config.stem_channels, config.head_channels,
            *((b.out_channels, b.expand_channels, b.se_channels) for b in config.blocks))  # fmt: skip


def _torchvision_width(module: MobileNet, arch: str, kwargs: dict[str, Any]) -> float:
    """The width_mult whose torchvision model has ``module``'s channels. Widths are rounded to multiples of 8, so
    the last block's ratio to its base width can miss (32/96 for 0.35): the builders, which round as torchvision
    does, are searched over 0.05 steps; the ratio is the fallback (its mismatch is then reported)."""
    options = {k: kwargs[k] for k in ("dilated", "reduced_tail") if k in kwargs}
    target = _channels(module.config)
    for w in (round(0.05 * i, 2) for i in range(1, 61)):
        if _channels(mobilenet.BUILDERS[arch](w, **options).config) == target:
            return w
    last = {"mobilenet_v2": 320, "mobilenet_v3_large": 160, "mobilenet_v3_small": 96}[arch]
    last //= 2 if options.get("reduced_tail") else 1
    return module.config.blocks[-2 if arch != "mobilenet_v2" else -1].out_channels / last


def _check_same_computation(module: nn.Module, target: nn.Module, what: str) -> None:
    ours, theirs = _computation(module), _computation(target)
    diffs = [
        f"{k}: Flax {ours.get(k)!r}, torch {theirs.get(k)!r}"
        for k in {**ours, **theirs}
        if ours.get(k) != theirs.get(k)
    ]
    if diffs:
        raise ConversionError(
            f"the Flax module does not compute what {what} computes ({len(diffs)} differences; not compared: "
            f"{_NOT_COMPARED}):\n  "
            + listed(diffs, sep="\n  ")
            + "\nPass model= (the torch module to load into), or the torch constructor's arguments as keywords."
        )


def to_torch_state_dict(
    module: nn.Module,
    variables: Variables,
    *,
    model: Any = None,
    source: str | None = None,
    arch: str | None = None,
    **config: Any,
) -> dict[str, torch.Tensor]:
    """Export Flax variables as a state_dict that the torch model loads with ``strict=True`` and that
    reproduces the Flax module's eval-mode outputs there.

    The torch target is ``model`` (the module to load into), or, as for :func:`from_torch`'s state_dict path,
    ``source`` (``'torch_ref'``, ``'timm'``, ``'torchvision'``), ``arch`` and the torch constructor's
    arguments as keywords. Defaults are read off ``module``: torchvision's arch, ``width_mult`` and
    ``dilated``; torch_ref's arch (``'dsconv'`` for a :func:`seed_dsconv`-shaped block) and arguments; every
    ``num_classes``. timm needs ``arch`` (or ``model``).

    Checked before anything is returned: the target computes what ``module`` computes (activations, strides,
    dilation, padding, BatchNorm epsilon, blocks; not dropout, BatchNorm momentum, dtype, implementation), and
    its state_dict has exactly the exported keys and shapes. ``variables`` may hold ``'params'``,
    ``'batch_stats'`` or both (``{'params': grads}`` exports gradients). BatchNorms get
    ``num_batches_tracked = 0``. Tensors are contiguous float32 (float64 arrays stay float64).

    Raises :class:`ConversionError` naming what differs.
    """
    import torch

    variables = {k: variables[k] for k in ("params", "batch_stats") if k in variables}
    if not variables:
        raise ConversionError("variables hold neither 'params' nor 'batch_stats'")
    if model is not None:
        if config or arch is not None:
            raise TypeError("with model=, arch and the constructor arguments are read off the torch module")
        target = model
    else:
        target = _target_for(module, variables, source, arch, config)
    described = _describe(target)
    if source is not None and source != described.source:
        raise ConversionError(f"source={source!r} but model= is a {described.source} model")
    what = f"the {described.source} {described.arch}"
    _check_same_computation(module, described.module, what)
    abstract = abstract_variables(described.module, described.in_channels)
    for collection, tree in variables.items():
        problems = misfits(abstract.get(collection, {}), tree)
        if problems:
            raise ConversionError(f"{collection} do not fit {what}: " + listed(problems, 20))
    entries = _plan(jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), variables), described.name_map)
    kept = tuple(_LEAF_NAMES[(c, leaf)] for c, leaf in _LEAF_NAMES if c in variables)
    target_keys = {k: v for k, v in target.state_dict().items() if k.rsplit(".", 1)[-1] in kept}
    _check_keys(entries, target_keys, what)
    flat = traverse_util.flatten_dict(variables)
    out: dict[str, torch.Tensor] = {}
    for e in entries:
        value = flat[e.flax_key]  # float64 (x64) stays float64; every other float type becomes float32
        arr = np.asarray(value, dtype=np.float64 if value.dtype == np.float64 else np.float32)
        out[e.torch_key] = torch.from_numpy(np.array(_TO_TORCH[e.layout](arr), order="C", copy=True))
        if e.torch_key.endswith(".running_var"):
            out[e.torch_key[: -len("running_var")] + "num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return out
