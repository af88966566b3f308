"""Training stack: networks, optimizers, data sets, the training loop and the ``fastconv train`` job.

Modules: ``networks`` (the book's SimpleConvNet, and SeparableConvNet: depthwise-separable, transposed
convolution, global average pooling), ``keras`` (a Keras-style Sequential: ``keras.layers``,
``keras.model``), ``optimizers``, ``data`` (MNIST IDX files, scikit-learn's digits), ``loop`` (the one
training loop, used by ``Sequential.fit`` and ``fastconv train``), ``trainer`` (the CLI, checkpoints),
``plots``. ``gradcheck`` is :func:`fastconv.testing.gradcheck`, re-exported.

Nothing heavy is imported until used: ``from fastconv.train import SimpleConvNet`` loads the networks,
``main`` the CLI; matplotlib, tqdm and scikit-learn load only when a run needs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "SGD",
    "AdaGrad",
    "Adam",
    "GradcheckError",
    "Momentum",
    "Nesterov",
    "RMSprop",
    "Sequential",
    "SeparableConvNet",
    "SimpleConvNet",
    "gradcheck",
    "load_digits_dataset",
    "load_mnist",
    "main",
    "mnist_cnn",
    "to_categorical",
]

# name -> the module that defines it. No module of this package may be named like a name here: importing
# a submodule binds it as an attribute of the package, which would then shadow the name (``from
# fastconv.train import gradcheck`` once gave the module ``fastconv.train.gradcheck``, not the function).
_LAZY = {
    "SGD": "fastconv.train.optimizers",
    "Momentum": "fastconv.train.optimizers",
    "Nesterov": "fastconv.train.optimizers",
    "AdaGrad": "fastconv.train.optimizers",
    "RMSprop": "fastconv.train.optimizers",
    "Adam": "fastconv.train.optimizers",
    "make_optimizer": "fastconv.train.optimizers",
    "SeparableConvNet": "fastconv.train.networks",
    "SimpleConvNet": "fastconv.train.networks",
    "Sequential": "fastconv.train.keras",
    "History": "fastconv.train.keras",
    "mnist_cnn": "fastconv.train.keras",
    "Conv2D": "fastconv.train.keras",
    "MaxPooling2D": "fastconv.train.keras",
    "DepthwiseConv2D": "fastconv.train.keras",
    "SeparableConv2D": "fastconv.train.keras",
    "Conv2DTranspose": "fastconv.train.keras",
    "AveragePooling2D": "fastconv.train.keras",
    "GlobalAveragePooling2D": "fastconv.train.keras",
    "Flatten": "fastconv.train.keras",
    "Dense": "fastconv.train.keras",
    "Dropout": "fastconv.train.keras",
    "Activation": "fastconv.train.keras",
    "gradcheck": "fastconv.testing",
    "GradcheckError": "fastconv.testing",
    "to_categorical": "fastconv.train.data",
    "load_mnist": "fastconv.train.data",
    "load_digits_dataset": "fastconv.train.data",
    "download_mnist": "fastconv.train.data",
}


def main(argv: Sequence[str] | None = None) -> int:
    """``fastconv train [options]``: see ``fastconv train --help``."""
    from fastconv.train.trainer import main as _main

    return _main(argv)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fastconv.train' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
