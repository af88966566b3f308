"""The peers ``fastconv bench`` compares: fastconv's backends, PyTorch on the CPU or a GPU, and JAX.

A :class:`Peer` turns a benchmark case into the calls to time, with its inputs already on its
device: ``{"forward": fn, "backward": fn}`` for a convolution or max pool, ``{"step": fn}`` for a
training step. :func:`make_peers` builds the peers of a run and :func:`apply_threads` gives them
all the same number of CPU threads.

PyTorch runs in one of several *variants* (:data:`TORCH_VARIANTS`: eager, channels_last memory format,
``torch.compile``, oneDNN off), several of which can be timed side by side as peers ``torch[VARIANT]``;
the default, ``best``, runs each kind of case (conv, pool, train) in the variant measured fastest
for it on the reference machine (:data:`TORCH_BEST`); every result row records the variant that ran.

JAX (``jax.jit`` on the CPU) joins when it is installed. Its CPU thread pool is sized once, when its
CPU client starts, by the number of cores the starting thread may run on (``XLA_FLAGS`` such as
``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=N`` do not limit it in jax 0.10:
measured, the work still spreads over every core); :func:`apply_threads` therefore starts JAX's
client with the calling thread's CPU affinity narrowed to N cores, then widens it again. That works
only if nothing in the process started JAX's CPU client before.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastconv.bench.cases import (
    STEP,
    AvgPoolCase,
    Case,
    ConvCase,
    GroupConvCase,
    PoolCase,
    TrainCase,
    TransposedConvCase,
    build_train_step,
    conv_inputs,
    nchw_twin,
    pool_inputs,
    train_inputs,
)

__all__ = [
    "TORCH_DEFAULT_VARIANT",
    "TORCH_VARIANTS",
    "FastconvPeer",
    "JaxPeer",
    "NotSupported",
    "Peer",
    "TorchPeer",
    "apply_threads",
    "available_backends",
    "jax_available",
    "make_peers",
    "parse_torch_variants",
    "start_jax",
    "torch_devices",
]


class NotSupported(Exception):
    """A peer cannot run this case (an algorithm that does not apply to the shape): a note, not an error."""


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

    def info(self, case: Case, dtype: str) -> dict[str, dict[str, Any]]:
        """Extra fields for the result rows of ``case``, by phase (e.g. the algorithm that ran); here, for
        an NHWC case, its ``layout`` and its NCHW ``twin`` (the report compares the two)."""
        twin = nchw_twin(case)
        if twin is None:
            return {}
        return {ph: {"layout": "NHWC", "twin": twin} for ph in ("forward", "backward")}


class FastconvPeer(Peer):
    """A fastconv backend, called through the public functional API.

    With ``algorithm`` (e.g. ``"winograd"``), convolutions pass ``algorithm=`` to ``conv2d`` and
    ``conv2d_backward`` and the peer is named ``backend[algorithm]``; a shape the algorithm cannot run
    raises :class:`NotSupported`. Pools and training steps ignore it.
    """

    def __init__(self, backend: str, algorithm: str | None = None) -> None:
        super().__init__(name=f"{backend}[{algorithm}]" if algorithm else backend, sync=_device_sync(backend))
        self.backend = backend
        self.algorithm = algorithm

    def calls(self, case: Case, dtype: str) -> dict[str, Callable[[], Any]]:
        """``conv2d`` / ``conv2d_backward`` (with groups and layout), ``conv_transpose2d`` / its backward,
        ``max_pool2d`` / ``avg_pool2d`` / ``global_avg_pool2d`` and their backwards, or a training step."""
        import fastconv

        name = self.backend

        def dev(a: np.ndarray) -> Any:
            return fastconv.to_device(a, backend=name)

        if isinstance(case, TrainCase):
            return {STEP: build_train_step(case, name, dtype)}
        if isinstance(case, (ConvCase, GroupConvCase)):
            a = {k: dev(v) for k, v in conv_inputs(case, dtype).items()}
            s, p = case.stride, case.pad
            kw: dict[str, Any] = {"backend": name}
            if isinstance(case, GroupConvCase):  # only these pass the v2 arguments: S1-S6 run on any version
                kw.update(groups=case.groups, layout=case.layout)
            if self.algorithm:
                kw["algorithm"] = self.algorithm
                try:  # one call of each, so that an algorithm the shape cannot take is a note, not an error
                    fastconv.conv2d(a["x"], a["W"], a["b"], s, p, **kw)
                    fastconv.conv2d_backward(a["dout"], a["x"], a["W"], s, p, **kw)
                except ValueError as exc:
                    raise NotSupported(f"{self.algorithm} not supported here: {exc}") from exc
            return {
                "forward": lambda: fastconv.conv2d(a["x"], a["W"], a["b"], s, p, **kw),
                "backward": lambda: fastconv.conv2d_backward(a["dout"], a["x"], a["W"], s, p, **kw),
            }
        if isinstance(case, TransposedConvCase):
            a = {k: dev(v) for k, v in conv_inputs(case, dtype).items()}
            s, p, op = case.stride, case.pad, case.output_padding
            return {
                "forward": lambda: fastconv.conv_transpose2d(
                    a["x"], a["W"], a["b"], s, p, output_padding=op, backend=name
                ),
                "backward": lambda: fastconv.conv_transpose2d_backward(
                    a["dout"], a["x"], a["W"], s, p, output_padding=op, backend=name
                ),
            }
        a = {k: dev(v) for k, v in pool_inputs(case, dtype).items()}
        shape = tuple(a["x"].shape)  # in the case's layout, as the backward takes it
        layout = case.layout
        if isinstance(case, AvgPoolCase):
            if case.is_global:
                return {
                    "forward": lambda: fastconv.global_avg_pool2d(a["x"], layout=layout, backend=name),
                    "backward": lambda: fastconv.global_avg_pool2d_backward(
                        a["dout"], shape, layout=layout, backend=name
                    ),
                }
            k, s, p = case.kernel, case.stride or case.kernel, case.pad
            avg: dict[str, Any] = {
                "count_include_pad": case.count_include_pad,
                "layout": layout,
                "backend": name,
            }
            return {
                "forward": lambda: fastconv.avg_pool2d(a["x"], k, s, p, **avg),
                "backward": lambda: fastconv.avg_pool2d_backward(a["dout"], shape, k, s, p, **avg),
            }
        k, s, p = case.kernel, case.stride, case.pad
        kw = {"backend": name} if layout == "NCHW" else {"layout": layout, "backend": name}
        _, argmax = fastconv.max_pool2d(a["x"], k, s, p, **kw)
        return {
            "forward": lambda: fastconv.max_pool2d(a["x"], k, s, p, **kw),
            "backward": lambda: fastconv.max_pool2d_backward(a["dout"], argmax, shape, k, s, p, **kw),
        }

    def info(self, case: Case, dtype: str) -> dict[str, dict[str, Any]]:
        """For a convolution, ``{"algorithm": name}`` per phase: the one forced, else what
        ``fastconv.conv_algorithm`` says the call runs (omitted where fastconv cannot say)."""
        info = super().info(case, dtype)
        if not isinstance(case, (ConvCase, GroupConvCase)):
            return info
        for ph in ("forward", "backward"):
            alg = self.algorithm or conv_algorithm_of(case, dtype, ph, self.backend)
            if alg is not None:
                info[ph] = {**info.get(ph, {}), "algorithm": alg}
        return info


def conv_algorithm_of(case: ConvCase | GroupConvCase, dtype: str, direction: str, backend: str) -> str | None:
    """The algorithm fastconv runs for ``case`` (``fastconv.conv_algorithm``), None where the
    backend cannot be selected here (the row then says nothing about the algorithm)."""
    import fastconv

    kw: dict[str, Any] = {}
    x_shape = case.x_shape
    if isinstance(case, GroupConvCase):
        kw = {"groups": case.groups, "layout": case.layout}
        if case.layout == "NHWC":  # conv_algorithm takes x's shape in its layout's order
            n, c, h, w = x_shape
            x_shape = (n, h, w, c)
    try:
        return fastconv.conv_algorithm(
            x_shape, case.w_shape, case.stride, case.pad, 1, dtype, direction=direction, backend=backend, **kw
        )
    except (ValueError, RuntimeError):  # e.g. an unavailable backend: the timing does not depend on the label
        return None


def _device_sync(backend: str) -> Callable[[], None]:
    """A function that waits for the backend's device to finish its queued work (no-op on CPU)."""
    if backend != "cupy":
        return _no_sync
    import cupy

    def sync() -> None:
        cupy.cuda.Device().synchronize()

    return sync


