"""The peers ``fastconv bench`` compares: fastconv's backends, and PyTorch on the CPU or a GPU.

A :class:`Peer` turns a benchmark case into the calls to time, with its inputs already on its
device: ``{"forward": fn, "backward": fn}`` for a convolution or max pool, ``{"step": fn}`` for a
training step. :func:`make_peers` builds the peers of a run and :func:`apply_threads` gives them
all the same number of CPU threads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastconv.bench.cases import (
    STEP,
    Case,
    ConvCase,
    TrainCase,
    build_train_step,
    conv_inputs,
    pool_inputs,
    train_inputs,
)

__all__ = [
    "FastconvPeer",
    "Peer",
    "TorchPeer",
    "apply_threads",
    "available_backends",
    "make_peers",
    "torch_devices",
]


def _no_sync() -> None:
    return None


@dataclass
class Peer:
    """Something that runs the benchmark cases: a fastconv backend or PyTorch on a device.

    ``sync`` waits until the peer's device has finished its queued work (a no-op on the CPU).
    """

    name: str
    sync: Callable[[], None] = field(default=_no_sync)

    def calls(self, case: Case, dtype: str) -> dict[str, Callable[[], Any]]:
        """The calls to time for ``case`` in ``dtype``, by phase, inputs already on the device."""
        raise NotImplementedError


class FastconvPeer(Peer):
    """A fastconv backend, called through the public functional API."""

    def __init__(self, backend: str) -> None:
        super().__init__(name=backend, sync=_device_sync(backend))

    def calls(self, case: Case, dtype: str) -> dict[str, Callable[[], Any]]:
        """``conv2d`` / ``conv2d_backward``, ``max_pool2d`` / ``max_pool2d_backward``, or a training step."""
        import fastconv

        name = self.name

        def dev(a: np.ndarray) -> Any:
            return fastconv.to_device(a, backend=name)

        if isinstance(case, TrainCase):
            return {STEP: build_train_step(case, name, dtype)}
        if isinstance(case, ConvCase):
            a = {k: dev(v) for k, v in conv_inputs(case, dtype).items()}
            s, p = case.stride, case.pad
            return {
                "forward": lambda: fastconv.conv2d(a["x"], a["W"], a["b"], s, p, backend=name),
                "backward": lambda: fastconv.conv2d_backward(a["dout"], a["x"], a["W"], s, p, backend=name),
            }
        a = {k: dev(v) for k, v in pool_inputs(case, dtype).items()}
        k, s, p = case.kernel, case.stride, case.pad
        _, argmax = fastconv.max_pool2d(a["x"], k, s, p, backend=name)
        shape = case.x_shape
        return {
            "forward": lambda: fastconv.max_pool2d(a["x"], k, s, p, backend=name),
            "backward": lambda: fastconv.max_pool2d_backward(a["dout"], argmax, shape, k, s, p, backend=name),
        }


def _device_sync(backend: str) -> Callable[[], None]:
    """A function that waits for the backend's device to finish its queued work (no-op on CPU)."""
    if backend != "cupy":
        return _no_sync
    import cupy

    def sync() -> None:
        cupy.cuda.Device().synchronize()

    return sync


