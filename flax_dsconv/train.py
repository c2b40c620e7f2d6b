"""Training pieces: a ``TrainState`` that carries BatchNorm statistics, jit-able steps, data parallelism.

Data parallelism uses ``jax.sharding``: a 1-D ``Mesh`` over a ``'data'`` axis, the batch split along it and
the state replicated. Because the step is one ``jit`` over global arrays, ``jnp.mean`` over the batch inside
BatchNorm is a mean over the *global* batch: BatchNorm is synchronised across devices, and an N-device step
equals the 1-device step on the same global batch. The same code runs on one CPU, several GPUs, a TPU slice,
and several hosts (call ``jax.distributed.initialize()`` first; each host passes its local part of the batch
to :func:`shard_batch`).

>>> state = create_train_state(model, variables, flax_dsconv.optim.sgd(0.1, momentum=0.9))
>>> mesh = data_mesh()
>>> step = jit_train_step(mesh)
>>> state, metrics = step(replicate(mesh, state), *shard_batch(mesh, images, labels), key)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


class TrainState(train_state.TrainState):
    """``flax.training.train_state.TrainState`` plus the ``batch_stats`` collection."""

    batch_stats: Any = None


def create_train_state(module: nn.Module, variables: Any, tx: optax.GradientTransformation) -> TrainState:
    """A state holding *copies* of ``variables``: the jitted steps donate their input state, which would
    otherwise delete the caller's arrays after the first step."""
    variables = jax.tree.map(jnp.copy, {k: variables[k] for k in ("params", "batch_stats") if k in variables})
    return TrainState.create(
        apply_fn=module.apply, params=variables["params"], batch_stats=variables.get("batch_stats"), tx=tx
    )


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over integer labels, computed in float32 (``nn.CrossEntropyLoss``)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()


def train_step(
    state: TrainState, images: jax.Array, labels: jax.Array, dropout_key: jax.Array
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step in train mode (batch statistics, BN updates, dropout from ``dropout_key``)."""

    def loss_fn(params: Any) -> tuple[jax.Array, tuple[jax.Array, Any]]:
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": dropout_key},
        )
        return cross_entropy(logits, labels), (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    return state, {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


def eval_step(state: TrainState, images: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """Loss and accuracy in eval mode (running statistics, no dropout)."""
    logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, images)
    return {"loss": cross_entropy(logits, labels), "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


def data_mesh(devices: Any = None) -> Mesh:
    """A 1-D mesh named ``'data'`` over ``devices`` (default: every device of every host)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def shard_batch(mesh: Mesh, *arrays: Any) -> tuple[jax.Array, ...]:
    """Split arrays along their first axis over the mesh's ``'data'`` axis.

    Each host passes its own slice of the global batch; the leading size must divide evenly.
    """
    sharding = NamedSharding(mesh, P("data"))
    local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)  # this host's devices
    out = []
    for a in arrays:
        if a.shape[0] % local:
            raise ValueError(f"this host's batch of {a.shape[0]} does not split over its {local} devices of the mesh")
        out.append(jax.make_array_from_process_local_data(sharding, np.asarray(a)))
    return tuple(out)


def replicate(mesh: Mesh, tree: Any) -> Any:
    """Place a pytree (a train state) on every device of the mesh."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def jit_train_step(mesh: Mesh | None = None) -> Any:
    """``train_step`` compiled for a data-parallel mesh (state replicated, batch split), or plainly."""
    if mesh is None:
        return jax.jit(train_step, donate_argnums=0)
    replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    return jax.jit(
        train_step,
        in_shardings=(replicated, split, split, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )
