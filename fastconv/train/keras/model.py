"""The Keras-style model: :class:`Sequential` (``compile`` / ``fit`` / ``evaluate`` / ``predict`` / ``summary``),
its :class:`History`, and :func:`mnist_cnn`, the Keras tutorial's MNIST network.

Data layout, as in Keras: the model's data format is its image layers' ``data_format`` (those given
must agree; layers that give none follow it), ``"channels_last"`` when none gives one. A
channels-last model takes ``input_shape=(H, W, C)`` and images ``(N, H, W, C)`` (or ``(N, H, W)`` for
one channel) and computes channels-last throughout (the kernels' NHWC layout: no transpose at the
entry or between layers); ``Flatten`` then flattens in (H, W, C) order, as Keras, so the first
``Dense`` weights are laid out as Keras lays them out. A channels-first model takes ``(C, H, W)`` and
``(N, C, H, W)`` and computes NCHW. Images in the other layout are still accepted and transposed
once, at the edge (free for one channel; when a shape could be read both ways, the model's own
layout wins). Kernels are held in fastconv's ``(F, C // groups, kh, kw)`` layout either way.
Output shapes in :meth:`Sequential.summary` are shown in the model's data format, like Keras.

Losses are Keras': the cross-entropies clip probabilities to ``[1e-7, 1 - 1e-7]``
(:func:`fastconv.losses.cross_entropy`); a softmax output layer trained with a cross-entropy is
differentiated as one step, ``(y - t) / N``. ``fit`` runs the training loop of :mod:`fastconv.train.loop`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fastconv import losses
from fastconv._arrays import array_module, to_host
from fastconv.train import loop
from fastconv.train._io import check_arrays, load_npz, save_npz_atomic
from fastconv.train.keras import saving
from fastconv.train.keras.layers import (
    DATA_FORMATS,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Layer,
    MaxPooling2D,
    _Softmax,
)
from fastconv.train.optimizers import Optimizer, make_optimizer

__all__ = ["KERAS_OPTIMIZER_DEFAULTS", "LOSSES", "History", "Sequential", "mnist_cnn"]

# Keras' defaults for optimizers named by string.
KERAS_OPTIMIZER_DEFAULTS: dict[str, dict[str, float]] = {
    "sgd": {"lr": 0.01},
    "momentum": {"lr": 0.01, "momentum": 0.9},
    "nesterov": {"lr": 0.01, "momentum": 0.9},
    "adagrad": {"lr": 0.001},
    "rmsprop": {"lr": 0.001, "decay_rate": 0.9},
    "adam": {"lr": 0.001},
}

WEIGHTS_FORMAT = "__fastconv_keras_weights__"
"""The marker entry of a weights file: 2 since the channels_last Flatten takes Keras's (H, W, C) order."""


