"""approxjax's implementation (private: import from ``approxjax``).

The layers, each importing only from those before it: ``arithmetic`` (the
simulated multiply: reference model, multipliers, catalog), ``kernels`` (the
FFI primitives, lowering and partitioning), ``ops`` (differentiable
dot_general, conv, multiply), ``interpret`` (policies, ``using``,
``approximate``), ``flax`` (modules), ``tools`` (C models, characterization,
LUT files), ``runner`` (the experiment runner and CLI). See docs/design.md.
"""
