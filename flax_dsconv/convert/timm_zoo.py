"""timm's mobile zoo: the models timm builds in its EfficientNet-builder files, and those the timm reader refuses.

Every other name in those files converts, and ``parity_tests/test_zoo.py`` compares its logits with PyTorch's; a
name timm adds is therefore either converted and tested, or refused here with its reason (a test checks each).
"""

from __future__ import annotations

# The timm model files whose models are built from the blocks of timm's _efficientnet_blocks.py.
ZOO_MODULES = ("mobilenetv3", "efficientnet", "hardcorenas")

# What the reader refuses, and the timm models that need it. Each raises a ConversionError naming the module.
REFUSED: dict[str, tuple[str, ...]] = {}


def zoo_names() -> list[str]:
    """Every model name timm registers in :data:`ZOO_MODULES`, sorted (needs timm)."""
    import timm

    return sorted(name for module in ZOO_MODULES for name in timm.list_models(module=module))


def refused_reason(name: str) -> str | None:
    """Why the reader refuses timm's ``name``, or None when it converts."""
    return next((reason for reason, names in REFUSED.items() if name in names), None)
