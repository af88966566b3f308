"""A Keras-style ``Sequential`` API on fastconv layers.

    model = Sequential([
        Conv2D(32, (3, 3), activation="relu", input_shape=(28, 28, 1)),
        MaxPooling2D((2, 2)),
        Conv2D(64, (3, 3), activation="relu"),
        Flatten(),
        Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x_train, y_train, epochs=5, batch_size=64, validation_data=(x_test, y_test))

* :mod:`fastconv.train.keras.layers`: the layers (Conv2D, DepthwiseConv2D, SeparableConv2D, Conv2DTranspose,
  MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, Flatten, Dense, Dropout, Activation);
* :mod:`fastconv.train.keras.model`: :class:`Sequential`, :class:`History`, :func:`mnist_cnn` and the data
  layout rules (``data_format``: channels-last by default, computed channels-last throughout);
* :mod:`fastconv.train.keras.saving`: Keras 3 files, ``.weights.h5`` and ``.keras``, both ways
  (``load_weights`` / ``save_weights`` / ``save`` / :func:`load_model`).
"""

from __future__ import annotations

from fastconv.train.keras.layers import (
    ACTIVATIONS,
    Activation,
    AveragePooling2D,
    Conv2D,
    Conv2DTranspose,
    Dense,
    DepthwiseConv2D,
    Dropout,
    Flatten,
    GlobalAveragePooling2D,
    Layer,
    MaxPooling2D,
    SeparableConv2D,
)
from fastconv.train.keras.model import KERAS_OPTIMIZER_DEFAULTS, LOSSES, History, Sequential, mnist_cnn
from fastconv.train.keras.saving import load_model

__all__ = [
    "ACTIVATIONS",
    "KERAS_OPTIMIZER_DEFAULTS",
    "LOSSES",
    "Activation",
    "AveragePooling2D",
    "Conv2D",
    "Conv2DTranspose",
    "Dense",
    "DepthwiseConv2D",
    "Dropout",
    "Flatten",
    "GlobalAveragePooling2D",
    "History",
    "Layer",
    "MaxPooling2D",
    "SeparableConv2D",
    "Sequential",
    "load_model",
    "mnist_cnn",
]
