"""Counting: the MobileNet paper's tables, torchvision's published numbers, and the seed's comparison."""

import jax
import jax.numpy as jnp
import pytest
import torchvision

from flax_dsconv import (
    count_macs,
    count_params,
    layer_counts,
    mobilenet_v1,
    mobilenet_v2,
    mobilenet_v3_large,
    mobilenet_v3_small,
    summary,
)


def params_of(model, resolution=224):
    x = jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32)
    return count_params(jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x))


def assert_paper_macs(macs, paper_millions):
    # The paper gives whole millions, sometimes truncated (290.7M at 160 px prints as 290), and its
    # full-convolution 4866M is 1.3M (0.03%) under the count: hence max(1M, 0.05%).
    assert abs(macs / 1e6 - paper_millions) <= max(1.0, 5e-4 * paper_millions), macs


@pytest.mark.parametrize("width,paper_macs,paper_params", [(1.0, 569, 4.2), (0.75, 325, 2.6), (0.5, 149, 1.3),
                                                           (0.25, 41, 0.5)])  # fmt: skip
def test_width_multiplier_matches_paper_table_6(width, paper_macs, paper_params):
    model = mobilenet_v1(width)
    assert_paper_macs(count_macs(model, (1, 224, 224, 3)), paper_macs)
    assert round(params_of(model) / 1e6, 1) == paper_params


@pytest.mark.parametrize("resolution,paper_macs", [(224, 569), (192, 418), (160, 290), (128, 186)])
def test_resolution_multiplier_matches_paper_table_7(resolution, paper_macs):
    model = mobilenet_v1()
    assert_paper_macs(count_macs(model, (1, resolution, resolution, 3)), paper_macs)
    assert params_of(model, resolution) == 4_231_976


def test_full_convolution_vs_separable_matches_paper_table_4():
    full, separable = mobilenet_v1(separable=False), mobilenet_v1()
    assert_paper_macs(count_macs(full, (1, 224, 224, 3)), 4866)
    assert round(params_of(full) / 1e6, 1) == 29.3
    assert_paper_macs(count_macs(separable, (1, 224, 224, 3)), 569)


def test_layer_type_shares_match_paper_table_2():
    rows = layer_counts(mobilenet_v1(), (1, 224, 224, 3))
    macs = sum(r.macs for r in rows)
    weights = sum(r.params for r in rows) - 1000  # Table 2 counts the classifier's weights, not its bias

    def share(kind, field):
        return 100 * sum(getattr(r, field) for r in rows if r.kind == kind) / (macs if field == "macs" else weights)

    # Table 2: Conv 1x1 94.86% / 74.59%, Conv DW 3x3 3.06% / 1.06%, Conv 3x3 1.19% / 0.02%, FC 0.18% / 24.33%.
    # Its mult-add shares sum to 99.29%: the stem conv is 10.8M of 568.7M, 1.90%, not 1.19%.
    for kind, paper_macs, paper_params in [("pointwise", 94.86, 74.59), ("depthwise", 3.06, 1.06),
                                           ("conv", 1.90, 0.02), ("dense", 0.18, 24.33)]:  # fmt: skip
        assert share(kind, "macs") == pytest.approx(paper_macs, abs=0.01)
        assert share(kind, "params") == pytest.approx(paper_params, abs=0.05)


@pytest.mark.parametrize(
    "builder,torch_builder,params,gflops",
    [
        (mobilenet_v2, torchvision.models.mobilenet_v2, 3_504_872, 0.30),
        (mobilenet_v3_large, torchvision.models.mobilenet_v3_large, 5_483_032, 0.217),
        (mobilenet_v3_small, torchvision.models.mobilenet_v3_small, 2_542_856, 0.057),
    ],
)
def test_counts_match_torchvision_metadata(builder, torch_builder, params, gflops):
    model = builder()
    assert params_of(model) == params == sum(p.numel() for p in torch_builder().parameters())
    assert count_macs(model, (1, 224, 224, 3)) / 1e9 == pytest.approx(gflops, rel=0.01)


def test_one_by_one_dense_convs_count_as_pointwise():
    # MobileNetV3's last stage is a 1x1 nn.Conv (ConvBNAct), not a PointwiseConv: still a pointwise layer.
    kinds = {r.name: r.kind for r in layer_counts(mobilenet_v3_small(), (1, 224, 224, 3))}
    assert kinds["blocks_5_0/conv"] == "pointwise" and kinds["conv_stem"] == "conv"
    assert [name for name, kind in kinds.items() if kind == "conv"] == ["conv_stem"]


def test_summary_lists_every_layer_with_totals():
    text = summary(mobilenet_v1(0.75), (1, 160, 160, 3))
    assert "blocks_4_1/conv_pw" in text and "5x5x768" in text
    assert "total params (incl. BatchNorm scale/bias): 2,585,560" in text
    assert f"total mult-adds: {count_macs(mobilenet_v1(0.75), (1, 160, 160, 3)):,}" in text


# One model per block family of timm's zoo. Not counted here, as the module docstring says: pooling, hence
# BlurPool2d's fixed filter (efficientnet_blur_b0) and GlobalContext's attention pooling (gc_efficientnetv2_rw_t).
FLOP_COUNTED = ("efficientnet_b0", "tf_efficientnetv2_b0", "mixnet_s", "lcnet_100", "hardcorenas_a", "fbnetv3_b",
                "mobilenet_edgetpu_v2_xs", "efficientnet_b1_pruned", "efficientnet_b0_gn", "test_efficientnet_evos",
                "efficientnet_x_b3", "mobilenetv4_conv_aa_medium", "mobilenetv4_hybrid_medium",
                "efficientnet_cc_b0_4e")  # fmt: skip


@pytest.mark.parametrize("name", FLOP_COUNTED)
def test_mult_adds_equal_torchs_flop_counter_on_the_timm_model(name):
    """count_macs of create_model(name) is torch's FlopCounterMode count of timm's model (halved: it counts a
    multiply-add as two FLOPs), the mobile attention's products included (timm's unfused attention: the fused
    kernel is not counted by torch); a CondConv's mixing of its expert kernels (an aten.mm) is not counted."""
    import timm
    import torch
    from timm.layers import set_fused_attn, use_fused_attn
    from torch.utils.flop_counter import FlopCounterMode

    from flax_dsconv import create_model

    fused = use_fused_attn()
    set_fused_attn(False)
    try:
        with torch.device("meta"):  # shapes only
            model = timm.create_model(name).eval()
            with FlopCounterMode(display=False) as counter:
                model(torch.empty(1, 3, 224, 192))
    finally:
        set_fused_attn(fused)
    counts = {str(op): n // 2 for op, n in counter.get_flop_counts()["Global"].items()}
    mixing = counts.pop("aten.mm", 0) if name.startswith("efficientnet_cc") else 0
    assert sum(counts.values()) == count_macs(create_model(name), (1, 224, 192, 3)), (name, counts, mixing)
