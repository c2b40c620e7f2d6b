"""MobileNetV4's hybrids against timm: multi-query attention and the mobile attention block alone (forward, input
and parameter gradients, BatchNorm statistics; with and without key/value downsampling; random layer-scale
gammas), exact GELU, what the reader refuses in an attention block, and a hybrid's bit-exact round trip. The four
hybrids are compared whole in test_zoo.py; their gradients and a trajectory are in test_training.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
from conftest import assert_as_close_as_torch, random_variables, randomize_batchnorm, to_nchw, to_nhwc, torch_runs
from flax import traverse_util
from timm.layers.attention2d import MultiQueryAttention2d
from timm.models._efficientnet_blocks import MobileAttention as TimmMobileAttention

import flax_dsconv
from flax_dsconv import ConversionError, from_torch, to_torch_state_dict
from flax_dsconv.convert.plan import TO_FLAX, TO_TORCH, check_keys, dotted, plan
from flax_dsconv.convert.protocol import describe
from flax_dsconv.nn import BatchNorm, BatchNormConfig, MobileAttention, MobileAttentionConfig, MultiQueryAttention
from flax_dsconv.ops.attention import multi_query_attention
from flax_dsconv.shapes import abstract_variables

IN_CHANNELS = 32
SIZE = (10, 12)  # even, so that a stride-2 down_conv halves it, and not square

# timm MobileAttention arguments on 32 channels (4 heads of 16 in all but "one_head"), and whether the block adds
# its input. Layer scale is on (timm's 1e-5, then random gammas) unless layer_scale_init_value=None.
FOUR_HEADS = dict(num_heads=4, key_dim=16, value_dim=16)
BLOCK_CASES = {
    "kv_stride2": dict(out_chs=32, **FOUR_HEADS, kv_stride=2, skip=True),
    "kv_stride1": dict(out_chs=32, **FOUR_HEADS, kv_stride=1, skip=True),
    "kv_stride2_k5_value_dim8": dict(out_chs=32, **{**FOUR_HEADS, "value_dim": 8}, kv_stride=2, dw_kernel_size=5,
                                     skip=True),
    "one_head_wider_out": dict(out_chs=48, num_heads=1, key_dim=24, value_dim=24, kv_stride=2, skip=False),
    "same_kv_stride2": dict(out_chs=32, **FOUR_HEADS, kv_stride=2, pad_type="same", skip=True),
    "dilated_kv_stride2": dict(out_chs=32, **FOUR_HEADS, kv_stride=2, dilation=2, skip=True),
    "query_stride2": dict(out_chs=32, **FOUR_HEADS, kv_stride=2, query_strides=2, skip=True),
    "same_query_stride2": dict(out_chs=32, **FOUR_HEADS, kv_stride=1, query_strides=2, pad_type="same", skip=True),
    "no_layer_scale_noskip": dict(out_chs=32, **FOUR_HEADS, kv_stride=2, layer_scale_init_value=None, noskip=True,
                                  skip=False),
}  # fmt: skip


def _randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """He-normal kernels (attention logits of a few units: neither uniform nor one-hot weights) and layer-scale
    gammas in [0.5, 1.5): at timm's 1e-5 the block would be its input plus 1e-5 of the attention, and a wrong
    attention would pass any output test."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim > 1:
                p.normal_(0, (2 / p[0].numel()) ** 0.5, generator=g)
            elif name.endswith("gamma"):
                p.uniform_(0.5, 1.5, generator=g)
    return module


def _timm_block(case: dict) -> torch.nn.Module:
    args = {k: v for k, v in case.items() if k != "skip"}
    args.setdefault("layer_scale_init_value", 1e-5)
    return _randomize(TimmMobileAttention(IN_CHANNELS, use_multi_query=True, **args))


def _flax_block(case: dict) -> MobileAttention:
    return MobileAttention(
        case["out_chs"],
        case["num_heads"],
        case["key_dim"],
        case["value_dim"],
        kv_stride=case["kv_stride"],
        query_stride=case.get("query_strides", 1),
        kernel_size=case.get("dw_kernel_size", 3),
        dilation=case.get("dilation", 1),
        padding="SAME" if case.get("pad_type") == "same" else "torch",
        layer_scale=case.get("layer_scale_init_value", 1e-5) is not None,
        skip=case["skip"],
    )


