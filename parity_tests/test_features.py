"""Backbone use and head swaps, as timm offers them: ``features_only`` models and ``feature_info`` equal to timm's,
their feature maps as close to float64 as PyTorch's, ``forward_features`` / ``forward_head``, and a new classifier
(``from_torch(num_classes=N)``, ``reset_classifier``) that leaves every backbone variable as it was."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
from conftest import (
    assert_as_close_as_torch,
    channels_last,
    photo_batch,
    random_timm,
    randomize_batchnorm,
    to_nchw,
    to_nhwc,
)
from flax import traverse_util

from flax_dsconv import (
    ConversionError,
    create_model,
    from_torch,
    list_models,
    reset_classifier,
    save,
    to_features,
    to_torch_state_dict,
)
from flax_dsconv.checkpoint import load

TIMM_NAMES = [name for name in list_models() if timm.is_model(name)]

# One model per family and block kind (the classes timm's features_only builds: EfficientNetFeatures and
# MobileNetV3Features); the first level is the stem's where the first block strides (V4, EfficientNet-X).
FAMILIES = (
    "mobilenetv1_100", "mobilenetv2_050", "mobilenetv3_small_050", "mobilenetv4_conv_small_035",
    "mobilenetv4_hybrid_medium", "efficientnet_b0", "tf_efficientnetv2_b0", "mixnet_s", "efficientnet_cc_b0_4e",
    "efficientnet_b0_g8_gn", "lcnet_050", "hardcorenas_a", "efficientnet_x_b3", "efficientnet_blur_b0",
    "mnasnet_small", "fbnetv3_b",
)  # fmt: skip


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_feature_info_is_timms_for_every_model(name):
    """Channels, reduction and module name of every level, for every timm name (timm's full model lists them)."""
    with torch.device("meta"):
        theirs = timm.create_model(name).feature_info
    ours = create_model(name).feature_info
    assert len(ours) == len(theirs), name
    for i, level in enumerate(theirs):
        assert {k: ours[i][k] for k in ("module", "num_chs", "reduction")} == {
            k: level[k] for k in ("module", "num_chs", "reduction")
        }, (name, i)


@pytest.mark.parametrize("out_indices", [(0, 1, 2, 3, 4), (1, 3), (4,), (-1, -2), (-4, 2)])
@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenetv4_conv_small", "mobilenetv3_large_100"])
def test_features_only_feature_info_is_timms_for_out_indices(name, out_indices):
    with torch.device("meta"):
        theirs = timm.create_model(name, features_only=True, out_indices=out_indices).feature_info
    ours = create_model(name, features_only=True, out_indices=out_indices).feature_info
    assert ours.out_indices == tuple(theirs.out_indices)
    assert (ours.channels(), ours.reduction(), ours.module_name()) == (
        theirs.channels(), theirs.reduction(), theirs.module_name())  # fmt: skip
    assert ours.channels(1) == theirs.channels(1) and ours.reduction([0, 2]) == theirs.reduction([0, 2])


def _timm_features(model: torch.nn.Module, x: torch.Tensor) -> tuple[list, list, list]:
    """timm's feature maps in fp32 (both memory formats) and in float64."""
    with torch.no_grad():
        nchw = [f.numpy() for f in model(x)]
        nhwc = [f.numpy() for f in channels_last(model)(x.to(memory_format=torch.channels_last))]
        exact = [f.numpy() for f in copy.deepcopy(model).double()(x.double())]
    return nchw, nhwc, exact


def _as_named(maps: list) -> dict:
    return {f"level{i}": np.asarray(m) for i, m in enumerate(maps)}


@pytest.mark.slow
@pytest.mark.parametrize("size", [(224, 224), (97, 131)], ids=["224", "97x131"])
@pytest.mark.parametrize("name", FAMILIES)
def test_a_timm_features_only_model_converts_and_gives_timms_feature_maps(name, size):
    model = randomize_batchnorm(random_timm(name, features_only=True).eval(), (2, 3, 64, 64))
    x = photo_batch(size)
    nchw, nhwc, exact = _timm_features(model, x)
    module, variables = from_torch(model)
    assert module.features_only and module.feature_info.channels() == model.feature_info.channels()
    assert module.feature_info.reduction() == model.feature_info.reduction()
    got = jax.jit(module.clone(depthwise="xla").apply)(variables, to_nhwc(x))
    assert [to_nchw(g).shape for g in got] == [e.shape for e in exact], name
    assert_as_close_as_torch("output", _as_named([to_nchw(g) for g in got]), [_as_named(nchw), _as_named(nhwc)],
                             _as_named(exact), f"{name} {size}")  # fmt: skip


def test_features_of_a_subset_of_levels_are_those_levels_in_depth_order():
    model = randomize_batchnorm(random_timm("mobilenetv3_small_050", features_only=True, out_indices=(3, 1)).eval(),
                                (2, 3, 64, 64))  # fmt: skip
    x = photo_batch(64)
    with torch.no_grad():
        expected = [f.numpy() for f in model(x)]
    module, variables = from_torch(model)
    got = module.apply(variables, to_nhwc(x))
    assert [to_nchw(g).shape for g in got] == [e.shape for e in expected]
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(to_nchw(g), e, rtol=1e-4, atol=1e-4)  # the same maps; fp32 rounding aside


def test_a_backbone_built_here_has_timms_variables_and_exports_to_timms_features_model():
    backbone = create_model("efficientnet_b0", features_only=True, out_indices=(1, 2, 3))
    x = jnp.ones((1, 64, 64, 3))
    variables = backbone.init(jax.random.key(0), x)
    blocks = {k for k in variables["params"] if k.startswith("blocks_")}
    assert set(variables["params"]) == {"bn1", "conv_stem", *blocks} and len(blocks) == 16
    maps = backbone.apply(variables, x)
    assert [m.shape[-1] for m in maps] == backbone.feature_info.channels() == [24, 40, 112]
    assert [64 // m.shape[1] for m in maps] == backbone.feature_info.reduction()
    state = to_torch_state_dict(backbone, variables, source="timm", arch="efficientnet_b0")
    target = timm.create_model("efficientnet_b0", features_only=True, out_indices=(1, 2, 3))
    target.load_state_dict(state, strict=True)
    with torch.no_grad():
        theirs = target.eval()(torch.ones(1, 3, 64, 64))
    for m, t in zip(maps, theirs, strict=True):
        np.testing.assert_allclose(to_nchw(m), t.numpy(), rtol=1e-4, atol=1e-4)
    # and a state_dict of that timm features model reads back with arch= and features_only=
    again, back = from_torch(state, source="timm", arch="efficientnet_b0", features_only=True, out_indices=(1, 2, 3))
    assert again.out_indices == (1, 2, 3)
    chex_equal(back, variables)


def chex_equal(a, b):
    fa, fb = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
    assert fa.keys() == fb.keys(), sorted(fa.keys() ^ fb.keys())
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg="/".join(k))


def _timm_parts(model: torch.nn.Module, x: torch.Tensor) -> dict:
    with torch.no_grad():
        features = model.forward_features(x)
        return {"features": features.numpy(), "pre_logits": model.forward_head(features, pre_logits=True).numpy(),
                "logits": model.forward_head(features).numpy()}  # fmt: skip


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenetv3_large_100", "mobilenetv4_conv_small"])
def test_forward_features_and_forward_head_are_timms(name):
    """EfficientNet's head conv comes before pooling (in forward_features), V3's and V4's after (in forward_head)."""
    model = randomize_batchnorm(random_timm(name).eval(), (2, 3, 64, 64))
    x = photo_batch(64)
    module, variables = from_torch(model)
    torch32 = [_timm_parts(model, x), _timm_parts(channels_last(model), x.to(memory_format=torch.channels_last))]
    exact = _timm_parts(copy.deepcopy(model).double(), x.double())
    features = module.apply(variables, to_nhwc(x), method="forward_features")
    ours = {"features": to_nchw(features),
            "pre_logits": np.asarray(module.apply(variables, features, pre_logits=True, method="forward_head")),
            "logits": np.asarray(module.apply(variables, features, method=module.forward_head))}  # fmt: skip
    assert ours["features"].shape == exact["features"].shape
    assert_as_close_as_torch("output", ours, torch32, exact, name)
    np.testing.assert_array_equal(ours["logits"], np.asarray(module.apply(variables, to_nhwc(x))))


def _classifier_is_fresh(variables, in_features: int, num_classes: int, key_seed: int | None = None):
    kernel, bias = (np.asarray(variables["params"]["classifier"][k]) for k in ("kernel", "bias"))
    assert kernel.shape == (in_features, num_classes) and bias.shape == (num_classes,)
    bound = 1 / np.sqrt(in_features)  # torch.nn.Linear's default init, which timm's reset_classifier uses
    assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound
    assert abs(kernel.std() - bound / np.sqrt(3)) < 0.1 * bound / np.sqrt(3)  # uniform, not a copy or zeros


def _backbone_equal(a, b):
    drop = lambda v: {c: {k: t for k, t in tree.items() if k != "classifier"} for c, tree in v.items()}  # noqa: E731
    flat_a, flat_b = traverse_util.flatten_dict(drop(a)), traverse_util.flatten_dict(drop(b))
    assert flat_a.keys() == flat_b.keys()
    assert all(flat_a[k] is flat_b[k] or np.array_equal(flat_a[k], flat_b[k]) for k in flat_a)


@pytest.mark.parametrize("name", ["mobilenetv3_large_100", "efficientnet_b0"])
def test_from_torch_with_num_classes_keeps_the_backbone_and_makes_a_new_head(name):
    model = randomize_batchnorm(random_timm(name).eval(), (2, 3, 64, 64))
    module, variables = from_torch(model)
    swapped, new = from_torch(model, num_classes=10, head_key=jax.random.key(3))
    assert swapped.config.num_classes == 10
    _backbone_equal(new, variables)
    _classifier_is_fresh(new, module.config.num_features, 10)
    # a state_dict of the 1000-class model, asked for 10 classes: the same
    file_module, from_file = from_torch(model.state_dict(), source="timm", arch=name, num_classes=10,
                                        head_key=jax.random.key(3))  # fmt: skip
    assert file_module == swapped
    chex_equal(from_file, new)
    # num_classes=0: the pooled features, which are what the classifier takes
    pooled_module, pooled_vars = from_torch(model, num_classes=0)
    assert "classifier" not in pooled_vars["params"]
    x = to_nhwc(photo_batch(64))
    pre = module.apply(variables, module.apply(variables, x, method="forward_features"), pre_logits=True,
                       method="forward_head")  # fmt: skip
    np.testing.assert_array_equal(np.asarray(pooled_module.apply(pooled_vars, x)), np.asarray(pre))


def test_reset_classifier_swaps_adds_and_removes_the_head():
    model = create_model("mobilenetv3_small_050", num_classes=5)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 32, 32, 3)))
    ten, v10 = reset_classifier(model, variables, 10, jax.random.key(1))
    _backbone_equal(v10, variables)
    _classifier_is_fresh(v10, model.config.num_features, 10)
    again = reset_classifier(model, variables, 10, jax.random.key(1))[1]
    chex_equal(again, v10)  # the key decides the head
    none, v0 = reset_classifier(ten, v10, 0)
    assert none.config.num_classes == 0 and "classifier" not in v0["params"]
    back, v7 = reset_classifier(none, v0, 7)
    assert back.apply(v7, jnp.ones((2, 32, 32, 3))).shape == (2, 7)
    with pytest.raises(ValueError, match="num_classes must be an int >= 0"):
        reset_classifier(model, variables, -1)
    with pytest.raises(ValueError, match="the model has 0 classes but the variables hold a classifier"):
        reset_classifier(none, v10, 3)
    with pytest.raises(ValueError, match="features_only model has no head"):
        reset_classifier(*to_features(model, variables), 3)


