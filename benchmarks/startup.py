"""Time to a first result, as a new user meets it: each measurement in a fresh Python process, no persistent
compilation cache.

    python benchmarks/startup.py [--models mobilenet_v1 mobilenet_v2 ...] [--steps] [--out FILE]

Per model: ``model.init(key, ones((1, 224, 224, 3)))`` (Flax's eager ``nn.Module.init`` beside it with
``--flax-init``) and ``jax.eval_shape`` of the same; with ``--steps``, the first jitted inference call and the first
jitted SGD train step on batch 16 (each timed from a fresh process, compile included; with the ``'shifted'`` and
the ``'xla'`` depthwise convs, and the size of each lowered program), for MobileNetV2 by default.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

DEFAULT_MODELS = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "efficientnet_b0",
                  "tf_efficientnetv2_b0", "mixnet_s", "mobilenetv4_conv_small",
                  "mobilenetv4_hybrid_medium")  # fmt: skip

_CHILD = r"""
import json, sys, time
start = time.perf_counter()
import jax, jax.numpy as jnp, optax
from flax import linen as nn
import flax_dsconv
name, what, batch, depthwise = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
imported = time.perf_counter()
model = flax_dsconv.create_model(name).clone(depthwise=depthwise)
x = jnp.ones((1, 224, 224, 3))
jax.block_until_ready(x)
t = time.perf_counter()
if what == "eval_shape":
    jax.eval_shape(model.init, jax.random.key(0), x)
elif what == "flax_init":
    jax.block_until_ready(nn.Module.init(model, jax.random.key(0), x))
else:
    variables = model.init(jax.random.key(0), x)
    jax.block_until_ready(variables)
seconds = time.perf_counter() - t
if what in ("infer", "train"):
    images = jnp.ones((batch, 224, 224, 3))
    labels = jnp.zeros((batch,), jnp.int32)
    jax.block_until_ready(images)
    t = time.perf_counter()
    if what == "infer":
        infer = jax.jit(model.apply).lower(variables, images)
        ops = infer.as_text().count(" = ")
        jax.block_until_ready(infer.compile()(variables, images))
    else:
        tx = optax.sgd(0.01, momentum=0.9)

        @jax.jit
        def step(variables, opt_state, images, labels):
            def loss(params):
                logits, updates = model.apply({**variables, "params": params}, images, train=True,
                                              mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})
                return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates
            (value, updates), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
            changes, opt_state = tx.update(grads, opt_state, variables["params"])
            params = optax.apply_updates(variables["params"], changes)
            return {**variables, **updates, "params": params}, opt_state, value
        opt_state = tx.init(variables["params"])
        lowered = step.lower(variables, opt_state, images, labels)
        ops = lowered.as_text().count(" = ")
        jax.block_until_ready(lowered.compile()(variables, opt_state, images, labels))
    seconds = time.perf_counter() - t
print(json.dumps({"import_s": imported - start, "seconds": seconds, "ops": locals().get("ops")}))
"""


def measure(name: str, what: str, batch: int = 16, depthwise: str = "auto") -> dict:
    """One fresh process: ``what`` is ``init``, ``flax_init``, ``eval_shape``, ``infer`` or ``train`` (these two
    also count the lowered program's StableHLO operations)."""
    out = subprocess.run([sys.executable, "-c", _CHILD, name, what, str(batch), depthwise], capture_output=True,
                         text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--flax-init", action="store_true", help="also time Flax's eager nn.Module.init")
    parser.add_argument("--steps", nargs="*", default=None, metavar="MODEL",
                        help="time the first inference call and train step (default model: mobilenet_v2)")
    parser.add_argument("--out", help="also write the table here")
    args = parser.parse_args()
    import jax

    flax_column = " Flax's eager nn.Module.init s (with this library's initializers) |" if args.flax_init else ""
    lines = [f"jax {jax.__version__}, {jax.devices()[0].device_kind}, fresh process per cell, no compilation cache",
             "", "| model | model.init s | eval_shape(init) s |" + flax_column,
             "|---|---|---|" + ("---|" if args.flax_init else "")]  # fmt: skip
    for name in args.models:
        row = [measure(name, "init")["seconds"], measure(name, "eval_shape")["seconds"]]
        if args.flax_init:
            row.append(measure(name, "flax_init")["seconds"])
        lines.append(f"| {name} | " + " | ".join(f"{s:.2f}" for s in row) + " |")
        print(lines[-1], flush=True)
    if args.steps is not None:
        lines += ["", "| model | depthwise | first inference call s (StableHLO ops) | first train step s (ops) |",
                  "|---|---|---|---|"]  # fmt: skip
        for name in args.steps or ["mobilenet_v2"]:
            for depthwise in ("shifted", "xla"):
                infer, train = measure(name, "infer", depthwise=depthwise), measure(name, "train", depthwise=depthwise)
                lines.append(f"| {name} | {depthwise} | {infer['seconds']:.2f} ({infer['ops']}) | "
                             f"{train['seconds']:.2f} ({train['ops']}) |")  # fmt: skip
                print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
