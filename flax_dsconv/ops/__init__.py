"""Pure functions on arrays, no modules: the arithmetic every layer of the library runs on.

* :mod:`~flax_dsconv.ops.padding`: padding modes (PyTorch's symmetric rule, TF's ``'SAME'``), windows per axis.
* :mod:`~flax_dsconv.ops.depthwise`: the depthwise conv and its dispatch over ``'xla'``, ``'shifted'``
  (:mod:`~flax_dsconv.ops.shifted`, with its VJP) and ``'pallas'`` (:mod:`~flax_dsconv.ops.pallas`, GPU).
* :mod:`~flax_dsconv.ops.pointwise`: the 1x1 conv as a channel contraction, with its VJP.
* :mod:`~flax_dsconv.ops.batch_norm`: train-mode BatchNorm with PyTorch's statistics, with its VJP.
* :mod:`~flax_dsconv.ops.activations`: the activations by name.
* :mod:`~flax_dsconv.ops.sharding`: the parameter bookkeeping ``shard_map`` needs for custom VJPs.
"""
