"""Shared tolerances and torch↔Flax helpers for the parity suite."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
import torch

from flax_dsconv.parity import ATOL, randomize_batchnorm, to_nchw, to_nhwc

__all__ = ["ATOL", "assert_close", "photo_batch", "random_variables", "randomize_batchnorm", "to_nchw", "to_nhwc"]

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


def random_variables(module, x, seed: int = 0, fan: str = "in") -> dict:
    """He-normal conv kernels, unit BN scales, zero biases and statistics for ``module`` on input ``x``, in numpy.

    ``fan='out'`` scales kernels as the library's ``conv_kernel_init`` does (He-normal over fan-out).

    For tests that need *some* Flax-built variables, not Flax's initializers: tracing shapes with
    ``eval_shape`` takes a fraction of a second, where ``module.init`` compiles every initializer (tens of
    seconds for a whole MobileNet on a 2-core CPU).
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


def photo_batch(resolution: int, seed: int = 0) -> torch.Tensor:
    """NCHW float batch: a real photo (scikit-learn's sample image, resized, ImageNet-normalised) and noise."""
    from sklearn.datasets import load_sample_images

    image = torch.from_numpy(load_sample_images().images[0].copy()).permute(2, 0, 1)[None].float() / 255
    image = torch.nn.functional.interpolate(image, size=(resolution, resolution), mode="bilinear", antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    noise = torch.randn((1, 3, resolution, resolution), generator=torch.Generator().manual_seed(seed))
    return torch.cat([(image - mean) / std, noise])


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)