# PyTorch variants: "eager", or "+"-joined options (in this order):
#   channels_last  tensors (and, for a network, its weights) in channels-last memory format
#   compile        torch.compile the network (mode "default"; the first warm-up call compiles)
#   max-autotune   torch.compile the network with mode "max-autotune-no-cudagraphs"
#   fused          the optimizer's fused implementation (Adam; RMSprop has none and stays foreach)
#   no-mkldnn      oneDNN (mkldnn) off around every call: ATen's own kernels
# compile / max-autotune / fused apply to the training steps only; channels_last and no-mkldnn to every case.
TORCH_OPTIONS = ("channels_last", "compile", "max-autotune", "fused", "no-mkldnn")
TORCH_VARIANTS = (
    "eager",
    "channels_last",
    "compile",
    "compile+channels_last",
    "max-autotune",
    "fused",
    "channels_last+fused",
    "compile+fused",
    "no-mkldnn",
)
TORCH_DEFAULT_VARIANT = "best"
# What "best" runs, per kind of case: the fastest variant measured on the reference machine (2-core
# Xeon, AVX-512, torch 2.13 CPU, 2 threads).
# Depthwise, transposed conv, average and global average pool: forward + backward of D1/D2, X1, A1/A2 and
# G1, float32, min of 7.
TORCH_BEST = {
    "conv": "channels_last",
    "pool": "channels_last",
    "train": "channels_last+fused",
    "depthwise": "channels_last",
    "deconv": "eager",
    "avgpool": "channels_last",
    "globalpool": "eager",
}


