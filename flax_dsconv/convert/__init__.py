"""PyTorch ↔ Flax weight conversion, strict in both directions.

The Flax module is built first, from a torch module's own structure (or from a torch skeleton built with the
user's ``arch`` and constructor arguments when only a state_dict is given); its abstract variables give the key
plan (:mod:`~flax_dsconv.convert.plan`). One reader per source (:mod:`~flax_dsconv.convert.torch_ref`,
:mod:`~flax_dsconv.convert.timm`, :mod:`~flax_dsconv.convert.torchvision`) implements the small protocol of
:mod:`~flax_dsconv.convert.protocol`. Every missing, unexpected and mis-shaped key is reported in one error, and
nothing is returned half-loaded.

torch is imported inside the functions that need it, so ``import flax_dsconv`` works without torch.
"""

# The readers register themselves with the protocol, in this order (the order error messages list them in).
from flax_dsconv.convert import torch_ref, timm, torchvision  # noqa: F401, I001
from flax_dsconv.convert.errors import ConversionError
from flax_dsconv.convert.export import to_torch_state_dict
from flax_dsconv.convert.files import load_state_dict
from flax_dsconv.convert.load import from_torch

__all__ = ["ConversionError", "from_torch", "load_state_dict", "to_torch_state_dict"]