class TorchPeer(Peer):
    """``torch.nn.functional`` / ATen on a device, the reference peer (never a fastconv dependency).

    On a CUDA device, TF32 is off unless ``tf32`` is True, so that PyTorch's convolutions and
    matrix products compute in true float32 as fastconv's do (PyTorch lets cuDNN use TF32 by
    default; CuPy's cuBLAS does not unless ``CUPY_TF32=1``). The setting is process-wide.
    """

    def __init__(self, device: str = "cpu", *, tf32: bool = False) -> None:
        import torch

        self.torch = torch
        self.device = device
        self.tf32 = tf32
        cuda = device.startswith("cuda")
        if cuda:
            torch.backends.cudnn.allow_tf32 = tf32  # convolutions
            torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN's fastest algorithm, as users set it
            torch.set_float32_matmul_precision("high" if tf32 else "highest")  # matrix products
        super().__init__(
            name="torch" if device == "cpu" else f"torch-{device}",
            sync=torch.cuda.synchronize if cuda else _no_sync,
        )

    def calls(self, case: Case, dtype: str) -> dict[str, Callable[[], Any]]:
        """``F.conv2d`` / ``aten.convolution_backward`` (dx, dW, db), ``aten.max_pool2d_with_indices``
        and its backward, or :meth:`train_step`."""
        torch = self.torch
        aten = torch.ops.aten

        def dev(a: np.ndarray) -> Any:
            return torch.from_numpy(a).to(self.device)

        if isinstance(case, TrainCase):
            return {STEP: self.train_step(case, dtype)}
        if isinstance(case, ConvCase):
            a = {k: dev(v) for k, v in conv_inputs(case, dtype).items()}
            s, p = [case.stride] * 2, [case.pad] * 2
            bias_sizes = [case.w_shape[0]]

            def forward() -> Any:
                return torch.nn.functional.conv2d(a["x"], a["W"], a["b"], s, p)

            def backward() -> Any:
                # dx, dW, db in one call: what autograd runs for a conv layer.
                return aten.convolution_backward(
                    a["dout"], a["x"], a["W"], bias_sizes, s, p, [1, 1], False, [0, 0], 1, [True, True, True]
                )

            return {"forward": forward, "backward": backward}

        a = {k: dev(v) for k, v in pool_inputs(case, dtype).items()}
        k, s, p = [case.kernel] * 2, [case.stride] * 2, [case.pad] * 2
        _, indices = aten.max_pool2d_with_indices(a["x"], k, s, p, [1, 1], False)
        return {
            "forward": lambda: aten.max_pool2d_with_indices(a["x"], k, s, p, [1, 1], False),
            "backward": lambda: aten.max_pool2d_with_indices_backward(
                a["dout"], a["x"], k, s, p, [1, 1], False, indices
            ),
        }

    def train_step(self, case: TrainCase, dtype: str) -> Callable[[], Any]:
        """The same network, loss and optimizer in PyTorch eager mode, one step per call."""
        torch = self.torch
        nn = torch.nn
        torch.manual_seed(0)
        if case.network == "simple":
            model = nn.Sequential(
                nn.Conv2d(1, 30, 5),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Flatten(),
                nn.Linear(30 * 12 * 12, 100),
                nn.ReLU(),
                nn.Linear(100, 10),
            )
        else:
            model = nn.Sequential(
                nn.Conv2d(1, 32, 3),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(64, 64, 3),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(576, 64),
                nn.ReLU(),
                nn.Linear(64, 10),
            )
        model = model.to(device=self.device, dtype=getattr(torch, dtype))
        if case.optimizer == "adam":
            optimizer: Any = torch.optim.Adam(model.parameters(), lr=0.001)
        else:  # Keras' RMSprop defaults
            optimizer = torch.optim.RMSprop(model.parameters(), lr=0.001, alpha=0.9, eps=1e-7)
        data = train_inputs(case, dtype)
        x = torch.from_numpy(data["x"]).to(self.device)
        labels = torch.from_numpy(data["t"].argmax(axis=1)).to(self.device)
        loss_fn = nn.CrossEntropyLoss()

        def step() -> Any:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), labels)
            loss.backward()
            optimizer.step()
            return loss

        return step


def available_backends() -> list[str]:
    """Names of the fastconv backends usable here, in registry order."""
    import fastconv

    return [name for name, status in fastconv.list_backends().items() if status["available"]]


def torch_devices() -> list[str]:
    """The PyTorch devices to compare with: ``cpu``, plus ``cuda`` when PyTorch sees a GPU; [] without torch."""
    try:
        import torch
    except ImportError:
        return []
    devices = ["cpu"]
    try:
        if torch.cuda.is_available():
            devices.append("cuda")
    except Exception:  # a broken CUDA install must not stop a CPU benchmark
        pass
    return devices


def make_peers(backends: str | None, *, no_torch: bool = False, tf32: bool = False) -> list[Peer]:
    """The fastconv backends named in the comma-separated ``backends`` (every available one when
    None), then PyTorch on each of :func:`torch_devices` unless ``no_torch``.

    Raises ValueError naming a backend that is not available here.
    """
    if backends:
        wanted = [b.strip() for b in backends.split(",") if b.strip()]
    else:
        wanted = available_backends()
    available = available_backends() if any(not n.startswith("torch") for n in wanted) else []
    peers: list[Peer] = []
    for name in wanted:
        if name.startswith("torch"):
            continue  # PyTorch is a peer, added below
        if name not in available:
            raise ValueError(
                f"--backends: backend {name!r} is not available here; available: {', '.join(available)} "
                "(`fastconv info` says why a backend is missing)"
            )
        peers.append(FastconvPeer(name))
    if not no_torch:
        peers.extend(TorchPeer(device, tf32=tf32) for device in torch_devices())
    return peers


def apply_threads(n: int, peers: Sequence[Peer]) -> dict[str, Any]:
    """Give every backend and peer ``n`` CPU threads; returns what each one reports afterwards
    (a message instead of a count where it could not be set).

    fastconv's own threads (numba's and BLAS's) through ``fastconv.configure(threads=n)``, PyTorch's
    through ``torch.set_num_threads``, and every other BLAS or OpenMP pool loaded in the process
    through threadpoolctl. Create the peers first: threadpoolctl only sees the libraries already loaded.
    """
    import fastconv

    applied: dict[str, Any] = {}
    try:
        fastconv.configure(threads=n)
        applied["fastconv"] = fastconv.get_config()["threads"]
    except ValueError as exc:  # e.g. n above NUMBA_NUM_THREADS; nothing was changed
        applied["fastconv"] = f"not set: {exc}"
    if any(p.name == "numba" for p in peers):
        import numba

        applied["numba"] = numba.get_num_threads()
    if any(p.name.startswith("torch") for p in peers):
        import torch

        torch.set_num_threads(n)
        applied["torch"] = torch.get_num_threads()
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n)  # stays in force: a limiter only restores when used as a context manager
    applied["threadpoolctl"] = n
    return applied
