"""Train a small model with fastconv.train.loop under a communicator and write what each rank ends with.

Run by tests/test_distributed.py as ``mpiexec -n R python train_replicas.py --out DIR ...`` (the MPI
communicator) and imported by it for the one-process reference (``main([... "--comm", "single"])``).
Each rank writes ``DIR/<tag>-rank<r>.npz`` (parameters, BatchNorm running statistics) and
``DIR/<tag>-rank<r>.json`` (the epoch results and the communicator's statistics).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np


def data(n: int, channels_last: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic 3-class 8x8 images whose class shifts their mean (learnable in a few steps)."""
    rng = np.random.default_rng(1234)
    t = rng.integers(0, 3, n + 13)
    x = rng.standard_normal((n + 13, 1, 8, 8)) + t[:, None, None, None] * 0.7
    if channels_last:
        x = x.transpose(0, 2, 3, 1).copy()
    return x[:n], t[:n], x[n:], t[n:]


class BNNet:
    """Affine - BatchNormalization - Relu - Affine - softmax: the fastconv layers, with BatchNorm running
    statistics (evaluation uses them)."""

    def __init__(self, seed: int) -> None:
        from fastconv.layers import Affine, BatchNormalization, Relu, SoftmaxWithLoss

        rng = np.random.default_rng(seed)
        self.params = {
            "W1": rng.standard_normal((64, 16)) * 0.2,
            "b1": np.zeros(16),
            "gamma": np.ones(16),
            "beta": np.zeros(16),
            "W2": rng.standard_normal((16, 3)) * 0.3,
            "b2": np.zeros(3),
        }
        p = self.params
        self.layers = OrderedDict(
            Affine1=Affine(p["W1"], p["b1"]),
            BatchNorm1=BatchNormalization(p["gamma"], p["beta"]),
            Relu1=Relu(),
            Affine2=Affine(p["W2"], p["b2"]),
        )
        self.last_layer = SoftmaxWithLoss()

    def _scores(self, x: Any, train: bool) -> Any:
        for layer in self.layers.values():
            x = layer.forward(x, train) if hasattr(layer, "running_mean") else layer.forward(x)
        return x

    def loss_and_gradient(self, x: Any, t: Any) -> tuple[float, dict[str, Any], Any]:
        loss = self.last_layer.forward(self._scores(x, True), t)
        dout = self.last_layer.backward(1)
        for layer in reversed(self.layers.values()):
            dout = layer.backward(dout)
        a1, bn, a2 = self.layers["Affine1"], self.layers["BatchNorm1"], self.layers["Affine2"]
        grads = {"W1": a1.dW, "b1": a1.db, "gamma": bn.dgamma, "beta": bn.dbeta, "W2": a2.dW, "b2": a2.db}
        return float(loss), grads, self.last_layer.y

    def evaluate_batch(self, x: Any, t: Any) -> tuple[float, Any]:
        loss = self.last_layer.forward(self._scores(x, False), t)
        return float(loss), self.last_layer.y


def build(kind: str, seed: int) -> Any:
    if kind == "simple":
        from fastconv.train.networks import SimpleConvNet

        conv = {"filter_num": 4, "filter_size": 3, "pad": 1, "stride": 1}
        return SimpleConvNet((1, 8, 8), conv, 16, 3, "he", backend="numpy", dtype=np.float64, rng=seed)
    if kind == "keras":
        from fastconv.train.keras import Conv2D, Dense, Flatten, MaxPooling2D, Sequential

        model = Sequential(
            [
                Conv2D(3, (3, 3), activation="relu", padding="same", input_shape=(8, 8, 1)),
                MaxPooling2D((2, 2)),
                Flatten(),
                Dense(3, activation="softmax"),
            ],
            backend="numpy",
            dtype=np.float64,
            seed=seed,
        )
        model.build()
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model
    if kind == "bn":
        return BNNet(seed)
    raise ValueError(kind)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--tag", default="run")
    p.add_argument("--comm", choices=("auto", "mpi", "single"), default="auto")
    p.add_argument("--model", choices=("simple", "keras", "bn"), default="simple")
    p.add_argument("--n", type=int, default=45)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--optimizer", default="adam")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--drop-last", action="store_true")
    p.add_argument("--sync-bn", action="store_true")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--expect-ranks", type=int, default=0)
    p.add_argument("--fail-rank", type=int, default=-1, help="this rank raises at its --fail-after-th step")
    p.add_argument("--fail-after", type=int, default=1)
    p.add_argument("--via-fit", action="store_true", help="keras model: Sequential.fit(communicator=...)")
    args = p.parse_args(argv)

    from fastconv.distributed import create_communicator
    from fastconv.train import loop
    from fastconv.train.optimizers import make_optimizer

    comm = create_communicator(args.comm)
    if args.expect_ranks and comm.size != args.expect_ranks:
        raise RuntimeError(f"expected {args.expect_ranks} ranks, got {comm.size}")
    # A different seed per rank: the first broadcast must give every rank rank 0's initial model.
    model = build(args.model, args.seed + 1000 * comm.rank)
    optimizer = make_optimizer(args.optimizer, args.lr)
    if comm.rank == args.fail_rank:
        real, calls = model.loss_and_gradient, [0]

        def failing(x: Any, t: Any) -> Any:
            calls[0] += 1
            if calls[0] >= args.fail_after:
                raise RuntimeError(f"rank {comm.rank} fails on purpose at step {calls[0]}")
            return real(x, t)

        model.loss_and_gradient = failing
    x, t, xv, tv = data(args.n, channels_last=args.model == "keras")
    results = []
    if args.via_fit:
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        h = model.fit(
            x, t, batch_size=args.batch, epochs=args.epochs, verbose=0, validation_data=(xv, tv),
            communicator=comm, drop_last=args.drop_last,
        )  # fmt: skip
        for e in range(args.epochs):
            results.append({k: h.history[k][e] for k in ("loss", "accuracy", "val_loss", "val_accuracy")})
    for r in (
        []
        if args.via_fit
        else loop.train(
            model,
            optimizer,
            x,
            t,
            epochs=args.epochs,
            batch_size=args.batch,
            rng=np.random.default_rng(args.seed),
            validation=(xv, tv),
            validation_batch_size=4,
            communicator=comm,
            seed=args.seed,
            drop_last=args.drop_last,
            sync_batchnorm=args.sync_bn,
        )
    ):
        results.append(
            {
                "epoch": r.epoch,
                "loss": r.loss,
                "accuracy": r.accuracy,
                "val_loss": r.val_loss,
                "val_accuracy": r.val_accuracy,
                "val_predictions": r.val_predictions.tolist(),
            }
        )
    from fastconv.distributed import batchnorm_layers

    arrays = {f"param/{k}": np.asarray(v) for k, v in model.params.items()}
    for i, bn in enumerate(batchnorm_layers(model)):
        arrays[f"bn{i}/mean"], arrays[f"bn{i}/var"] = bn.running_mean, bn.running_var
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / f"{args.tag}-rank{comm.rank}.npz", **arrays)
    summary = {"rank": comm.rank, "size": comm.size, "results": results, "iter": optimizer.iter, **comm.stats}
    (out / f"{args.tag}-rank{comm.rank}.json").write_text(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
