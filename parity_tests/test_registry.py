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