def parse_torch_variants(text: str | None) -> list[str]:
    """The variants named in a comma-separated list, each ``eager`` or options joined by ``+``
    (:data:`TORCH_OPTIONS`), in canonical order; ``all`` names :data:`TORCH_VARIANTS`. Raises ValueError."""
    if text is None or not text.strip():
        return [TORCH_DEFAULT_VARIANT]
    out: list[str] = []
    for raw in text.split(","):
        raw = raw.strip()
        if not raw:
            continue
        if raw == "all":
            out.extend(v for v in TORCH_VARIANTS if v not in out)
            continue
        if raw == "best":
            if raw not in out:
                out.append(raw)
            continue
        parts = {p.strip() for p in raw.split("+") if p.strip()} - {"eager"}
        bad = parts - set(TORCH_OPTIONS)
        if bad or ("compile" in parts and "max-autotune" in parts):
            raise ValueError(
                f"--torch-variant: unknown variant {raw!r}; give eager or options joined by '+' from "
                f"{', '.join(TORCH_OPTIONS)} (compile and max-autotune exclusive), 'best' or 'all'"
            )
        name = "+".join(o for o in TORCH_OPTIONS if o in parts) or "eager"
        if name not in out:
            out.append(name)
    return out or [TORCH_DEFAULT_VARIANT]