def _variables(module, torch_module: torch.nn.Module, in_channels: int = IN_CHANNELS) -> tuple[dict, list]:
    """The torch module's weights as the Flax module's variables, by the converter's key plan and layout rules."""
    entries = plan(abstract_variables(module, in_channels), dotted)
    state = torch_module.state_dict()
    check_keys(entries, state, type(torch_module).__name__)
    flat = {e.flax_key: jnp.asarray(TO_FLAX[e.layout](state[e.torch_key].numpy())) for e in entries}
    return traverse_util.unflatten_dict(flat), entries


def _compare(label: str, torch_module: torch.nn.Module, module, apply, train: bool, out_channels: int) -> None:
    """``torch_module`` (fp32 in both memory formats, and float64) against Flax's ``apply(variables, x, train)``
    on one random batch: the output, the input's and every parameter's gradient under one random cotangent, and
    in train mode the BatchNorm statistics, each by the suite's float64-referenced rule."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, IN_CHANNELS, *SIZE, generator=g)
    torch_module = randomize_batchnorm(torch_module, x).train(train)
    variables, entries = _variables(module, torch_module)  # before a train-mode pass moves the statistics
    cotangent = torch.randn((2, out_channels, *SIZE), generator=g)
    outputs, grads, stats = torch_runs(torch_module, x, cotangent, train)

    @jax.jit
    def forward_and_vjp(params, x, cotangent):
        def run(params, x):
            out, state = apply({"params": params, "batch_stats": variables.get("batch_stats", {})}, x, train)
            return out, state.get("batch_stats", {})

        out, vjp, new_stats = jax.vjp(run, params, x, has_aux=True)
        return out, new_stats, *vjp(cotangent)

    out, new_stats, g_params, g_x = forward_and_vjp(variables["params"], to_nhwc(x), to_nhwc(cotangent))
    flat = traverse_util.flatten_dict({"params": g_params, "batch_stats": new_stats})
    by_torch_name = {e.torch_key: np.asarray(TO_TORCH[e.layout](np.asarray(flat[e.flax_key]))) for e in entries}
    label = f"{label} {'train' if train else 'eval'}"
    torch32 = [outputs["nchw"], outputs["nhwc"]]
    print(assert_as_close_as_torch("output", {"output": to_nchw(out)}, torch32, outputs["exact"], label))
    assert grads["exact"].keys() - {"input"} == {e.torch_key for e in entries if e.flax_key[0] == "params"}
    flax_grads = {"input": to_nchw(g_x), **{k: by_torch_name[k] for k in grads["exact"] if k != "input"}}
    torch32 = [grads["nchw"], grads["nhwc"]]
    print(assert_as_close_as_torch("gradient", flax_grads, torch32, grads["exact"], label + " gradients"))
    if train and stats["exact"]:  # a MultiQueryAttention without key/value downsampling has no BatchNorm
        flax_stats = {k: by_torch_name[k] for k in stats["exact"]}
        torch32 = [stats["nchw"], stats["nhwc"]]
        assert_as_close_as_torch("statistics", flax_stats, torch32, stats["exact"], label + " BatchNorm statistics")


# ------------------------------------------------------------------------------------------ the attention alone


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("kv_stride,query_stride", [(1, 1), (2, 1), (2, 2)])
def test_multi_query_attention_matches_timm_forward_and_both_gradients(kv_stride, query_stride, train):
    torch_module = _randomize(MultiQueryAttention2d(IN_CHANNELS, dim_out=24, num_heads=4, key_dim=16, value_dim=8,
                                                    kv_stride=kv_stride, query_strides=query_stride))  # fmt: skip
    norm = BatchNorm.partial(BatchNormConfig(), use_running_average=not train)
    module = MultiQueryAttention(24, 4, 16, 8, norm, kv_stride=kv_stride, query_stride=query_stride)

    def apply(variables, x, train):
        return module.apply(variables, x, mutable=["batch_stats"])

    label = f"MultiQueryAttention kv_stride {kv_stride} query_stride {query_stride}"
    _compare(label, torch_module, module, apply, train, 24)


def test_multi_query_attention_is_softmax_of_scaled_dot_products_per_head():
    """The maths spelled out on small arrays in float64: every query head over the one key/value head."""
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(1, 2, 3, 2 * 4)), rng.normal(size=(1, 1, 2, 4)), rng.normal(size=(1, 1, 2, 5))
    with jax.enable_x64(True):
        got = np.asarray(multi_query_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), num_heads=2))
    assert got.shape == (1, 2, 3, 2 * 5)
    for h in range(2):
        logits = q[0, :, :, h * 4 : (h + 1) * 4].reshape(6, 4) @ k[0].reshape(2, 4).T / 2.0  # 4 ** -0.5
        weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        np.testing.assert_allclose(got[0, :, :, h * 5 : (h + 1) * 5].reshape(6, 5), weights @ v[0].reshape(2, 5),
                                   rtol=1e-12)  # fmt: skip


# ------------------------------------------------------------------------------------------ the block


def test_block_cases_build_the_timm_variant_they_name():
    for name, case in BLOCK_CASES.items():
        blk = _timm_block(case)
        assert blk.has_skip == case["skip"], name
        assert hasattr(blk.attn.key, "down_conv") == (case["kv_stride"] > 1), name
        assert hasattr(blk.attn.query, "down_pool") == ("query_strides" in case), name
        assert (type(blk.layer_scale).__name__ == "LayerScale2d") == ("layer_scale_init_value" not in case), name
        if case.get("pad_type") == "same":
            downsampling = blk.attn.key.down_conv if case["kv_stride"] > 1 else blk.attn.query.down_pool
            assert type(downsampling).__name__ in ("Conv2dSame", "AvgPool2dSame"), name


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", list(BLOCK_CASES))
def test_mobile_attention_matches_timm_forward_and_both_gradients(name, train):
    case = BLOCK_CASES[name]
    module = _flax_block(case)

    def apply(variables, x, train):
        return module.apply(variables, x, train=train, mutable=["batch_stats"])

    _compare(f"MobileAttention {name}", _timm_block(case), module, apply, train, case["out_chs"])


@pytest.mark.parametrize("field,value", [
    ("num_heads", 0), ("key_dim", -1), ("value_dim", 2.5), ("kv_stride", 0), ("query_stride", True), ("stride", 2),
    ("act", "relu"),
])  # fmt: skip
def test_a_bad_mobile_attention_config_is_refused_naming_the_field(field, value):
    fields = dict(out_channels=32, num_heads=4, key_dim=16, value_dim=16, kv_stride=2)
    with pytest.raises(ValueError, match=rf"MobileAttentionConfig: {field} must be"):
        MobileAttentionConfig(**{**fields, field: value})


def test_a_bad_mobile_attention_module_is_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"MobileAttention .*: num_heads must be a positive int, got 0"):
        abstract_variables(MobileAttention(32, 0, 16, 16), IN_CHANNELS)


def test_a_query_stride_refuses_a_size_it_does_not_divide():
    module = MobileAttention(32, 4, 16, 16, query_stride=2)
    with pytest.raises(ValueError, match=r"query_stride=2 needs height and width divisible by it.*\(1, 9, 9, 32\)"):
        abstract_variables(module, IN_CHANNELS, 9)


def test_mobile_attention_refuses_nchw_input_naming_its_channels():
    module = MobileAttention(32, 4, 16, 16, kv_stride=2)
    variables = abstract_variables(module, IN_CHANNELS)
    with pytest.raises(ValueError, match=r"expected NHWC input with 32 channels.*NCHW\?"):
        jax.eval_shape(module.apply, variables, jax.ShapeDtypeStruct((1, 32, 8, 8), jnp.float32))


# ------------------------------------------------------------------------------------------ conversion


def test_gelu_is_the_exact_erf_gelu_as_torch_and_timm_compute_it():
    """timm's GELU and torch's ``nn.GELU()`` are erf-exact; ``jax.nn.gelu`` defaults to the tanh approximation,
    5e-4 away (MobileNetV4-Hybrid-L's every activation)."""
    from flax_dsconv.ops.activations import activation

    x = np.linspace(-6, 6, 100_001).astype(np.float32)
    exact = torch.nn.functional.gelu(torch.from_numpy(x).double()).numpy()
    torch32 = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
    got = np.asarray(jax.jit(activation("gelu"))(x))
    assert np.abs(got - exact).max() <= max(2 * np.abs(torch32 - exact).max(), 1e-6)
    assert np.abs(np.asarray(jax.nn.gelu(x)) - exact).max() > 1e-4  # the trap the library avoids


def _hybrid_attention_block(**changes) -> TimmMobileAttention:
    """The first attention block of a meta-device mobilenetv4_hybrid_medium (the reader needs only its structure),
    with ``changes`` applied to the block or its attention (``'attn.<name>'``)."""
    with torch.device("meta"):
        model = timm.create_model("mobilenetv4_hybrid_medium")
    blk = model.blocks[2][4]
    assert type(blk).__name__ == "MobileAttention"
    for name, value in changes.items():
        owner = blk.attn if name.startswith("attn.") else blk
        setattr(owner, name.removeprefix("attn."), value)
    return model


@pytest.mark.parametrize("changes,match", [
    (dict(conv_cpe_dw=torch.nn.Conv2d(160, 160, 3, padding=1, groups=160)), r"blocks\.2\.4\.conv_cpe_dw: a posit"),
    ({"attn.attn_drop": torch.nn.Dropout(0.1)}, r"blocks\.2\.4\.attn\.attn_drop: dropout 0\.1"),
    ({"attn.has_query_strides": True, "attn.query_strides": (2, 1)}, r"attn\.query\.down_pool: query strides \(2, 1\)"),
    ({"attn.has_query_strides": True, "attn.query_strides": (2, 2)}, r"blocks\.2\.4\.attn\.query: holds \['proj'\]"),
    ({"attn.num_heads": 2}, r"blocks\.2\.4\.attn\.query\.proj: 256 output channels; expected 128"),
    (dict(attn=torch.nn.Identity()), r"blocks\.2\.4\.attn: Identity, expected multi-query attention"),
])  # fmt: skip
def test_an_attention_block_the_flax_block_cannot_compute_is_refused_naming_the_module(changes, match):
    with pytest.raises(ConversionError, match=match):
        describe(_hybrid_attention_block(**changes))


def test_an_added_module_in_an_attention_branch_is_refused_naming_it():
    model = _hybrid_attention_block()
    model.blocks[2][4].attn.key.add_module("act", torch.nn.ReLU())
    with pytest.raises(ConversionError, match=r"blocks\.2\.4\.attn\.key: holds \['down_conv', 'norm', 'proj', 'act'"):
        describe(model)


def test_an_approximate_gelu_is_refused():
    with torch.device("meta"):
        model = timm.create_model("mobilenetv4_hybrid_large")
    model.bn1.act = torch.nn.GELU(approximate="tanh")
    with pytest.raises(ConversionError, match=r"bn1\.act: GELU\(approximate='tanh'\); only the exact GELU"):
        describe(model)


def test_a_hybrid_round_trips_bit_exact_through_a_state_dict_and_its_arch_name():
    name = "mobilenetv4_hybrid_medium"
    model = randomize_batchnorm(_randomize(timm.create_model(name, num_classes=10)), (2, 3, 64, 64))
    module, variables = from_torch(model)
    assert sum(isinstance(b, MobileAttentionConfig) for b in module.config.blocks) == 8
    exported = to_torch_state_dict(module, variables, source="timm", arch=name, num_classes=10)
    target = timm.create_model(name, num_classes=10)
    target.load_state_dict(exported, strict=True)
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(target.state_dict()[key], value), key
    module_sd, variables_sd = from_torch(exported, source="timm", arch=name, num_classes=10)
    assert module_sd.config == module.config
    jax.tree.map(np.testing.assert_array_equal, variables_sd, variables)


def test_a_hybrid_saves_and_loads_with_its_attention_blocks(tmp_path):
    module = flax_dsconv.create_model("mobilenetv4_hybrid_large_075", num_classes=10)
    variables = random_variables(module, jnp.zeros((1, 64, 64, 3)))
    flax_dsconv.save(tmp_path / "hybrid", module, variables)
    loaded, loaded_variables = flax_dsconv.load(tmp_path / "hybrid")
    assert loaded.config == module.config
    assert {type(b).__name__ for b in loaded.config.blocks} >= {"MobileAttentionConfig"}
    jax.tree.map(np.testing.assert_array_equal, loaded_variables, variables)
