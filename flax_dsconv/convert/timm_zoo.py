"""timm's mobile zoo: the models timm builds in its EfficientNet-builder files, and those the timm reader refuses.

Every other name in those files converts, and ``parity_tests/test_zoo.py`` compares its logits with PyTorch's; a
name timm adds is therefore either converted and tested, or refused here with its reason (a test checks each).
"""

from __future__ import annotations

# The timm model files whose models are built from the blocks of timm's _efficientnet_blocks.py.
ZOO_MODULES = ("mobilenetv3", "efficientnet", "hardcorenas")

# What the reader refuses, and the timm models that need it. Each raises a ConversionError naming the module.
REFUSED: dict[str, tuple[str, ...]] = {
    "GroupNorm, EvoNorm-S0 or LayerNorm in place of BatchNorm": (
        "efficientnet_b0_g16_evos", "efficientnet_b0_g8_gn", "efficientnet_b0_gn", "efficientnet_b3_g8_gn",
        "efficientnet_b3_gn", "test_efficientnet_evos", "test_efficientnet_gn", "test_efficientnet_ln",
    ),
    "GlobalContext attention in place of squeeze-excite": ("gc_efficientnetv2_rw_t",),
    "MobileAttention (MultiQueryAttention2d) and exact GELU (MobileNetV4 hybrids)": (
        "mobilenetv4_hybrid_large", "mobilenetv4_hybrid_large_075", "mobilenetv4_hybrid_medium",
        "mobilenetv4_hybrid_medium_075",
    ),
}  # fmt: skip


def zoo_names() -> list[str]:
    """Every model name timm registers in :data:`ZOO_MODULES`, sorted (needs timm)."""
    import timm

    return sorted(name for module in ZOO_MODULES for name in timm.list_models(module=module))


def refused_reason(name: str) -> str | None:
    """Why the reader refuses timm's ``name``, or None when it converts."""
    return next((reason for reason, names in REFUSED.items() if name in names), None)
