"""One epoch of the Keras MNIST network: ``fastconv train --model keras`` vs Keras 3 on PyTorch.

Both sides train the same network (Conv32 3x3 relu - MaxPool 2 - Conv64 3x3 relu - MaxPool 2 - Conv64
3x3 relu - Flatten - Dense64 relu - Dense10 softmax, 'valid' padding, 93,322 parameters) with RMSprop
(lr 0.001, rho 0.9, Keras' defaults, as ``fastconv train`` uses for this model), sparse categorical
cross-entropy, batch 64, shuffled each epoch, on the same data: MNIST from ``--data`` as ``fastconv
train --dataset mnist`` loads it (with only the 10,000-image t10k set there: its first 8,000 images to
train, the last 2,000 to validate), pixels / 255. Each epoch ends with the validation pass (batches
of 500, as fastconv's trainer; Keras: ``validation_batch_size=500``).

fastconv runs the trainer's own pieces (``trainer.build_model``, its optimizer settings and
``loop.train``, the loop of ``fastconv train``), without the checkpoint, CSV and plot writing that the
CLI does between epochs. Keras runs ``model.fit(..., epochs=1, validation_data=...)`` with
``KERAS_BACKEND=torch`` (set here before Keras is imported), images channels-last as Keras expects;
each timed Keras epoch is one ``fit`` call, so it includes fit's per-call setup (data adapter,
callbacks). Both in one process with the same threads (``fastconv.configure(threads=N)``,
``torch.set_num_threads(N)``): one warm-up epoch each (JIT compilation; not timed), then the timed
epochs interleaved fastconv, Keras, fastconv, Keras ...; the table gives the median seconds per
epoch and the ratio.

Usage::

    python benchmarks/keras_epoch.py --data ../shared/data/mnist [--threads 2] [--epochs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402

BATCH, EVAL_BATCH, LR, RHO = 64, 500, 0.001, 0.9


def fastconv_epochs(ds: Any, seed: int, total: int) -> Any:
    """A generator that runs one epoch of ``fastconv train --model keras`` per ``next()``, giving seconds."""
    import fastconv
    from fastconv.train import loop, trainer

    args = argparse.Namespace(
        model="keras", dataset="mnist", epochs=total, batch_size=None, optimizer=None, lr=None, seed=seed,
        dtype="float32",
    )  # fmt: skip
    cfg = trainer._config(args, ds)
    assert (cfg["batch_size"], cfg["optimizer"], cfg["lr"]) == (BATCH, "rmsprop", LR), cfg
    rng = np.random.default_rng(seed)
    backend = fastconv.get_backend()
    model = trainer.build_model("keras", ds.input_shape, rng, np.float32, backend)
    trainer._prepare_model(model)
    optimizer = trainer.make_optimizer(cfg["optimizer"], cfg["lr"], **trainer._hyper(cfg))

    def to_dev(a: np.ndarray) -> Any:
        return fastconv.to_device(np.ascontiguousarray(a), backend)

    for result in loop.train(
        model,
        optimizer,
        ds.x_train.astype(np.float32),
        ds.t_train,
        epochs=total,
        batch_size=BATCH,
        rng=rng,
        place=to_dev,
        validation=(ds.x_test.astype(np.float32), ds.t_test),
        validation_batch_size=trainer.EVAL_BATCH,
    ):
        yield result.seconds, result.val_accuracy


def keras_epochs(ds: Any, seed: int) -> Any:
    """A generator that runs one Keras (PyTorch backend) epoch per ``next()``, giving seconds."""
    import keras

    keras.utils.set_random_seed(seed)
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(32, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(64, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(64, (3, 3), activation="relu"),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dense(10, activation="softmax"),
        ]
    )
    assert model.count_params() == 93322, model.count_params()
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate=LR, rho=RHO),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    x = np.ascontiguousarray(ds.x_train.transpose(0, 2, 3, 1), dtype=np.float32)  # NHWC, as Keras wants
    xv = np.ascontiguousarray(ds.x_test.transpose(0, 2, 3, 1), dtype=np.float32)
    while True:
        t0 = time.perf_counter()
        hist = model.fit(
            x,
            ds.t_train,
            batch_size=BATCH,
            epochs=1,
            shuffle=True,
            validation_data=(xv, ds.t_test),
            validation_batch_size=EVAL_BATCH,
            verbose=0,
        )
        yield time.perf_counter() - t0, hist.history["val_accuracy"][-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/mnist", help="MNIST directory (IDX files)")
    parser.add_argument("--threads", type=int, default=2, help="threads on both sides (default 2)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs of each side (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs of each side first (default 1)")
    parser.add_argument(
        "--limit", type=int, default=None, help="use only the first N training images (tests)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    import fastconv
    from fastconv.train.data import load_mnist_dataset

    fastconv.configure(threads=args.threads)
    torch.set_num_threads(args.threads)
    ds = load_mnist_dataset(args.data, download=False)
    if args.limit:
        ds.x_train, ds.t_train = ds.x_train[: args.limit], ds.t_train[: args.limit]
        ds.x_test, ds.t_test = ds.x_test[: max(1, args.limit // 4)], ds.t_test[: max(1, args.limit // 4)]
    print(ds.note, file=sys.stderr)
    import keras

    total = args.warmup + args.epochs
    sides = {
        f"fastconv {fastconv.get_backend()}": fastconv_epochs(ds, args.seed, total),
        f"Keras {keras.__version__} (torch {torch.__version__})": keras_epochs(ds, args.seed),
    }
    times: dict[str, list[float]] = {name: [] for name in sides}
    acc: dict[str, float] = {}
    for epoch in range(total):
        for name, gen in sides.items():
            seconds, val_acc = next(gen)
            acc[name] = val_acc
            timed = epoch >= args.warmup
            if timed:
                times[name].append(seconds)
            print(f"epoch {epoch + 1} {name}: {seconds:.2f} s{'' if timed else ' (warm-up)'}, "
                  f"val acc {val_acc:.4f}", file=sys.stderr, flush=True)  # fmt: skip
    med = {name: statistics.median(v) for name, v in times.items()}
    best = min(med.values())
    print(
        f"One epoch of the Keras MNIST network ({len(ds.x_train):,} training + {len(ds.x_test):,} validation "
        f"images, batch {BATCH}, RMSprop lr {LR}), {args.threads} threads, median of {args.epochs} epochs "
        f"after {args.warmup} warm-up epoch(s), interleaved; {fastconv.__name__} {_version('fastconv')}, "
        f"numba {_version('numba')}, torch {torch.__version__}, keras {keras.__version__}.\n"
    )
    best_min = min(min(v) for v in times.values())
    print(
        "| side | s per epoch (median) | ratio (median) | fastest epoch (s) | ratio (fastest) | epochs (s) "
        "| val accuracy after the last |"
    )
    print("|---|---:|---:|---:|---:|---|---:|")
    for name, m in med.items():
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        low = min(times[name])
        print(
            f"| {name} | {m:.2f} | {m / best:.2f}x | {low:.2f} | {low / best_min:.2f}x | {runs} "
            f"| {acc[name]:.4f} |"
        )
    cmd = " ".join(["python", "benchmarks/keras_epoch.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"\n`{cmd}`")
    return 0


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    raise SystemExit(main())