class TorchPeer(Peer):
    """``torch.nn.functional`` / ATen on a device, the reference peer (never a fastconv dependency).

    On a CUDA device, TF32 is off unless ``tf32`` is True, so that PyTorch's convolutions and
    matrix products compute in true float32 as fastconv's do (PyTorch lets cuDNN use TF32 by
    default; CuPy's cuBLAS does not unless ``CUPY_TF32=1``). The setting is process-wide.

    ``variant`` (see :func:`parse_torch_variants`) picks the memory format, ``torch.compile`` and
    oneDNN settings; the peer is named ``torch`` (``torch-cuda``), or ``torch[variant]`` with ``tagged``
    (several variants timed side by side).
    """

    def __init__(
        self,
        device: str = "cpu",
        *,
        tf32: bool = False,
        variant: str = TORCH_DEFAULT_VARIANT,
        tagged: bool = False,
    ) -> None:
        import torch

        self.torch = torch
        self.device = device
        self.tf32 = tf32
        [self.variant] = parse_torch_variants(variant)
        cuda = device.startswith("cuda")
        if cuda:
            torch.backends.cudnn.allow_tf32 = tf32  # convolutions
            torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN's fastest algorithm, as users set it
            torch.set_float32_matmul_precision("high" if tf32 else "highest")  # matrix products
        name = "torch" if device == "cpu" else f"torch-{device}"
        super().__init__(
            name=f"{name}[{self.variant}]" if tagged else name,
            sync=torch.cuda.synchronize if cuda else _no_sync,
        )

    def variant_for(self, case: Case) -> str:
        """The variant this peer runs ``case`` in (``best`` resolved by :data:`TORCH_BEST`). An NHWC case
        runs channels_last in every variant: a channels_last tensor is PyTorch's NHWC, the same memory."""
        variant = TORCH_BEST[case.kind] if self.variant == "best" else self.variant
        if getattr(case, "layout", "NCHW") == "NHWC" and "channels_last" not in variant.split("+"):
            [variant] = parse_torch_variants(f"{variant}+channels_last")
        return variant

    def info(self, case: Case, dtype: str) -> dict[str, dict[str, Any]]:
        """``{"variant": ...}`` for every phase of ``case`` (and what :meth:`Peer.info` adds)."""
        variant = self.variant_for(case)
        info = super().info(case, dtype)
        return {ph: {**info.get(ph, {}), "variant": variant} for ph in (STEP, "forward", "backward")}

    @contextlib.contextmanager
    def _flags(self, options: set[str]) -> Iterator[None]:
        if "no-mkldnn" not in options:
            yield
            return
        mkldnn: Any = self.torch.backends.mkldnn
        before = mkldnn.enabled
        mkldnn.enabled = False  # not mkldnn.flags(): that also sets oneDNN's TF32 flag, with a warning
        try:
            yield
        finally:
            mkldnn.enabled = before

    def _wrap(self, fn: Callable[[], Any], options: set[str]) -> Callable[[], Any]:
        if "no-mkldnn" not in options:
            return fn

        def call() -> Any:
            with self._flags(options):
                return fn()

        return call

    def calls(self, case: Case, dtype: str) -> dict[str, Callable[[], Any]]:
        """``F.conv2d`` / ``F.conv_transpose2d`` and ``aten.convolution_backward`` (dx, dW, db),
        ``aten.max_pool2d_with_indices`` / ``aten.avg_pool2d`` / ``aten._adaptive_avg_pool2d`` (what
        ``nn.AdaptiveAvgPool2d(1)`` runs) and their backwards, or :meth:`train_step`."""
        torch = self.torch
        aten = torch.ops.aten
        opts = set(self.variant_for(case).split("+")) - {"eager"}
        fmt = torch.channels_last if "channels_last" in opts else torch.contiguous_format
        layout = getattr(case, "layout", "NCHW")

        def dev(a: np.ndarray, in_layout: bool = False) -> Any:
            t = torch.from_numpy(a).to(self.device)
            if in_layout and layout == "NHWC":
                t = t.permute(0, 3, 1, 2)  # the NHWC array seen as (N, C, H, W): a channels_last tensor
            return t.contiguous(memory_format=fmt) if t.dim() == 4 else t

        if isinstance(case, TrainCase):
            return {STEP: self._wrap(self.train_step(case, dtype), opts)}
        if isinstance(case, (ConvCase, GroupConvCase, TransposedConvCase)):
            a = {k: dev(v, k in ("x", "dout")) for k, v in conv_inputs(case, dtype).items()}
            s, p = [case.stride] * 2, [case.pad] * 2
            transposed = isinstance(case, TransposedConvCase)
            groups = getattr(case, "groups", 1)
            op = [case.output_padding] * 2 if isinstance(case, TransposedConvCase) else [0, 0]
            bias_sizes = [int(a["b"].shape[0])]

            def forward() -> Any:
                if transposed:
                    return torch.nn.functional.conv_transpose2d(a["x"], a["W"], a["b"], s, p, op)
                return torch.nn.functional.conv2d(a["x"], a["W"], a["b"], s, p, 1, groups)

            def backward() -> Any:
                # dx, dW, db in one call: what autograd runs for a conv layer.
                return aten.convolution_backward(
                    a["dout"], a["x"], a["W"], bias_sizes, s, p, [1, 1], transposed, op, groups, [True] * 3
                )

            return {"forward": self._wrap(forward, opts), "backward": self._wrap(backward, opts)}

        a = {k: dev(v, True) for k, v in pool_inputs(case, dtype).items()}
        if isinstance(case, AvgPoolCase):
            if case.is_global:
                return {
                    "forward": self._wrap(lambda: aten._adaptive_avg_pool2d(a["x"], [1, 1]), opts),
                    "backward": self._wrap(
                        lambda: aten._adaptive_avg_pool2d_backward(a["dout"], a["x"]), opts
                    ),
                }
            k, s, p = [case.kernel] * 2, [case.stride or case.kernel] * 2, [case.pad] * 2
            cip = case.count_include_pad
            return {
                "forward": self._wrap(lambda: aten.avg_pool2d(a["x"], k, s, p, False, cip, None), opts),
                "backward": self._wrap(
                    lambda: aten.avg_pool2d_backward(a["dout"], a["x"], k, s, p, False, cip, None), opts
                ),
            }
        k, s, p = [case.kernel] * 2, [case.stride] * 2, [case.pad] * 2
        with self._flags(opts):
            _, indices = aten.max_pool2d_with_indices(a["x"], k, s, p, [1, 1], False)
        return {
            "forward": self._wrap(lambda: aten.max_pool2d_with_indices(a["x"], k, s, p, [1, 1], False), opts),
            "backward": self._wrap(
                lambda: aten.max_pool2d_with_indices_backward(
                    a["dout"], a["x"], k, s, p, [1, 1], False, indices
                ),
                opts,
            ),
        }

    def train_step(self, case: TrainCase, dtype: str) -> Callable[[], Any]:
        """The same network, loss and optimizer in PyTorch, one step per call, in this peer's variant."""
        torch = self.torch
        options = set(self.variant_for(case).split("+")) - {"eager"}
        nn = torch.nn
        torch.manual_seed(0)
        if case.network == "separable":
            from fastconv.train.networks import SEPARABLE_CHANNELS

            c1, c2, c3, c4 = SEPARABLE_CHANNELS
            model = nn.Sequential(
                nn.Conv2d(1, c1, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(c1, c1, 3, padding=1, groups=c1),  # depthwise
                nn.Conv2d(c1, c2, 1),  # pointwise
                nn.ReLU(),
                nn.ConvTranspose2d(c2, c3, 2, stride=2),
                nn.ReLU(),
                nn.Conv2d(c3, c4, 3, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(c4, 10),
            )
        elif case.network == "simple":
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
        channels_last = "channels_last" in options
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        fused: dict[str, Any] = {"fused": True} if "fused" in options else {}
        if case.optimizer == "adam":
            optimizer: Any = torch.optim.Adam(model.parameters(), lr=0.001, **fused)
        else:  # Keras' RMSprop defaults (RMSprop has no fused implementation)
            optimizer = torch.optim.RMSprop(model.parameters(), lr=0.001, alpha=0.9, eps=1e-7)
        forward: Any = model
        if "compile" in options:
            forward = torch.compile(model)
        elif "max-autotune" in options:
            forward = torch.compile(model, mode="max-autotune-no-cudagraphs")
        data = train_inputs(case, dtype)
        x = torch.from_numpy(data["x"]).to(self.device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        labels = torch.from_numpy(data["t"].argmax(axis=1)).to(self.device)
        loss_fn = nn.CrossEntropyLoss()

        def step() -> Any:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(forward(x), labels)
            loss.backward()
            optimizer.step()
            return loss

        return step


class JaxPeer(Peer):
    """JAX on the CPU (``jax.jit``, never a fastconv dependency): each timed call is one compiled
    function and waits for its result (``block_until_ready``).

    conv: ``lax.conv_general_dilated`` (NCHW / OIHW) plus the bias; backward: ``jax.vjp`` of it, giving
    dx, dW and db in one compiled call. pool: ``lax.reduce_window`` max; backward: its vjp (which
    recomputes the forward: JAX keeps no argmax). training step: the same network, softmax
    cross-entropy and optimizer (Adam for T1, RMSprop with Keras' rho 0.9 and eps 1e-7 for T2, lr 1e-3,
    as :class:`TorchPeer`) as one jitted function whose parameter and optimizer buffers are donated.
    JAX is imported on the first case (after :func:`apply_threads` has had its chance to size JAX's pool).
    """

    def __init__(self) -> None:
        super().__init__(name="jax")

    def calls(self, case: Case, dtype: str) -> dict[str, Callable[[], Any]]:
        """The jitted calls of ``case``."""
        jax = start_jax()
        import jax.numpy as jnp

        if dtype == "float64" and not jax.config.jax_enable_x64:
            jax.config.update("jax_enable_x64", True)

        def ready(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
            return lambda: jax.block_until_ready(fn(*args))

        if isinstance(case, TrainCase):
            return {STEP: _jax_train_step(case, dtype)}
        if isinstance(case, (ConvCase, GroupConvCase, TransposedConvCase)):
            a = {k: jnp.asarray(v) for k, v in conv_inputs(case, dtype).items()}
            if isinstance(case, TransposedConvCase):
                conv = _jax_conv_transpose(case)
            else:
                conv = _jax_conv(case)

            def conv_backward(dout: Any, x: Any, w: Any, b: Any) -> Any:
                _, vjp = jax.vjp(conv, x, w, b)
                return vjp(dout)  # (dx, dW, db)

            return {
                "forward": ready(jax.jit(conv), a["x"], a["W"], a["b"]),
                "backward": ready(jax.jit(conv_backward), a["dout"], a["x"], a["W"], a["b"]),
            }
        a = {k: jnp.asarray(v) for k, v in pool_inputs(case, dtype).items()}
        pool = _jax_avg_pool(case) if isinstance(case, AvgPoolCase) else _jax_max_pool(case)

        def pool_backward(dout: Any, x: Any) -> Any:
            _, vjp = jax.vjp(pool, x)
            return vjp(dout)[0]

        return {
            "forward": ready(jax.jit(pool), a["x"]),
            "backward": ready(jax.jit(pool_backward), a["dout"], a["x"]),
        }


def _jax_conv(case: ConvCase | GroupConvCase) -> Callable[[Any, Any, Any], Any]:
    """``conv(x, W, b)`` of a case in JAX: ``lax.conv_general_dilated`` in the case's layout (OIHW
    weights, ``feature_group_count`` for groups) plus the bias."""
    from jax import lax

    s, p = case.stride, case.pad
    layout = getattr(case, "layout", "NCHW")
    groups = getattr(case, "groups", 1)
    bias_shape = (1, -1, 1, 1) if layout == "NCHW" else (1, 1, 1, -1)

    def conv(x: Any, w: Any, b: Any) -> Any:
        y = lax.conv_general_dilated(
            x,
            w,
            (s, s),
            [(p, p), (p, p)],
            rhs_dilation=(1, 1),
            dimension_numbers=(layout, "OIHW", layout),
            feature_group_count=groups,
        )
        return y + b.reshape(bias_shape)

    return conv


def _jax_conv_transpose(case: TransposedConvCase) -> Callable[[Any, Any, Any], Any]:
    """PyTorch's ``conv_transpose2d`` in JAX: a stride-1 convolution of the input dilated by the stride
    (``lhs_dilation``), padded by k - 1 - pad (plus output_padding at the end), with the kernel flipped
    and its in/out axes swapped (W (C_in, C_out, k, k) -> OIHW (C_out, C_in, k, k))."""
    from jax import lax

    s, op = case.stride, case.output_padding
    kh, kw = case.w_shape[2:]
    ph, pw = kh - 1 - case.pad, kw - 1 - case.pad

    def conv_transpose(x: Any, w: Any, b: Any) -> Any:
        rhs = w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]
        y = lax.conv_general_dilated(
            x,
            rhs,
            (1, 1),
            [(ph, ph + op), (pw, pw + op)],
            lhs_dilation=(s, s),
            dimension_numbers=("NCHW", "OIHW", "NCHW"),
        )
        return y + b[None, :, None, None]

    return conv_transpose


def _window(layout: str, kh: int, kw: int) -> tuple[int, int, int, int]:
    """A pooling window (or stride, or pad) of (kh, kw) over the spatial axes of ``layout``."""
    return (1, 1, kh, kw) if layout == "NCHW" else (1, kh, kw, 1)


def _pads(layout: str, p: int) -> list[tuple[int, int]]:
    """Padding of ``p`` on both sides of the spatial axes of ``layout``, none on the others."""
    return [(p, p) if axis in ("H", "W") else (0, 0) for axis in layout]


def _jax_max_pool(case: PoolCase) -> Callable[[Any], Any]:
    """Max pool of a case in JAX: ``lax.reduce_window`` max with -inf padding."""
    import jax.numpy as jnp
    from jax import lax

    k, s, p = case.kernel, case.stride, case.pad
    window, strides = _window(case.layout, k, k), _window(case.layout, s, s)
    pads = _pads(case.layout, p)

    def pool(x: Any) -> Any:
        return lax.reduce_window(x, -jnp.inf, lax.max, window, strides, pads)

    return pool


def _jax_avg_pool(case: AvgPoolCase) -> Callable[[Any], Any]:
    """Average pool of a case in JAX: a window sum (``lax.reduce_window`` add, zero padding) divided by
    the window size, or with ``count_include_pad=False`` by the window sum of ones (the elements inside
    the image); global: the mean over the spatial axes."""
    import jax.numpy as jnp
    from jax import lax

    if case.is_global:
        axes = (2, 3) if case.layout == "NCHW" else (1, 2)
        return lambda x: jnp.mean(x, axis=axes, keepdims=True)
    k, s, p = case.kernel, case.stride or case.kernel, case.pad
    window, strides = _window(case.layout, k, k), _window(case.layout, s, s)
    pads = _pads(case.layout, p)

    def window_sum(x: Any) -> Any:
        return lax.reduce_window(x, 0.0, lax.add, window, strides, pads)

    if case.count_include_pad:
        return lambda x: window_sum(x) / (k * k)

    def pool(x: Any) -> Any:
        ones = jnp.ones((1, *x.shape[1:]), x.dtype)
        return window_sum(x) / window_sum(ones)

    return pool


def _jax_train_step(case: TrainCase, dtype: str) -> Callable[[], Any]:
    """One jitted training step of ``case``'s network in JAX (see :class:`JaxPeer`)."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)

    def dense(fan_in: int, shape: tuple[int, ...]) -> Any:  # PyTorch's default init: U(-1/sqrt(fan_in), ..)
        bound = 1 / np.sqrt(fan_in)
        return jnp.asarray(rng.uniform(-bound, bound, shape).astype(dtype))

    if case.network == "separable":
        params, net = _jax_separable(dense)
    else:
        params, net = _jax_pooled(case.network, dense)

    def loss_fn(q: dict[str, Any], x: Any, labels: Any) -> Any:
        logp = jax.nn.log_softmax(net(q, x))
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))

    lr = 0.001

    def zeros() -> Any:  # a fresh buffer each: donated buffers must be distinct
        return jax.tree.map(jnp.zeros_like, params)

    if case.optimizer == "adam":
        b1, b2, eps = 0.9, 0.999, 1e-8
        state: Any = (zeros(), zeros(), jnp.zeros((), dtype))

        def update(q: Any, st: Any, g: Any) -> Any:
            m, v, t = st
            t = t + 1
            m = jax.tree.map(lambda m_, g_: b1 * m_ + (1 - b1) * g_, m, g)
            v = jax.tree.map(lambda v_, g_: b2 * v_ + (1 - b2) * g_ * g_, v, g)
            c1, c2 = 1 - b1**t, 1 - b2**t
            q = jax.tree.map(lambda p_, m_, v_: p_ - lr * (m_ / c1) / (jnp.sqrt(v_ / c2) + eps), q, m, v)
            return q, (m, v, t)
    else:  # RMSprop as torch.optim.RMSprop(lr=1e-3, alpha=0.9, eps=1e-7)
        rho, eps = 0.9, 1e-7
        state = zeros()

        def update(q: Any, st: Any, g: Any) -> Any:
            st = jax.tree.map(lambda s_, g_: rho * s_ + (1 - rho) * g_ * g_, st, g)
            q = jax.tree.map(lambda p_, s_, g_: p_ - lr * g_ / (jnp.sqrt(s_) + eps), q, st, g)
            return q, st

    def _step(q: Any, st: Any, x: Any, labels: Any) -> Any:
        loss, g = jax.value_and_grad(loss_fn)(q, x, labels)
        q, st = update(q, st, g)
        return q, st, loss

    step_fn = jax.jit(_step, donate_argnums=(0, 1))
    data = train_inputs(case, dtype)
    x = jnp.asarray(data["x"])
    labels = jnp.asarray(data["t"].argmax(axis=1))
    held = [params, state]

    def step() -> Any:
        held[0], held[1], loss = step_fn(held[0], held[1], x, labels)
        return jax.block_until_ready(loss)

    return step


def _jax_pooled(network: str, dense: Callable[[int, tuple[int, ...]], Any]) -> tuple[dict[str, Any], Any]:
    """Parameters and forward function of T1's SimpleConvNet or T2's Keras MNIST network in JAX."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    convs = [(30, 1, 5)] if network == "simple" else [(32, 1, 3), (64, 32, 3), (64, 64, 3)]
    denses = [(30 * 12 * 12, 100), (100, 10)] if network == "simple" else [(576, 64), (64, 10)]
    params: dict[str, Any] = {}
    for i, (f, c, k) in enumerate(convs):
        params[f"W{i}"] = dense(c * k * k, (f, c, k, k))
        params[f"b{i}"] = dense(c * k * k, (f,))
    for i, (n_in, n_out) in enumerate(denses):
        params[f"A{i}"] = dense(n_in, (n_in, n_out))
        params[f"c{i}"] = dense(n_in, (n_out,))

    def pool(x: Any) -> Any:
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")

    def net(q: dict[str, Any], x: Any) -> Any:
        for i in range(len(convs)):
            x = lax.conv_general_dilated(
                x, q[f"W{i}"], (1, 1), "VALID", dimension_numbers=("NCHW", "OIHW", "NCHW")
            )
            x = jax.nn.relu(x + q[f"b{i}"][None, :, None, None])
            if network == "simple" or i < 2:
                x = pool(x)
        x = x.reshape(x.shape[0], -1)
        x = jax.nn.relu(x @ q["A0"] + q["c0"])
        return x @ q["A1"] + q["c1"]

    return params, net


def _jax_separable(dense: Callable[[int, tuple[int, ...]], Any]) -> tuple[dict[str, Any], Any]:
    """Parameters and forward function of T3's SeparableConvNet in JAX (:class:`TorchPeer`'s layers)."""
    import jax
    import jax.numpy as jnp

    from fastconv.bench.cases import GroupConvCase, TransposedConvCase
    from fastconv.train.networks import SEPARABLE_CHANNELS

    c1, c2, c3, c4 = SEPARABLE_CHANNELS
    n = 0  # the batch size does not enter the layer functions
    layers: dict[
        str, tuple[GroupConvCase | TransposedConvCase, int]
    ] = {  # name: (the layer as a case, fan_in)
        "1": (GroupConvCase("", (n, 1, 28, 28), (c1, 1, 3, 3), stride=2, pad=1), 9),
        "2": (GroupConvCase("", (n, c1, 14, 14), (c1, 1, 3, 3), pad=1, groups=c1), 9),
        "3": (GroupConvCase("", (n, c1, 14, 14), (c2, c1, 1, 1)), c1),
        "4": (TransposedConvCase("", (n, c2, 14, 14), (c2, c3, 2, 2), stride=2), c3 * 4),
        "5": (GroupConvCase("", (n, c3, 28, 28), (c4, c3, 3, 3), pad=1), c3 * 9),
    }
    params: dict[str, Any] = {}
    for key, (layer, fan_in) in layers.items():
        params[f"W{key}"] = dense(fan_in, layer.w_shape)
        params[f"b{key}"] = dense(fan_in, (layer.out_shape[1],))
    params["W6"], params["b6"] = dense(c4, (c4, 10)), dense(c4, (10,))
    fns = {
        key: _jax_conv_transpose(layer) if isinstance(layer, TransposedConvCase) else _jax_conv(layer)
        for key, (layer, _) in layers.items()
    }

    def net(q: dict[str, Any], x: Any) -> Any:
        for key, fn in fns.items():
            x = fn(x, q[f"W{key}"], q[f"b{key}"])
            if key != "2":  # the depthwise conv goes straight into the pointwise one
                x = jax.nn.relu(x)
        x = jnp.mean(x, axis=(2, 3))
        return x @ q["W6"] + q["b6"]

    return params, net


# How JAX's CPU client was started: None until start_jax; then a dict saying how many cores it was given.
_JAX_START: dict[str, Any] = {}


def jax_available() -> bool:
    """Whether ``jax`` is installed (without importing it: importing may start nothing, but keep it lazy)."""
    return importlib.util.find_spec("jax") is not None


def _jax_client_started() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(getattr(xla_bridge, "_backends", {}))
    except Exception:  # a private detail: when unsure, say it started
        return True


def start_jax(threads: int | None = None) -> Any:
    """Import JAX and start its CPU client, with a pool of ``threads`` threads when given (see the module
    docstring: the calling thread's CPU affinity narrowed to that many cores meanwhile); returns ``jax``.

    Records in :data:`_JAX_START` how it went (``threads`` applied, or ``note`` when JAX had already started).
    """
    if _JAX_START:
        import jax

        if threads is not None and _JAX_START.get("threads") != threads:
            _JAX_START["note"] = (
                f"JAX's CPU client had already started with {_JAX_START.get('threads') or 'all'} core(s); "
                f"--threads {threads} not applied to it"
            )
        return jax
    narrowed = None
    if threads is not None and not _jax_client_started() and hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))
        if threads < len(cores):
            narrowed = cores
            os.sched_setaffinity(0, cores[:threads])
    try:
        import jax

        already = _jax_client_started()
        jax.devices("cpu")  # starts the CPU client: its pool is sized by this thread's affinity
    finally:
        if narrowed is not None:
            os.sched_setaffinity(0, narrowed)
    if threads is not None and already:
        _JAX_START["note"] = (
            f"JAX's CPU client had already started in this process; --threads {threads} not applied"
        )
    _JAX_START["threads"] = threads if not already else None
    return jax


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


def make_peers(
    backends: str | None,
    *,
    no_torch: bool = False,
    tf32: bool = False,
    no_jax: bool = False,
    torch_variants: Sequence[str] | None = None,
    algorithms: Sequence[str] | None = None,
) -> list[Peer]:
    """The fastconv backends named in the comma-separated ``backends`` (every available one when
    None), then ``numba[ALG]`` for each of ``algorithms`` (fastconv's numba backend forced to that
    convolution algorithm), then PyTorch on each of :func:`torch_devices` unless ``no_torch`` (one
    peer per variant of ``torch_variants``), then JAX on the CPU when installed, unless ``no_jax``.

    Raises ValueError naming a backend that is not available here.
    """
    if backends:
        wanted = [b.strip() for b in backends.split(",") if b.strip()]
    else:
        wanted = available_backends()
    needs_list = any(not n.startswith("torch") and n != "jax" for n in wanted) or bool(algorithms)
    available = available_backends() if needs_list else []
    peers: list[Peer] = []
    for name in wanted:
        if name.startswith("torch") or name == "jax":
            continue  # PyTorch and JAX are peers, added below
        if name not in available:
            raise ValueError(
                f"--backends: backend {name!r} is not available here; available: {', '.join(available)} "
                "(`fastconv info` says why a backend is missing)"
            )
        peers.append(FastconvPeer(name))
    if algorithms:
        if "numba" not in available:
            raise ValueError("--algorithm times the numba backend, which is not available here")
        peers.extend(FastconvPeer("numba", algorithm=alg) for alg in algorithms)
    if not no_torch:
        variants = list(torch_variants or [TORCH_DEFAULT_VARIANT])
        for device in torch_devices():
            peers.extend(TorchPeer(device, tf32=tf32, variant=v, tagged=len(variants) > 1) for v in variants)
    if not no_jax and jax_available():
        peers.append(JaxPeer())
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
    if any(p.name.startswith("numba") for p in peers):
        import numba

        applied["numba"] = numba.get_num_threads()
    if any(p.name.startswith("torch") for p in peers):
        import torch

        torch.set_num_threads(n)
        applied["torch"] = torch.get_num_threads()
    if any(isinstance(p, JaxPeer) for p in peers):
        start_jax(n)
        applied["jax"] = _JAX_START.get("note") or n
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n)  # stays in force: a limiter only restores when used as a context manager
    applied["threadpoolctl"] = n
    return applied
