"""The benchmark cases: one definition, used by ``fastconv bench``, asv and pytest-benchmark.

Convolutions (``S*``) and max pools (``P*``), NCHW::

    S1 x(100,1,28,28)  W(30,1,5,5)                  the book's SimpleConvNet layer (MNIST)
    S2 x(64,1,28,28)   W(32,1,3,3)                  Keras MNIST network, first conv
    S3 x(64,32,13,13)  W(64,32,3,3)                 Keras MNIST network, second conv
    S4 x(64,64,32,32)  W(64,64,3,3)   pad 1         CIFAR-sized layer
    S5 x(32,128,28,28) W(128,128,3,3) pad 1         wide layer
    S6 x(32,64,56,56)  W(128,64,3,3)  stride 2 pad 1  ResNet-style down-sampling layer
    P1 2x2/2 on (64,32,26,26)                       Keras MNIST network, first pool
    P2 2x2/2 on (64,64,32,32)
    P3 3x3/2 pad 1 on (32,64,56,56)                 ResNet stem pool

and one training step (forward, backward, optimizer update) of each network (``T*``)::

    T1 SimpleConvNet (the book's: conv 30x5x5 - relu - pool - affine 100 - relu - affine 10), batch 100, Adam
    T2 the Keras MNIST network (conv 32 - pool - conv 64 - pool - conv 64 - dense 64 - dense 10),
       batch 64, RMSprop

A kernel case is timed in two phases, ``forward`` and ``backward`` (:data:`PHASES`); a training
case in one, ``step`` (:data:`STEP`). Inputs are fresh standard-normal draws from a seeded
generator (never zeros), so every backend and peer sees the same numbers.

asv loads this file by path from the working tree (``benchmarks/shapes.py``) and runs it against
the fastconv installed for the commit under test, which may be older: at import it needs only
NumPy and ``fastconv._shapes``; the training stack is imported when a training step is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastconv._shapes import conv_output_size


@dataclass(frozen=True)
class ConvCase:
    """A convolution: x (N, C, H, W), W (F, C, kh, kw), bias (F,), stride, pad."""

    name: str
    x_shape: tuple[int, int, int, int]
    w_shape: tuple[int, int, int, int]
    stride: int = 1
    pad: int = 0
    kind: str = "conv"

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        """(N, F, OH, OW)."""
        n, _, h, w = self.x_shape
        f, _, kh, kw = self.w_shape
        s, p = (self.stride,) * 2, (self.pad,) * 2
        oh, ow = conv_output_size((h, w), (kh, kw), s, p, (1, 1))
        return (n, f, oh, ow)

    @property
    def flops(self) -> int:
        """Multiply-adds x 2 of the forward pass (the backward costs twice this)."""
        n, f, oh, ow = self.out_shape
        _, c, kh, kw = self.w_shape
        return 2 * n * f * oh * ow * c * kh * kw

    def describe(self) -> str:
        """A short human-readable description, e.g. ``x(64,1,28,28) W(32,1,3,3) s1 p0``."""
        x = ",".join(map(str, self.x_shape))
        w = ",".join(map(str, self.w_shape))
        return f"x({x}) W({w}) s{self.stride} p{self.pad}"


@dataclass(frozen=True)
class PoolCase:
    """A max pool: x (N, C, H, W), square kernel, stride, pad."""

    name: str
    x_shape: tuple[int, int, int, int]
    kernel: int
    stride: int
    pad: int = 0
    kind: str = "pool"

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        """(N, C, OH, OW)."""
        n, c, h, w = self.x_shape
        k, s, p = (self.kernel,) * 2, (self.stride,) * 2, (self.pad,) * 2
        oh, ow = conv_output_size((h, w), k, s, p, (1, 1))
        return (n, c, oh, ow)

    def describe(self) -> str:
        """A short human-readable description, e.g. ``pool 2x2/2 p0 on (64,32,26,26)``."""
        x = ",".join(map(str, self.x_shape))
        return f"pool {self.kernel}x{self.kernel}/{self.stride} p{self.pad} on ({x})"


@dataclass(frozen=True)
class TrainCase:
    """One training step of a network on a batch of (N, 1, 28, 28) images with one-hot labels."""

    name: str
    network: str  # "simple" (SimpleConvNet) or "keras" (the Keras-style Sequential)
    batch: int
    optimizer: str
    kind: str = "train"

    def describe(self) -> str:
        """A short human-readable description."""
        net = "SimpleConvNet" if self.network == "simple" else "Keras MNIST net"
        return f"train step: {net}, batch {self.batch}, {self.optimizer}"


Case = ConvCase | PoolCase | TrainCase

CONV_CASES: tuple[ConvCase, ...] = (
    ConvCase("S1", (100, 1, 28, 28), (30, 1, 5, 5)),
    ConvCase("S2", (64, 1, 28, 28), (32, 1, 3, 3)),
    ConvCase("S3", (64, 32, 13, 13), (64, 32, 3, 3)),
    ConvCase("S4", (64, 64, 32, 32), (64, 64, 3, 3), pad=1),
    ConvCase("S5", (32, 128, 28, 28), (128, 128, 3, 3), pad=1),
    ConvCase("S6", (32, 64, 56, 56), (128, 64, 3, 3), stride=2, pad=1),
)
POOL_CASES: tuple[PoolCase, ...] = (
    PoolCase("P1", (64, 32, 26, 26), kernel=2, stride=2),
    PoolCase("P2", (64, 64, 32, 32), kernel=2, stride=2),
    PoolCase("P3", (32, 64, 56, 56), kernel=3, stride=2, pad=1),
)
TRAIN_CASES: tuple[TrainCase, ...] = (
    TrainCase("T1", "simple", batch=100, optimizer="adam"),
    TrainCase("T2", "keras", batch=64, optimizer="rmsprop"),
)
CASES: tuple[Case, ...] = CONV_CASES + POOL_CASES + TRAIN_CASES
BY_NAME: dict[str, Case] = {case.name: case for case in CASES}

PHASES = ("forward", "backward")  # the timed phases of a convolution or max-pool case
STEP = "step"  # the one timed phase of a training-step case


def phases(case: Case) -> tuple[str, ...]:
    """The timed phases of ``case``: :data:`PHASES` for a kernel, ``(STEP,)`` for a training step."""
    return (STEP,) if isinstance(case, TrainCase) else PHASES


def select(names: str | None) -> list[Case]:
    """The cases named in a comma-separated list (``"S1,S3,P1"``), in the order given; all when None.

    Raises ValueError naming the unknown shape and listing the known ones.
    """
    if names is None or not names.strip():
        return list(CASES)
    chosen = []
    for raw in names.split(","):
        name = raw.strip().upper()
        if not name:
            continue
        if name not in BY_NAME:
            raise ValueError(f"--shapes: unknown shape {raw!r}; known shapes are {', '.join(BY_NAME)}")
        chosen.append(BY_NAME[name])
    return chosen


def conv_inputs(case: ConvCase, dtype: str | np.dtype, seed: int = 0) -> dict[str, np.ndarray]:
    """Host arrays for a convolution case: ``x``, ``W``, ``b`` and ``dout`` (of the output's shape).

    Weights are scaled by 1/sqrt(fan_in) so outputs stay O(1), as in a trained network.
    """
    rng = np.random.default_rng(seed)
    fan_in = int(np.prod(case.w_shape[1:]))
    return {
        "x": rng.standard_normal(case.x_shape).astype(dtype),
        "W": (rng.standard_normal(case.w_shape) / np.sqrt(fan_in)).astype(dtype),
        "b": rng.standard_normal(case.w_shape[0]).astype(dtype),
        "dout": rng.standard_normal(case.out_shape).astype(dtype),
    }


def pool_inputs(case: PoolCase, dtype: str | np.dtype, seed: int = 0) -> dict[str, np.ndarray]:
    """Host arrays for a pooling case: ``x`` and ``dout`` (of the output's shape)."""
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal(case.x_shape).astype(dtype),
        "dout": rng.standard_normal(case.out_shape).astype(dtype),
    }


def train_inputs(case: TrainCase, dtype: str | np.dtype, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch for a training-step case: images ``x`` (N, 1, 28, 28) and one-hot labels ``t`` (N, 10)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, case.batch)
    return {
        "x": rng.random((case.batch, 1, 28, 28)).astype(dtype),
        "t": np.eye(10, dtype=dtype)[labels],
    }


def build_train_step(case: TrainCase, backend: str, dtype: str) -> Callable[[], float]:
    """A function running one training step (forward, backward, optimizer update) of ``case``'s
    network on ``backend``; raises ImportError when the training stack is missing."""
    import fastconv
    from fastconv.train.optimizers import make_optimizer

    data = train_inputs(case, dtype)
    if case.network == "simple":
        from fastconv.train.networks import SimpleConvNet

        net: Any = SimpleConvNet(
            input_dim=(1, 28, 28),
            conv_param={"filter_num": 30, "filter_size": 5, "pad": 0, "stride": 1},
            hidden_size=100,
            output_size=10,
            weight_init_std=0.01,
            backend=backend,
            dtype=dtype,
            rng=0,
        )
        optimizer = make_optimizer(case.optimizer, lr=0.001)
    else:
        from fastconv.train.keras import mnist_cnn

        net = mnist_cnn(backend=backend, dtype=dtype, seed=0)
        net.compile(optimizer=case.optimizer, loss="categorical_crossentropy")
        net.build()
        optimizer = net.optimizer
    x = fastconv.to_device(data["x"], backend=backend)
    t = fastconv.to_device(data["t"], backend=backend)

    def step() -> float:
        loss, grads, _ = net.loss_and_gradient(x, t)
        optimizer.update(net.params, grads)
        return loss

    return step
