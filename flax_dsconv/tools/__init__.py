"""Tools on the library's public API: the ``flax-dsconv`` CLI, the parity report, the benchmark and the digits
trainer."""
