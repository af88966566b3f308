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

the layers of a small modern network: depthwise convolutions (``D*``), a transposed convolution
(``X*``), average pools (``A*``, ``G*`` global), and NHWC twins of an NCHW case (``*-NHWC``: the same
numbers, transposed, so the two rows compare the layouts)::

    D1 depthwise 3x3, x(32,64,28,28) W(64,1,3,3) pad 1, groups 64   MobileNet-style block
    D2 the same with stride 2
    X1 transposed 4x4/2 pad 1, x(32,64,14,14) W(64,32,4,4) -> (32,32,28,28)   decoder up-sampling
    A1 avg 2x2/2 on (32,64,28,28)
    A2 avg 3x3/2 pad 1 on (32,32,32,32), count_include_pad=False
    G1 global avg on (64,256,7,7)                   the pool before a classifier
    S4-NHWC, D1-NHWC, P2-NHWC                       S4, D1, P2 in NHWC

and one training step (forward, backward, optimizer update) of each network (``T*``)::

    T1 SimpleConvNet (the book's: conv 30x5x5 - relu - pool - affine 100 - relu - affine 10), batch 100, Adam
    T2 the Keras MNIST network (conv 32 - pool - conv 64 - pool - conv 64 - dense 64 - dense 10),
       batch 64, RMSprop
    T3 SeparableConvNet (conv 3x3/2 - depthwise 3x3 - pointwise 1x1 - transposed 2x2/2 - conv 3x3 -
       global avg pool - affine 10), batch 64, Adam

A kernel case is timed in two phases, ``forward`` and ``backward`` (:data:`PHASES`); a training
case in one, ``step`` (:data:`STEP`). Inputs are fresh standard-normal draws from a seeded
generator (never zeros), so every backend and peer sees the same numbers.

asv loads this file by path from the working tree (``benchmarks/shapes.py``) and runs it against
the fastconv installed for the commit under test, which may be older: at import it needs only
NumPy and ``fastconv._shapes``; the training stack is imported when a training step is built.
The asv suite times :data:`CONV_CASES`, :data:`POOL_CASES` and :data:`TRAIN_CASES`, the cases every
fastconv version can run; the layer cases (:data:`LAYER_CASES`, and T3 in :data:`LAYER_TRAIN_CASES`)
need the functional API of contract v2 (groups, layouts, transposed convolution, average pools) and
are timed by ``fastconv bench`` only.
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
    layout: str = "NCHW"  # "NHWC": the arrays are x_shape's transposed (x_shape stays (N, C, H, W))

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        """(N, C, OH, OW)."""
        n, c, h, w = self.x_shape
        k, s, p = (self.kernel,) * 2, (self.stride,) * 2, (self.pad,) * 2
        oh, ow = conv_output_size((h, w), k, s, p, (1, 1))
        return (n, c, oh, ow)

    def describe(self) -> str:
        """A short human-readable description, e.g. ``pool 2x2/2 p0 on (64,32,26,26)``."""
        where = f"({_dims(self.x_shape)}){_layout_tag(self.layout)}"
        return f"pool {self.kernel}x{self.kernel}/{self.stride} p{self.pad} on {where}"


@dataclass(frozen=True)
class TrainCase:
    """One training step of a network on a batch of (N, 1, 28, 28) images with one-hot labels."""

    name: str
    network: str  # "simple" (SimpleConvNet), "keras" (Keras-style Sequential), "separable" (SeparableConvNet)
    batch: int
    optimizer: str
    kind: str = "train"

    def describe(self) -> str:
        """A short human-readable description."""
        net = {"simple": "SimpleConvNet", "keras": "Keras MNIST net", "separable": "SeparableConvNet"}
        return f"train step: {net.get(self.network, self.network)}, batch {self.batch}, {self.optimizer}"


def _layout_tag(layout: str) -> str:
    return "" if layout == "NCHW" else f" {layout}"


def _dims(shape: tuple[int, ...]) -> str:
    return ",".join(map(str, shape))


@dataclass(frozen=True)
class GroupConvCase:
    """A convolution with ``groups`` (1: ordinary; C: depthwise) in either layout.

    ``x_shape`` is (N, C, H, W) in both layouts (an NHWC case's arrays are its transposes: the same
    numbers as its NCHW twin); W (F, C // groups, kh, kw), bias (F,). Not a :class:`ConvCase`: the
    code that reads the plain NCHW cases (asv, ``fastconv info``) passes neither groups nor layout.
    """

    name: str
    x_shape: tuple[int, int, int, int]
    w_shape: tuple[int, int, int, int]
    stride: int = 1
    pad: int = 0
    groups: int = 1
    layout: str = "NCHW"
    kind: str = "conv"

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        """(N, F, OH, OW)."""
        n, _, h, w = self.x_shape
        f, _, kh, kw = self.w_shape
        oh, ow = conv_output_size((h, w), (kh, kw), (self.stride,) * 2, (self.pad,) * 2, (1, 1))
        return (n, f, oh, ow)

    def describe(self) -> str:
        """E.g. ``x(32,64,28,28) W(64,1,3,3) s1 p1 g64``, with `` NHWC`` for that layout."""
        g = f" g{self.groups}" if self.groups > 1 else ""
        return (
            f"x({_dims(self.x_shape)}) W({_dims(self.w_shape)}) s{self.stride} p{self.pad}{g}"
            f"{_layout_tag(self.layout)}"
        )


@dataclass(frozen=True)
class TransposedConvCase:
    """A transposed convolution (PyTorch's ``conv_transpose2d``): x (N, C_in, H, W), W (C_in, C_out, k, k),
    bias (C_out,) -> (N, C_out, (H - 1)*stride - 2*pad + k + output_padding, likewise)."""

    name: str
    x_shape: tuple[int, int, int, int]
    w_shape: tuple[int, int, int, int]
    stride: int = 1
    pad: int = 0
    output_padding: int = 0
    kind: str = "deconv"

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        """(N, C_out, OH, OW)."""
        n, _, h, w = self.x_shape
        _, c_out, kh, kw = self.w_shape
        s, p, op = self.stride, self.pad, self.output_padding
        return (n, c_out, (h - 1) * s - 2 * p + kh + op, (w - 1) * s - 2 * p + kw + op)

    def describe(self) -> str:
        """E.g. ``transposed x(32,64,14,14) W(64,32,4,4) s2 p1 -> (32,32,28,28)``."""
        op = f" op{self.output_padding}" if self.output_padding else ""
        return (
            f"transposed x({_dims(self.x_shape)}) W({_dims(self.w_shape)}) s{self.stride} p{self.pad}{op} "
            f"-> ({_dims(self.out_shape)})"
        )


@dataclass(frozen=True)
class AvgPoolCase:
    """An average pool: x (N, C, H, W), square kernel, stride, pad, PyTorch's ``count_include_pad``;
    ``kernel=0`` is global average pooling (N, C, 1, 1). ``layout`` as for :class:`GroupConvCase`."""

    name: str
    x_shape: tuple[int, int, int, int]
    kernel: int  # 0: global (the whole image)
    stride: int = 0  # 0: the kernel size
    pad: int = 0
    count_include_pad: bool = True
    layout: str = "NCHW"
    kind: str = "avgpool"

    @property
    def is_global(self) -> bool:
        return self.kernel == 0

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        """(N, C, OH, OW)."""
        n, c, h, w = self.x_shape
        if self.is_global:
            return (n, c, 1, 1)
        k, s, p = (self.kernel,) * 2, (self.stride or self.kernel,) * 2, (self.pad,) * 2
        oh, ow = conv_output_size((h, w), k, s, p, (1, 1))
        return (n, c, oh, ow)

    def describe(self) -> str:
        """E.g. ``avg 3x3/2 p1 excl. pad on (32,32,32,32)`` or ``global avg on (64,256,7,7)``."""
        where = f"on ({_dims(self.x_shape)}){_layout_tag(self.layout)}"
        if self.is_global:
            return f"global avg {where}"
        excl = "" if self.count_include_pad or not self.pad else " excl. pad"
        return f"avg {self.kernel}x{self.kernel}/{self.stride or self.kernel} p{self.pad}{excl} {where}"


Case = ConvCase | PoolCase | TrainCase | GroupConvCase | TransposedConvCase | AvgPoolCase

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
LAYER_CASES: tuple[Case, ...] = (
    GroupConvCase("D1", (32, 64, 28, 28), (64, 1, 3, 3), pad=1, groups=64, kind="depthwise"),
    GroupConvCase("D2", (32, 64, 28, 28), (64, 1, 3, 3), stride=2, pad=1, groups=64, kind="depthwise"),
    TransposedConvCase("X1", (32, 64, 14, 14), (64, 32, 4, 4), stride=2, pad=1),
    AvgPoolCase("A1", (32, 64, 28, 28), kernel=2, stride=2),
    AvgPoolCase("A2", (32, 32, 32, 32), kernel=3, stride=2, pad=1, count_include_pad=False),
    AvgPoolCase("G1", (64, 256, 7, 7), kernel=0, kind="globalpool"),
    GroupConvCase("S4-NHWC", (64, 64, 32, 32), (64, 64, 3, 3), pad=1, layout="NHWC"),
    GroupConvCase(
        "D1-NHWC", (32, 64, 28, 28), (64, 1, 3, 3), pad=1, groups=64, layout="NHWC", kind="depthwise"
    ),
    PoolCase("P2-NHWC", (64, 64, 32, 32), kernel=2, stride=2, layout="NHWC"),
)
LAYER_TRAIN_CASES: tuple[TrainCase, ...] = (TrainCase("T3", "separable", batch=64, optimizer="adam"),)
CASES: tuple[Case, ...] = CONV_CASES + POOL_CASES + LAYER_CASES + TRAIN_CASES + LAYER_TRAIN_CASES
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


def nchw_twin(case: Case) -> str | None:
    """The name of the NCHW case whose numbers an NHWC case holds (``S4`` for ``S4-NHWC``), else None."""
    if getattr(case, "layout", "NCHW") != "NHWC":
        return None
    twin = case.name.removesuffix("-NHWC")
    return twin if twin in BY_NAME and twin != case.name else None


def _in_layout(a: np.ndarray, layout: str) -> np.ndarray:
    """An (N, C, H, W) array in ``layout``: itself, or its NHWC transpose made contiguous."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if layout == "NHWC" else a


def conv_inputs(
    case: ConvCase | GroupConvCase | TransposedConvCase, dtype: str | np.dtype, seed: int = 0
) -> dict[str, np.ndarray]:
    """Host arrays for a convolution case: ``x``, ``W``, ``b`` and ``dout`` (of the output's shape),
    ``x`` and ``dout`` in the case's layout (drawn in NCHW, so an NHWC case holds its twin's numbers).

    Weights are scaled by 1/sqrt(fan_in) so outputs stay O(1), as in a trained network.
    """
    rng = np.random.default_rng(seed)
    fan_in = int(np.prod(case.w_shape[1:]))
    layout = getattr(case, "layout", "NCHW")
    n_bias = case.w_shape[1] if isinstance(case, TransposedConvCase) else case.w_shape[0]
    return {
        "x": _in_layout(rng.standard_normal(case.x_shape).astype(dtype), layout),
        "W": (rng.standard_normal(case.w_shape) / np.sqrt(fan_in)).astype(dtype),
        "b": rng.standard_normal(n_bias).astype(dtype),
        "dout": _in_layout(rng.standard_normal(case.out_shape).astype(dtype), layout),
    }


def pool_inputs(case: PoolCase | AvgPoolCase, dtype: str | np.dtype, seed: int = 0) -> dict[str, np.ndarray]:
    """Host arrays for a pooling case: ``x`` and ``dout`` (of the output's shape), in the case's layout."""
    rng = np.random.default_rng(seed)
    return {
        "x": _in_layout(rng.standard_normal(case.x_shape).astype(dtype), case.layout),
        "dout": _in_layout(rng.standard_normal(case.out_shape).astype(dtype), case.layout),
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
    elif case.network == "separable":
        from fastconv.train.networks import SeparableConvNet

        net = SeparableConvNet((1, 28, 28), backend=backend, dtype=dtype, rng=0)
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
