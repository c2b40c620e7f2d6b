"""Scale and training recipes: data parallelism over 8 devices, bf16, and the resumable digits recipe."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from conftest import random_variables

from flax_dsconv import mobilenet_v2
from flax_dsconv.tools.digits import final_params
from flax_dsconv.train import create_train_state, jit_train_step

DATA_PARALLEL_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp, numpy as np, optax
    sys.path.insert(0, {tests!r})
    from conftest import random_variables
    from flax_dsconv import mobilenet_v1
    from flax_dsconv.train import create_train_state, data_mesh, jit_train_step, replicate, shard_batch
    assert jax.device_count() == 8, jax.devices()
    model = mobilenet_v1(0.25, num_classes=10)
    x = np.asarray(jax.random.normal(jax.random.key(0), (16, 32, 32, 3)))
    y = np.arange(16) % 10
    state = create_train_state(model, random_variables(model, x[:1]), optax.sgd(0.1, momentum=0.9))
    key = jax.random.key(2)
    mesh = data_mesh()
    single = jax.tree.map(lambda a: jnp.array(a, copy=True), state)  # the steps donate their input state
    sharded, m8 = jit_train_step(mesh)(replicate(mesh, state), *shard_batch(mesh, x, y), key)
    single, m1 = jit_train_step()(single, x, y, key)
    assert len(sharded.params["conv_stem"]["kernel"].sharding.device_set) == 8
    leaves = lambda s: jax.tree.leaves((s.params, s.batch_stats))
    # BN statistics are global-batch statistics in both: synchronised BN.
    for a, b in zip(leaves(single), leaves(sharded)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5)
    print("max loss diff", abs(float(m1["loss"]) - float(m8["loss"])))

    # Gradients taken inside shard_map, through every custom VJP (CPU: 'shifted' depthwise, dot_general pointwise,
    # BatchNorm synchronised over the axis), equal the full-batch gradients.
    from jax.sharding import PartitionSpec as P
    from flax_dsconv import DepthwiseSeparableConv
    block = DepthwiseSeparableConv(16, strides=2, axis_name="data")
    xb = jax.random.normal(jax.random.key(3), (16, 8, 8, 8))
    bv = block.clone(axis_name=None).init(jax.random.key(4), xb)
    def loss(module, params, x):
        variables = {{"params": params, "batch_stats": bv["batch_stats"]}}
        y, _ = module.apply(variables, x, train=True, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y))
    per_device = jax.shard_map(jax.grad(lambda p, x: loss(block, p, x)), mesh=mesh, in_specs=(P(), P("data")),
                               out_specs=P())
    got = jax.jit(per_device)(bv["params"], xb)
    full = jax.jit(jax.grad(lambda p, x: loss(block.clone(axis_name=None), p, x)))(bv["params"], xb)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(full)):
        err = float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))
        assert err <= 1e-5, (jax.tree_util.keystr(path), err)
    print("shard_map gradients ok")
    """
).format(tests=os.path.dirname(__file__))


def test_eight_device_data_parallel_step_and_shard_map_gradients_equal_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", DATA_PARALLEL_SCRIPT], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max loss diff" in result.stdout
    assert "shard_map gradients ok" in result.stdout


def test_bf16_compute_stays_close_to_fp32_and_trains():
    x = jax.random.normal(jax.random.key(0), (8, 64, 64, 3))
    y = jnp.arange(8) % 10
    fp32 = mobilenet_v2(0.35, num_classes=10, dropout=0.0)
    bf16 = mobilenet_v2(0.35, num_classes=10, dropout=0.0, dtype=jnp.bfloat16)
    # Drawn from a numpy seed with the library's scheme (He-normal over fan-out), independent of its initializers.
    variables = random_variables(fp32, x, fan="out")
    # Params and BN statistics stay float32; only the compute is bf16.
    bf16_shapes = jax.eval_shape(bf16.init, jax.random.key(1), x)
    assert {leaf.dtype for leaf in jax.tree.leaves(bf16_shapes)} == {jnp.dtype("float32")}
    ref, low = jax.jit(fp32.apply)(variables, x), jax.jit(bf16.apply)(variables, x)
    assert low.dtype == jnp.bfloat16
    rel = float(jnp.linalg.norm(low.astype(jnp.float32) - ref) / jnp.linalg.norm(ref))
    print(f"bf16 vs fp32 logits: {rel:.1e} relative")
    assert 0 < rel < 5e-2, rel  # bf16 keeps 8 bits of mantissa: ~1e-2 relative through the network
    state = create_train_state(bf16, variables, optax.adam(1e-3))
    step = jit_train_step()
    losses = []
    for i in range(8):
        state, metrics = step(state, x, y, jax.random.key(i))
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.5 * losses[0], losses
    assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}


def _train_cmd(out, epochs=4):
    return [sys.executable, "-m", "flax_dsconv", "train", "--out", str(out), "--epochs", str(epochs),
            "--width", "0.25", "--limit", "320", "--quiet"]  # fmt: skip


def test_digits_training_resumes_after_kill_to_the_same_parameters(tmp_path):
    # The three runs compile the same steps: share them through JAX's persistent cache (compiling is most of
    # each run's time on 2 cores; the cache does not change what is computed).
    env = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    subprocess.run(_train_cmd(tmp_path / "straight"), check=True, capture_output=True, env=env)
    interrupted = tmp_path / "interrupted"
    proc = subprocess.Popen(_train_cmd(interrupted), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    first = interrupted / "checkpoints" / "epoch_1"
    while not first.exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "training finished before it could be interrupted"
    assert not (interrupted / "history.json").exists()
    resumed = subprocess.run(_train_cmd(interrupted), check=True, capture_output=True, text=True, env=env)
    chex.assert_trees_all_equal(final_params(interrupted), final_params(tmp_path / "straight"))
    assert (interrupted / "curves.png").stat().st_size > 10_000
    history = (interrupted / "history.json").read_text()
    assert history.count('"epoch"') == 4 and "final test accuracy" in resumed.stdout
    assert np.isfinite(final_params(interrupted)["params"]["classifier"]["kernel"]).all()
    # Resuming with other settings would not fit the checkpoint (or would change its schedule): refused, in one line.
    other = [("0.5" if a == "0.25" else a) for a in _train_cmd(interrupted, epochs=5)]
    refused = subprocess.run(other, capture_output=True, text=True, env=env)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "width: 0.25 -> 0.5; epochs: 4 -> 5" in refused.stderr and "Traceback" not in refused.stderr
