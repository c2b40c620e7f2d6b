"""torchvision's EfficientNet (V1 b0-b7, V2 s/m/l) and MNASNet convert: every arch computes what torch computes,
weights round-trip bit-exactly, and state_dict files convert by arch name (stochastic depth: test_drop_path.py)."""

from __future__ import annotations

import chex
import pytest
import torch
import torchvision
from conftest import assert_model_matches_torch, photo_batch, random_torchvision, randomize_batchnorm

from flax_dsconv import ConversionError, from_torch, to_torch_state_dict

tv = torchvision.models

# arch -> (input side, depthwise implementation). Small inputs keep the float64 torch runs and the Flax compiles
# short (V2 needs 33 px at least); two archs take the library's default implementation. What is converted does not
# depend on the size; test_layers.py holds every depthwise implementation to torch at every kernel and stride.
ZOO = {
    "efficientnet_b0": (96, "auto"),
    "efficientnet_b1": (64, "xla"),
    "efficientnet_b2": (64, "xla"),
    "efficientnet_b3": (64, "xla"),
    "efficientnet_b4": (64, "xla"),
    "efficientnet_b5": (48, "xla"),
    "efficientnet_b6": (48, "xla"),
    "efficientnet_b7": (48, "xla"),
    "efficientnet_v2_s": (64, "xla"),
    "efficientnet_v2_m": (48, "xla"),
    "efficientnet_v2_l": (48, "xla"),
    "mnasnet0_5": (96, "auto"),
    "mnasnet0_75": (64, "xla"),
    "mnasnet1_0": (64, "xla"),
    "mnasnet1_3": (64, "xla"),
}
# The quick run (`-m 'not slow'`) keeps one arch per block layout and one more MNASNet width: B0 (MBConv with and
# without expansion), V2-S (FusedMBConv with and without expansion), MNASNet 0.5 and 1.0. The others are the same
# code at other widths and depths; their float64 references (torch loops over depthwise groups in float64) take
# most of the time.
QUICK = ("efficientnet_b0", "efficientnet_v2_s", "mnasnet0_5", "mnasnet1_0")
CASES = [arch if arch in QUICK else pytest.param(arch, marks=pytest.mark.slow) for arch in ZOO]
FAMILIES = ("efficientnet_b0", "efficientnet_v2_s", "mnasnet0_5")


def _random(arch: str, x: torch.Tensor | tuple[int, ...] = (2, 3, 40, 40)) -> torch.nn.Module:
    return randomize_batchnorm(random_torchvision(arch, num_classes=10), x)


@pytest.mark.parametrize("arch", CASES)
def test_every_arch_matches_torch_at_the_stem_every_stage_and_the_logits(arch):
    size, depthwise = ZOO[arch]
    x = photo_batch(size)
    module, _, _ = assert_model_matches_torch(_random(arch, x), x, f"torchvision {arch}", depthwise)
    assert module.config.head == "pre_pool"


@pytest.mark.parametrize("arch", FAMILIES)
def test_weights_round_trip_bit_exactly_into_the_model_and_into_the_arch_read_off_the_module(arch):
    model = _random(arch)
    module, variables = from_torch(model)
    original = model.state_dict()
    for exported in (to_torch_state_dict(module, variables, model=model),
                     to_torch_state_dict(module, variables, source="torchvision")):  # fmt: skip
        target = getattr(tv, arch)(num_classes=10)
        target.load_state_dict(exported, strict=True)
        for key, value in target.state_dict().items():
            if not key.endswith("num_batches_tracked"):
                assert torch.equal(value, original[key]), key


@pytest.mark.parametrize("arch", FAMILIES)
def test_a_state_dict_file_converts_by_arch_name(tmp_path, arch):
    model = _random(arch)
    path = tmp_path / "model.pth"
    torch.save(model.state_dict(), path)
    _, expected = from_torch(model)
    _, got = from_torch(path, source="torchvision", arch=arch, num_classes=10)
    chex.assert_trees_all_equal(got, expected)


@pytest.mark.parametrize(
    "arch,config,match",
    [
        ("mnasnet0_5", dict(alpha=0.5), r"mnasnet0_5 takes no argument \['alpha'\]"),
        ("efficientnet_b0", dict(width_mult=1.0), r"efficientnet_b0 takes no argument \['width_mult'\]"),
        ("efficientnet_b0", dict(dropout=2.0), r"invalid arguments dropout=2.0"),
    ],
)
def test_constructor_arguments_are_checked_by_name_and_value(arch, config, match):
    with pytest.raises(ConversionError, match=match):
        from_torch({}, source="torchvision", arch=arch, **config)
