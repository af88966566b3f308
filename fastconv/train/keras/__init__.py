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

* :mod:`fastconv.train.keras.layers`: the layers (Conv2D, MaxPooling2D, Flatten, Dense, Dropout, Activation);
* :mod:`fastconv.train.keras.model`: :class:`Sequential`, :class:`History`, :func:`mnist_cnn` and the data
  layout rules (channels-last images in, NCHW inside).
"""

from __future__ import annotations

from fastconv.train.keras.layers import (
    ACTIVATIONS,
    Activation,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Layer,
    MaxPooling2D,
)
from fastconv.train.keras.model import KERAS_OPTIMIZER_DEFAULTS, LOSSES, History, Sequential, mnist_cnn

__all__ = [
    "ACTIVATIONS",
    "KERAS_OPTIMIZER_DEFAULTS",
    "LOSSES",
    "Activation",
    "Conv2D",
    "Dense",
    "Dropout",
    "Flatten",
    "History",
    "Layer",
    "MaxPooling2D",
    "Sequential",
    "mnist_cnn",
]
