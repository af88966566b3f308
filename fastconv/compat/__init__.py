"""Adapters that run other NumPy deep-learning frameworks' convolution and pooling on fastconv kernels.

Each adapter is its own submodule (for example ``fastconv.compat.dezero``) and imports its framework
only when that submodule is imported; this package imports nothing.
"""
