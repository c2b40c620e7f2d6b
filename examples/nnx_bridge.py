"""Train a flax_dsconv (Linen) MobileNet from Flax NNX: ``nnx.bridge.ToNNX``, ``nnx.Optimizer``, ``nnx.jit``.

    python examples/nnx_bridge.py                  # ~1.5 min on 2 busy CPU cores, ~92% test accuracy
    python examples/nnx_bridge.py --steps 50

Wraps ``mobilenet_v1(0.25)`` (1-channel input) as an NNX module whose parameters are ``nnx.Param`` and whose
BatchNorm statistics are ``nnx.BatchStat`` variables, trains it in train mode on scikit-learn's digits
(32x32) with optax AdamW, and prints the loss every 20 steps and the test accuracy. It then moves the
variables back into a Linen ``{'params', 'batch_stats'}`` dict (what ``flax_dsconv.save`` and
``to_torch_state_dict`` take) and prints the max |logit difference| between the NNX and the Linen model.
One NNX step equals ``flax_dsconv.train.train_step`` (checked in ``parity_tests/test_examples.py``).
"""

from __future__ import annotations

import argparse
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import nnx

import flax_dsconv
from flax_dsconv.tools.digits import load_digits_data
from flax_dsconv.train import cross_entropy


def to_nnx(module: nn.Module, variables: Any, example: jax.Array, rngs: nnx.Rngs) -> nnx.Module:
    """Wrap a Linen module as NNX holding ``variables``: ``params`` → ``nnx.Param``, ``batch_stats`` →
    ``nnx.BatchStat``, at the Linen paths (``model.bn1['mean']``).

    ``rngs`` feeds every Linen rng stream (name one ``dropout`` for a model with dropout).

    >>> model = to_nnx(flax_dsconv.mobilenet_v1(0.25), variables, images[:1], nnx.Rngs(0))
    """
    # lazy_init traced for shapes only: no throw-away random variables, no eager op-by-op init (~30 s on CPU).
    model = nnx.eval_shape(lambda: nnx.bridge.lazy_init(nnx.bridge.ToNNX(module, rngs=nnx.Rngs(0)), example))
    params, batch_stats = nnx.state(model, nnx.Param, nnx.BatchStat)
    nnx.replace_by_pure_dict(params, variables["params"])
    nnx.replace_by_pure_dict(batch_stats, variables["batch_stats"])
    nnx.update(model, params, batch_stats)
    model.to_nnx__rngs = rngs.fork()  # the abstract init's streams hold no keys; fork as ToNNX does
    return model


def to_linen_variables(model: nnx.Module) -> dict[str, Any]:
    """The Linen ``{'params', 'batch_stats'}`` dict of a :func:`to_nnx` model.

    >>> logits = module.apply(to_linen_variables(model), images)
    """
    return {
        "params": nnx.to_pure_dict(nnx.state(model, nnx.Param)),
        "batch_stats": nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)),
    }


@nnx.jit
def train_step(model: nnx.Module, optimizer: nnx.Optimizer, images: jax.Array, labels: jax.Array) -> jax.Array:
    """One optimizer step in train mode; updates ``model``'s parameters and BatchNorm statistics in place.

    >>> optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)
    >>> loss = train_step(model, optimizer, images, labels)
    """

    def loss_fn(model: nnx.Module) -> jax.Array:
        # ToNNX does not infer mutability from train=True: without mutable=, Linen refuses to write batch_stats.
        return cross_entropy(model(images, train=True, mutable=["batch_stats"]), labels)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def _logits(model: nnx.Module, images: jax.Array) -> jax.Array:
    return model(images)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    x_train, y_train, x_test, y_test = load_digits_data(32)
    module = flax_dsconv.mobilenet_v1(0.25, num_classes=10, in_channels=1)
    variables = jax.jit(module.init)(jax.random.key(0), jnp.asarray(x_train[:1]))
    model = to_nnx(module, variables, jnp.asarray(x_train[:1]), nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adamw(3e-3, weight_decay=1e-4), wrt=nnx.Param)
    rng = np.random.default_rng(0)
    for step in range(1, args.steps + 1):
        idx = rng.choice(len(x_train), args.batch_size, replace=False)
        loss = train_step(model, optimizer, x_train[idx], y_train[idx])
        if step % 20 == 0 or step == 1:
            print(f"step {step:4d}  loss {float(loss):.4f}")
    nnx_logits = _logits(model, x_test)
    print(f"test accuracy {float(jnp.mean(nnx_logits.argmax(-1) == y_test)):.4f}")
    linen_logits = jax.jit(module.apply)(to_linen_variables(model), x_test)
    print(f"max |logit difference| NNX vs Linen {float(jnp.abs(nnx_logits - linen_logits).max()):.2e}")
