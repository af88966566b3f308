"""``fastconv train``: train a small CNN on digits or MNIST, watch it, look at the results.

Writes to ``--out``: ``history.csv``, ``curves.png``, ``predictions.png``, ``filters.png``, ``model.npz``
and ``checkpoint.npz`` (parameters, optimizer state, RNG state, epoch and history; rewritten
atomically after every epoch). ``--resume`` continues from the checkpoint and ends with the same
parameters, bit for bit, as an uninterrupted run with the same seed.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastconv.train._io import atomic_write, host, load_npz, save_npz_atomic
from fastconv.train.optimizers import OPTIMIZERS, make_optimizer

CHECKPOINT = "checkpoint.npz"
FORMAT = "fastconv-train-checkpoint"
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
}
HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds")
# Config entries that must match to resume (epochs may grow).
RESUME_KEYS = ("model", "dataset", "batch_size", "optimizer", "lr", "seed", "dtype", "n_train", "n_test")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastconv train",
        description="Train a small CNN (the book's SimpleConvNet or a Keras-style net) with fastconv kernels.",
    )
    p.add_argument(
        "--model",
        choices=("simple", "keras"),
        default="simple",
        help="simple: the book's SimpleConvNet; keras: Conv32-Pool-Conv64-Pool-Conv64-Dense64-Dense10",
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
        help="default: adam (lr 0.003) for simple, rmsprop (lr 0.001, rho 0.9 as Keras) for keras",
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
        help="BLAS threads while training (default 0: the BLAS library's own choice; on a quiet 2-core machine "
        "that was fastest. Try 1 when other jobs share the cores: threaded BLAS then slows down several times)",
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
    }
    if cfg["epochs"] < 1:
        raise SystemExit(f"fastconv train: --epochs must be at least 1, got {cfg['epochs']}")
    if cfg["batch_size"] < 1:
        raise SystemExit(f"fastconv train: --batch-size must be at least 1, got {cfg['batch_size']}")
    if not cfg["lr"] > 0:
        raise SystemExit(f"fastconv train: --lr must be positive, got {cfg['lr']}")
    return cfg


def build_model(
    kind: str, input_shape: tuple[int, int, int], rng: np.random.Generator, dtype: Any, backend: str | None
) -> Any:
    """The network for ``kind`` ('simple' or 'keras') and an (C, H, W) input.

    simple: the book's SimpleConvNet; on images smaller than 16x16 (digits) a 3x3 conv with pad 1 and
    He-initialised weights, else the book's 5x5 conv, 30 filters, hidden 100, std 0.01.
    keras: Conv32(3x3) - Pool2 - Conv64(3x3) - Pool2 - Conv64(3x3) - Flatten - Dense64 - Dense10, with
    'same' padding on images smaller than 16x16 (8x8 digits would shrink to nothing).
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
    raise ValueError(f"model must be 'simple' or 'keras', got {kind!r}")


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
        "version": 1,
        "epoch": epoch,
        "config": config,
        "history": history,
        "optimizer": {"name": state["name"], "iter": state["iter"], "hyper": state["hyper"]},
        "rng": rng.bit_generator.state,
    }
    arrays["meta"] = np.array(json.dumps(meta))
    save_npz_atomic(path, arrays)


