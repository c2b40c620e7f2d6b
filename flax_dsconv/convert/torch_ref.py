"""The reader of ``torch_ref``'s models: the seed's ``DSConv``, ``DepthwiseSeparableConv`` and ``MobileNetV1``.

They keep their constructor arguments in ``model.config``, so they convert from it, after a check that no layer
was changed since construction.
"""

from __future__ import annotations

from typing import Any

from flax import linen as nn

from flax_dsconv.convert.errors import ConversionError
from flax_dsconv.convert.plan import StateDict, Variables, dotted
from flax_dsconv.convert.protocol import Described, register_reader
from flax_dsconv.convert.torch_layers import check_zero_padding
from flax_dsconv.models import MobileNet, mobilenet_v1
from flax_dsconv.nn import BatchNormConfig, DepthwiseSeparableConv, seed_dsconv, separable_in_channels
from flax_dsconv.shapes import listed

ARCHS = ("dsconv", "depthwise_separable", "mobilenet_v1")

_SEED_NAMES = {"conv_dw": "0", "bn1": "1", "conv_pw": "3", "bn2": "4"}


def _seed(path: tuple[str, ...]) -> tuple[str, bool]:
    return f"depthwise_sep_conv.{_SEED_NAMES[path[0]]}", False


def _layers(model: Any) -> dict[str, str]:
    """Each module's path mapped to its class and settings (``extra_repr``, without ``inplace``)."""
    out = {}
    for name, m in model.named_modules():
        settings = ", ".join(part for part in m.extra_repr().split(", ") if not part.startswith("inplace="))
        out[name or "(the model itself)"] = f"{type(m).__name__}({settings})"
    return out


def _check_unchanged(model: Any) -> dict[int, str]:
    """A torch_ref model converts from its constructor ``config``: refuse one whose modules differ in any way
    from a fresh build of that config (a layer swapped, added, removed or re-configured); else claim them all."""
    import torch

    with torch.random.fork_rng(), torch.device("meta"):  # no memory, and the caller's random stream untouched
        fresh = type(model)(**model.config)
    ours, theirs = _layers(model), _layers(fresh)
    diffs = [f"{k}: {ours.get(k, 'nothing')}, expected {theirs.get(k, 'nothing')}"
             for k in {**theirs, **ours} if ours.get(k) != theirs.get(k)]  # fmt: skip
    if diffs:
        raise ConversionError(f"{len(diffs)} modules differ from the {type(model).__name__} its config builds "
                              f"(torch_ref models convert from their config): " + listed(diffs, 10))  # fmt: skip
    for name, m in model.named_modules():
        if type(m).__name__ == "Conv2d":
            check_zero_padding(m, name)
    return {id(m): name for name, m in model.named_modules()}


class TorchRefReader:
    source = "torch_ref"

    def describe(self, model: Any) -> Described:
        cls = type(model).__name__
        if cls not in ("DSConv", "DepthwiseSeparableConv", "MobileNetV1"):
            raise ConversionError(f"cannot convert torch_ref.{cls}: expected one of DSConv, DepthwiseSeparableConv, "
                                  "MobileNetV1")  # fmt: skip
        cfg = model.config
        claimed = _check_unchanged(model)
        flax: nn.Module
        if cls == "DSConv":
            flax = seed_dsconv(cfg["out_channels"], cfg["kernel_size"], cfg["stride"], cfg["padding"])
            return Described("dsconv", self.source, flax, cfg["in_channels"], _seed, claimed)
        bn = dict(bn_momentum=1.0 - cfg["bn_momentum"], bn_epsilon=cfg["bn_eps"])
        if cls == "DepthwiseSeparableConv":
            flax = DepthwiseSeparableConv(
                cfg["out_channels"], cfg["kernel_size"], cfg["stride"], act=cfg["act"],
                norm=BatchNormConfig(bn["bn_momentum"], bn["bn_epsilon"]),
            )  # fmt: skip
            return Described("depthwise_separable", self.source, flax, cfg["in_channels"], dotted, claimed)
        kw = {k: v for k, v in cfg.items() if k not in ("bn_momentum", "bn_eps")}
        flax = mobilenet_v1(**kw, **bn)
        return Described("mobilenet_v1", self.source, flax, cfg["in_channels"], dotted, claimed)

    def skeleton(self, arch: str | None, state_dict: StateDict, config: dict[str, Any]) -> Any:
        import torch_ref

        classes = {"dsconv": torch_ref.DSConv, "depthwise_separable": torch_ref.DepthwiseSeparableConv,
                   "mobilenet_v1": torch_ref.MobileNetV1}  # fmt: skip
        if arch not in classes:
            raise ConversionError(f"torch_ref has no arch {arch!r}; expected one of {ARCHS}")
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

    def export_target(
        self, module: nn.Module, variables: Variables, arch: str | None, config: dict[str, Any]
    ) -> tuple[str | None, dict[str, Any]]:
        norm = module.norm if isinstance(module, DepthwiseSeparableConv) else module.config.norm
        if not isinstance(norm, BatchNormConfig):
            raise ConversionError(f"torch_ref's models have BatchNorm only; this module has {norm}")
        if isinstance(module, DepthwiseSeparableConv):
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
                base.update(act=module.act, bn_eps=norm.epsilon, bn_momentum=1.0 - norm.momentum)
            return arch, base
        assert isinstance(module, MobileNet)
        c = module.config
        base = dict(num_classes=c.num_classes, width_multiplier=c.blocks[-1].out_channels / 1024, act=c.stem_act,
                    dropout=c.dropout, separable=c.blocks[0].kind == "ds", in_channels=c.in_channels,
                    bn_eps=norm.epsilon, bn_momentum=1.0 - norm.momentum)  # fmt: skip
        return arch or "mobilenet_v1", base


register_reader(TorchRefReader())
