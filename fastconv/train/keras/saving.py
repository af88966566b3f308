"""Keras 3 files for the Keras-style :class:`~fastconv.train.keras.Sequential`: ``.weights.h5`` and ``.keras``.

A model trained in Keras runs or fine-tunes on fastconv, and goes back::

    model = mnist_cnn()                        # the same layers as the Keras model
    model.load_weights("keras.weights.h5")     # written by Keras' model.save_weights
    model.save_weights("tuned.weights.h5")     # Keras' model.load_weights reads it
    model = load_model("trained.keras")        # layers and weights from Keras' model.save
    model.save("tuned.keras")                  # keras.models.load_model reads it

How Keras 3 lays out the weights (``keras.src.saving.saving_lib``): one HDF5 group per layer,
``layers/<name>/vars`` holding the layer's variables as datasets ``"0"``, ``"1"``, ... in the order of
``layer.weights``. ``<name>`` is not the layer's name but its class name in snake case, numbered in model
order (``conv2d``, ``conv2d_1``, ``max_pooling2d``, ...), so a file matches a model by its layer types and
order; the layer's own name is kept as the ``name`` attribute of ``vars``, for messages. A ``.keras`` file is
a zip of ``config.json`` (the architecture), ``metadata.json`` and that HDF5 file as ``model.weights.h5``.

The optimizer's state is neither read nor written: fine-tuning starts a fresh optimizer. h5py is imported
when a file is read or written, never with fastconv.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from fastconv._arrays import to_host
from fastconv.train._io import atomic_write, one_line
from fastconv.train.keras import layers as L

if TYPE_CHECKING:
    from fastconv.train.keras.model import Sequential

__all__ = [
    "KERAS_SUFFIXES",
    "is_keras_file",
    "load_keras_weights",
    "load_model",
    "save_keras",
    "save_weights_h5",
]

KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")
_WEIGHTS_IN_ZIP = "model.weights.h5"

# Keras' variables of each layer, in file order, as (name, fastconv parameter key)
_VARIABLES: dict[type, tuple[tuple[str, str], ...]] = {
    L.Conv2D: (("kernel", "W"), ("bias", "b")),
    L.DepthwiseConv2D: (("kernel", "W"), ("bias", "b")),
    L.SeparableConv2D: (
        ("depthwise_kernel", "depthwise_W"),
        ("pointwise_kernel", "pointwise_W"),
        ("bias", "b"),
    ),
    L.Conv2DTranspose: (("kernel", "W"), ("bias", "b")),
    L.Dense: (("kernel", "W"), ("bias", "b")),
}


def _h5py() -> Any:
    try:
        import h5py  # type: ignore[import-untyped]
    except ImportError:
        raise ImportError(
            "reading and writing Keras weight files needs h5py: pip install h5py (or fastconv[keras])"
        ) from None
    return h5py


def is_keras_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a Keras file (``.weights.h5``, ``.h5``, ``.hdf5`` or ``.keras``)."""
    return str(path).lower().endswith(KERAS_SUFFIXES)


