"""``create_model``: every timm name it takes builds, from the library's own family tables, the config that
conversion reads off timm's model of that name (with timm's defaults and with other classes and input channels)."""

import pytest
import timm
import torch

from flax_dsconv import create_model, list_models
from flax_dsconv.convert.protocol import describe

TIMM_NAMES = [name for name in list_models() if timm.is_model(name)]


def _timm_config(name: str, **kwargs):
    with torch.device("meta"):  # the structure is all the reader looks at
        return describe(timm.create_model(name, **kwargs)).module.config


def test_the_registry_holds_timm_names():
    assert len(TIMM_NAMES) >= 9, TIMM_NAMES


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_create_model_builds_the_config_timm_builds(name):
    assert create_model(name).config == _timm_config(name), name
    other = create_model(name, num_classes=7, in_channels=1).config
    assert other == _timm_config(name, num_classes=7, in_chans=1), name


def test_every_builder_create_model_calls_is_exported_and_builds_that_names_config():
    """A user can call each family's builder directly: every function behind a name is in flax_dsconv.models, and
    calling it with the name's arguments gives create_model's (so timm's, above) config."""
    import functools

    import flax_dsconv.models
    from flax_dsconv.models.registry import _MODELS

    for name, func in _MODELS.items():
        while isinstance(func, functools.partial):
            func = func.func
        assert getattr(flax_dsconv.models, func.__name__, None) is func, f"{name}: {func.__qualname__} not exported"
        assert func.__name__ in flax_dsconv.models.__all__, func.__name__
    for name, call in [("mixnet_m", lambda m: m.mixnet("m")), ("tinynet_a", lambda m: m.tinynet(1.0, 1.2)),
                       ("mobilenetv4_conv_small_050", lambda m: m.mobilenet_v4_conv("small", 0.5)),
                       ("tf_efficientnet_cc_b0_8e", lambda m: m.efficientnet_condconv(1.0, 1.0, 2, tf=True))]:
        assert call(flax_dsconv.models).config == create_model(name).config, name


def test_create_model_names_the_unknown_model():
    with pytest.raises(ValueError, match=r"unknown model 'mobilenet_v9'.*mobilenet_v2"):
        create_model("mobilenet_v9")


@pytest.mark.parametrize(
    "row,match",
    [
        (dict(block="conv", out=8, se=0.25), "a 'conv' block has no se"),
        (dict(block="uir", out=8, se=0.25), "a 'uir' block has no se"),
        (dict(block="ds", out=8, expand=6.0), "a 'ds' block has no expand"),
        (dict(block="ir", out=8, start_kernel=3), "an? 'ir' block has no start_kernel"),
        (dict(block="er", out=8, kernels=(3, 5)), "an? 'er' block has no kernels"),
        (dict(block="ds", out=8, expand_splits=2), "a 'ds' block has no expand_splits"),
        (dict(block="mqa", out=8, heads=2, key_dim=8, expand=4.0), "an? 'mqa' block has no expand"),
        (dict(block="uir", out=8, heads=2), "a 'uir' block has no heads"),
    ],
)
def test_a_table_row_refuses_a_setting_its_block_has_no_place_for(row, match):
    from flax_dsconv.models.table import Row

    with pytest.raises(ValueError, match=match):
        Row(**row)
