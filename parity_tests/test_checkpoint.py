"""save / load: the library's one checkpoint format (msgpack variables + config.json, optional optimizer state)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import random_variables

import flax_dsconv
from flax_dsconv.checkpoint import load_opt_state
from flax_dsconv.nn import block_to_dict

# Before each block kind had its own config type (flax_dsconv 0.1's first saves), every block carried every
# kind's fields; these are the ones a block of another kind had at their defaults.
_LEGACY_FIELDS = {"expand_channels": 0, "se_channels": 0, "pw_act": False, "se_act": "relu", "se_gate": "hard_sigmoid"}


def test_load_reads_saves_written_before_block_configs_had_types(tmp_path):
    model = flax_dsconv.mobilenet_v3_small(0.5, num_classes=10)  # separable, inverted residual and conv blocks
    variables = random_variables(model, jnp.ones((1, 64, 64, 3)))
    flax_dsconv.save(tmp_path, model, variables)
    info = json.loads((tmp_path / "config.json").read_text())
    stages = model.config.stages
    info["config"]["stages"] = [[{**_LEGACY_FIELDS, **block_to_dict(b)} for b in stage] for stage in stages]
    (tmp_path / "config.json").write_text(json.dumps(info))
    loaded, loaded_variables = flax_dsconv.load(tmp_path)
    assert loaded.config == model.config
    assert {type(b).__name__ for b in loaded.config.blocks} == {"SeparableConfig", "InvertedResidualConfig",
                                                                 "ConvBNActConfig"}  # fmt: skip
    jax.tree.map(np.testing.assert_array_equal, loaded_variables, variables)


def test_optimizer_state_round_trips_beside_the_variables(tmp_path):
    model = flax_dsconv.mobilenet_v1(0.25, num_classes=4)
    variables = random_variables(model, jnp.ones((1, 32, 32, 3)))
    tx = optax.adamw(1e-3)
    opt_state = tx.init(variables["params"])
    _, opt_state = tx.update(jax.tree.map(jnp.ones_like, variables["params"]), opt_state, variables["params"])
    flax_dsconv.save(tmp_path, model, variables, opt_state=opt_state, step=1)
    restored = load_opt_state(tmp_path, tx.init(variables["params"]))
    jax.tree.map(np.testing.assert_array_equal, restored, opt_state)
    assert json.loads((tmp_path / "config.json").read_text())["step"] == 1


def test_a_block_field_its_kind_does_not_have_is_refused_by_name(tmp_path):
    from flax_dsconv.nn import block_from_dict

    with pytest.raises(ValueError, match=r"a 'conv' block has no \['se_channels'\]"):
        block_from_dict({"kind": "conv", "out_channels": 8, "se_channels": 4})
    with pytest.raises(ValueError, match=r"unknown block kind 'edge'"):
        block_from_dict({"kind": "edge", "out_channels": 8})