# -- weights: fastconv's layout <-> Keras' ---------------------------------------------------------------
def _depthwise_to_keras(w: np.ndarray, multiplier: int) -> np.ndarray:
    """fastconv (C*m, 1, kh, kw), output channel c*m + k -> Keras (kh, kw, C, m)."""
    cm, _, kh, kw = w.shape
    return w.reshape(cm // multiplier, multiplier, kh, kw).transpose(2, 3, 0, 1)


def _depthwise_from_keras(k: np.ndarray) -> np.ndarray:
    """Keras (kh, kw, C, m) -> fastconv (C*m, 1, kh, kw)."""
    kh, kw, c, m = k.shape
    return k.transpose(2, 3, 0, 1).reshape(c * m, 1, kh, kw)


def _to_keras(layer: L.Layer, key: str, w: np.ndarray) -> np.ndarray:
    """One of ``layer``'s parameters in Keras' layout."""
    if key == "b" or isinstance(layer, L.Dense):
        return w  # bias (F,); Dense kernel (D, units) in both
    if key == "pointwise_W" or isinstance(layer, L.Conv2D):
        return w.transpose(2, 3, 1, 0)  # (F, C // g, kh, kw) -> (kh, kw, C // g, F)
    if isinstance(layer, L.Conv2DTranspose):
        return w.transpose(2, 3, 1, 0)  # (C, F, kh, kw) -> (kh, kw, F, C)
    return _depthwise_to_keras(w, layer.depth_multiplier)  # type: ignore[attr-defined]


def _from_keras(layer: L.Layer, key: str, k: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_to_keras`."""
    if key == "b" or isinstance(layer, L.Dense):
        return k
    if key == "pointwise_W" or isinstance(layer, (L.Conv2D, L.Conv2DTranspose)):
        return k.transpose(3, 2, 0, 1)
    return _depthwise_from_keras(k)


def _variables(layer: L.Layer) -> list[tuple[str, str]]:
    """(Keras name, fastconv key) of the variables ``layer`` has, in Keras' order."""
    return [(name, key) for name, key in _VARIABLES.get(type(layer), ()) if key in layer.params]


def _paths(model: Sequential) -> list[tuple[str, L.Layer]]:
    """Each layer's group in a Keras weights file: its class in snake case, numbered in model order."""
    used: dict[str, int] = {}
    out = []
    for layer in model.layers:
        name = layer.keras_name
        if name in used:
            used[name] += 1
            name = f"{name}_{used[name]}"
        else:
            used[name] = 0
        out.append((f"layers/{name}", layer))
    return out


# -- writing ------------------------------------------------------------------------------------------------
def _write_h5(model: Sequential, f: IO[bytes]) -> None:
    h5py = _h5py()
    with h5py.File(f, "w") as h5:
        h5.create_group("vars").attrs["name"] = model.name
        for path, layer in _paths(model):
            group = h5.create_group(f"{path}/vars")
            group.attrs["name"] = layer.name
            for i, (_, key) in enumerate(_variables(layer)):
                group.create_dataset(str(i), data=_to_keras(layer, key, to_host(layer.params[key])))


def save_weights_h5(model: Sequential, path: str | os.PathLike[str]) -> Path:
    """Write the model's weights as Keras 3's ``model.save_weights("x.weights.h5")`` does (atomically)."""
    model._ensure_built()
    return atomic_write(path, lambda f: _write_h5(model, f))


def _dtype_name(model: Sequential) -> str:
    return np.dtype(model.dtype).name


def _layer_config(layer: L.Layer, model: Sequential) -> dict[str, Any]:
    """``layer`` as an entry of Keras' Sequential config (what ``keras.models.load_model`` rebuilds)."""
    fmt = model.data_format
    cfg: dict[str, Any] = {"name": layer.name, "trainable": True, "dtype": _dtype_name(model)}
    if isinstance(layer, L._ConvBase):
        cfg |= {
            "kernel_size": list(layer.kernel_size),
            "strides": list(layer.strides),
            "padding": layer.padding,
            "data_format": layer.data_format or fmt,
            "dilation_rate": list(layer.dilation_rate),
            "activation": layer.activation_name,
            "use_bias": layer.use_bias,
        }
        if isinstance(layer, (L.Conv2D, L.SeparableConv2D, L.Conv2DTranspose)):
            cfg["filters"] = layer.filters_n
        if isinstance(layer, L.Conv2D):
            cfg["groups"] = layer.groups
        if isinstance(layer, (L.DepthwiseConv2D, L.SeparableConv2D)):
            cfg["depth_multiplier"] = layer.depth_multiplier
        if isinstance(layer, L.Conv2DTranspose):
            cfg["output_padding"] = None if layer.output_padding is None else list(layer.output_padding)
    elif isinstance(layer, L._Pool2D):
        cfg |= {
            "pool_size": list(layer.pool_size),
            "strides": list(layer.strides),
            "padding": layer.padding,
            "data_format": layer.data_format or fmt,
        }
    elif isinstance(layer, L.GlobalAveragePooling2D):
        cfg |= {"data_format": layer.data_format or fmt, "keepdims": layer.keepdims}
    elif isinstance(layer, L.Flatten):
        # Keras' Flatten moves the channels last only when told its input is channels_first, as ours
        cfg["data_format"] = layer.data_format or "channels_last"
    elif isinstance(layer, L.Dense):
        cfg |= {"units": layer.units, "activation": layer.activation_name, "use_bias": layer.use_bias}
    elif isinstance(layer, L.Dropout):
        cfg |= {"rate": layer.rate, "seed": layer.seed}
    elif isinstance(layer, L.Activation):
        cfg["activation"] = layer.activation_name
    else:  # pragma: no cover - every layer class of fastconv.train.keras is handled above
        raise ValueError(f"{layer.name}: {type(layer).__name__} has no Keras config")
    entry: dict[str, Any] = {
        "module": "keras.layers",
        "class_name": type(layer).__name__,
        "config": cfg,
        "registered_name": None,
    }
    if layer.in_shape is not None:
        entry["build_config"] = {"input_shape": [None, *model._array_shape(layer.in_shape)]}
    return entry


def _model_config(model: Sequential) -> dict[str, Any]:
    batch_shape = [None, *(model.input_shape or ())]  # Keras' convention, as the model keeps it
    input_layer = {
        "module": "keras.layers",
        "class_name": "InputLayer",
        "config": {"batch_shape": batch_shape, "dtype": _dtype_name(model), "name": "input_layer"},
        "registered_name": None,
    }
    return {
        "module": "keras",
        "class_name": "Sequential",
        "config": {
            "name": model.name,
            "trainable": True,
            "dtype": _dtype_name(model),
            "layers": [input_layer] + [_layer_config(layer, model) for layer in model.layers],
        },
        "registered_name": None,
        "build_config": {"input_shape": batch_shape},
    }


def save_keras(model: Sequential, path: str | os.PathLike[str]) -> Path:
    """Write a ``.keras`` file (architecture and weights, no optimizer) that ``keras.models.load_model``
    and :func:`load_model` read; atomically."""
    import fastconv

    model._ensure_built()
    weights = io.BytesIO()
    _write_h5(model, weights)
    metadata = {
        "saved_by": f"fastconv {fastconv.__version__}",
        "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
    }

    def write(f: IO[bytes]) -> None:
        with zipfile.ZipFile(f, "w") as z:
            z.writestr("metadata.json", json.dumps(metadata))
            z.writestr("config.json", json.dumps(_model_config(model)))
            z.writestr(_WEIGHTS_IN_ZIP, weights.getvalue())

    return atomic_write(path, write)


# -- reading ------------------------------------------------------------------------------------------------
def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(
            f"{path}: not a .keras file (a zip written by Keras' model.save): {one_line(e)}"
        ) from None


def _weights_bytes(path: Path) -> bytes | None:
    """The HDF5 weights inside a ``.keras`` zip (None for a plain weights file)."""
    if path.suffix.lower() != ".keras":
        return None
    with _open_zip(path) as z:
        names = z.namelist()
        if _WEIGHTS_IN_ZIP not in names:
            raise ValueError(
                f"{path}: no {_WEIGHTS_IN_ZIP} inside (it holds {', '.join(names) or 'nothing'}); fastconv reads "
                "the HDF5 weights Keras 3 writes by default, not sharded or .npz weights"
            )
        return z.read(_WEIGHTS_IN_ZIP)


def _read_groups(path: Path) -> dict[str, tuple[str, list[np.ndarray]]]:
    """{"layers/<name>": (the Keras layer's own name, its variables)} of a weights file or ``.keras`` zip."""
    h5py = _h5py()
    data = _weights_bytes(path)
    try:
        source: Any = io.BytesIO(data) if data is not None else path
        with h5py.File(source, "r") as h5:
            if "layers" not in h5:
                raise ValueError(f"{path}: no 'layers' group: not a Keras 3 weights file")
            out = {}
            for name, group in h5["layers"].items():
                vars_ = group.get("vars")
                keys = list(vars_.keys()) if vars_ is not None else []
                if not all(k.isdigit() for k in keys):
                    raise ValueError(
                        f"{path}: layers/{name}/vars holds {keys}, not Keras' variables 0, 1, ..."
                    )
                keys.sort(key=int)
                out[f"layers/{name}"] = (
                    str(vars_.attrs.get("name", name)) if vars_ is not None else name,
                    [np.asarray(vars_[k]) for k in keys],
                )
            return out
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 weights file: {one_line(e)}") from None


def _keras_class(path: str) -> str:
    """The snake-case class of a group name: "layers/conv2d_3" -> "conv2d"."""
    base = path.split("/", 1)[1]
    head, _, tail = base.rpartition("_")
    return head if head and tail.isdigit() else base


def load_keras_weights(model: Sequential, path: str | os.PathLike[str]) -> None:
    """Load weights written by Keras 3 (``.weights.h5``, or the weights of a ``.keras`` file) or by
    :func:`save_weights_h5` into ``model``, whose layers must match the file's in type and order.

    Raises ValueError naming the layer for a layer fastconv's model lacks (or the file lacks) and for a
    variable whose shape differs; nothing is loaded then."""
    path = Path(path)
    model._ensure_built()
    groups = _read_groups(path)
    ours = _paths(model)
    expected = {p for p, _ in ours}
    extra = [p for p in groups if p not in expected and not _keras_class(p).startswith("input_layer")]
    if extra:
        known = ", ".join(sorted({layer.keras_name for _, layer in ours}))
        described = ", ".join(f"{groups[p][0]!r} ({p}, {len(groups[p][1])} variables)" for p in extra)
        raise ValueError(
            f"{path}: the file has layers this model does not: {described}; the model's layers are "
            f"{', '.join(p for p, _ in ours)} (fastconv matches layers by type and order, as Keras does; "
            f"its layer types here: {known})"
        )
    missing = [f"{layer.name!r} ({p})" for p, layer in ours if p not in groups]
    if missing:
        raise ValueError(f"{path}: the file has no weights for the model's layers {', '.join(missing)}")
    values: dict[str, np.ndarray] = {}  # fastconv's parameter names: '<layer>.<key>'
    for p, layer in ours:
        keras_name, arrays = groups[p]
        variables = _variables(layer)
        what = f"{path}: layer {layer.name!r} ({type(layer).__name__}, {p}; {keras_name!r} in the file)"
        if len(arrays) != len(variables):
            names = ", ".join(n for n, _ in variables) or "none"
            raise ValueError(
                f"{what} has {len(arrays)} variables, the model's layer has {len(variables)} ({names}): "
                "use_bias or the layer type differs"
            )
        for (name, key), a in zip(variables, arrays):
            want = _to_keras(layer, key, to_host(layer.params[key])).shape
            if a.shape != want:
                raise ValueError(f"{what}: {name} has shape {a.shape} in the file, the model needs {want}")
            values[f"{layer.name}.{key}"] = np.ascontiguousarray(_from_keras(layer, key, a))
    model.set_params(values)


# -- a model from a .keras file ---------------------------------------------------------------------------
def _pair_or_none(v: Any) -> Any:
    return None if v is None else tuple(int(a) for a in v) if isinstance(v, (list, tuple)) else int(v)


def _activation(cfg: dict[str, Any], what: str) -> str:
    act = cfg.get("activation", "linear")
    if isinstance(act, dict):  # a serialized function: {"class_name": "function", "config": "relu", ...}
        act = act.get("config")
    if not isinstance(act, str) or act.lower() not in L.ACTIVATIONS:
        raise ValueError(f"{what}: activation {act!r} is not one fastconv has ({', '.join(L.ACTIVATIONS)})")
    return act.lower()


def _conv_kwargs(cfg: dict[str, Any], what: str) -> dict[str, Any]:
    return {
        "kernel_size": _pair_or_none(cfg["kernel_size"]),
        "strides": _pair_or_none(cfg.get("strides", 1)),
        "padding": cfg.get("padding", "valid"),
        "data_format": cfg.get("data_format"),
        "dilation_rate": _pair_or_none(cfg.get("dilation_rate", 1)),
        "activation": _activation(cfg, what),
        "use_bias": bool(cfg.get("use_bias", True)),
    }


def _pool_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    return {
        "pool_size": _pair_or_none(cfg.get("pool_size", 2)),
        "strides": _pair_or_none(cfg.get("strides")),
        "padding": cfg.get("padding", "valid"),
        "data_format": cfg.get("data_format"),
    }


_FROM_CONFIG: dict[str, Callable[[dict[str, Any], str], L.Layer]] = {
    "Conv2D": lambda c, w: L.Conv2D(c["filters"], groups=c.get("groups", 1), **_conv_kwargs(c, w)),
    "DepthwiseConv2D": lambda c, w: L.DepthwiseConv2D(
        depth_multiplier=c.get("depth_multiplier", 1), **_conv_kwargs(c, w)
    ),
    "SeparableConv2D": lambda c, w: L.SeparableConv2D(
        c["filters"], depth_multiplier=c.get("depth_multiplier", 1), **_conv_kwargs(c, w)
    ),
    "Conv2DTranspose": lambda c, w: L.Conv2DTranspose(
        c["filters"], output_padding=_pair_or_none(c.get("output_padding")), **_conv_kwargs(c, w)
    ),
    "MaxPooling2D": lambda c, w: L.MaxPooling2D(**_pool_kwargs(c)),
    "AveragePooling2D": lambda c, w: L.AveragePooling2D(**_pool_kwargs(c)),
    "GlobalAveragePooling2D": lambda c, w: L.GlobalAveragePooling2D(
        data_format=c.get("data_format"), keepdims=bool(c.get("keepdims", False))
    ),
    "Flatten": lambda c, w: L.Flatten(data_format=c.get("data_format")),
    "Dense": lambda c, w: L.Dense(
        c["units"], activation=_activation(c, w), use_bias=bool(c.get("use_bias", True))
    ),
    "Dropout": lambda c, w: L.Dropout(c["rate"], seed=c.get("seed")),
    "Activation": lambda c, w: L.Activation(_activation(c, w)),
}


def _policy_dtype(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return value.get("config", {}).get("name")
    return None


def load_model(
    path: str | os.PathLike[str],
    *,
    backend: str | None = None,
    dtype: Any = None,
    seed: int | np.random.Generator | None = None,
) -> Sequential:
    """A fastconv :class:`Sequential` with the layers and weights of a ``.keras`` file written by Keras 3's
    ``model.save`` (a Sequential of the layers fastconv has) or by :meth:`Sequential.save`.

    ``dtype`` defaults to the file's (float32 for Keras' default policy). Raises ValueError naming the
    layer for a layer type or an option fastconv does not have."""
    from fastconv.train.keras.model import Sequential

    path = Path(path)
    if path.suffix.lower() != ".keras":
        raise ValueError(
            f"load_model reads .keras files, got {str(path)!r} (weights files go to load_weights)"
        )
    with _open_zip(path) as z:
        try:
            config = json.loads(z.read("config.json"))
        except KeyError:
            raise ValueError(f"{path}: no config.json inside: not a .keras file") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: config.json is not JSON: {one_line(e)}") from None
    if config.get("class_name") != "Sequential":
        raise ValueError(
            f"{path}: the model is a {config.get('class_name')!r}; fastconv rebuilds Sequential models only "
            "(for another model, build the same layers in a fastconv Sequential and call load_weights)"
        )
    entries: Sequence[dict[str, Any]] = config.get("config", {}).get("layers", [])
    input_shape = None
    file_dtype = _policy_dtype(config.get("config", {}).get("dtype"))
    built: list[L.Layer] = []
    for entry in entries:
        cls, cfg = entry.get("class_name"), entry.get("config", {})
        name = cfg.get("name", cls)
        what = f"{path}: layer {name!r} ({cls})"
        if cls == "InputLayer":
            shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
            input_shape = tuple(int(v) for v in shape[1:])
            file_dtype = _policy_dtype(cfg.get("dtype")) or file_dtype
            continue
        make = _FROM_CONFIG.get(str(cls))
        if make is None:
            raise ValueError(f"{what}: fastconv has no such layer (it has {', '.join(_FROM_CONFIG)})")
        try:
            layer = make(cfg, what)
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"{what}: {one_line(e)}") from None
        layer.name = name
        built.append(layer)
        if input_shape is None and entry.get("build_config"):
            input_shape = tuple(int(v) for v in entry["build_config"]["input_shape"][1:])
    if input_shape is None and config.get("build_config"):
        input_shape = tuple(int(v) for v in config["build_config"]["input_shape"][1:])
    model = Sequential(
        built,
        name=config.get("config", {}).get("name", "sequential"),
        backend=backend,
        dtype=dtype if dtype is not None else (file_dtype or "float32"),
        seed=seed,
    )
    if input_shape is None:
        raise ValueError(f"{path}: the config gives no input shape (no InputLayer, no build_config)")
    model.build(input_shape)
    load_keras_weights(model, path)
    return model
