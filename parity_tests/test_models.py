"""Whole-model parity: every model and source, eval-mode logits and every stage as close to float64 as PyTorch's."""

import copy

import jax
import numpy as np
import pytest
import timm
import torch
import torchvision
from conftest import (
    assert_as_close_as_torch,
    assert_model_matches_torch,
    channels_last,
    photo_batch,
    randomize_batchnorm,
    to_nhwc,
)

import torch_ref
from flax_dsconv import from_torch

tv = torchvision.models

MODELS = {
    "torch_ref/mobilenet_v1": lambda: torch_ref.MobileNetV1(),
    "torch_ref/mobilenet_v1_0.5_relu6": lambda: torch_ref.MobileNetV1(0.5, 10, act="relu6"),
    "torch_ref/mobilenet_v1_fullconv_0.25": lambda: torch_ref.MobileNetV1(0.25, separable=False),
    "torchvision/mobilenet_v2": lambda: tv.mobilenet_v2(),
    "torchvision/mobilenet_v2_0.75_c10": lambda: tv.mobilenet_v2(width_mult=0.75, num_classes=10),
    "torchvision/mobilenet_v3_large": lambda: tv.mobilenet_v3_large(),
    "torchvision/mobilenet_v3_large_dilated_reduced": lambda: tv.mobilenet_v3_large(dilated=True, reduced_tail=True),
    "torchvision/mobilenet_v3_small": lambda: tv.mobilenet_v3_small(),
    "torchvision/mobilenet_v3_small_0.75_dilated": lambda: tv.mobilenet_v3_small(width_mult=0.75, dilated=True),
    **{f"timm/{name}": (lambda name=name: timm.create_model(name)) for name in timm.list_models("*mobilenetv[123]*")},
}


# Every model at 224; an odd size (193: odd feature maps at every stride-2, TF 'SAME' padding asymmetric) for
# every torch_ref and torchvision configuration and one timm model per family and padding rule.
ODD_SIZE = {name for name in MODELS if not name.startswith("timm/")} | {
    "timm/mobilenetv1_100", "timm/mobilenetv2_120d", "timm/mobilenetv3_large_100", "timm/mobilenetv3_rw",
    "timm/tf_mobilenetv3_small_100",
}  # fmt: skip
CASES = [(name, 224) for name in sorted(MODELS)] + [(name, 193) for name in sorted(ODD_SIZE)]


@pytest.mark.slow
@pytest.mark.parametrize("name,resolution", CASES)
def test_logits_and_every_stage_match_torch(name, resolution):
    x = photo_batch(resolution)
    model = randomize_batchnorm(MODELS[name](), x)
    # timm's models at 224 with 'xla' (less compiling), as in test_zoo.py; every other case with 'auto', the
    # implementation the library picks on this machine.
    depthwise = "xla" if name.startswith("timm/") and resolution == 224 else "auto"
    _, _, summary = assert_model_matches_torch(model, x, f"{name} at {resolution} ({depthwise})", depthwise)
    print(summary)


def test_eager_and_jitted_logits_are_each_as_close_to_float64_as_torch():
    # Not bitwise equal to each other: XLA fuses (and so rounds) differently under jit.
    x = photo_batch(64)
    model = randomize_batchnorm(tv.mobilenet_v3_small(), x)
    module, variables = from_torch(model)
    with torch.no_grad():
        torch32 = [{"logits": model(x).numpy()},
                   {"logits": channels_last(model)(x.to(memory_format=torch.channels_last)).numpy()}]  # fmt: skip
        exact = {"logits": copy.deepcopy(model).double()(x.double()).numpy()}
    for mode, apply in (("eager", module.apply), ("jit", jax.jit(module.apply))):
        got = {"logits": np.asarray(apply(variables, to_nhwc(x)))}
        assert_as_close_as_torch("output", got, torch32, exact, mode)


def test_registry_builds_torchvisions_builders_as_torchvision_does():
    """``create_model`` under a torchvision name gives the config read off torchvision's model (timm's names:
    test_registry.py)."""
    from flax_dsconv import create_model

    for name in ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"):
        module, _ = from_torch(getattr(tv, name)(num_classes=7))
        assert create_model(name, num_classes=7).config == module.config, name
