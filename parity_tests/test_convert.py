"""Conversion: strict errors, file formats, round trips and export into each torch library."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import timm
import torch
import torchvision
from conftest import assert_close, random_variables, randomize_batchnorm, to_nhwc
from safetensors.torch import save_file

import torch_ref
from flax_dsconv import (
    ConversionError,
    DepthwiseSeparableConv,
    from_torch,
    mobilenet_v1,
    mobilenet_v2,
    mobilenet_v3_large,
    mobilenet_v3_small,
    to_torch_state_dict,
)

tv = torchvision.models

ROUND_TRIP = {
    "torch_ref/dsconv": (lambda: torch_ref.DSConv(8, 16, stride=2), "torch_ref"),
    "torch_ref/depthwise_separable": (lambda: torch_ref.DepthwiseSeparableConv(8, 16, 5), "torch_ref"),
    "torch_ref/mobilenet_v1": (lambda: torch_ref.MobileNetV1(0.5), "torch_ref"),
    "torchvision/mobilenet_v2": (lambda: tv.mobilenet_v2(), "torchvision"),
    "torchvision/mobilenet_v3_large": (lambda: tv.mobilenet_v3_large(dilated=True), "torchvision"),
    "torchvision/mobilenet_v3_small": (lambda: tv.mobilenet_v3_small(reduced_tail=True), "torchvision"),
    **{f"timm/{n}": (lambda n=n: timm.create_model(n), "timm") for n in timm.list_models("*mobilenetv[123]*")},
}


def state_without_counters(model):
    return {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("name", sorted(ROUND_TRIP))
def test_round_trip_torch_flax_torch_is_bit_exact(name):
    build, source = ROUND_TRIP[name]
    model = build()
    with torch.no_grad():  # make running stats distinct from their defaults
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
    module, variables = from_torch(model)
    exported = to_torch_state_dict(module, variables, model=model, source=source)
    original = state_without_counters(model)
    assert {k for k in exported if not k.endswith("num_batches_tracked")} == set(original)
    for key, value in original.items():
        assert torch.equal(exported[key], value), key
    build().load_state_dict(exported, strict=True)
    safetensors.torch.save(exported)  # refuses non-contiguous tensors


@pytest.mark.parametrize(
    "builder,torch_model",
    [
        (
            lambda: mobilenet_v2(width_multiplier=0.5, num_classes=10),
            lambda: tv.mobilenet_v2(width_mult=0.5, num_classes=10),
        ),
        (lambda: mobilenet_v3_large(dilated=True), lambda: tv.mobilenet_v3_large(dilated=True)),
        (lambda: mobilenet_v3_small(0.75), lambda: tv.mobilenet_v3_small(width_mult=0.75)),
    ],
)
def test_flax_built_model_exports_to_torchvision_and_reproduces_outputs(builder, torch_model):
    module = builder()
    x = jax.random.normal(jax.random.key(0), (2, 96, 96, 3))
    variables = random_variables(module, x)
    # A train-mode pass with momentum 0 sets the running statistics to this batch's: non-trivial, and the eval-mode
    # network stays well-conditioned (outputs of size ~1, where 1e-5 is meaningful).
    norm = dataclasses.replace(module.config.norm, momentum=0.0)
    calibrate = module.clone(config=dataclasses.replace(module.config, norm=norm))
    _, stats = jax.jit(
        lambda v: calibrate.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)})
    )(variables)
    variables = {**variables, **stats}
    target = torch_model().eval()
    target.load_state_dict(to_torch_state_dict(module, variables, source="torchvision"), strict=True)
    with torch.no_grad():
        expected = target(torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()))
    assert_close(jax.jit(module.apply)(variables, x), expected)


@pytest.mark.parametrize(
    "builder,name",
    [
        (lambda: mobilenet_v1(act="relu6"), "mobilenetv1_100"),
        (lambda: mobilenet_v1(1.25, act="relu6"), "mobilenetv1_125"),
    ],
)
def test_builder_config_equals_config_read_from_timm(builder, name):
    module, _ = from_torch(timm.create_model(name))
    assert module.config == builder().config


@pytest.mark.parametrize(
    "builder,torch_model",
    [
        (lambda: mobilenet_v2(), lambda: tv.mobilenet_v2()),
        (lambda: mobilenet_v2(1.4), lambda: tv.mobilenet_v2(width_mult=1.4)),
        (lambda: mobilenet_v3_large(), lambda: tv.mobilenet_v3_large()),
        (
            lambda: mobilenet_v3_large(0.75, reduced_tail=True),
            lambda: tv.mobilenet_v3_large(width_mult=0.75, reduced_tail=True),
        ),
        (lambda: mobilenet_v3_small(), lambda: tv.mobilenet_v3_small()),
        (
            lambda: mobilenet_v3_small(dilated=True, num_classes=7),
            lambda: tv.mobilenet_v3_small(dilated=True, num_classes=7),
        ),
        # neighbouring stages that round to one width (16 and 24): grouped by the table, not by width
        (lambda: mobilenet_v3_small(0.5), lambda: tv.mobilenet_v3_small(width_mult=0.5)),
        # the first tail block: stride 2 in the table, 1 once dilated; no residual, as in torchvision
        (
            lambda: mobilenet_v3_small(0.75, dilated=True, reduced_tail=True),
            lambda: tv.mobilenet_v3_small(width_mult=0.75, dilated=True, reduced_tail=True),
        ),
    ],
)
def test_builder_config_equals_config_read_from_torchvision(builder, torch_model):
    module, _ = from_torch(torch_model())
    assert module.config == builder().config


@pytest.mark.parametrize("width", [1.0, 1.25])
def test_torch_ref_mobilenet_v1_loads_timm_checkpoints(width):
    source = randomize_batchnorm(timm.create_model(f"mobilenetv1_{round(width * 100)}"), (2, 3, 64, 64))
    ref = torch_ref.MobileNetV1(width, act="relu6").eval()
    ref.load_state_dict(source.state_dict(), strict=True)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(ref(x), source(x), rtol=0, atol=0)


def test_timm_tf_models_get_same_padding_from_the_source():
    module, _ = from_torch(timm.create_model("tf_mobilenetv3_small_100"))
    assert module.config.padding == "SAME"
    assert module.config.norm.epsilon == pytest.approx(1e-3)
    module, _ = from_torch(timm.create_model("mobilenetv3_small_100"))
    assert module.config.padding == "torch"


# ------------------------------------------------------------------------------ files


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "wrapped.pth"])
def test_files_load_like_the_module(tmp_path, fmt):
    model = randomize_batchnorm(tv.mobilenet_v3_small(num_classes=10), (2, 3, 64, 64))
    path = tmp_path / f"model.{fmt}"
    if fmt == "safetensors":
        save_file(model.state_dict(), path)
    else:
        torch.save({"state_dict": model.state_dict()} if fmt.startswith("wrapped") else model.state_dict(), path)
    _, expected = from_torch(model)
    _, got = from_torch(path, arch="mobilenet_v3_small", source="torchvision", num_classes=10)
    chex.assert_trees_all_equal(got, expected)


def test_truncated_file_raises_naming_the_path(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save(tv.mobilenet_v3_small().state_dict(), path)
    path.write_bytes(path.read_bytes()[:10_000])
    with pytest.raises(ConversionError, match=r"could not read the torch checkpoint .*cut\.pth"):
        from_torch(path, arch="mobilenet_v3_small", source="torchvision")


def test_truncated_safetensors_raises(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file(tv.mobilenet_v3_small().state_dict(), path)
    path.write_bytes(path.read_bytes()[:10_000])
    with pytest.raises(ConversionError, match=r"could not read the safetensors checkpoint .*cut\.safetensors"):
        from_torch(path, arch="mobilenet_v3_small", source="torchvision")


class _NotWeights:
    pass


def test_pickled_objects_are_never_unpickled(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"payload": _NotWeights()}, path)
    with pytest.raises(ConversionError, match="could not read the torch checkpoint"):
        from_torch(path, arch="mobilenet_v3_small", source="torchvision")


# ------------------------------------------------------------------------------ strictness


def test_every_missing_unexpected_and_misshaped_key_is_listed_in_one_error():
    sd = tv.mobilenet_v3_small().state_dict()
    del sd["features.1.block.0.1.running_mean"], sd["classifier.3.bias"]
    sd["extra.weight"] = torch.zeros(3)
    sd["classifier.0.weight"] = torch.zeros(7, 576)
    with pytest.raises(ConversionError) as info:
        from_torch(sd, arch="mobilenet_v3_small", source="torchvision")
    msg = str(info.value)
    assert "missing keys (2): classifier.3.bias, features.1.block.0.1.running_mean" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "classifier.0.weight: checkpoint (7, 576), expected (1024, 576)" in msg


def test_num_batches_tracked_is_the_only_key_ignored():
    sd = state_without_counters(tv.mobilenet_v3_small())
    from_torch(sd, arch="mobilenet_v3_small", source="torchvision")


def test_v2_checkpoint_offered_as_v3_is_rejected():
    with pytest.raises(ConversionError, match=r"(?s)missing keys \(261\).*unexpected keys \(257\)"):
        from_torch(tv.mobilenet_v2().state_dict(), arch="mobilenet_v3_large", source="torchvision")


def test_width_075_checkpoint_offered_as_width_1_lists_shape_mismatches():
    sd = tv.mobilenet_v3_large(width_mult=0.75).state_dict()
    with pytest.raises(
        ConversionError,
        match=r"features\.2\.block\.0\.0\.weight: checkpoint \(48, 16, 1, 1\), expected \(64, 16, 1, 1\)",
    ):
        from_torch(sd, arch="mobilenet_v3_large", source="torchvision")
    from_torch(sd, arch="mobilenet_v3_large", source="torchvision", width_mult=0.75)


def test_timm_checkpoint_names_its_architecture():
    sd = timm.create_model("mobilenetv3_large_100").state_dict()
    module, _ = from_torch(sd, arch="mobilenetv3_large_100", source="timm")
    assert module.config.head == "post_pool"
    with pytest.raises(ConversionError, match="shape mismatches"):
        from_torch(sd, arch="mobilenetv3_large_075", source="timm")


def test_integer_weights_are_rejected_by_key_all_in_one_error():
    sd = torch_ref.DSConv(4, 8).state_dict()
    sd["depthwise_sep_conv.0.weight"] = sd["depthwise_sep_conv.0.weight"].long()
    sd["depthwise_sep_conv.4.running_var"] = sd["depthwise_sep_conv.4.running_var"].int()
    with pytest.raises(ConversionError, match=r"2 tensors cannot be converted") as info:
        from_torch(sd, arch="dsconv", source="torch_ref")
    message = str(info.value)
    assert "depthwise_sep_conv.0.weight: expected a floating-point tensor, got dtype torch.int64" in message
    assert "depthwise_sep_conv.4.running_var: expected a floating-point tensor, got dtype torch.int32" in message


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(), "source= one of"),
        (dict(source="timm", arch="resnet50"), "timm arch must be a MobileNet model name"),
        (dict(source="torchvision", arch="resnet50"), "torchvision arch must be one of"),
        (dict(source="torch_ref", arch="vgg"), "torch_ref has no arch"),
    ],
)
def test_state_dict_needs_a_known_source_and_arch(kwargs, match):
    with pytest.raises(ConversionError, match=match):
        from_torch(tv.mobilenet_v2().state_dict(), **kwargs)


def test_module_input_infers_everything_and_rejects_contradictions():
    model = tv.mobilenet_v3_small()
    with pytest.raises(TypeError, match="inferred"):
        from_torch(model, width_mult=0.5)
    with pytest.raises(ConversionError, match="torchvision model"):
        from_torch(model, source="timm")
    with pytest.raises(ConversionError, match="expected a torch_ref, timm or torchvision MobileNet"):
        from_torch(torch.nn.Conv2d(3, 3, 3))


def test_variables_hold_only_params_and_batch_stats_in_float32():
    _, variables = from_torch(torch_ref.DSConv(4, 8).half())
    assert set(variables) == {"params", "batch_stats"}
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype("float32")}


def test_converted_variables_do_not_alias_torch_memory():
    model = tv.mobilenet_v3_small()
    _, variables = from_torch(model)
    before = jax.tree.map(np.array, variables)
    model.train()(torch.randn(2, 3, 64, 64))  # updates running statistics in place
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    chex.assert_trees_all_equal(variables, before)


def test_converted_seed_block_applies_to_nhwc():
    block = randomize_batchnorm(torch_ref.DSConv(32, 128), (2, 32, 16, 16))
    module, variables = from_torch(block)
    x = torch.randn(1, 32, 64, 64)
    assert_close(jax.jit(module.apply)(variables, to_nhwc(x)), block(x))


# ------------------------------------------------------------------------------ export checks


def _with(module, **changes):
    return module.clone(config=dataclasses.replace(module.config, **changes))


@pytest.mark.parametrize(
    "build,target,match",
    [  # each pair has the same keys and shapes; only what the module computes differs
        (lambda: _with(mobilenet_v3_small(), padding="SAME"), dict(source="torchvision"), r"padding: Flax 'SAME'"),
        (
            lambda: _with(
                mobilenet_v3_small(), norm=dataclasses.replace(mobilenet_v3_small().config.norm, epsilon=1e-5)
            ),
            dict(source="torchvision"),
            r"BatchNorm epsilon: Flax 1e-05, torch 0\.001",
        ),
        (lambda: mobilenet_v1(0.25, act="relu6"), dict(model=torch_ref.MobileNetV1(0.25)), r"stem_act: Flax 'relu6'"),
        (lambda: mobilenet_v1(0.25), dict(source="torchvision"), r"head: Flax 'none', torch 'post_pool'"),
    ],
)
def test_export_refuses_a_module_that_the_torch_target_does_not_compute(build, target, match):
    module = build()
    variables = random_variables(module, jnp.ones((1, 32, 32, 3)))
    with pytest.raises(ConversionError, match=match):
        to_torch_state_dict(module, variables, **target)


def test_export_refuses_a_block_torch_ref_cannot_express():
    block = DepthwiseSeparableConv(8, dilation=2)
    variables = block.init(jax.random.key(0), jnp.ones((1, 16, 16, 4)))
    with pytest.raises(ConversionError, match=r"dilation: Flax 2, torch 1"):
        to_torch_state_dict(block, variables, source="torch_ref")
    plain = DepthwiseSeparableConv(8, act="relu6")
    torch_ref.DepthwiseSeparableConv(4, 8, act="relu6").load_state_dict(
        to_torch_state_dict(plain, plain.init(jax.random.key(0), jnp.ones((1, 16, 16, 4))), source="torch_ref")
    )


def test_export_checks_the_variables_against_the_module_and_names_the_target():
    module = mobilenet_v1(0.25, num_classes=4)
    variables = random_variables(module, jnp.ones((1, 32, 32, 3)))
    with pytest.raises(
        ConversionError, match=r"params do not fit the torch_ref mobilenet_v1: .*\(8,\) \(expected \(16,\)\)"
    ):
        to_torch_state_dict(mobilenet_v1(0.5, num_classes=4), variables, source="torch_ref")
    with pytest.raises(ConversionError, match="timm export needs arch="):
        to_torch_state_dict(module, variables, source="timm")
    with pytest.raises(ConversionError, match="neither 'params' nor 'batch_stats'"):
        to_torch_state_dict(module, {"cache": {}}, source="torch_ref")
    grads = to_torch_state_dict(module, {"params": variables["params"]}, source="torch_ref")
    assert not any(k.endswith(("running_mean", "running_var")) for k in grads)
    assert set(grads) == {
        k for k in torch_ref.MobileNetV1(0.25, 4).state_dict() if "running" not in k and "num_b" not in k
    }


def test_export_builds_timm_and_torchvision_targets_from_arch_and_arguments():
    model = tv.mobilenet_v3_small(reduced_tail=True)
    module, variables = from_torch(model)
    with pytest.raises(ConversionError, match=r"stem_channels: Flax 16, torch 8"):
        to_torch_state_dict(module, variables, source="torchvision")  # reduced_tail is not read off the module
    tv.mobilenet_v3_small(reduced_tail=True).load_state_dict(
        to_torch_state_dict(module, variables, source="torchvision", reduced_tail=True), strict=True
    )
    tf_model = timm.create_model("tf_mobilenetv3_small_minimal_100")
    module, variables = from_torch(tf_model)
    exported = to_torch_state_dict(module, variables, source="timm", arch="tf_mobilenetv3_small_minimal_100")
    timm.create_model("tf_mobilenetv3_small_minimal_100").load_state_dict(exported, strict=True)


# ------------------------------------------------------------------------------ inputs that are not plain weights


def test_bfloat16_safetensors_file_converts_like_the_bfloat16_state_dict(tmp_path):
    sd = {k: v.bfloat16() if v.is_floating_point() else v for k, v in torch_ref.DSConv(4, 8).state_dict().items()}
    save_file(sd, tmp_path / "m.safetensors")
    _, from_file = from_torch(tmp_path / "m.safetensors", arch="dsconv", source="torch_ref")
    _, from_memory = from_torch(sd, arch="dsconv", source="torch_ref")
    chex.assert_trees_all_equal(from_file, from_memory)
    assert {leaf.dtype for leaf in jax.tree.leaves(from_file)} == {jnp.dtype("float32")}


def test_float8_weights_convert_and_meta_tensors_and_non_tensors_are_named():
    sd = torch_ref.DSConv(4, 8).state_dict()
    sd["depthwise_sep_conv.0.weight"] = sd["depthwise_sep_conv.0.weight"].to(torch.float8_e4m3fn)
    _, variables = from_torch(sd, arch="dsconv", source="torch_ref")
    np.testing.assert_array_equal(
        np.asarray(variables["params"]["conv_dw"]["kernel"]),
        sd["depthwise_sep_conv.0.weight"].float().numpy().transpose(2, 3, 1, 0),
    )
    with pytest.raises(ConversionError, match=r"depthwise_sep_conv\.\d\.\w+: a meta tensor holds no data"):
        from_torch(torch_ref.DSConv(4, 8).to("meta"))
    sd = torch_ref.DSConv(4, 8).state_dict()
    sd["depthwise_sep_conv.1.bias"] = [0.0] * 4
    with pytest.raises(ConversionError, match=r"must be tensors or arrays; not: depthwise_sep_conv\.1\.bias"):
        from_torch(sd, arch="dsconv", source="torch_ref")


def test_non_zero_padding_modes_are_rejected():
    model = tv.mobilenet_v3_small()
    model.features[0][0].padding_mode = "reflect"
    with pytest.raises(ConversionError, match=r"features\.0\.0: padding_mode='reflect'"):
        from_torch(model)


def test_wrapped_models_and_prefixed_keys_say_how_to_unwrap():
    model = tv.mobilenet_v3_small()
    with pytest.raises(ConversionError, match=r"DataParallel wraps the model: pass model\.module"):
        from_torch(torch.nn.DataParallel(model))
    sd = {"module." + k: v for k, v in model.state_dict().items()}
    with pytest.raises(ConversionError, match=r"(?s)\(198 more\).*prefix 'module\.'") as info:
        from_torch(sd, arch="mobilenet_v3_small", source="torchvision")
    assert len(str(info.value)) < 3000


def test_torchvision_arguments_are_checked_by_name():
    sd = tv.mobilenet_v3_small(dilated=True).state_dict()
    with pytest.raises(ConversionError, match=r"takes no argument \['dilate'\]"):
        from_torch(sd, arch="mobilenet_v3_small", source="torchvision", dilate=True)


def _timm_bn3_relu():
    model = timm.create_model("mobilenetv2_100")
    model.blocks[1][0].bn3.act = torch.nn.ReLU()
    return model


def _torch_ref_eps_changed():
    model = torch_ref.MobileNetV1(0.25)
    model.blocks[0][0].bn1.eps = 1e-3
    return model


def _torch_ref_act_replaced():
    model = torch_ref.DepthwiseSeparableConv(4, 8, act="hard_swish")
    model.act = torch.nn.ReLU()
    return model


def _non_square_dilation():
    model = tv.mobilenet_v3_small(dilated=True)
    conv = model.features[9].block[1][0]
    conv.dilation, conv.padding = (2, 1), (4, 2)
    return model


@pytest.mark.parametrize(
    "build,match",
    [
        (_timm_bn3_relu, r"blocks\.1\.0: activations relu6, relu6, relu after bn1, bn2, bn3; expected relu6"),
        (_torch_ref_eps_changed, r"blocks\.0\.0\.bn1: BatchNorm2d\(8, eps=0\.001.*expected BatchNorm2d\(8, eps=1e-05"),
        (_torch_ref_act_replaced, r"act: ReLU\(\), expected Hardswish\(\)"),
        (_non_square_dilation, r"features\.9\.block\.1\.0: non-square kernels/strides/dilations"),
    ],
)
def test_layers_changed_after_construction_are_refused_not_converted(build, match):
    with pytest.raises(ConversionError, match=match):
        from_torch(build())


@pytest.mark.parametrize("width", [0.35, 0.5, 1.25])
def test_export_finds_torchvisions_width_multiplier_from_the_rounded_channels(width):
    module = mobilenet_v3_large(width, reduced_tail=True)
    variables = random_variables(module, jnp.ones((1, 32, 32, 3)))
    exported = to_torch_state_dict(module, variables, source="torchvision", reduced_tail=True)
    tv.mobilenet_v3_large(width_mult=width, reduced_tail=True).load_state_dict(exported, strict=True)


# ------------------------------------------------------------------------------------------ arguments and files


@pytest.mark.parametrize(
    "config,match",
    [
        ({"width_mult": "abc"}, r"width_mult='abc' \(must be a finite number > 0\)"),
        ({"width_mult": 0}, r"width_mult=0 \(must be a finite number > 0\)"),
        ({"width_mult": -1.0}, r"width_mult=-1\.0 "),
        ({"width_mult": float("nan")}, r"width_mult=nan "),
        ({"num_classes": "10"}, r"num_classes='10' \(must be an integer >= 0\)"),
        ({"num_classes": -5}, r"num_classes=-5 "),
        ({"dropout": 2.0}, r"dropout=2\.0 \(must be a number in \[0, 1\]\)"),
    ],
)
def test_invalid_constructor_arguments_are_named_before_torch_sees_them(config, match):
    sd = tv.mobilenet_v2().state_dict()
    with pytest.raises(ConversionError, match=r"torchvision mobilenet_v2: invalid arguments " + match):
        from_torch(sd, source="torchvision", arch="mobilenet_v2", **config)


def test_a_constructor_failure_becomes_a_conversion_error_naming_the_arguments():
    sd = torch_ref.DepthwiseSeparableConv(4, 8).state_dict()
    with pytest.raises(ConversionError, match=r"cannot build the torch_ref 'depthwise_separable' .*act"):
        from_torch(sd, source="torch_ref", arch="depthwise_separable", act="gelu_tanh")


def test_timm_names_an_unknown_model_and_refuses_arguments_that_do_not_shape_it():
    sd = timm.create_model("mobilenetv3_large_100").state_dict()
    with pytest.raises(ConversionError, match=r"timm has no model 'mobilenetv3_lage_100'.*mobilenetv3_large_100"):
        from_torch(sd, source="timm", arch="mobilenetv3_lage_100")
    with pytest.raises(ConversionError, match=r"argument \['checkpoint_path'\] is not one that shapes the model"):
        from_torch(sd, source="timm", arch="mobilenetv3_large_100", checkpoint_path="/tmp/other.pth")


def test_a_path_given_as_bytes_is_a_type_error_naming_the_type():
    with pytest.raises(TypeError, match=r"str or os\.PathLike, got bytes"):
        from_torch(b"model.pth", source="torchvision", arch="mobilenet_v2")


def test_the_file_format_is_read_off_its_bytes_not_its_name(tmp_path):
    model = torch_ref.DepthwiseSeparableConv(4, 8)
    expected = from_torch(model)[1]
    safetensors_as_pth, torch_as_safetensors = tmp_path / "weights.pth", tmp_path / "weights.safetensors"
    save_file(model.state_dict(), safetensors_as_pth)
    torch.save(model.state_dict(), torch_as_safetensors)
    for path in (safetensors_as_pth, torch_as_safetensors):
        _, got = from_torch(path, source="torch_ref", arch="depthwise_separable")
        chex.assert_trees_all_equal(got, expected)
    garbage = tmp_path / "weights.bin"
    garbage.write_bytes(b"\x00\x01not a checkpoint at all")
    with pytest.raises(ConversionError, match=r"weights\.bin: neither a safetensors nor a torch checkpoint"):
        from_torch(garbage, source="torch_ref", arch="depthwise_separable")


def test_a_torch_file_of_objects_is_refused_without_advising_an_unsafe_load(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"model": torch_ref.DepthwiseSeparableConv(4, 8)}, path)  # a whole module: not weights_only
    with pytest.raises(ConversionError, match=r"pickled\.pth.*holds objects other than tensors") as info:
        from_torch(path, source="torch_ref", arch="depthwise_separable")
    assert "weights_only=False" not in str(info.value)
