"""Shared tolerances and torch↔Flax helpers for the parity suite."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flax_dsconv.parity import ATOL, randomize_batchnorm, to_nchw, to_nhwc

__all__ = ["ATOL", "assert_close", "photo_batch", "randomize_batchnorm", "to_nchw", "to_nhwc"]

torch.set_num_threads(2)


def assert_close(got, expected, atol: float = ATOL) -> None:
    """Absolute-error check; ``got`` may be NHWC Flax output, ``expected`` NCHW torch output."""
    got = to_nchw(got)
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected)
    assert got.shape == expected.shape, f"shape {got.shape} != {expected.shape}"
    np.testing.assert_allclose(got, expected, rtol=0, atol=atol)


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
