"""The runnable examples keep their promises: examples/finetune_from_torch.py and examples/nnx_bridge.py."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import chex
import jax
import numpy as np
from conftest import ATOL, random_variables
from flax import nnx, traverse_util

from flax_dsconv import MobileNet, mobilenet_v1, optim
from flax_dsconv.train import create_train_state, train_step

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    # Registered before running: dataclasses resolve the module's string annotations through sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_finetune_from_torch_export_gives_torch_the_jax_accuracy():
    example = _load_example("finetune_from_torch")
    r = example.finetune(steps=30, size=32)
    print(f"JAX accuracy {r.jax_accuracy:.4f}, torch {r.torch_accuracy:.4f}, max |Δlogit| {r.max_logit_diff:.2e} "
          f"(max |logit| {r.max_abs_logit:.2f}); loss {r.losses[0]:.4f} -> {r.losses[-1]:.4f}")  # fmt: skip
    assert r.torch_accuracy == r.jax_accuracy
    # fp32 rounding through 11 blocks is relative: after 40 steps (max |logit| 13) JAX and torch are 5.7e-5 and
    # 5.5e-5 from float64 torch, so the bound scales with the logits (ATOL for the parity suite's O(1) logits).
    assert r.max_logit_diff <= ATOL * max(1.0, r.max_abs_logit)

    before = traverse_util.flatten_dict(r.initial_variables)
    after = traverse_util.flatten_dict(r.variables)
    assert before.keys() == after.keys()
    head = {k for k in before if k[0] == "params" and k[1] in example.HEAD}
    assert {k[1] for k in head} == set(example.HEAD)
    for k in before.keys() - head:  # backbone params and every BatchNorm statistic
        assert np.asarray(after[k]).tobytes() == np.asarray(before[k]).tobytes(), k
    for k in head:
        assert not np.array_equal(after[k], before[k]), k
    assert np.mean(r.losses[-5:]) < np.mean(r.losses[:5])


def test_nnx_bridge_step_equals_linen_step():
    example = _load_example("nnx_bridge")
    # MobileNetV1(0.25) cut after its second stage: the same kinds of layers and nested BatchNorm paths, a
    # quarter of the compile time (the whole network's two train-step compiles take ~30 s on 2 busy cores).
    full = mobilenet_v1(0.25, num_classes=10)
    module = MobileNet(dataclasses.replace(full.config, stages=full.config.stages[:2]))
    images = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype(np.float32)
    labels = np.arange(8) % 10
    variables = random_variables(module, images[:1])  # a numpy-seeded draw
    tx = optim.sgd(0.1, momentum=0.9)

    state, metrics = jax.jit(train_step)(create_train_state(module, variables, tx), images, labels, jax.random.key(2))
    model = example.to_nnx(module, variables, images[:1], nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    losses = [float(example.train_step(model, optimizer, images, labels))]

    assert abs(losses[0] - float(metrics["loss"])) <= 1e-6
    got, expected = example.to_linen_variables(model), {"params": state.params, "batch_stats": state.batch_stats}
    worst = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), got, expected)))
    print(f"NNX vs Linen step: loss {losses[0]:.6f} vs {float(metrics['loss']):.6f}, max |Δ| {worst:.1e}")
    chex.assert_trees_all_close(got, expected, atol=1e-6, rtol=0)
    assert not np.array_equal(state.batch_stats["bn1"]["mean"], variables["batch_stats"]["bn1"]["mean"])
    for _ in range(4):
        losses.append(float(example.train_step(model, optimizer, images, labels)))
    assert losses[-1] < losses[0], losses
