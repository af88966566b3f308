"""Training stack: networks, optimizers, data sets, the ``fastconv train`` job and ``gradcheck``.

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
    "Momentum",
    "Nesterov",
    "RMSprop",
    "Sequential",
    "SimpleConvNet",
    "gradcheck",
    "load_digits_dataset",
    "load_mnist",
    "main",
    "mnist_cnn",
    "to_categorical",
]

_LAZY = {
    "SGD": "optimizers",
    "Momentum": "optimizers",
    "Nesterov": "optimizers",
    "AdaGrad": "optimizers",
    "RMSprop": "optimizers",
    "Adam": "optimizers",
    "make_optimizer": "optimizers",
    "SimpleConvNet": "networks",
    "Sequential": "keras",
    "mnist_cnn": "keras",
    "Conv2D": "keras",
    "MaxPooling2D": "keras",
    "Flatten": "keras",
    "Dense": "keras",
    "Dropout": "keras",
    "gradcheck": "gradcheck",
    "GradcheckError": "gradcheck",
    "to_categorical": "data",
    "load_mnist": "data",
    "load_digits_dataset": "data",
    "download_mnist": "data",
}


def main(argv: Sequence[str] | None = None) -> int:
    """``fastconv train [options]``: see ``fastconv train --help``."""
    from fastconv.train.trainer import main as _main

    return _main(argv)


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'fastconv.train' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"fastconv.train.{mod}"), name)
