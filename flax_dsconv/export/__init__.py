"""Deployment formats: a converted or trained model as a file that runs without this library.

StableHLO through ``jax.export`` (:func:`export_stablehlo`, :func:`save_stablehlo`, :func:`load_stablehlo`);
ONNX and LiteRT are not exported yet.
"""

from flax_dsconv.export.stablehlo import export_stablehlo, load_stablehlo, save_stablehlo

__all__ = ["export_stablehlo", "load_stablehlo", "save_stablehlo"]
