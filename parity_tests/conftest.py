"""Shared tolerances and torch↔Flax helpers for the parity suite."""

from __future__ import annotations

import copy
import os

import jax
import numpy as np
import pytest
import torch

from flax_dsconv.tools.parity import FACTOR, FLOOR, bound, randomize_batchnorm, relative_error, to_nchw, to_nhwc

__all__ = [
    "FACTOR",
    "FLOOR",
    "assert_as_close_as_torch",
    "assert_close",
    "assert_model_matches_torch",
    "bound",
    "channels_last",
    "photo_batch",
    "random_timm",
    "random_torchvision",
    "random_variables",
    "randomize_batchnorm",
    "relative_error",
    "stage_outputs",
    "to_nchw",
    "to_nhwc",
    "torch_runs",
]

# Every fp32 comparison with PyTorch follows one rule, referenced to float64: per tensor, Flax's fp32 error
# against the float64 result is at most max(FLOOR[kind], FACTOR x PyTorch fp32's own error against it), errors
# relative to the tensor's norm (flax_dsconv.tools.parity holds FLOOR, FACTOR and relative_error, since
# `flax-dsconv parity` applies the same rule). Fixed absolute bounds remain only where no fp32 rounding is
# involved (conversions, exact equalities) or where both sides are computed by the same code.
ATOL = 1e-5  # plain fp32 layer checks against PyTorch, on O(1) values (assert_close)

# pytest runs the suite in 2 pytest-xdist workers (pyproject's addopts), one per core of the 2-core CI machine, and
# each worker gets one torch thread: with two each, the workers' OpenMP threads outnumber the cores and every
# parallel region waits for a descheduled thread (with one core busy, a 20-step fp32 + float64 MobileNetV3 torch
# trajectory took 28 s on 2 threads, 7 s on 1). Serial runs (-n 0) keep two threads.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(2 if _WORKERS == 1 else max(1, (os.cpu_count() or 1) // _WORKERS))


def assert_close(got, expected, atol: float = ATOL) -> None:
    """Absolute-error check; ``got`` may be NHWC Flax output, ``expected`` NCHW torch output."""
    got = to_nchw(got)
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected)
    assert got.shape == expected.shape, f"shape {got.shape} != {expected.shape}"
    np.testing.assert_allclose(got, expected, rtol=0, atol=atol)


def assert_as_close_as_torch(kind: str, flax: dict, torch32: dict | list[dict], exact: dict, label: str = "") -> str:
    """Apply the rule to every tensor of ``flax`` (fp32 results by name) against ``exact`` (float64), with
    ``torch32`` (PyTorch's fp32 results, or a list of them, one per memory format: the largest error counts)
    setting each bound; tensors whose exact value is 0 (a BatchNorm bias
    that only feeds train-mode BatchNorms) are measured against the largest tensor's norm. Returns a one-line
    summary of the tensor nearest its bound."""
    runs = torch32 if isinstance(torch32, list) else [torch32]
    assert all(flax.keys() == exact.keys() == run.keys() for run in runs), (
        f"{label}: names differ: {sorted(flax.keys() ^ exact.keys())} {[sorted(r.keys() ^ exact.keys()) for r in runs]}"
    )
    scale = max(float(np.linalg.norm(np.asarray(v))) for v in exact.values())
    rows = []
    for k in exact:
        own = float(np.linalg.norm(np.asarray(exact[k])))
        s = own if own > 1e-10 * scale else scale
        flax_err = relative_error(flax[k], exact[k], s)
        torch_err = max(relative_error(run[k], exact[k], s) for run in runs)
        rows.append((flax_err / bound(kind, torch_err), k, flax_err, torch_err))
    ratio, k, flax_err, torch_err = max(rows)
    summary = (f"{label}: nearest its bound ({ratio:.2f} of it) {k}: flax {flax_err:.2e}, torch {torch_err:.2e} "
               f"(bound {bound(kind, torch_err):.2e}); worst flax {max(r[2] for r in rows):.2e}, "
               f"worst torch {max(r[3] for r in rows):.2e}")  # fmt: skip
    failed = [f"{k}: flax {f:.2e}, torch {t:.2e}" for r, k, f, t in sorted(rows, reverse=True) if r > 1]
    assert not failed, f"{label}: {kind} errors beyond max({FLOOR[kind]:g}, {FACTOR:g}x torch's): " + "; ".join(
        failed[:8]
    )
    return summary


def channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` in PyTorch's channels_last memory format (other CPU kernels, other rounding); feed it
    ``x.to(memory_format=torch.channels_last)``."""
    return copy.deepcopy(model).to(memory_format=torch.channels_last)


def random_variables(module, x, seed: int = 0, fan: str = "in") -> dict:
    """He-normal conv kernels, unit BN scales, zero biases and statistics for ``module`` on input ``x``, in numpy.

    ``fan='out'`` scales kernels as the library's ``conv_kernel_init`` does (He-normal over fan-out).

    For tests that need *some* Flax-built variables drawn from a numpy seed, independent of the library's
    initializers (tracing shapes with ``eval_shape`` takes a fraction of a second; Flax's eager ``init`` of a
    layer or block compiles each of its operations, where a MobileNet's own ``init`` does not).
    """
    shapes = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":  # the classifier as the builders initialise it: small logits
            fan_size = np.prod(leaf.shape[:-1]) if fan == "in" else np.prod(leaf.shape[:-2]) * leaf.shape[-1]
            std = 0.01 if path[1].key == "classifier" else np.sqrt(2 / fan_size)
            return (rng.standard_normal(leaf.shape) * std).astype(leaf.dtype)
        return (np.ones if name in ("scale", "var") else np.zeros)(leaf.shape, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def photo_batch(resolution: int | tuple[int, int], seed: int = 0) -> torch.Tensor:
    """NCHW float batch: a real photo (scikit-learn's sample image, resized, ImageNet-normalised) and noise;
    ``resolution`` is the side of a square, or ``(height, width)``."""
    from sklearn.datasets import load_sample_images

    size = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    image = torch.from_numpy(load_sample_images().images[0].copy()).permute(2, 0, 1)[None].float() / 255
    image = torch.nn.functional.interpolate(image, size=size, mode="bilinear", antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    noise = torch.randn((1, 3, *size), generator=torch.Generator().manual_seed(seed))
    return torch.cat([(image - mean) / std, noise])


def random_timm(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """``timm.create_model(name, **kwargs)`` with random weights, built without timm's initialisation (seconds
    for a large EfficientNet, and the tests overwrite it anyway): He-normal kernels, N(0, 0.1²) biases, and
    every other 1-D parameter (LayerScale's gamma: 1e-5 at init would make its block near the identity and hide
    a wrong branch) uniform in [0.5, 1.5). Models holding buffers other than BatchNorm statistics (a blur
    filter) are built by timm as usual, then get the same weights. Pass the result to
    :func:`randomize_batchnorm`."""
    import timm

    return _random_weights(lambda: timm.create_model(name, **kwargs), seed)


def random_torchvision(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """``torchvision.models.<name>(**kwargs)`` with :func:`random_timm`'s random weights, built without
    torchvision's initialisation. Pass the result to :func:`randomize_batchnorm`."""
    import torchvision

    return _random_weights(lambda: getattr(torchvision.models, name)(**kwargs), seed)


def _random_weights(build, seed: int) -> torch.nn.Module:
    with torch.device("meta"):
        model = build()
    norms = (torch.nn.modules.batchnorm._BatchNorm,)
    own_buffers = [b for m in model.modules() if not isinstance(m, norms) for b in m.buffers(recurse=False)]
    model = build() if own_buffers else model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim > 1:
                p.normal_(0, (2 / p[0].numel()) ** 0.5, generator=g)
            elif pname.endswith("bias"):
                p.normal_(0, 0.1, generator=g)
            else:
                p.uniform_(0.5, 1.5, generator=g)
        for m in model.modules():
            if isinstance(m, norms):
                m.reset_running_stats()
    return model


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)


def torch_runs(module: torch.nn.Module, x: torch.Tensor, cotangent: torch.Tensor, train: bool):
    """``module`` in float64 (``'exact'``) and in fp32 in both memory formats (``'nchw'``, ``'nhwc'``), each on its
    own copy, in train or eval mode: per run, the output, the gradients of ``sum(output · cotangent)`` with respect
    to the input and every parameter, and the BatchNorm statistics after the pass."""
    runs = {"exact": copy.deepcopy(module).double(), "nchw": copy.deepcopy(module), "nhwc": channels_last(module)}
    outputs, grads, stats = {}, {}, {}
    for run, m in runs.items():
        m.train(train)
        xr = x.double() if run == "exact" else x.to(memory_format=torch.channels_last) if run == "nhwc" else x
        xr = xr.clone().requires_grad_(True)
        out = m(xr)
        (out * cotangent.to(out.dtype)).sum().backward()
        outputs[run] = {"output": out.detach().numpy()}
        grads[run] = {"input": xr.grad.numpy(), **{k: p.grad.numpy() for k, p in m.named_parameters()}}
        stats[run] = {k: v.numpy() for k, v in m.state_dict().items() if k.endswith(("running_mean", "running_var"))}
    return outputs, grads, stats


def stage_outputs(model: torch.nn.Module, x: torch.Tensor) -> tuple[np.ndarray, list[np.ndarray]]:
    """Torch logits, and the outputs of the stem and of every stage in flax_dsconv's stage order."""
    import torchvision

    import torch_ref
    from flax_dsconv import from_torch

    tv = torchvision.models
    outputs = []
    if isinstance(model, (tv.MobileNetV2, tv.MobileNetV3)):
        module, _ = from_torch(model)
        ends = np.cumsum([len(s) for s in module.config.stages])
        layers = [model.features[0]] + [model.features[e] for e in ends]
    elif isinstance(model, tv.EfficientNet):  # features: stem, one Sequential per stage, head
        layers = list(model.features)[:-1]
    elif isinstance(model, tv.MNASNet):  # layers: stem conv, BN, act; the separable conv (3-7); six stacks
        layers = [model.layers[i] for i in (2, 7, *range(8, 14))]
    elif isinstance(model, torch_ref.MobileNetV1):
        layers = [model.act, *model.blocks]
    else:
        layers = [model.bn1, *model.blocks]
    hooks = [m.register_forward_hook(lambda m, a, out: outputs.append(out.detach().numpy())) for m in layers]
    with torch.no_grad():
        logits = model(x).numpy()
    for h in hooks:
        h.remove()
    return logits, outputs


def assert_model_matches_torch(model: torch.nn.Module, x: torch.Tensor, label: str, depthwise: str = "auto"):
    """Convert ``model`` (eval mode, weights as they are) and compare the stem, every stage and the logits on NCHW
    ``x`` with PyTorch's by the suite's float64-referenced rule (both torch memory formats setting the bound), and
    the parameter counts; ``depthwise`` picks the converted model's depthwise implementation. Returns
    ``(module, variables, summary)``."""
    from flax_dsconv import count_params, from_torch

    expected_logits, expected_stages = stage_outputs(model, x)
    nhwc_logits, nhwc_stages = stage_outputs(channels_last(model), x.to(memory_format=torch.channels_last))
    exact_logits, exact_stages = stage_outputs(copy.deepcopy(model).double(), x.double())
    module, variables = from_torch(model)
    module = module.clone(depthwise=depthwise)
    assert count_params(variables) == sum(p.numel() for p in model.parameters()), label
    logits, state = jax.jit(lambda v, x: module.apply(v, x, mutable=["intermediates"]))(variables, to_nhwc(x))
    inter = state["intermediates"]
    n = len(module.config.stages)
    got = [inter["stem"][0]] + [inter[f"stage{s}"][0] for s in range(n)]
    assert len(got) == len(expected_stages), label
    names = ["stem"] + [f"stage{s}" for s in range(n)] + ["logits"]
    flax = dict(zip(names, [*map(to_nchw, got), np.asarray(logits)], strict=True))
    torch32 = [dict(zip(names, [*stages, out], strict=True))
               for stages, out in ((expected_stages, expected_logits), (nhwc_stages, nhwc_logits))]  # fmt: skip
    exact = dict(zip(names, [*exact_stages, exact_logits], strict=True))
    # Logits that can show a wrong conversion: varying across classes (torchvision initialises its classifiers
    # N(0, 0.01), so their logits are a few hundredths; a dead network would give one constant).
    spread = float(np.ptp(exact_logits, axis=-1).min())
    assert spread > 1e-2, f"{label}: the logits of an image span only {spread:.1e}"
    return module, variables, assert_as_close_as_torch("output", flax, torch32, exact, label)