def load_checkpoint(
    path: Path,
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    """(meta, params, optimizer slots) from a checkpoint written by :func:`save_checkpoint`."""
    z = load_npz(path, "checkpoint")
    if "meta" not in z:
        raise ValueError(f"{path} is not a fastconv train checkpoint (no 'meta' entry)")
    meta = json.loads(str(z["meta"]))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a fastconv train checkpoint (format {meta.get('format')!r})")
    params = {k[len("param/") :]: v for k, v in z.items() if k.startswith("param/")}
    slots: dict[str, dict[str, np.ndarray]] = {}
    for k, v in z.items():
        if k.startswith("opt/"):
            _, slot, name = k.split("/", 2)
            slots.setdefault(slot, {})[name] = v
    return meta, params, slots


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{row[k]:.6f}" if k != "epoch" else row[k]) for k in HISTORY_FIELDS})
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


# ---------------------------------------------------------------------------------------------------
def _evaluate(
    model: Any, x: np.ndarray, t: np.ndarray, to_dev: Any, batch: int = 500
) -> tuple[float, float, Any]:
    """(mean loss, accuracy, predicted labels) over (x, t), without dropout."""
    total, correct, preds = 0.0, 0, []
    for i in range(0, len(x), batch):
        xb, tb = to_dev(x[i : i + batch]), t[i : i + batch]
        loss, scores = model.evaluate_batch(xb, to_dev(tb))
        p = host(scores).argmax(axis=1)
        preds.append(p)
        total += loss * len(tb)
        correct += int((p == tb).sum())
    return total / len(x), correct / len(x), np.concatenate(preds)


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(
        total=total,
        desc=desc,
        unit="batch",
        leave=False,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.2,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train as the parsed ``args`` say; returns a summary dict (final accuracy, times, paths)."""
    import fastconv
    from fastconv.train.data import load_digits_dataset, load_mnist_dataset

    t_start = time.perf_counter()
    if (
        not args.no_plots and importlib.util.find_spec("matplotlib") is None
    ):  # fail before training, not after
        raise ModuleNotFoundError(
            "the plots need matplotlib: pip install 'fastconv[examples]' (or pass --no-plots)"
        )
    if args.dataset == "digits":
        if args.data is not None:
            raise SystemExit("fastconv train: --data is for --dataset mnist")
        ds = load_digits_dataset()
    else:
        ds = load_mnist_dataset(args.data, download=True if args.download else None)
    print(ds.note, flush=True)
    cfg = _config(args, ds)
    dtype = np.dtype(cfg["dtype"])
    x_train, t_train = ds.x_train.astype(dtype, copy=False), ds.t_train
    x_test, t_test = ds.x_test.astype(dtype, copy=False), ds.t_test
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT

    with fastconv.use_backend(args.backend) if args.backend else _null():
        backend = fastconv.get_backend()
        rng = np.random.default_rng(cfg["seed"])
        model = build_model(cfg["model"], ds.input_shape, rng, dtype, backend)
        _prepare_model(model)
        optimizer = make_optimizer(cfg["optimizer"], cfg["lr"], **_hyper(cfg))
        history: list[dict[str, float]] = []
        start_epoch = 0
        if args.resume:
            if not ckpt_path.is_file():
                raise SystemExit(f"fastconv train: --resume: no checkpoint at {ckpt_path}")
            meta, params, slots = load_checkpoint(ckpt_path)
            old = meta["config"]
            diff = {k: (old.get(k), cfg[k]) for k in RESUME_KEYS if old.get(k) != cfg[k]}
            if diff:
                raise SystemExit(
                    "fastconv train: --resume: the checkpoint was written with other settings: "
                    + ", ".join(f"{k} {a!r} (now {b!r})" for k, (a, b) in diff.items())
                )
            from fastconv.train._io import check_arrays

            check_arrays(
                ckpt_path, params, {k: tuple(v.shape) for k, v in model.params.items()}, "checkpoint"
            )
            model.set_params(params)
            optimizer.load_state_dict({**meta["optimizer"], "slots": slots}, model.params)
            rng.bit_generator.state = meta["rng"]
            history = meta["history"]
            start_epoch = int(meta["epoch"])
            print(f"resuming from {ckpt_path} after epoch {start_epoch}", flush=True)
        elif ckpt_path.is_file():
            print(
                f"note: starting afresh; {ckpt_path} will be overwritten (--resume continues from it)",
                flush=True,
            )

        def to_dev(a: np.ndarray) -> Any:
            return fastconv.to_device(np.ascontiguousarray(a), backend)

        n = len(x_train)
        bs = cfg["batch_size"]
        steps = -(-n // bs)
        print(
            f"model {cfg['model']} ({sum(int(np.prod(p.shape)) for p in model.params.values()):,} parameters), "
            f"optimizer {optimizer!r}, batch {bs}, backend {backend}, {cfg['dtype']}",
            flush=True,
        )
        header = f"{'epoch':>5}  {'train loss':>10}  {'train acc':>9}  {'test loss':>9}  {'test acc':>8}  {'seconds':>7}"
        print(header)
        for row in history:
            print(_row(row))
        for epoch in range(start_epoch, cfg["epochs"]):
            t0 = time.perf_counter()
            order = rng.permutation(n)
            bar = _progress(steps, f"epoch {epoch + 1}/{cfg['epochs']}", not args.no_progress)
            total, correct, seen = 0.0, 0, 0
            for s in range(steps):
                idx = order[s * bs : (s + 1) * bs]
                tb = t_train[idx]
                loss, grads, probs = model.loss_and_gradient(to_dev(x_train[idx]), to_dev(tb))
                optimizer.update(model.params, grads)
                seen += len(idx)
                total += loss * len(idx)
                correct += int((host(probs).argmax(axis=1) == tb).sum())
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{total / seen:.4f}", acc=f"{correct / seen:.4f}", refresh=False)
            if bar is not None:
                bar.close()
            test_loss, test_acc, preds = _evaluate(model, x_test, t_test, to_dev)
            row = {
                "epoch": epoch + 1,
                "train_loss": total / n,
                "train_acc": correct / n,
                "test_loss": test_loss,
                "test_acc": test_acc,
                "seconds": time.perf_counter() - t0,
            }
            history.append(row)
            print(_row(row), flush=True)
            save_checkpoint(ckpt_path, model, optimizer, rng, epoch + 1, history, cfg)
            _write_history(out / "history.csv", history)

        _write_history(out / "history.csv", history)
        model.save_params(out / "model.npz")
        if start_epoch >= cfg["epochs"]:  # resumed a finished run: nothing trained, evaluate it again
            _, test_acc, preds = _evaluate(model, x_test, t_test, to_dev)
    written = ["history.csv", "model.npz", CHECKPOINT]
    if not args.no_plots:
        from fastconv.train import plots

        name = "SimpleConvNet" if cfg["model"] == "simple" else "Keras-style CNN"
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
    print(
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
    }


def _row(row: dict[str, float]) -> str:
    return (
        f"{int(row['epoch']):>5}  {row['train_loss']:>10.4f}  {row['train_acc']:>9.4f}  "
        f"{row['test_loss']:>9.4f}  {row['test_acc']:>8.4f}  {row['seconds']:>7.2f}"
    )


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _backend_error() -> type[Exception]:
    from fastconv import BackendUnavailableError

    return BackendUnavailableError


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fastconv train``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.threads < 0:
            raise ValueError(f"--threads must be 0 (the BLAS default) or more, got {args.threads}")
        limits = None
        if args.threads > 0:
            try:
                from threadpoolctl import threadpool_limits
            except ImportError:  # a dependency of fastconv; without it the BLAS default stays
                pass
            else:
                limits = threadpool_limits(limits=args.threads, user_api="blas")
        try:
            run(args)
        finally:
            if limits is not None:
                limits.restore_original_limits()
    except (FileNotFoundError, ValueError, OSError, ModuleNotFoundError, _backend_error()) as exc:
        print(f"fastconv train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nfastconv train: interrupted; resume with --resume --out {args.out}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
