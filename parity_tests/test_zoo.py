"""timm's mobile zoo: every model of timm's EfficientNet-builder files converts, with its logits and every stage as
close to float64 as PyTorch's, or is refused with its reason (``flax_dsconv.convert.timm_zoo.REFUSED``)."""

import chex
import pytest
import timm
import torch
from conftest import assert_model_matches_torch, photo_batch, random_timm, randomize_batchnorm

from flax_dsconv import ConversionError, from_torch, to_torch_state_dict
from flax_dsconv.convert.protocol import describe
from flax_dsconv.convert.timm_zoo import REFUSED, ZOO_MODULES, refused_reason, zoo_names

ZOO = zoo_names()
REFUSED_NAMES = sorted(n for names in REFUSED.values() for n in names)
# test_models.py compares these (with every torchvision and torch_ref MobileNet).
IN_TEST_MODELS = set(timm.list_models("*mobilenetv[123]*"))
CONVERTED = [n for n in ZOO if refused_reason(n) is None and n not in IN_TEST_MODELS]

# One model per block kind and padding rule also at an odd, non-square size (odd maps at every stride 2, where TF
# 'SAME' pads asymmetrically and differently along each axis), with the depthwise implementation the library picks
# on this machine ('auto'). At timm's default size every model runs with 'xla' (lax's grouped convolution: 40% less
# compiling than the shifted kernels); test_layers.py holds every implementation to torch for every kernel size,
# stride, dilation and padding, and test_models.py runs whole models with 'auto'.
ODD = (97, 131)
ODD_SIZE = (
    "efficientnet_b0", "tf_efficientnet_b0", "tf_efficientnet_lite0", "mnasnet_small", "lcnet_100", "fbnetv3_b",
    "efficientnetv2_rw_t", "tf_efficientnetv2_b0", "mobilenet_edgetpu_v2_xs", "mobilenetv4_conv_small",
    "efficientnet_b0_g8_gn", "test_efficientnet_evos", "gc_efficientnetv2_rw_t", "mobilenetv4_hybrid_medium",
    "tf_efficientnet_cc_b0_4e", "efficientnet_blur_b0", "mobilenetv4_conv_aa_medium", "efficientnet_x_b3",
)  # fmt: skip


def test_the_zoo_is_every_model_timm_builds_from_its_efficientnet_blocks():
    assert len(ZOO) >= 154, ZOO_MODULES
    assert len(REFUSED_NAMES) == len(set(REFUSED_NAMES)), "a name is refused for two reasons"
    assert set(REFUSED_NAMES) <= set(ZOO), f"refused names timm does not have: {set(REFUSED_NAMES) - set(ZOO)}"
    assert set(ZOO) == set(CONVERTED) | set(REFUSED_NAMES) | (IN_TEST_MODELS & set(ZOO))
    assert set(ODD_SIZE) <= set(CONVERTED)


def test_no_zoo_name_is_refused():
    assert not REFUSED_NAMES, REFUSED


@pytest.mark.parametrize("name", ["ghostnet_100", "mobilenetv5_300m", "efficientvit_m0"])
def test_a_timm_mobile_model_of_another_class_is_refused_naming_it(name):
    with torch.device("meta"):  # the structure is all the reader looks at
        model = timm.create_model(name)
    with pytest.raises(ConversionError, match=rf"unsupported timm model class {type(model).__name__}"):
        describe(model)


def _resolution(name: str, model: torch.nn.Module) -> int:
    """timm's default input size, at most 224 (what is converted does not depend on the size; the odd sizes above
    test the padding), and smaller for the largest models (the float64 reference of a 66M-parameter EfficientNet-B7
    at 600 pixels alone takes minutes on 2 cores)."""
    params = sum(p.numel() for p in model.parameters())
    default = min(224, model.pretrained_cfg["input_size"][-1])
    return default if params <= 15e6 else 160 if params <= 100e6 else 64


CASES = [(name, "default") for name in CONVERTED] + [(name, "odd") for name in ODD_SIZE]


@pytest.mark.slow
@pytest.mark.parametrize("name,size", CASES)
def test_logits_and_every_stage_match_torch(name, size):
    model = random_timm(name)
    resolution = _resolution(name, model) if size == "default" else ODD
    x = photo_batch(resolution)
    model = randomize_batchnorm(model, x)
    depthwise = "xla" if size == "default" else "auto"
    _, _, summary = assert_model_matches_torch(model, x, f"{name} at {resolution} ({depthwise})", depthwise)
    print(summary)


@pytest.mark.parametrize("name", ["efficientnet_b0", "lcnet_100", "tinynet_e", "mixnet_s", "mobilenetv4_conv_small"])
def test_a_state_dict_converts_and_exports_by_its_timm_name(name):
    model = randomize_batchnorm(random_timm(name, num_classes=10), (2, 3, 64, 64))
    module, expected = from_torch(model)
    _, got = from_torch(model.state_dict(), source="timm", arch=name, num_classes=10)
    chex.assert_trees_all_equal(got, expected)
    target = timm.create_model(name, num_classes=10)
    target.load_state_dict(to_torch_state_dict(module, got, source="timm", arch=name), strict=True)
    for key, value in model.state_dict().items():
        assert key.endswith("num_batches_tracked") or torch.equal(target.state_dict()[key], value), key


def test_an_arch_name_outside_the_zoo_is_refused_naming_the_zoo():
    with pytest.raises(ConversionError, match="timm arch must be a MobileNet model name, one of timm's mobilenetv3"):
        from_torch({}, source="timm", arch="ghostnet_100")
    with pytest.raises(ConversionError, match=r"timm has no model 'efficientnet_b9'.*efficientnet_b"):
        from_torch({}, source="timm", arch="efficientnet_b9")
