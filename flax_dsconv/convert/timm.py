"""The reader of timm's MobileNets: timm's ``EfficientNet`` and ``MobileNetV3`` classes, read block by block.

A custom ``EfficientNet(block_args=...)`` converts as long as it is built of the blocks read here.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Literal

from flax import linen as nn

from flax_dsconv.convert.errors import ConversionError
from flax_dsconv.convert.plan import StateDict, Variables, dotted
from flax_dsconv.convert.protocol import Described, register_reader
from flax_dsconv.convert.timm_antialias import read_anti_alias, refuse_anti_alias, with_aa_stride
from flax_dsconv.convert.timm_attention import read_layer_scale, read_mobile_attention
from flax_dsconv.convert.timm_zoo import ZOO_MODULES, refused_reason, zoo_names
from flax_dsconv.convert.torch_layers import CONVS, TorchReader, expect_type
from flax_dsconv.models import MobileNet, MobileNetConfig
from flax_dsconv.models.features import feature_levels
from flax_dsconv.nn import (
    BlockConfig,
    CondConvResidualConfig,
    ConvBNActConfig,
    DepthwiseSeparableConv,
    EdgeResidualConfig,
    InvertedResidualConfig,
    SeparableConfig,
    UniversalInvertedResidualConfig,
    split_channels,
)
from flax_dsconv.nn.global_context import GC_EPSILON
from flax_dsconv.ops.activations import Activation

# The timm.create_model arguments that shape a MobileNet (its head, input, normalisation, dropout); others
# (pretrained, checkpoint_path, pretrained_cfg...) would load or fetch weights and are refused.
SHAPING_ARGUMENTS = frozenset(
    {"num_classes", "in_chans", "drop_rate", "drop_path_rate", "global_pool", "bn_eps", "bn_momentum", "features_only",
     "out_indices"}
)


def _se(r: TorchReader, blk: Any, where: str) -> dict[str, Any]:
    """timm's SqueezeExcite (``conv_reduce``, ``act1``, ``conv_expand``, ``gate``), or none."""
    se = getattr(blk, "se", None)
    if se is None or type(se).__name__ == "Identity":
        r.identity(se, f"{where}.se")
        return {}
    if type(se).__name__ == "GlobalContext":
        return _global_context(r, se, f"{where}.se")
    expect_type(se, f"{where}.se", ("SqueezeExcite", "GlobalContext"), "squeeze-excite")
    r.claim(se, f"{where}.se")
    reduce = r.conv(se.conv_reduce, f"{where}.se.conv_reduce", kernel=1, stride=1)
    r.conv(se.conv_expand, f"{where}.se.conv_expand", kernel=1, stride=1)
    return dict(se_channels=reduce["out"], se_act=r.act(se.act1, f"{where}.se.act1"),
                se_gate=r.act(se.gate, f"{where}.se.gate"))  # fmt: skip


