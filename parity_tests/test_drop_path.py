"""Stochastic depth (timm's drop path, torchvision's StochasticDepth): in training each example keeps its whole
residual branch, rescaled, or only its shortcut; in eval the block is unchanged; timm's and torchvision's rates
convert per block and ``create_model(drop_path_rate=...)`` spreads them as timm does.

The masks come from different random streams, so torch and Flax cannot agree example by example; what must agree
is the rule each example follows and the rate each block has."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
import torchvision
from conftest import random_variables

from flax_dsconv import create_model, from_torch
from flax_dsconv.convert.protocol import describe
from flax_dsconv.nn import (
    BlockContext,
    ConvBNActConfig,
    EdgeResidualConfig,
    InvertedResidualConfig,
    SeparableConfig,
    UniversalInvertedResidualConfig,
    build_block,
)
from flax_dsconv.nn.norm import BatchNormConfig
from flax_dsconv.ops.drop_path import drop_path

C = 8
BLOCKS = {
    "ds": SeparableConfig(out_channels=C, skip=True),
    "ir": InvertedResidualConfig(out_channels=C, expand_channels=16, skip=True, se_channels=4),
    "er": EdgeResidualConfig(out_channels=C, expand_channels=16, skip=True),
    "uir": UniversalInvertedResidualConfig(
        out_channels=C, expand_channels=16, start_kernel_size=3, skip=True, layer_scale=True
    ),
    "conv": ConvBNActConfig(out_channels=C, kernel_size=3, skip=True),
}
RATE = 0.5
CONTEXT = BlockContext("torch", BatchNormConfig(), None, None, "xla")


def _apply(config, variables, x, key):
    block = build_block(config, CONTEXT, "block")
    y, _ = block.apply(variables, x, True, mutable=["batch_stats"], rngs={"dropout": key})
    return np.asarray(y)


@pytest.mark.parametrize("kind", sorted(BLOCKS))
def test_each_example_keeps_its_whole_rescaled_branch_or_only_its_shortcut(kind):
    config = dataclasses.replace(BLOCKS[kind], drop_path=RATE)
    x = jax.random.normal(jax.random.key(0), (16, 6, 6, C))
    block = build_block(config, CONTEXT, "block")
    variables = block.init(jax.random.key(1), x)
    # The branch without stochastic depth: train-mode BatchNorm normalises over the whole batch before any drop.
    branch = _apply(dataclasses.replace(config, drop_path=0.0), variables, x, jax.random.key(2)) - np.asarray(x)
    y = _apply(config, variables, x, jax.random.key(2)) - np.asarray(x)
    kept = []
    for i in range(len(x)):
        if np.allclose(y[i], 0.0, atol=0):
            kept.append(False)
        else:
            np.testing.assert_allclose(y[i], branch[i] / (1 - RATE), rtol=1e-5, atol=1e-5, err_msg=f"example {i}")
            kept.append(True)
    assert 0 < sum(kept) < len(kept), kept  # with 16 examples at rate 0.5 both happen (fixed key)
    # eval mode, and train mode at rate 0: the block as without stochastic depth
    eval_y = block.apply(variables, x, False)
    plain = build_block(dataclasses.replace(config, drop_path=0.0), CONTEXT, "block")
    np.testing.assert_array_equal(np.asarray(eval_y), np.asarray(plain.apply(variables, x, False)))


def test_a_block_without_a_residual_is_untouched_by_its_rate():
    config = dataclasses.replace(BLOCKS["ir"], skip=False, drop_path=0.9)
    x = jax.random.normal(jax.random.key(0), (8, 6, 6, C))
    block = build_block(config, CONTEXT, "block")
    variables = block.init(jax.random.key(1), x)
    np.testing.assert_array_equal(_apply(config, variables, x, jax.random.key(2)),
                                  _apply(dataclasses.replace(config, drop_path=0.0), variables, x,
                                         jax.random.key(3)))  # fmt: skip


def test_the_kept_examples_are_rescaled_so_the_expectation_is_the_branch():
    x = jnp.ones((200_000, 1, 1, 1))
    y = drop_path(x, 0.3, jax.random.key(0))
    np.testing.assert_allclose(np.unique(np.asarray(y)), [0.0, 1 / 0.7], rtol=1e-6)
    assert abs(float(y.mean()) - 1.0) < 5 * np.sqrt(0.3 / 0.7 / len(x))  # 5 sigma
    np.testing.assert_array_equal(np.asarray(drop_path(x[:4], 1.0, jax.random.key(0))), 0.0)
    with pytest.raises(ValueError, match="rate is a probability in"):
        drop_path(x, 1.5, jax.random.key(0))


@pytest.mark.parametrize("rate", [-0.1, 1.0, float("nan"), "0.1"])
def test_a_rate_outside_0_to_1_is_refused_naming_it(rate):
    with pytest.raises(ValueError, match=r"drop_path is a probability in \[0, 1\), got"):
        InvertedResidualConfig(out_channels=8, expand_channels=16, drop_path=rate)
    with pytest.raises(ValueError, match="drop path rate is a probability"):
        create_model("mobilenetv2_050", drop_path_rate=rate)


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenetv3_large_100", "mobilenetv4_conv_small", "mixnet_s"])
def test_timms_drop_path_rate_converts_as_each_blocks_rate_and_create_model_spreads_it_alike(name):
    with torch.device("meta"):
        model = timm.create_model(name, drop_path_rate=0.2)
    config = describe(model).module.config
    expected = [float(getattr(b.drop_path, "drop_prob", 0.0)) for stage in model.blocks for b in stage]
    assert [b.drop_path for b in config.blocks] == pytest.approx(expected, abs=0), name
    assert max(expected) > 0.15
    assert config == create_model(name, drop_path_rate=0.2).config, name


def test_torchvisions_stochastic_depth_converts_as_each_blocks_rate():
    model = torchvision.models.efficientnet_b0()  # stochastic_depth_prob=0.2 by default
    module, _ = from_torch(model)
    expected = [m.stochastic_depth.p for m in model.modules() if type(m).__name__ == "MBConv"]
    assert [b.drop_path for b in module.config.blocks] == pytest.approx(expected, abs=0)
    with torch.device("meta"):
        timm_b0 = describe(timm.create_model("efficientnet_b0", drop_path_rate=0.2)).module.config
    assert module.config.stages == timm_b0.stages  # the same rule in both libraries
    # A state_dict does not record the rate: the skeleton takes torchvision's default, or the one given.
    state_dict = model.state_dict()
    skeleton, _ = from_torch(state_dict, source="torchvision", arch="efficientnet_b0")
    assert skeleton.config == module.config
    off, _ = from_torch(state_dict, source="torchvision", arch="efficientnet_b0", stochastic_depth_prob=0.0)
    assert {b.drop_path for b in off.config.blocks} == {0.0}


def test_a_model_with_drop_path_trains_with_a_dropout_key_and_evaluates_unchanged():
    model = create_model("mobilenetv2_050", num_classes=4, drop_path_rate=0.5)
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    variables = random_variables(model, x)
    plain = create_model("mobilenetv2_050", num_classes=4)
    np.testing.assert_array_equal(np.asarray(jax.jit(model.apply)(variables, x)),
                                  np.asarray(jax.jit(plain.apply)(variables, x)))  # fmt: skip
    train = jax.jit(lambda v, x, key: model.apply(v, x, True, mutable=["batch_stats"], rngs={"dropout": key})[0])
    assert not np.allclose(np.asarray(train(variables, x, jax.random.key(2))),
                           np.asarray(train(variables, x, jax.random.key(3))))  # the masks differ with the key
    assert any(b.skip and b.drop_path > 0 for b in model.config.blocks)  # some block's branch can be dropped


def test_export_ignores_the_stochastic_depth_it_cannot_see_in_the_target():
    """Stochastic depth acts in training only: a model without it exports into torchvision's skeleton (0.2 by
    default), and one with it into timm's by name (built without it), as dropout does."""
    from flax_dsconv import to_torch_state_dict

    x = jnp.zeros((1, 64, 64, 3))
    plain = create_model("efficientnet_b0", num_classes=10)
    variables = random_variables(plain, x)
    exported = to_torch_state_dict(plain, variables, source="torchvision", arch="efficientnet_b0")
    torchvision.models.efficientnet_b0(num_classes=10).load_state_dict(exported, strict=True)
    dropping = create_model("efficientnet_b0", num_classes=10, drop_path_rate=0.2)
    exported = to_torch_state_dict(dropping, variables, source="timm", arch="efficientnet_b0")
    timm.create_model("efficientnet_b0", num_classes=10).load_state_dict(exported, strict=True)
