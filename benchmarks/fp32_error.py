"""How far fp32 training is from float64, per layer, in Flax and in PyTorch (the measurement behind #17's note).

MobileNetV1 (torch_ref, width 0.25, ReLU), batch 8, 64², train-mode BatchNorm, cross-entropy. Each draw is a
random model (weights, BatchNorm, input) with its biases nudged off the activations' kinks (parity_tests/kinks.py),
so that every fp32 run differentiates the same function. Per draw and per parameter: the relative error
``||g - g64|| / ||g64||`` of one step's gradient in PyTorch fp32 (contiguous NCHW, channels_last) and Flax fp32
(jitted; 'xla' and 'shifted' depthwise), against the float64 PyTorch gradient; then the same for the parameters
after 20 SGD steps (momentum 0.9). Rows group the parameters by stage and layer kind; each cell is the geometric
mean over the group's tensors and the draws.

    python benchmarks/fp32_error.py [--draws 4] [--steps 20]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "parity_tests"))

from kinks import nudge_off_kinks

import torch_ref
from flax_dsconv import from_torch, optim, to_torch_state_dict
from flax_dsconv.tools.parity import randomize_batchnorm, relative_error, to_nhwc

RUNS = ("torch NCHW", "torch channels_last", "flax xla", "flax shifted")


def group(key: str) -> str:
    """A parameter's row: the stem, each stage's depthwise / pointwise convs and BatchNorms, the classifier."""
    if key.startswith("classifier"):
        return "classifier"
    if not key.startswith("blocks"):
        return "stem " + ("conv" if "conv" in key else "BN")
    part = {"conv_dw": "dw conv", "bn1": "dw BN", "conv_pw": "pw conv", "bn2": "pw BN"}[key.split(".")[3]]
    return f"stage {key.split('.')[1]} {part}"


def draw(seed: int, shape: tuple[int, ...]) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.randn(shape, generator=g)
    y = torch.randint(0, 10, (shape[0],), generator=g)
    torch.manual_seed(seed)
    model = randomize_batchnorm(torch_ref.MobileNetV1(0.25, num_classes=10, dropout=0.0), x.shape, seed=seed)
    nudge_off_kinks(model.train(), x)
    return model.train(), x, y


def torch_run(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, fmt: str) -> tuple:
    """One step's gradients and the parameters after ``steps`` SGD steps, for a copy of ``model``."""
    m = copy.deepcopy(model)
    if fmt == "float64":
        m, x = m.double(), x.double()
    elif fmt == "channels_last":
        m, x = m.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9)
    grads = None
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        if grads is None:
            grads = {k: p.grad.detach().numpy().copy() for k, p in m.named_parameters()}
        opt.step()
    return grads, {k: p.detach().numpy().copy() for k, p in m.named_parameters()}


def flax_run(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, impl: str) -> tuple:
    module, variables = from_torch(model)
    module = module.clone(depthwise=impl)
    tx = optim.sgd(lr, momentum=0.9)
    xj, yj = to_nhwc(x), jnp.asarray(y)

    def loss(params, batch_stats):
        out, new = module.apply({"params": params, "batch_stats": batch_stats}, xj, train=True,
                                mutable=["batch_stats"])  # fmt: skip
        return optax.softmax_cross_entropy_with_integer_labels(out, yj).mean(), new["batch_stats"]

    @jax.jit
    def step(params, batch_stats, opt_state):
        (_, batch_stats), g = jax.value_and_grad(loss, has_aux=True)(params, batch_stats)
        updates, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, g

    params, stats = variables["params"], variables["batch_stats"]
    opt_state, grads = tx.init(params), None
    for _ in range(steps):
        params, stats, opt_state, g = step(params, stats, opt_state)
        grads = g if grads is None else grads

    def as_torch(p):
        sd = to_torch_state_dict(module, {"params": p, "batch_stats": stats}, model=model)
        return {k: sd[k].numpy() for k, _ in model.named_parameters()}

    return as_torch(grads), as_torch(params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args()
    torch.set_num_threads(1)
    errors: dict[str, dict[str, dict[str, list[float]]]] = {"gradient": {}, "after steps": {}}
    for seed in range(args.draws):
        model, x, y = draw(seed, (8, 3, 64, 64))
        exact = torch_run(model, x, y, args.steps, args.lr, "float64")
        runs = {
            "torch NCHW": torch_run(model, x, y, args.steps, args.lr, "nchw"),
            "torch channels_last": torch_run(model, x, y, args.steps, args.lr, "channels_last"),
            "flax xla": flax_run(model, x, y, args.steps, args.lr, "xla"),
            "flax shifted": flax_run(model, x, y, args.steps, args.lr, "shifted"),
        }
        start = {k: p.detach().numpy() for k, p in model.named_parameters()}
        for name, (grads, final) in runs.items():
            for key in exact[0]:
                cells = errors["gradient"].setdefault(group(key), {})
                cells.setdefault(name, []).append(relative_error(grads[key], exact[0][key]))
                # After the steps: the error in how far each tensor moved, relative to that distance.
                moved = float(np.linalg.norm(exact[1][key] - start[key]))
                cells = errors["after steps"].setdefault(group(key), {})
                cells.setdefault(name, []).append(relative_error(final[key], exact[1][key], scale=max(moved, 1e-30)))
        print(f"draw {seed} done", file=sys.stderr)
    for kind, rows in errors.items():
        title = "one step's gradient" if kind == "gradient" else f"parameters after {args.steps} SGD steps"
        print(f"\n{title}: relative error against float64 (geometric mean over tensors and {args.draws} draws)")
        print(f"{'layer':22s}" + "".join(f"{r:>20s}" for r in RUNS) + f"{'xla / torch':>13s}{'shifted / torch':>17s}")
        everything: dict[str, list[float]] = {r: [] for r in RUNS}
        for layer, cells in rows.items():
            for r in RUNS:
                everything[r] += cells[r]
            print(row(layer, cells))
        print(row("all", everything))
        worst = {r: max(max(c[r]) for c in rows.values()) for r in RUNS}
        print(f"{'worst tensor':22s}" + "".join(f"{worst[r]:20.2e}" for r in RUNS))


def geomean(values: list[float]) -> float:
    return float(np.exp(np.mean(np.log(np.maximum(values, 1e-30)))))


def row(layer: str, cells: dict[str, list[float]]) -> str:
    """A table row: each run's geometric-mean error, then Flax's over PyTorch's (the larger of its two formats)."""
    means = {r: geomean(cells[r]) for r in RUNS}
    torch_err = max(means["torch NCHW"], means["torch channels_last"])
    ratios = f"{means['flax xla'] / torch_err:13.2f}{means['flax shifted'] / torch_err:17.2f}"
    return f"{layer:22s}" + "".join(f"{means[r]:20.2e}" for r in RUNS) + ratios


if __name__ == "__main__":
    main()