class History:
    """What :meth:`Sequential.fit` returns: ``history`` maps 'loss', 'accuracy', 'val_loss',
    'val_accuracy' to per-epoch lists; ``epoch`` lists the epoch indices."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []

    def append(self, epoch: int, logs: dict[str, float]) -> None:
        self.epoch.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(float(v))


LOSSES = ("categorical_crossentropy", "sparse_categorical_crossentropy", "mean_squared_error", "mse")


class Sequential:
    """A linear stack of layers with Keras' ``compile`` / ``fit`` / ``evaluate`` / ``predict`` / ``summary``.

    ``backend``: fastconv backend for the conv and pool layers (its device holds the parameters);
    ``dtype``: parameter and compute dtype (float32, as Keras); ``seed``: initial weights, shuffling
    and dropout masks (``numpy.random.Generator``).
    """

    def __init__(
        self,
        layers: Sequence[Layer] | None = None,
        name: str = "sequential",
        *,
        backend: str | None = None,
        dtype: Any = np.float32,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        self.name = name
        self.layers: list[Layer] = []
        self.backend = backend
        self.dtype = np.dtype(dtype)
        self.rng = np.random.default_rng(seed)
        self.built = False
        self.input_shape: tuple[int, ...] | None = None  # Keras convention: (H, W, C) / (C, H, W) or (D,)
        self.params: dict[str, Any] = {}
        self.optimizer: Optimizer | None = None
        self.loss_name: str | None = None
        self.metrics: list[str] = []
        self._counts: dict[str, int] = {}
        for layer in layers or ():
            self.add(layer)

    # -- building ----------------------------------------------------------------------------------
    def add(self, layer: Layer) -> None:
        """Append a layer (the first one may carry ``input_shape=(H, W, C)`` (channels_last),
        ``(C, H, W)`` (channels_first) or ``(D,)``)."""
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add takes a layer (Conv2D, Dense, ...), got {type(layer).__name__}")
        if self.built:
            raise RuntimeError("cannot add layers to a model that is already built")
        if layer.name is None:
            n = self._counts.get(layer.keras_name, 0)
            layer.name = layer.keras_name if n == 0 else f"{layer.keras_name}_{n}"
            self._counts[layer.keras_name] = n + 1
        if any(other.name == layer.name for other in self.layers):
            raise ValueError(f"a layer named {layer.name!r} is already in the model")
        if not self.layers and layer.input_shape is not None:
            self.input_shape = layer.input_shape
        elif layer.input_shape is not None:
            raise ValueError("only the first layer may give input_shape")
        self.layers.append(layer)  # weights are created by build(), at summary/fit time

    @property
    def data_format(self) -> str:
        """The model's data format: the one its image layers give (they must agree), else channels_last."""
        given = {
            layer.data_format: layer for layer in self.layers if layer.uses_data_format and layer.data_format
        }
        if len(given) > 1:
            names = ", ".join(f"{layer.name} {fmt!r}" for fmt, layer in given.items())
            raise ValueError(
                f"the image layers of one model must share a data_format; got {names} (give it on one "
                "layer, or the same on all: layers without one follow the model)"
            )
        return next(iter(given), DATA_FORMATS[0])

    @property
    def layout(self) -> str:
        """The layout of the model's image arrays: "NHWC" (channels_last) or "NCHW" (channels_first)."""
        return "NHWC" if self.data_format == "channels_last" else "NCHW"

    def build(self, input_shape: Sequence[int] | None = None) -> None:
        """Create the weights for ``input_shape`` (Keras convention: (H, W, C) for a channels_last model,
        (C, H, W) for a channels_first one, or (D,))."""
        if input_shape is not None:
            self.input_shape = tuple(int(v) for v in input_shape)
        if self.input_shape is None:
            raise ValueError(
                "the model has no input shape: give input_shape=(H, W, C) to the first layer, or call "
                "build(input_shape) / fit first"
            )
        if not self.layers:
            raise ValueError("the model has no layers")
        fmt = self.data_format
        shape = self._internal_shape(self.input_shape)
        self.params = {}
        for layer in self.layers:
            if isinstance(layer, Dropout):
                layer.rng = np.random.default_rng(layer.seed) if layer.seed is not None else self.rng
            shape = layer.build(shape, self.rng, self.dtype, self.backend, fmt)
            for k, p in layer.params.items():
                self.params[f"{layer.name}.{k}"] = p
        self.layers[0].skip_input_gradient()  # the input needs no gradient: the first conv skips dx
        self.built = True

    def _internal_shape(self, keras_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``input_shape`` as the layers take it: (C, H, W) for images, whatever the data format."""
        if len(keras_shape) == 3:
            if self.data_format == "channels_first":
                return keras_shape
            h, w, c = keras_shape
            return (c, h, w)
        if len(keras_shape) == 1:
            return keras_shape
        order = "(C, H, W)" if self.data_format == "channels_first" else "(H, W, C)"
        raise ValueError(f"input_shape must be {order} for images or (D,) for features, got {keras_shape}")

    def _array_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The array shape (batch axis left out) of an image or features of layer shape ``shape``."""
        if len(shape) == 3 and self.layout == "NHWC":
            c, h, w = shape
            return (h, w, c)
        return shape

    def count_params(self) -> int:
        self._ensure_built()
        return sum(layer.count_params() for layer in self.layers)

    def _ensure_built(self, x: Any = None) -> None:
        if self.built:
            return
        if self.input_shape is None and x is not None:
            shape = tuple(x.shape[1:])
            if len(shape) == 2:  # (N, H, W): one channel
                shape = (1, *shape) if self.data_format == "channels_first" else (*shape, 1)
            self.input_shape = shape
        self.build()

    def summary(self, print_fn: Callable[[str], Any] | None = None, line_length: int = 72) -> None:
        """Print layer (type), output shape and parameter count per layer, and the totals, like Keras."""
        self._ensure_built()
        out = print_fn or print
        cols = [int(line_length * f) for f in (0.45, 0.8, 1.0)]

        def row(fields: Sequence[str]) -> str:
            line, start = "", 0
            for text, end in zip(fields, cols):
                line += (" " + text).ljust(end - start)[: end - start]
                start = end
            return line.rstrip()

        out(f'Model: "{self.name}"')
        out("_" * line_length)
        out(row(["Layer (type)", "Output Shape", "Param #"]))
        out("=" * line_length)
        for i, layer in enumerate(self.layers):
            out(
                row(
                    [
                        f"{layer.name} ({type(layer).__name__})",
                        str(layer.keras_output_shape()),
                        str(layer.count_params()),
                    ]
                )
            )
            if i < len(self.layers) - 1:
                out("")
        out("=" * line_length)
        total = self.count_params()
        out(f"Total params: {total:,}")
        out(f"Trainable params: {total:,}")
        out("Non-trainable params: 0")
        out("_" * line_length)

    # -- data at the edge ---------------------------------------------------------------------------
    def _in_layout(self, x: Any) -> Any:
        """x (N, ...) as the model's input array: x itself when it is in the model's layout already;
        (N, H, W) for one channel, or images in the other layout, converted (a reshape for one channel,
        else a transposed view)."""
        want = self.in_shape_internal
        shape = tuple(x.shape[1:])
        if len(want) != 3:
            if shape != want:
                raise ValueError(f"x must have shape (N, {', '.join(map(str, want))}), got {tuple(x.shape)}")
            return x
        own = self._array_shape(want)
        if shape == own:
            return x
        c, h, w = want
        if c == 1 and shape in ((h, w), (1, h, w), (h, w, 1)):
            return x.reshape((x.shape[0], *own))  # one channel: the same memory in either layout
        if self.layout == "NHWC" and shape == (c, h, w):
            return x.transpose(0, 2, 3, 1)
        if self.layout == "NCHW" and shape == (h, w, c):
            return x.transpose(0, 3, 1, 2)
        first, other = (f"(N, {h}, {w}, {c})", f"(N, {c}, {h}, {w})")[:: 1 if self.layout == "NHWC" else -1]
        raise ValueError(
            f"x must have shape {first} (the model's {self.data_format} layout) or {other}, got {tuple(x.shape)}"
        )

    @property
    def in_shape_internal(self) -> tuple[int, ...]:
        """The first layer's input shape, (C, H, W) or (D,) (the model must be built)."""
        return self.layers[0].in_shape  # type: ignore[return-value]

    def _to_input(self, x: Any, device: bool = True) -> Any:
        """Images (N, H, W, C) or (N, C, H, W) (or (N, H, W) for one channel), or features (N, D) ->
        a contiguous array in the model's layout and dtype (on the model's device unless ``device`` is
        false). Images already in the model's layout are not transposed."""
        if not hasattr(x, "shape"):
            x = np.asarray(x)
        self._ensure_built(x)
        x = self._in_layout(x)
        x = array_module(x).ascontiguousarray(x, dtype=self.dtype)
        return self._device(x) if device else x

    _to_nchw = _to_input  # the name from when the model computed channels-first only

    def _device(self, x: Any) -> Any:
        if self.backend is None:
            return x
        import fastconv

        return fastconv.to_device(x, self.backend)

    def _targets(self, y: Any) -> Any:
        y = to_host(y)
        if self.loss_name == "sparse_categorical_crossentropy":
            return y.reshape(-1).astype(np.int64)
        if y.ndim == 1 and self.loss_name == "categorical_crossentropy":
            raise ValueError(
                "categorical_crossentropy needs one-hot targets (N, K); use to_categorical(y) or "
                "loss='sparse_categorical_crossentropy' for integer labels"
            )
        return y.astype(self.dtype, copy=False)

    # -- compile / forward / backward ---------------------------------------------------------------
    def compile(
        self,
        optimizer: str | Optimizer = "rmsprop",
        loss: str = "categorical_crossentropy",
        metrics: Sequence[str] | None = None,
    ) -> None:
        """Choose the optimizer (a name with Keras' defaults, or an Optimizer), the loss
        ('categorical_crossentropy', 'sparse_categorical_crossentropy', 'mse') and metrics (['accuracy'])."""
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        metrics = list(metrics or [])
        for m in metrics:
            if m not in ("accuracy", "acc"):
                raise ValueError(f"metrics may contain 'accuracy' only, got {m!r}")
        if isinstance(optimizer, str):
            defaults = KERAS_OPTIMIZER_DEFAULTS.get(optimizer.lower())
            if defaults is None:
                raise ValueError(
                    f"optimizer must be one of {', '.join(KERAS_OPTIMIZER_DEFAULTS)}, got {optimizer!r}"
                )
            optimizer = make_optimizer(optimizer, **defaults)
        elif not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"optimizer must be a name or a fastconv Optimizer, got {type(optimizer).__name__}"
            )
        self.optimizer = optimizer
        self.loss_name = loss
        self.metrics = ["accuracy" if m == "acc" else m for m in metrics]

    def _forward(self, x: Any, training: bool, stop_before_softmax: bool = False) -> Any:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            # logits out of the last layer when the loss applies the softmax itself
            x = layer.forward(x, training, skip_activation=stop_before_softmax and i == last)
        return x

    def _fused_softmax(self) -> bool:
        """A softmax output trained with a cross-entropy: differentiated in one step, (y - t) / N."""
        return self.loss_name in (
            "categorical_crossentropy",
            "sparse_categorical_crossentropy",
        ) and isinstance(self.layers[-1]._act, _Softmax)

    def _loss(self, y: Any, t: Any) -> Any:
        if self.loss_name in ("mse", "mean_squared_error"):
            return losses.mean_squared_error(y, t)
        return losses.cross_entropy(y, t)

    def _batch(self, x: Any) -> Any:
        """A batch on the model's device in its layout; one in the other layout is converted (see
        :meth:`_to_input`), contiguous."""
        self._ensure_built(x)
        y = self._in_layout(x)
        return y if y is x else array_module(y).ascontiguousarray(y)

    def loss_and_gradient(self, x: Any, t: Any) -> tuple[float, dict[str, Any], Any]:
        """One training step's forward and backward on a batch x on the model's device, in the model's
        layout ((N, H, W, C) channels_last, (N, C, H, W) channels_first, (N, D) features; the other image
        layout is converted), t as :meth:`fit` takes it (host or device): (mean loss, grads keyed like
        ``params``, outputs (N, K))."""
        if self.loss_name is None:
            raise RuntimeError("compile the model before training it")
        x = self._batch(x)
        t = array_module(x).asarray(t)
        fused = self._fused_softmax()
        if fused:
            y = losses.softmax(self._forward(x, True, stop_before_softmax=True))
            dout = losses.softmax_cross_entropy_backward(y, t)
        else:
            y = self._forward(x, True)
            if self.loss_name in ("mse", "mean_squared_error"):
                dout = losses.mean_squared_error_backward(y, t)
            else:  # cross-entropy on probabilities that are not a softmax output
                dout = losses.cross_entropy_backward(y, t)
        loss = self._loss(y, t)
        for i in range(len(self.layers) - 1, -1, -1):
            dout = self.layers[i].backward(dout, skip_activation=fused and i == len(self.layers) - 1)
        grads = {}
        for layer in self.layers:
            for k, g in layer.grads.items():
                grads[f"{layer.name}.{k}"] = g
        return float(loss), grads, y

    def evaluate_batch(self, x: Any, t: Any) -> tuple[float, Any]:
        """(mean loss, outputs (N, K)) of a batch on the model's device (as :meth:`loss_and_gradient`
        takes it), without dropout."""
        y = self._forward(self._batch(x), False)
        return float(self._loss(y, array_module(y).asarray(t))), y

    def gradient(self, x: Any, t: Any) -> dict[str, Any]:
        """Gradients of the loss, keyed like ``params`` (x channels-last or channels-first)."""
        return self.loss_and_gradient(self._to_input(x), self._targets(t))[1]

    def loss(self, x: Any, t: Any) -> float:
        """Mean loss of the batch (no dropout)."""
        return self.evaluate_batch(self._to_input(x), self._targets(t))[0]

    # -- fit / evaluate / predict -------------------------------------------------------------------
    def predict(self, x: Any, batch_size: int = 32, verbose: int = 0) -> np.ndarray:
        """Model outputs (probabilities for a softmax head) for x, as a NumPy array (N, K)."""
        x = self._to_input(x, device=False)
        out = [
            to_host(self._forward(self._device(x[idx]), False))
            for idx in loop.batch_indices(x.shape[0], batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0,))

    def evaluate(self, x: Any, y: Any, batch_size: int = 32, verbose: int = 0) -> list[float] | float:
        """[loss, accuracy] over (x, y) (just the loss without metrics)."""
        if self.loss_name is None:
            raise RuntimeError("compile the model before evaluate")
        x, t = self._data(x, y)
        loss, acc, _ = loop.evaluate(self, x, t, batch_size, place=self._device, accuracy=bool(self.metrics))
        if verbose:
            print(f"loss: {loss:.4f}" + (f" - accuracy: {acc:.4f}" if self.metrics else ""))
        return [loss, acc] if self.metrics else loss

    def _data(self, x: Any, y: Any) -> tuple[Any, np.ndarray]:
        """(images in the model's layout and dtype, not yet on its device; targets on the host) of one
        data set."""
        x = self._to_input(x, device=False)
        t = self._targets(y)
        if len(t) != x.shape[0]:
            raise ValueError(f"x has {x.shape[0]} samples, y has {len(t)}")
        return x, t

    def fit(
        self,
        x: Any,
        y: Any,
        batch_size: int = 32,
        epochs: int = 1,
        verbose: int = 1,
        validation_data: tuple[Any, Any] | None = None,
        shuffle: bool = True,
        *,
        communicator: Any = None,
        drop_last: bool = False,
    ) -> History:
        """Train with mini-batches of x (N, H, W, C) (or as :meth:`predict` takes it) against y (one-hot (N, K),
        or labels (N,) with the sparse loss); returns a History ('loss', 'accuracy', 'val_loss', 'val_accuracy').

        verbose: 0 silent, 1 a progress bar per epoch, 2 one line per epoch (rank 0's only under MPI).
        communicator: data-parallel training (:func:`fastconv.distributed.create_communicator`, e.g. under
        ``mpiexec -n 4``): every rank calls fit with the same data and trains on its slice of each global
        batch of ``batch_size``; the history is global and the weights end identical on every rank.
        drop_last: skip the last batch of an epoch when it is short."""
        if self.optimizer is None:
            raise RuntimeError("compile the model before fit")
        if batch_size < 1 or epochs < 0:
            raise ValueError(f"batch_size must be >= 1 and epochs >= 0, got {batch_size}, {epochs}")
        x_all, t_all = self._data(x, y)
        validation = None if validation_data is None else self._data(*validation_data)
        history = History()
        accuracy = bool(self.metrics)
        root = communicator is None or communicator.is_root
        if communicator is not None and communicator.size > 1:
            # One dropout stream per rank: the same masks on every rank would tie their samples together.
            draw = self.rng.integers(2**32, size=2).tolist()
            for layer in self.layers:
                if isinstance(layer, Dropout) and layer.rng is self.rng:
                    layer.rng = np.random.default_rng([*draw, communicator.rank])
        for result in loop.train(
            self,
            self.optimizer,
            x_all,
            t_all,
            epochs=epochs,
            batch_size=batch_size,
            rng=self.rng if shuffle else None,
            place=self._device,
            validation=validation,
            validation_batch_size=max(batch_size, 256),
            accuracy=accuracy,
            progress=verbose == 1 and root,
            leave_progress=True,
            communicator=communicator,
            drop_last=drop_last,
        ):
            logs = {"loss": result.loss}
            if accuracy:
                logs["accuracy"] = result.accuracy
            if validation is not None:
                logs["val_loss"] = result.val_loss
                if accuracy:
                    logs["val_accuracy"] = result.val_accuracy
            if verbose == 2 and root:
                print(
                    f"Epoch {result.epoch}/{epochs} - " + " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
                )
            history.append(result.epoch - 1, logs)
        return history

    # -- weights ------------------------------------------------------------------------------------
    def get_weights(self) -> list[np.ndarray]:
        self._ensure_built()
        return [to_host(p).copy() for p in self.params.values()]

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        self._ensure_built()
        if len(weights) != len(self.params):
            raise ValueError(f"set_weights needs {len(self.params)} arrays, got {len(weights)}")
        for (k, p), w in zip(self.params.items(), weights):
            if tuple(np.shape(w)) != tuple(p.shape):
                raise ValueError(f"weight {k!r} has shape {tuple(p.shape)}, got {tuple(np.shape(w))}")
            p[...] = array_module(p).asarray(np.asarray(w, dtype=p.dtype))

    def save_params(self, file_name: str | os.PathLike[str] = "params.npz") -> None:
        """Write the weights to an ``.npz`` file (keys ``<layer>.W`` / ``<layer>.b``), atomically, with
        the entry ``WEIGHTS_FORMAT`` naming the flatten order (Keras's, (H, W, C) in channels_last)."""
        self._ensure_built()
        save_npz_atomic(file_name, {**self.params, WEIGHTS_FORMAT: np.array(2)})

    def save_weights(self, file_name: str | os.PathLike[str] = "params.npz") -> None:
        """Write the weights: a Keras 3 weights file for ``.weights.h5`` / ``.h5`` (Keras'
        ``model.load_weights`` reads it), a ``.keras`` file (with the architecture) for ``.keras``, else
        fastconv's ``.npz`` (:meth:`save_params`)."""
        if str(file_name).lower().endswith(".keras"):
            self.save(file_name)
        elif saving.is_keras_file(file_name):
            saving.save_weights_h5(self, file_name)
        else:
            self.save_params(file_name)

    def save(self, file_name: str | os.PathLike[str]) -> None:
        """Write a ``.keras`` file, architecture and weights (no optimizer state), as Keras 3's
        ``model.save``: ``keras.models.load_model`` and :func:`fastconv.train.keras.load_model` read it."""
        if not str(file_name).lower().endswith(".keras"):
            raise ValueError(f"save writes .keras files, got {str(file_name)!r} (weights: save_weights)")
        saving.save_keras(self, file_name)

    def load_params(self, file_name: str | os.PathLike[str] = "params.npz") -> None:
        """Read weights written by :meth:`save_params` (``allow_pickle=False``; names and shapes must match)."""
        self._ensure_built()
        loaded = load_npz(file_name)
        if loaded.pop(WEIGHTS_FORMAT, None) is None and self._flattens_channels_last():
            raise ValueError(
                f"{file_name}: weights saved by fastconv before 0.2, whose channels_last Flatten used the "
                "(C, H, W) order; this model flattens in Keras's (H, W, C) order, so the first Dense weights "
                "would be wrong: train again, or save them with this version"
            )
        check_arrays(file_name, loaded, {k: tuple(v.shape) for k, v in self.params.items()})
        self.set_weights([loaded[k] for k in self.params])

    def load_weights(self, file_name: str | os.PathLike[str] = "params.npz") -> None:
        """Read weights: written by Keras 3 (``.weights.h5``, or a ``.keras`` file's) for a model of the
        same layer types in the same order, else fastconv's ``.npz`` (:meth:`load_params`)."""
        if saving.is_keras_file(file_name):
            saving.load_keras_weights(self, file_name)
        else:
            self.load_params(file_name)

    def _flattens_channels_last(self) -> bool:
        """Whether the model flattens channels_last images (where fastconv before 0.2 flattened in another
        order than Keras)."""
        if self.data_format != "channels_last":
            return False
        return any(type(layer).__name__ == "Flatten" for layer in self.layers)

    def set_params(self, values: dict[str, np.ndarray]) -> None:
        self.set_weights([values[k] for k in self.params])

    def first_layer_filters(self) -> np.ndarray | None:
        """The first convolution's kernel on the host, (F, C // groups, kh, kw), or None."""
        for layer in self.layers:
            f = layer.filters()
            if f is not None:
                return f
        return None


def mnist_cnn(input_shape: Sequence[int] = (28, 28, 1), padding: str = "valid", **kwargs: Any) -> Sequential:
    """The Keras tutorial's MNIST network, conv32-pool-conv64-pool-conv64-dense64-dense10 (93,322
    parameters on 28x28x1 with 'valid' padding); ``kwargs`` go to :class:`Sequential` (backend, dtype, seed)."""
    return Sequential(
        [
            Conv2D(32, (3, 3), activation="relu", padding=padding, input_shape=input_shape),
            MaxPooling2D((2, 2)),
            Conv2D(64, (3, 3), activation="relu", padding=padding),
            MaxPooling2D((2, 2)),
            Conv2D(64, (3, 3), activation="relu", padding=padding),
            Flatten(),
            Dense(64, activation="relu"),
            Dense(10, activation="softmax"),
        ],
        **kwargs,
    )