def _global_context(r: TorchReader, gc: Any, where: str) -> dict[str, Any]:
    """timm's ``GlobalContext`` in its default scaling form (``conv_attn``, ``mlp_scale``: ``fc1``, LayerNorm2d,
    act, ``fc2``; ``gate``), as the Flax :class:`~flax_dsconv.nn.GlobalContext` computes it."""
    if gc.conv_attn is None or gc.mlp_add is not None or gc.mlp_scale is None:
        raise ConversionError(f"{where}: GlobalContext with use_attn={gc.conv_attn is not None}, fuse_add="
                              f"{gc.mlp_add is not None}, fuse_scale={gc.mlp_scale is not None}; expected "
                              "attention pooling and the scaling MLP only (timm's defaults)")  # fmt: skip
    r.claim(gc, where)
    attn = r.conv(gc.conv_attn, f"{where}.conv_attn", kernel=1, stride=1)
    mlp = gc.mlp_scale
    expect_type(mlp, f"{where}.mlp_scale", ("ConvMlp",), "a 1x1-conv MLP")
    fc1 = r.conv(mlp.fc1, f"{where}.mlp_scale.fc1", kernel=1, stride=1)
    fc2 = r.conv(mlp.fc2, f"{where}.mlp_scale.fc2", kernel=1, stride=1)
    if (attn["out"], attn["bias"], fc1["bias"], fc2["bias"]) != (1, True, True, True):
        raise ConversionError(f"{where}: conv_attn to {attn['out']} channels, biases (conv_attn, fc1, fc2) "
                              f"{attn['bias'], fc1['bias'], fc2['bias']}; expected 1 channel and biases "
                              "throughout")  # fmt: skip
    norm = mlp.norm
    expect_type(norm, f"{where}.mlp_scale.norm", ("LayerNorm2d",), "a LayerNorm over channels")
    if norm.eps != GC_EPSILON or not norm.elementwise_affine or norm.bias is None:
        raise ConversionError(f"{where}.mlp_scale.norm: LayerNorm2d eps={norm.eps:g}, elementwise_affine="
                              f"{norm.elementwise_affine}; expected eps={GC_EPSILON:g}, affine with bias")  # fmt: skip
    r.claim(norm, f"{where}.mlp_scale.norm")
    if r.dropout(mlp.drop, f"{where}.mlp_scale.drop"):
        raise ConversionError(f"{where}.mlp_scale.drop: dropout {mlp.drop.p} inside the attention; expected 0")
    return dict(se_channels=fc1["out"], se_act=r.act(mlp.act, f"{where}.mlp_scale.act"),
                se_gate=r.act(gc.gate, f"{where}.gate"), se_kind="gc")  # fmt: skip


def _conv(r: TorchReader, conv: Any, where: str, *, depthwise: bool = False, pointwise: bool = False,
          same: bool = False) -> dict[str, Any]:  # fmt: skip
    """A block's depthwise (``depthwise``) or 1x1 (``pointwise``) conv: a plain conv (:meth:`TorchReader.conv`'s
    settings, with ``ks=()`` and ``splits=1``), or timm's ``MixedConv2d`` (MixNet), whose groups ``0``, ``1``...
    must split the channels as :func:`~flax_dsconv.nn.split_channels` does and share stride and dilation; then
    ``ks`` holds each group's kernel size, ``splits`` their number and ``k`` the largest."""
    checks: dict[str, Any] = dict(kernel=1, stride=1) if pointwise else dict(depthwise=depthwise, same=same)
    if type(conv).__name__ != "MixedConv2d":
        if depthwise and type(conv).__name__ in CONVS and conv.groups not in (1, conv.in_channels):
            return _grouped_depthwise(r, conv, where)  # timm's group_size (the _g8/_g16 models)
        return {**r.conv(conv, where, **checks), "ks": (), "splits": 1, "gs": 1}
    r.claim(conv, where)
    names = list(conv.keys())
    if names != [str(i) for i in range(len(names))] or len(names) < 2:
        raise ConversionError(f"{where}: MixedConv2d groups {names}; expected '0', '1'... (two or more)")
    parts = [r.conv(conv[n], f"{where}.{n}", **checks) for n in names]
    ins = tuple(conv[n].in_channels for n in names)
    outs = tuple(p["out"] for p in parts)
    want_in, want_out = split_channels(sum(ins), len(names)), split_channels(sum(outs), len(names))
    if ins != want_in or outs != want_out or tuple(conv.splits) != ins:
        raise ConversionError(f"{where}: MixedConv2d splits input {tuple(conv.splits)} over groups of {ins} in, "
                              f"{outs} out channels; expected {want_in} in, {want_out} out (equal, the remainder "
                              "to the first)")  # fmt: skip
    for key, what in (("s", "stride"), ("d", "dilation"), ("bias", "bias")):
        if len({p[key] for p in parts}) > 1:
            raise ConversionError(f"{where}: MixedConv2d groups differ in {what}: {[p[key] for p in parts]}")
    ks = tuple(p["k"] for p in parts)
    return {**parts[0], "out": sum(outs), "k": max(ks), "ks": () if pointwise else ks, "splits": len(parts), "gs": 1}


