"""``fastconv train``: train a small CNN on digits or MNIST, watch it, look at the results.

Writes to ``--out``: ``history.csv``, ``curves.png``, ``predictions.png``, ``filters.png``, ``model.npz``
and ``checkpoint.npz`` (parameters, optimizer state, RNG state, epoch and history; rewritten
atomically after every epoch). ``--resume`` continues from the checkpoint and ends with the same
parameters, bit for bit, as an uninterrupted run with the same seed. Files follow the umask; a run
first removes the temporaries that killed runs left in ``--out``. The epochs run in
:func:`fastconv.train.loop.train`, as ``Sequential.fit`` does.

Errors (bad options, missing or damaged files) are one line, ``fastconv train: error: ...``, exit status 2.

Data-parallel over MPI (``pip install 'fastconv[mpi]'``): ``mpiexec -n 4 fastconv train ...`` trains
one replica per rank on its slice of each global batch of ``--batch-size`` samples
(:mod:`fastconv.distributed`); the model equals a one-process run's with the same seed and batch size
up to rounding. Rank 0 alone prints, writes the files and reads ``--resume``'s checkpoint (its state is
broadcast); an error on any rank ends every rank (``MPI_Abort``). ``--scale-lr`` multiplies the
learning rate by the number of ranks; ``--sync-bn-stats`` averages BatchNorm running statistics over
the ranks after every epoch (local by default). The distributed options refuse a process that no MPI
launcher started, saying how to launch.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import io
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastconv.train import loop
from fastconv.train._io import (
    atomic_write,
    check_arrays,
    load_npz,
    one_line,
    remove_stale_temporaries,
    save_npz_atomic,
)
from fastconv.train.optimizers import OPTIMIZERS, make_optimizer

CHECKPOINT = "checkpoint.npz"
# Every file a run writes to --out; their temporaries left by killed runs are removed at the start.
OUTPUTS = (CHECKPOINT, "model.npz", "history.csv", "curves.png", "predictions.png", "filters.png")
EVAL_BATCH = 500
FORMAT = "fastconv-train-checkpoint"
# 2: the Keras-style model flattens channels_last images in Keras's (H, W, C) order (fastconv 0.2)
VERSION = 2
# Learning rate of an optimizer chosen with --optimizer (the book's, except RMSprop/Adam at Keras' 1e-3);
# the default optimizer of each model and data set has its own tuned rate in DEFAULTS.
DEFAULT_LR = {
    "sgd": 0.1,
    "momentum": 0.01,
    "nesterov": 0.01,
    "adagrad": 0.01,
    "rmsprop": 0.001,
    "adam": 0.001,
}
DEFAULTS = {  # (model, dataset) -> epochs, batch size, optimizer, its learning rate
    ("simple", "digits"): (15, 32, "adam", 0.003),
    ("keras", "digits"): (15, 32, "rmsprop", 0.001),
    ("simple", "mnist"): (5, 100, "adam", 0.003),
    ("keras", "mnist"): (5, 64, "rmsprop", 0.001),
    ("separable", "digits"): (15, 32, "adam", 0.003),
    ("separable", "mnist"): (5, 64, "adam", 0.003),
}
MODEL_NAMES = {"simple": "SimpleConvNet", "keras": "Keras-style CNN", "separable": "SeparableConvNet"}
HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds")
# Config entries that must match to resume (epochs may grow), and the value of those that checkpoints of
# earlier versions lack.
RESUME_KEYS = (
    "model",
    "dataset",
    "batch_size",
    "optimizer",
    "lr",
    "seed",
    "dtype",
    "n_train",
    "n_test",
    "drop_last",
    "scale_lr",
)
RESUME_DEFAULTS = {"drop_last": False, "scale_lr": False}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastconv train",
        description="Train a small CNN (the book's SimpleConvNet, a Keras-style net or a depthwise-separable "
        "net) with fastconv kernels.",
    )
    p.add_argument(
        "--model",
        choices=tuple(MODEL_NAMES),
        default="simple",
        help="simple: the book's SimpleConvNet; keras: Conv32-Pool-Conv64-Pool-Conv64-Dense64-Dense10; "
        "separable: Conv16/2-Depthwise3x3-Pointwise32-Deconv16x2-Conv32-GlobalAvgPool-Dense10",
    )
    p.add_argument(
        "--dataset",
        choices=("digits", "mnist"),
        default="digits",
        help="digits: scikit-learn's 1,797 8x8 digits (offline default); mnist: IDX files from --data",
    )
    p.add_argument(
        "--data",
        metavar="DIR",
        default=None,
        help="MNIST directory (default: the cache, downloading what is missing)",
    )
    p.add_argument("--download", action="store_true", help="download missing MNIST files into --data")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: 15 on digits, 5 on mnist)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="mini-batch size (default: 32 on digits; 100 simple / 64 keras on mnist)",
    )
    p.add_argument(
        "--optimizer",
        choices=tuple(OPTIMIZERS),
        default=None,
        help="default: adam (lr 0.003) for simple and separable, rmsprop (lr 0.001, rho 0.9 as Keras) "
        "for keras",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate (default per optimizer: "
        + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items())
        + ")",
    )
    p.add_argument(
        "--backend",
        default=None,
        help="fastconv backend (numpy, numba, cupy; default $FASTCONV_BACKEND, else auto)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the initial weights and the shuffling (default 0)"
    )
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="default float32")
    p.add_argument(
        "--out", metavar="DIR", default="fastconv-train", help="output directory (default ./fastconv-train)"
    )
    p.add_argument("--resume", action="store_true", help=f"continue from DIR/{CHECKPOINT}")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        metavar="N",
        help="CPU threads of numba and BLAS while training, as fastconv.configure(threads=N) (default 0: "
        "leave them as they are). Fewer threads than cores helps when other jobs share the machine: "
        "threaded BLAS waits for its slowest thread",
    )
    p.add_argument(
        "--drop-last",
        action="store_true",
        help="skip the last mini-batch of each epoch when it is short (default: train on it, its gradient "
        "the mean over its samples)",
    )
    dist = p.add_argument_group(
        "data-parallel training over MPI",
        "Launch with `mpiexec -n 4 fastconv train ...` (pip install 'fastconv[mpi]'): every rank trains "
        "on its slice of each global batch of --batch-size samples; rank 0 prints and writes the files.",
    )
    dist.add_argument(
        "--distributed",
        choices=("auto", "mpi"),
        default="auto",
        help="auto (default): data-parallel when mpiexec started more than one process; mpi: insist on "
        "it (an error when not launched by mpiexec)",
    )
    dist.add_argument(
        "--scale-lr",
        action="store_true",
        help="multiply the learning rate by the number of ranks (the linear scaling rule; off by default "
        "since the global batch stays --batch-size)",
    )
    dist.add_argument(
        "--sync-bn-stats",
        action="store_true",
        help="average BatchNorm running statistics over the ranks after every epoch (default: local)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--no-plots", action="store_true", help="skip the PNGs (history.csv and model.npz are still written)"
    )
    return p


def _config(args: argparse.Namespace, ds: Any) -> dict[str, Any]:
    epochs, batch, default_opt, default_lr = DEFAULTS[(args.model, args.dataset)]
    opt = args.optimizer or default_opt
    cfg = {
        "model": args.model,
        "dataset": args.dataset,
        "epochs": args.epochs if args.epochs is not None else epochs,
        "batch_size": args.batch_size if args.batch_size is not None else batch,
        "optimizer": opt,
        "lr": args.lr if args.lr is not None else (default_lr if opt == default_opt else DEFAULT_LR[opt]),
        "seed": args.seed,
        "dtype": args.dtype,
        "n_train": int(len(ds.x_train)),
        "n_test": int(len(ds.x_test)),
        "drop_last": bool(getattr(args, "drop_last", False)),
        "scale_lr": bool(getattr(args, "scale_lr", False)),
    }
    if cfg["epochs"] < 1:
        raise ValueError(f"--epochs must be at least 1, got {cfg['epochs']}")
    if cfg["batch_size"] < 1:
        raise ValueError(f"--batch-size must be at least 1, got {cfg['batch_size']}")
    if not cfg["lr"] > 0:
        raise ValueError(f"--lr must be positive, got {cfg['lr']}")
    if cfg["drop_last"] and cfg["batch_size"] > cfg["n_train"]:
        raise ValueError(
            f"--drop-last with --batch-size {cfg['batch_size']} and {cfg['n_train']} training images leaves "
            "nothing to train on"
        )
    return cfg


def build_model(
    kind: str, input_shape: tuple[int, int, int], rng: np.random.Generator, dtype: Any, backend: str | None
) -> Any:
    """The network for ``kind`` ('simple', 'keras' or 'separable') and an (C, H, W) input.

    simple: the book's SimpleConvNet; on images smaller than 16x16 (digits) a 3x3 conv with pad 1 and
    He-initialised weights, else the book's 5x5 conv, 30 filters, hidden 100, std 0.01.
    keras: Conv32(3x3) - Pool2 - Conv64(3x3) - Pool2 - Conv64(3x3) - Flatten - Dense64 - Dense10, with
    'same' padding on images smaller than 16x16 (8x8 digits would shrink to nothing).
    separable: :class:`~fastconv.train.networks.SeparableConvNet` (any image size: its transposed conv
    undoes its strided conv, and global average pooling takes what is left).
    """
    c, h, w = input_shape
    small = min(h, w) < 16
    if kind == "simple":
        from fastconv.train.networks import SimpleConvNet

        if small:
            return SimpleConvNet(
                input_shape,
                {"filter_num": 30, "filter_size": 3, "pad": 1, "stride": 1},
                100,
                10,
                "he",
                backend=backend,
                dtype=dtype,
                rng=rng,
            )
        return SimpleConvNet(input_shape, backend=backend, dtype=dtype, rng=rng)
    if kind == "keras":
        from fastconv.train.keras import mnist_cnn

        pad = "same" if small else "valid"
        return mnist_cnn((h, w, c), pad, backend=backend, dtype=dtype, seed=rng)
    if kind == "separable":
        from fastconv.train.networks import SeparableConvNet

        return SeparableConvNet(input_shape, backend=backend, dtype=dtype, rng=rng)
    raise ValueError(f"model must be one of {', '.join(map(repr, MODEL_NAMES))}, got {kind!r}")


def _hyper(cfg: dict[str, Any]) -> dict[str, float]:
    """Hyper-parameters besides lr: Keras' defaults for the Keras-style model (RMSprop rho 0.9), else the book's."""
    if cfg["model"] != "keras":
        return {}
    from fastconv.train.keras import KERAS_OPTIMIZER_DEFAULTS

    return {k: v for k, v in KERAS_OPTIMIZER_DEFAULTS[cfg["optimizer"]].items() if k != "lr"}


def _prepare_model(model: Any) -> None:
    if hasattr(model, "compile"):  # Keras-style: the trainer drives the optimizer, the model the loss
        model.build()
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])


# ---------------------------------------------------------------------------------------------------
def save_checkpoint(
    path: Path,
    model: Any,
    optimizer: Any,
    rng: np.random.Generator,
    epoch: int,
    history: list[dict[str, float]],
    config: dict[str, Any],
) -> None:
    """Parameters, optimizer state, RNG state, completed epochs, history and config in one .npz (atomic)."""
    state = optimizer.state_dict()
    arrays: dict[str, Any] = {f"param/{k}": v for k, v in model.params.items()}
    for slot, bufs in state["slots"].items():
        for k, v in bufs.items():
            arrays[f"opt/{slot}/{k}"] = v
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "epoch": epoch,
        "config": config,
        "history": history,
        "optimizer": {"name": state["name"], "iter": state["iter"], "hyper": state["hyper"]},
        "rng": rng.bit_generator.state,
    }
    arrays["meta"] = np.array(json.dumps(meta))
    save_npz_atomic(path, arrays)


# The meta entry's keys and their JSON types.
_META_TYPES = {
    "format": str,
    "version": int,
    "epoch": int,
    "config": dict,
    "history": list,
    "optimizer": dict,
    "rng": dict,
}


def load_checkpoint(
    path: str | Path,
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    """(meta, params, optimizer slots) from a checkpoint written by :func:`save_checkpoint`.

    Raises FileNotFoundError, or a one-line ValueError naming the file when it is damaged or not a checkpoint.
    """
    path = Path(path)
    z = load_npz(path, "checkpoint")
    if "meta" not in z or z["meta"].shape != () or z["meta"].dtype.kind != "U":
        raise ValueError(f"{path} is not a fastconv train checkpoint (no 'meta' text entry)")
    try:
        meta = json.loads(str(z["meta"]))
    except ValueError as exc:  # json.JSONDecodeError
        raise ValueError(f"{path}: corrupt checkpoint (its meta entry: {one_line(exc)})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{path} is not a fastconv train checkpoint (format {got!r})")
    bad = [k for k, kind in _META_TYPES.items() if not isinstance(meta.get(k), kind)]
    if bad:
        raise ValueError(
            f"{path}: corrupt checkpoint (meta entries missing or of the wrong type: {', '.join(bad)})"
        )
    params = {k[len("param/") :]: v for k, v in z.items() if k.startswith("param/")}
    slots: dict[str, dict[str, np.ndarray]] = {}
    for k, v in z.items():
        if k.startswith("opt/"):
            parts = k.split("/", 2)
            if len(parts) != 3:
                raise ValueError(f"{path}: corrupt checkpoint (entry {k!r} names no optimizer slot)")
            slots.setdefault(parts[1], {})[parts[2]] = v
    return meta, params, slots


def _restore(
    path: Path,
    meta: dict[str, Any],
    params: dict[str, np.ndarray],
    slots: dict[str, dict[str, np.ndarray]],
    model: Any,
    optimizer: Any,
    rng: np.random.Generator,
) -> tuple[list[dict[str, float]], int]:
    """Put a loaded checkpoint into the model, optimizer and RNG: (history, completed epochs)."""
    check_arrays(path, params, {k: tuple(v.shape) for k, v in model.params.items()}, "checkpoint")
    try:
        history = [{k: row[k] for k in HISTORY_FIELDS} for row in meta["history"]]
        epoch = int(meta["epoch"])
        if not 0 <= epoch == len(history):
            raise ValueError(f"epoch {epoch} with {len(history)} history rows")
        optimizer.load_state_dict({**meta["optimizer"], "slots": slots}, model.params)
        rng.bit_generator.state = meta["rng"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: corrupt checkpoint ({type(exc).__name__}: {one_line(exc)})") from exc
    model.set_params(params)
    return history, epoch


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{row[k]:.6f}" if k != "epoch" else row[k]) for k in HISTORY_FIELDS})
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


# ---------------------------------------------------------------------------------------------------
def _compile_ahead(backend: str | None, dtype: str, model: str) -> Callable[[], None]:
    """On the first run on a machine (numba backend, empty kernel cache), compile the kernels a
    training run needs in background processes while the data load; returns what waits for them."""
    import fastconv

    try:
        with fastconv.use_backend(backend) if backend else contextlib.nullcontext():
            name = fastconv.get_backend()
        if name != "numba":
            return lambda: None
        nb = fastconv.get_backend_object("numba")
    except (ValueError, RuntimeError):  # reported where the backend is used
        return lambda: None
    if not nb.cache_is_cold():
        return lambda: None
    print(
        f"fastconv: first run here: compiling the numba kernels for {dtype} in the background while the "
        f"data load (a few seconds, once; cached in {nb.runtime.CACHE_DIR})",
        flush=True,
    )
    units = {
        # one conv layer of one input channel (direct forward; the first layer computes no dx) and a pool
        "simple": ("gemm", "direct", "pool"),
        # channels-last throughout: NHWC GEMMs and pools
        "keras": ("nhwc", "pool_nhwc"),
        # depthwise and 1x1 convs, a transposed conv (its dx is a GEMM of many channels), a 3x3 conv
        # that may take Winograd, global average pooling
        "separable": ("gemm", "direct", "depthwise", "nhwc", "winograd", "avgpool"),
    }[model]
    return nb.compile_ahead((dtype,), units=units)


def _quiet(*args: Any, **kwargs: Any) -> None:
    """``print`` on the ranks other than 0."""


def run(args: argparse.Namespace, communicator: Any = None) -> dict[str, Any]:
    """Train as the parsed ``args`` say; returns a summary dict (final accuracy, times, paths).

    ``communicator`` (:mod:`fastconv.distributed`; one process when None): every rank runs this; rank 0
    alone prints, writes to ``--out`` and reads the checkpoint."""
    import fastconv
    from fastconv.distributed import SingleProcessCommunicator
    from fastconv.train.data import load_digits_dataset, load_mnist_dataset

    comm = communicator if communicator is not None else SingleProcessCommunicator()
    root = comm.is_root
    say = print if root else _quiet
    t_start = time.perf_counter()
    # Fail before training, not after.
    if not args.no_plots and importlib.util.find_spec("matplotlib") is None:
        raise ModuleNotFoundError(
            "the plots need matplotlib: pip install 'fastconv[examples]' (or --no-plots)"
        )
    if args.dataset == "digits" and args.data is not None:
        raise ValueError("--data is for --dataset mnist")
    # Rank 0 compiles (or downloads) while the others wait without spinning, then they use its cache.
    kernels_ready = _compile_ahead(args.backend, args.dtype, args.model) if root else (lambda: None)
    if args.dataset == "digits":
        ds = load_digits_dataset()
    else:
        if not root:
            comm.idle_barrier()
        ds = load_mnist_dataset(args.data, download=True if args.download else None)
        if root:
            comm.idle_barrier()
    say(ds.note, flush=True)
    cfg = _config(args, ds)
    dtype = np.dtype(cfg["dtype"])
    x_train, t_train = ds.x_train.astype(dtype, copy=False), ds.t_train
    x_test, t_test = ds.x_test.astype(dtype, copy=False), ds.t_test
    out = Path(args.out)
    if root:
        out.mkdir(parents=True, exist_ok=True)
        stale = remove_stale_temporaries(out, OUTPUTS)
        if stale:
            print(f"removed {len(stale)} temporary file(s) that a killed run left in {out}", flush=True)
    ckpt_path = out / CHECKPOINT
    lr_factor = comm.size if cfg["scale_lr"] else 1

    with fastconv.use_backend(args.backend) if args.backend else contextlib.nullcontext():
        backend = fastconv.get_backend()
        rng = np.random.default_rng(cfg["seed"])
        model = build_model(cfg["model"], ds.input_shape, rng, dtype, backend)
        _prepare_model(model)
        optimizer = make_optimizer(cfg["optimizer"], cfg["lr"], **_hyper(cfg))
        history: list[dict[str, float]] = []
        start_epoch = 0
        if args.resume and root:
            if not ckpt_path.is_file():
                raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
            meta, params, slots = load_checkpoint(ckpt_path)
            old = meta["config"]
            if meta["version"] < 2 and old.get("model") == "keras":
                raise ValueError(
                    f"--resume: {ckpt_path} was written by fastconv before 0.2, whose Keras-style model "
                    "flattened in another order; start afresh (without --resume)"
                )
            old = {**RESUME_DEFAULTS, **old}
            diff = {k: (old.get(k), cfg[k]) for k in RESUME_KEYS if old.get(k) != cfg[k]}
            if diff:
                raise ValueError(
                    "--resume: the checkpoint was written with other settings: "
                    + ", ".join(f"{k} {a!r} (now {b!r})" for k, (a, b) in diff.items())
                )
            history, start_epoch = _restore(ckpt_path, meta, params, slots, model, optimizer, rng)
            print(f"resuming from {ckpt_path} after epoch {start_epoch}", flush=True)
        elif root and ckpt_path.is_file():
            print(
                f"note: starting afresh; {ckpt_path} will be overwritten (--resume continues from it)",
                flush=True,
            )
        if comm.size > 1:
            # The other ranks wait, without spinning, for the kernels rank 0 compiles, then load them from
            # its cache; then rank 0's model, optimizer state and history (restored, or as initialised)
            # go to every rank.
            kernels_ready()
            kernels_ready = lambda: None  # noqa: E731
            comm.idle_barrier()
            history, start_epoch = comm.bcast_object((history, start_epoch))
            comm.bcast_params(model.params)
            comm.bcast_optimizer(optimizer, model.params)
        # The checkpoint holds the rate in effect; the rate follows the ranks of this run.
        optimizer.lr = cfg["lr"] * lr_factor

        def to_dev(a: np.ndarray) -> Any:
            return fastconv.to_device(np.ascontiguousarray(a), backend)

        bs = cfg["batch_size"]
        ranks = ""
        if comm.size > 1:
            threads = fastconv.get_config()["threads"]
            each = f", {threads} thread(s) each" if threads else ""
            ranks = f", {comm.size} ranks (data-parallel over MPI, {bs} images per step in all{each})"
            if cfg["scale_lr"]:
                ranks += f", lr scaled by {comm.size} to {optimizer.lr:g}"
        say(
            f"model {cfg['model']} ({sum(int(np.prod(p.shape)) for p in model.params.values()):,} parameters), "
            f"optimizer {optimizer!r}, batch {bs}, backend {backend}, {cfg['dtype']}{ranks}",
            flush=True,
        )
        header = f"{'epoch':>5}  {'train loss':>10}  {'train acc':>9}  {'test loss':>9}  {'test acc':>8}  {'seconds':>7}"
        say(header)
        for row in history:
            say(_row(row))
        preds = None
        kernels_ready()
        for result in loop.train(
            model,
            optimizer,
            x_train,
            t_train,
            epochs=cfg["epochs"],
            batch_size=bs,
            rng=rng,
            place=to_dev,
            validation=(x_test, t_test),
            validation_batch_size=EVAL_BATCH,
            start_epoch=start_epoch,
            progress=not args.no_progress,
            communicator=comm,
            seed=cfg["seed"],
            drop_last=cfg["drop_last"],
            sync_batchnorm=bool(getattr(args, "sync_bn_stats", False)),
        ):
            row = {
                "epoch": result.epoch,
                "train_loss": result.loss,
                "train_acc": result.accuracy,
                "test_loss": result.val_loss,
                "test_acc": result.val_accuracy,
                "seconds": result.seconds,
            }
            history.append(row)
            preds = result.val_predictions
            say(_row(row), flush=True)
            if root:
                save_checkpoint(ckpt_path, model, optimizer, rng, result.epoch, history, cfg)
                _write_history(out / "history.csv", history)

        if root:
            _write_history(out / "history.csv", history)
            model.save_params(out / "model.npz")
        if preds is None:  # resumed a finished run: nothing trained, evaluate it again
            _, _, preds = loop.evaluate(model, x_test, t_test, EVAL_BATCH, place=to_dev, communicator=comm)
        test_acc = history[-1]["test_acc"]
    written = ["history.csv", "model.npz", CHECKPOINT]
    if not args.no_plots and root:
        from fastconv.train import plots

        name = MODEL_NAMES[cfg["model"]]
        plots.plot_curves(
            history,
            out / "curves.png",
            f"{name} on {cfg['dataset']} ({cfg['optimizer']}, lr {cfg['lr']:g}, batch {bs})",
        )
        plots.plot_predictions(
            ds.x_test, preds, t_test, out / "predictions.png", title=f"{name} on {cfg['dataset']}"
        )
        written[1:1] = ["curves.png", "predictions.png"]
        filters = model.first_layer_filters()
        if filters is not None:
            plots.plot_filters(
                filters, out / "filters.png", f"{name} first-layer filters after {cfg['epochs']} epochs"
            )
            written.insert(3, "filters.png")
    wall = time.perf_counter() - t_start
    train_seconds = [r["seconds"] for r in history]
    say(
        f"test accuracy {100 * test_acc:.2f}% on {len(x_test):,} test images; "
        f"{np.mean(train_seconds):.2f} s per epoch, {wall:.1f} s in all; wrote {out}/{{{', '.join(written)}}}",
        flush=True,
    )
    return {
        "test_acc": test_acc,
        "history": history,
        "wall_seconds": wall,
        "out": out,
        "config": cfg,
        "backend": backend,
        "ranks": comm.size,
    }


def _row(row: dict[str, float]) -> str:
    return (
        f"{int(row['epoch']):>5}  {row['train_loss']:>10.4f}  {row['train_acc']:>9.4f}  "
        f"{row['test_loss']:>9.4f}  {row['test_acc']:>8.4f}  {row['seconds']:>7.2f}"
    )


def _backend_error() -> type[Exception]:
    from fastconv import BackendUnavailableError

    return BackendUnavailableError


def _communicator(args: argparse.Namespace) -> Any:
    """The communicator of this run: over MPI when an MPI launcher started more than one process (or
    ``--distributed mpi`` asks for it), else one process. A distributed option in a process that no MPI
    launcher started is an error saying how to launch."""
    from fastconv import distributed

    wanted = [
        opt
        for opt, on in (
            ("--distributed mpi", args.distributed == "mpi"),
            ("--scale-lr", args.scale_lr),
            ("--sync-bn-stats", args.sync_bn_stats),
        )
        if on
    ]
    for opt in wanted:
        distributed.require_mpi_launch(opt)
    if not wanted and (distributed.launched_size() or 1) <= 1:
        return distributed.SingleProcessCommunicator()
    try:
        return distributed.create_communicator("mpi")
    except ImportError as exc:
        raise ModuleNotFoundError(
            f"launched by mpiexec with {distributed.launched_size() or 1} process(es), so training is "
            f"data-parallel, which needs mpi4py: pip install 'fastconv[mpi]' ({one_line(exc)})"
        ) from exc


def _rank_threads(comm: Any) -> int:
    """Threads per rank when the ranks of a node share its cores: the cores over the local ranks."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, comm.local_size))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fastconv train``; returns the exit status (0, 2 for an error, 130 when interrupted).

    Under MPI with more than one rank an error ends every rank (``MPI_Abort`` with status 2) instead of
    returning, since the other ranks would wait for this one forever."""
    args = build_parser().parse_args(argv)
    comm = None
    try:
        if args.threads < 0:
            raise ValueError(
                f"--threads must be 0 (leave the thread counts alone) or more, got {args.threads}"
            )
        comm = _communicator(args)
        threads_n = args.threads
        if threads_n == 0 and comm.local_size > 1:
            threads_n = _rank_threads(comm)  # ranks sharing a node share its cores
        if threads_n > 0:
            import fastconv

            threads: Any = fastconv.configure(threads=threads_n)  # the previous setting comes back on exit
        else:
            threads = contextlib.nullcontext()
        with threads:
            if comm.size > 1:
                run(args, comm)
            else:
                run(args)  # one process: run makes its own single-process communicator
    except (FileNotFoundError, ValueError, OSError, ModuleNotFoundError, _backend_error()) as exc:
        if comm is not None and comm.size > 1:
            print(
                f"fastconv train: error on rank {comm.rank} of {comm.size}: {one_line(exc)}", file=sys.stderr
            )
            comm.abort(2)
        print(f"fastconv train: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nfastconv train: interrupted; resume with --resume --out {args.out}", file=sys.stderr)
        if comm is not None and comm.size > 1:
            comm.abort(130)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