def test_to_features_keeps_the_trunk_variables_and_a_features_model_saves_and_loads(tmp_path):
    model = create_model("mobilenetv4_conv_small_035", num_classes=5)
    x = jnp.ones((1, 64, 64, 3))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    backbone, trunk = to_features(model, variables, (2, 4))
    assert set(trunk["params"]) == {k for k in variables["params"] if k in ("conv_stem", "bn1") or "blocks" in k}
    maps = backbone.apply(trunk, x)
    _, inter = model.apply(variables, x, mutable=["intermediates"])
    names = backbone.feature_info.module_name()
    assert names == ["blocks.1", "blocks.4"]
    for m, n in zip(maps, names, strict=True):
        np.testing.assert_array_equal(np.asarray(m), np.asarray(inter["intermediates"][f"stage{n[-1]}"][0]))
    save(tmp_path / "backbone", backbone, trunk)
    loaded, loaded_vars = load(tmp_path / "backbone")
    assert loaded == backbone
    chex_equal(loaded_vars, trunk)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(features_only=True, out_indices=(5,)), ValueError, r"out_indices \(5,\): 5 is out of range; this "
         r"model has 5 feature levels \(indices 0..4, or -5..-1"),
        (dict(features_only=True, out_indices=(1, -4)), ValueError, "names a level twice"),
        (dict(features_only=True, out_indices=()), ValueError, "out_indices is empty"),
        (dict(features_only=True, out_indices=(1.0,)), TypeError, "out_indices must be ints"),
        (dict(out_indices=(1, 2)), ValueError, "needs features_only=True"),
        (dict(features_only="yes"), TypeError, "features_only must be True or False"),
    ],
)  # fmt: skip
def test_bad_feature_arguments_are_refused_naming_them(kwargs, error, match):
    with pytest.raises(error, match=match):
        create_model("efficientnet_b0", **kwargs)


def test_a_features_only_model_has_no_head_methods_and_a_dilated_timm_backbone_is_refused():
    backbone = create_model("efficientnet_b0", features_only=True)
    variables = jax.eval_shape(backbone.init, jax.random.key(0), jnp.ones((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="features_only model has no head"):
        jax.eval_shape(lambda v: backbone.apply(v, jnp.ones((1, 32, 32, 3)), method="forward_features"), variables)
    with torch.device("meta"):
        dilated = timm.create_model("mobilenetv2_050", features_only=True, output_stride=16)
    with pytest.raises(ConversionError, match="output_stride < 32"):
        from_torch(dilated)