def _grouped_depthwise(r: TorchReader, conv: Any, where: str) -> dict[str, Any]:
    """A block's k x k conv in groups of ``gs`` channels, as many in as out (timm's ``group_size``)."""
    read = r.conv(conv, where, grouped=True)
    if conv.out_channels != conv.in_channels:
        raise ConversionError(f"{where}: groups={conv.groups}, in={conv.in_channels}, out={conv.out_channels}; "
                              "expected a depthwise or grouped conv with as many out channels as in")  # fmt: skip
    return {**read, "ks": (), "splits": 1, "gs": conv.in_channels // conv.groups}


def _conv_norm(r: TorchReader, cna: Any, where: str, **conv: Any) -> tuple[dict[str, Any], Activation]:
    """timm's ``ConvNormAct`` (``conv``, ``bn`` with its activation inside, anti-aliasing ``aa`` when strided
    in the _aa models): the conv's settings (``conv``: :meth:`TorchReader.conv`'s checks; ``s`` the stride of conv
    and pool together, ``aa`` the pool's kind) and the activation."""
    expect_type(cna, where, ("ConvNormAct",), "a conv + norm (ConvNormAct)")
    aa = read_anti_alias(r, getattr(cna, "aa", None), f"{where}.aa")
    settings = with_aa_stride(r.conv(cna.conv, f"{where}.conv", **conv), aa, f"{where}.conv")
    return settings, r.bn(cna.bn, f"{where}.bn")


def _universal_ir(r: TorchReader, blk: Any, where: str) -> UniversalInvertedResidualConfig:
    """timm's ``UniversalInvertedResidual``: its optional depthwise convs, each where timm puts it, with the
    activations and the stride placement the Flax block has."""
    exp, act = _conv_norm(r, blk.pw_exp, f"{where}.pw_exp", kernel=1, stride=1)
    # Which activation each depthwise conv must have: only dw_mid's has one, the expansion's.
    depthwise: dict[str, dict[str, Any]] = {}
    for name, want in (("dw_start", "identity"), ("dw_mid", act), ("dw_end", "identity")):
        module = getattr(blk, name)
        if type(module).__name__ == "Identity":
            r.identity(module, f"{where}.{name}")
            continue
        depthwise[name], got = _conv_norm(r, module, f"{where}.{name}", depthwise=True)
        if got != want:
            raise ConversionError(f"{where}.{name}.bn.act: activation {got}; expected "
                                  f"{'none' if want == 'identity' else want} (in a universal inverted residual "
                                  "only pw_exp and dw_mid have one, the same)")  # fmt: skip
    r.identity(blk.se, f"{where}.se")  # no MobileNetV4 has one, nor does the Flax block
    proj, proj_act = _conv_norm(r, blk.pw_proj, f"{where}.pw_proj", kernel=1, stride=1)
    if proj_act != "identity":
        raise ConversionError(f"{where}.pw_proj.bn.act: activation {proj_act} after the projection; expected none")
    for name, conv in (("pw_exp", exp), ("pw_proj", proj)):
        if conv["aa"] != "none":
            raise ConversionError(f"{where}.{name}.aa: anti-aliasing ({conv['aa']}) after a 1x1 conv; expected "
                                  "none (only a strided depthwise conv has it)")  # fmt: skip
    strided = next((n for n in ("dw_mid", "dw_start", "dw_end") if n in depthwise), None)
    for name, conv in depthwise.items():
        if name != strided and conv["s"] != 1:
            raise ConversionError(f"{where}.{name}.conv: stride {conv['s']}; expected 1 (the block's stride is on "
                                  f"{strided}, as timm builds it)")  # fmt: skip
    aa = {name: conv["aa"] for name, conv in depthwise.items() if conv["aa"] != "none"}
    if set(aa) - {strided} or (aa and strided == "dw_end"):
        raise ConversionError(f"{where}: anti-aliasing on {sorted(aa)}; expected it on the strided dw_mid or "
                              "dw_start only")  # fmt: skip
    dilations = {name: conv["d"] for name, conv in depthwise.items()}
    if len(set(dilations.values())) > 1:
        raise ConversionError(f"{where}: depthwise dilations {dilations}; expected one dilation for all")
    layer_scale = read_layer_scale(r, blk, where)
    kernel = {name: conv["k"] for name, conv in depthwise.items()}
    return UniversalInvertedResidualConfig(
        out_channels=proj["out"],
        expand_channels=exp["out"],
        start_kernel_size=kernel.get("dw_start", 0),
        kernel_size=kernel.get("dw_mid", 0),
        end_kernel_size=kernel.get("dw_end", 0),
        stride=depthwise[strided]["s"] if strided else 1,
        dilation=next(iter(dilations.values()), 1),
        act=act,
        layer_scale=layer_scale,
        aa=aa.get(strided or "", "none"),
        skip=blk.has_skip,
    )


def _cond_conv_residual(r: TorchReader, blk: Any, where: str) -> CondConvResidualConfig:
    """timm's ``CondConvResidual``: ``routing_fn`` (a Linear with bias, on the pooled input, then a sigmoid) and
    three ``CondConv2d`` of as many experts, each without bias, in an inverted residual."""
    routing = r.linear(blk.routing_fn, f"{where}.routing_fn")
    pw = r.cond_conv(blk.conv_pw, f"{where}.conv_pw", kernel=1, stride=1)
    act = r.bn(blk.bn1, f"{where}.bn1")
    dw = r.cond_conv(blk.conv_dw, f"{where}.conv_dw", depthwise=True)
    dw_act = r.bn(blk.bn2, f"{where}.bn2")
    se = _se(r, blk, where)
    if se.get("se_kind", "se") != "se":
        raise ConversionError(f"{where}.se: {type(blk.se).__name__} in a CondConvResidual is not supported (its "
                              "attention is squeeze-excite only)")  # fmt: skip
    pwl = r.cond_conv(blk.conv_pwl, f"{where}.conv_pwl", kernel=1, stride=1)
    pwl_act = r.bn(blk.bn3, f"{where}.bn3")
    if (dw_act, pwl_act) != (act, "identity"):
        raise ConversionError(f"{where}: activations {act}, {dw_act}, {pwl_act} after bn1, bn2, bn3; expected {act} "
                              "after the expansion and depthwise convs, none after the projection")  # fmt: skip
    experts = {"routing_fn": routing["out"], "conv_pw": pw["experts"], "conv_dw": dw["experts"],
               "conv_pwl": pwl["experts"]}  # fmt: skip
    if len(set(experts.values())) > 1:
        raise ConversionError(f"{where}: experts {experts}; expected one number for the routing and every conv")
    if routing["inp"] != blk.conv_pw.in_channels or not routing["bias"]:
        raise ConversionError(f"{where}.routing_fn: Linear({routing['inp']}, {routing['out']}, bias="
                              f"{routing['bias']}); expected {blk.conv_pw.in_channels} inputs (the block's) and a "
                              "bias")  # fmt: skip
    biased = [n for n, conv in (("conv_pw", pw), ("conv_dw", dw), ("conv_pwl", pwl)) if conv["bias"]]
    if biased:
        raise ConversionError(f"{where}: {', '.join(biased)} with bias; expected CondConv2d without bias")
    return CondConvResidualConfig(out_channels=pwl["out"], kernel_size=dw["k"], stride=dw["s"], dilation=dw["d"],
                                  expand_channels=pw["out"], num_experts=routing["out"], act=act, skip=blk.has_skip,
                                  **se)  # fmt: skip


def _block(r: TorchReader, blk: Any, where: str) -> BlockConfig:
    name = type(blk).__name__
    aa = read_anti_alias(r, getattr(blk, "aa", None), f"{where}.aa")  # the universal IR's sit in its ConvNormActs
    s2d = getattr(blk, "conv_s2d", None)
    if s2d is not None and name != "DepthwiseSeparableConv":
        raise ConversionError(f"{where}.conv_s2d: space-to-depth ({type(s2d).__name__} 2x2, stride 2) in a {name} "
                              "is not supported (only in a DepthwiseSeparableConv)")  # fmt: skip
    if s2d is None:
        r.identity(getattr(blk, "bn_s2d", None), f"{where}.bn_s2d")
    if name == "DepthwiseSeparableConv":
        refuse_anti_alias(aa, where, name)  # timm would size its BlurPool2d by the output channels, not conv_dw's
        s2d_act = None
        if s2d is not None:  # EfficientNet-X/H: its convs pad TF 'SAME' whatever the model's padding rule
            conv = r.conv(s2d, f"{where}.conv_s2d", kernel=2, stride=2, same=True)
            if conv["out"] != 4 * s2d.in_channels or conv["bias"]:
                raise ConversionError(f"{where}.conv_s2d: {s2d.in_channels} to {conv['out']} channels, bias="
                                      f"{conv['bias']}; expected 4x the input's, no bias")  # fmt: skip
            s2d_act = r.bn(blk.bn_s2d, f"{where}.bn_s2d")
        same_dw = s2d is not None and getattr(blk.conv_dw, "kernel_size", (0,))[0] == 2
        dw = _conv(r, blk.conv_dw, f"{where}.conv_dw", depthwise=True, same=same_dw)
        act = r.bn(blk.bn1, f"{where}.bn1")
        if s2d_act not in (None, act):
            raise ConversionError(f"{where}.bn_s2d.act: activation {s2d_act}; expected the block's, {act}")
        se = _se(r, blk, where)
        pw = _conv(r, blk.conv_pw, f"{where}.conv_pw", pointwise=True)
        pw_act = r.bn(blk.bn2, f"{where}.bn2")
        if pw_act not in ("identity", act):
            raise ConversionError(f"{where}.bn2.act: pointwise activation {pw_act} differs from {act}")
        return SeparableConfig(out_channels=pw["out"], kernel_size=dw["k"], stride=dw["s"], dilation=dw["d"],
                               act=act, pw_act=pw_act != "identity", skip=blk.has_skip, kernel_sizes=dw["ks"],
                               project_splits=pw["splits"], group_size=dw["gs"], space_to_depth=s2d is not None,
                               **se)  # fmt: skip
    if name == "InvertedResidual":
        pw = _conv(r, blk.conv_pw, f"{where}.conv_pw", pointwise=True)
        act = r.bn(blk.bn1, f"{where}.bn1")
        dw = with_aa_stride(_conv(r, blk.conv_dw, f"{where}.conv_dw", depthwise=True), aa, f"{where}.conv_dw")
        dw_act = r.bn(blk.bn2, f"{where}.bn2")
        se = _se(r, blk, where)
        pwl = _conv(r, blk.conv_pwl, f"{where}.conv_pwl", pointwise=True)
        pwl_act = r.bn(blk.bn3, f"{where}.bn3")
        if (dw_act, pwl_act) != (act, "identity"):
            raise ConversionError(f"{where}: activations {act}, {dw_act}, {pwl_act} after bn1, bn2, bn3; "
                                  f"expected {act} after the expansion and depthwise convs, none after the "
                                  "projection")  # fmt: skip
        return InvertedResidualConfig(out_channels=pwl["out"], kernel_size=dw["k"], stride=dw["s"], dilation=dw["d"],
                                      expand_channels=pw["out"], act=act, skip=blk.has_skip, kernel_sizes=dw["ks"],
                                      expand_splits=pw["splits"], project_splits=pwl["splits"],
                                      group_size=dw["gs"], aa=dw["aa"],
                                      **se)  # fmt: skip
    if name == "EdgeResidual":
        # timm's force_in_chs (EdgeTPU's first block) changes only the expansion width and noskip only has_skip,
        # both read off the module. A pw_kernel_size other than 1 (no timm model has one) fails the 1x1 check.
        exp = with_aa_stride(r.conv(blk.conv_exp, f"{where}.conv_exp", grouped=True), aa, f"{where}.conv_exp")
        act = r.bn(blk.bn1, f"{where}.bn1")
        se = _se(r, blk, where)
        pwl = r.conv(blk.conv_pwl, f"{where}.conv_pwl", kernel=1, stride=1)
        pwl_act = r.bn(blk.bn2, f"{where}.bn2")
        if pwl_act != "identity":
            raise ConversionError(f"{where}.bn2.act: activation {pwl_act} after the projection; expected none "
                                  "(the edge residual block's projection is linear)")  # fmt: skip
        return EdgeResidualConfig(out_channels=pwl["out"], kernel_size=exp["k"], stride=exp["s"], dilation=exp["d"],
                                  expand_channels=exp["out"], groups=exp["groups"], act=act, skip=blk.has_skip,
                                  aa=exp["aa"], **se)  # fmt: skip
    if name == "UniversalInvertedResidual":
        return _universal_ir(r, blk, where)
    if name == "MobileAttention":
        return read_mobile_attention(r, blk, where)
    if name == "CondConvResidual":
        # timm builds a strided one's depthwise conv at stride 1 under an aa_layer, and never applies the pool
        refuse_anti_alias(aa, where, name)
        return _cond_conv_residual(r, blk, where)
    if name == "ConvBnAct":
        refuse_anti_alias(aa, where, name)
        conv = r.conv(blk.conv, f"{where}.conv")
        return ConvBNActConfig(out_channels=conv["out"], kernel_size=conv["k"], stride=conv["s"], dilation=conv["d"],
                               act=r.bn(blk.bn1, f"{where}.bn1"), skip=blk.has_skip)  # fmt: skip
    raise ConversionError(f"{where}: unsupported timm block {name}")


def _drop_path(r: TorchReader, blk: Any, where: str, config: BlockConfig) -> BlockConfig:
    """``config`` with the stochastic depth of the block's ``drop_path`` (timm's ``drop_path_rate`` gives block
    ``i`` of ``n`` the rate ``drop_path_rate · i / n``)."""
    rate = r.drop_path(getattr(blk, "drop_path", None), f"{where}.drop_path")
    return dataclasses.replace(config, drop_path=rate) if rate else config


FEATURE_CLASSES = ("EfficientNetFeatures", "MobileNetV3Features")  # timm's features_only=True models


def _config(model: Any) -> tuple[MobileNetConfig, dict[int, str]]:
    r = TorchReader()
    kind = type(model).__name__
    if kind not in ("EfficientNet", "MobileNetV3", *FEATURE_CLASSES):
        raise ConversionError(f"unsupported timm model class {kind}; expected timm MobileNet V1/V2/V3/V4 (or its "
                              "features_only model)")  # fmt: skip
    stem = r.conv(model.conv_stem, "conv_stem")
    stem_act = r.bn(model.bn1, "bn1")
    if kind == "MobileNetV3Features":  # a plain norm, then act1 (the classifier model's bn1 holds its activation)
        if stem_act != "identity":
            raise ConversionError(f"bn1: activation {stem_act} before act1; expected a plain norm, then act1")
        stem_act = r.act(model.act1, "act1")
    stages = tuple(tuple(_drop_path(r, blk, f"blocks.{s}.{i}", _block(r, blk, f"blocks.{s}.{i}"))
                         for i, blk in enumerate(stage)) for s, stage in enumerate(model.blocks))  # fmt: skip
    if kind in FEATURE_CLASSES:
        config = MobileNetConfig(stages=stages, stem_channels=stem["out"], stem_kernel=stem["k"],
                                 stem_stride=stem["s"], stem_act=stem_act, num_classes=0,
                                 dropout=float(model.drop_rate), in_channels=model.conv_stem.in_channels,
                                 padding=r.padding(), norm=r.norm())  # fmt: skip
        return config, r.claimed

    head: Literal["none", "pre_pool", "post_pool"] = "none"
    head_act: Activation = "relu"
    head_channels, head_bias, head_norm = 0, False, False
    if type(model.conv_head).__name__ != "Identity":
        h = r.conv(model.conv_head, "conv_head", kernel=1, stride=1)
        head_channels, head_bias = h["out"], h["bias"]
        if kind == "EfficientNet":
            head, head_act = "pre_pool", r.bn(model.bn2, "bn2")
        else:
            head = "post_pool"
            norm_act: Activation = "identity"
            if type(model.norm_head).__name__ == "Identity":
                r.identity(model.norm_head, "norm_head")
            else:  # MobileNetV4: the activation sits inside norm_head (a BatchNormAct2d) and act2 is Identity
                head_norm, norm_act = True, r.bn(model.norm_head, "norm_head")
            head_act = r.act(model.act2, "act2")
            if norm_act != "identity":
                if head_act != "identity":
                    raise ConversionError(f"act2: activation {head_act} after norm_head's {norm_act}; expected "
                                          "one activation in the head")  # fmt: skip
                head_act = norm_act
    else:
        r.identity(model.conv_head, "conv_head")
        for name in ("bn2", "norm_head", "act2"):
            r.identity(getattr(model, name, None), name)
    if getattr(model, "flatten", None) is not None:
        r.flatten(model.flatten, "flatten")
    r.avg_pool(model.global_pool, "global_pool")
    classifier = model.classifier
    if type(classifier).__name__ == "Identity":
        r.identity(classifier, "classifier")
        num_classes = 0
    else:
        num_classes = r.linear(classifier, "classifier")["out"]
    config = MobileNetConfig(
        stages=stages,
        stem_channels=stem["out"],
        stem_kernel=stem["k"],
        stem_stride=stem["s"],
        stem_act=stem_act,
        head=head,
        head_channels=head_channels,
        head_act=head_act,
        head_bias=head_bias,
        head_norm=head_norm,
        num_classes=num_classes,
        dropout=float(model.drop_rate),
        in_channels=model.conv_stem.in_channels,
        padding=r.padding(),
        norm=r.norm(),
    )
    return config, r.claimed


def _features_module(model: Any, config: MobileNetConfig) -> MobileNet:
    """The Flax backbone of a timm ``features_only`` model: its levels are timm's, read back and compared."""
    if getattr(model, "feature_hooks", None) is not None:
        raise ConversionError(f"{type(model).__name__} with feature_location other than 'bottleneck' (features "
                              "hooked inside blocks); expected the stage outputs timm returns by default")  # fmt: skip
    theirs = [{k: level[k] for k in ("module", "num_chs", "reduction")} for level in model.feature_info.info]
    ours = [{k: level[k] for k in ("module", "num_chs", "reduction")} for level in feature_levels(config)]
    if ours != theirs:  # e.g. output_stride < 32 (dilated stages), whose levels this library does not build
        raise ConversionError(f"{type(model).__name__}: feature levels {theirs}; this library builds {ours} for its "
                              "blocks (dilated stages from output_stride < 32 are not supported)")  # fmt: skip
    return MobileNet(config, features_only=True, out_indices=tuple(model.feature_info.out_indices))


class TimmReader:
    source = "timm"

    def describe(self, model: Any) -> Described:
        config, claimed = _config(model)
        arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        module = _features_module(model, config) if type(model).__name__ in FEATURE_CLASSES else MobileNet(config)
        return Described(arch, self.source, module, config.in_channels, dotted, claimed)

    def skeleton(self, arch: str | None, state_dict: StateDict, config: dict[str, Any]) -> Any:
        import timm

        zoo = zoo_names()
        if arch is not None and timm.is_model(arch) and arch not in zoo:
            raise ConversionError(f"timm arch must be a MobileNet model name, one of timm's {', '.join(ZOO_MODULES)} "
                                  f"models; got {arch!r}")  # fmt: skip
        if arch not in zoo:
            near = difflib.get_close_matches(str(arch), zoo, n=8, cutoff=0.6)
            raise ConversionError(f"timm has no model {arch!r}; close names among its MobileNets: {near}")
        reason = refused_reason(arch)
        if reason is not None:
            raise ConversionError(f"timm {arch} is not supported: {reason}")
        unknown = sorted(config.keys() - SHAPING_ARGUMENTS)
        if unknown:  # e.g. checkpoint_path= or pretrained=: timm would load other weights or fetch them
            raise ConversionError(f"timm {arch}: argument {unknown} is not one that shapes the model; accepted: "
                                  f"{sorted(SHAPING_ARGUMENTS)}")  # fmt: skip
        return timm.create_model(arch, pretrained=False, **config)

    def export_target(
        self, module: nn.Module, variables: Variables, arch: str | None, config: dict[str, Any]
    ) -> tuple[str | None, dict[str, Any]]:
        if isinstance(module, DepthwiseSeparableConv):
            raise ConversionError(f"{self.source} has no DepthwiseSeparableConv layout; use source='torch_ref'")
        if arch is None:
            raise ConversionError("a timm export needs arch= (the timm model name, e.g. 'mobilenetv3_large_100') "
                                  "or model= (the timm model to load into)")  # fmt: skip
        if isinstance(module, MobileNet) and module.features_only:
            features = {"features_only": True, "out_indices": module.out_indices}
            return arch, {**features, "in_chans": module.config.in_channels}
        return arch, {"num_classes": module.config.num_classes, "in_chans": module.config.in_channels}


register_reader(TimmReader())
