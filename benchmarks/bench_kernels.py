"""asv: time and peak memory of each kernel, by backend, dtype and shape.

Conv kernels (im2col, col2im, conv forward, conv backward) run on shapes S1-S6 and the max
pool kernels on P1-P3 (see :mod:`fastconv.bench.cases`). Backends that are not usable
here are skipped (NotImplementedError in setup). Each timed call ends with a device
synchronisation so GPU work is inside the timed region.
"""

from __future__ import annotations

from typing import Any

import fastconv

from ._common import BACKENDS, DTYPES, require_backend, sync, to_device
from .shapes import BY_NAME, CONV_CASES, POOL_CASES, conv_inputs, pool_inputs

CONV_SHAPES = [c.name for c in CONV_CASES]
POOL_SHAPES = [c.name for c in POOL_CASES]


class _Kernel:
    """Shared asv settings and setup; subclasses define ``prepare`` and ``run``.

    Big layers take up to a second per call on 2 CPU cores, so rounds and repeats stay low.
    """

    params: Any = (BACKENDS, DTYPES, CONV_SHAPES)
    param_names = ["backend", "dtype", "shape"]
    number = 1
    repeat = (1, 5, 4.0)
    rounds = 1
    warmup_time = 0.0
    timeout = 300

    def setup(self, backend: str, dtype: str, shape: str) -> None:
        require_backend(backend)
        self.backend = backend
        self.dtype = dtype
        self.case = BY_NAME[shape]
        self.prepare()
        self.run()  # first call: compiles JIT kernels, faults memory in
        sync(backend)

    def prepare(self) -> None:
        raise NotImplementedError

    def run(self) -> Any:
        raise NotImplementedError

    def time_run(self, backend: str, dtype: str, shape: str) -> None:
        self.run()
        sync(backend)

    def peakmem_run(self, backend: str, dtype: str, shape: str) -> None:
        self.run()
        sync(backend)


class _Conv(_Kernel):
    def prepare(self) -> None:
        self.a = to_device(conv_inputs(self.case, self.dtype), self.backend)
        _, _, self.kh, self.kw = self.case.w_shape


class Im2col(_Conv):
    """im2col of a layer's input: x (N, C, H, W) -> col (N*OH*OW, C*kh*kw)."""

    def run(self) -> Any:
        c = self.case
        return fastconv.im2col(self.a["x"], self.kh, self.kw, c.stride, c.pad, backend=self.backend)


class Col2im(_Conv):
    """col2im (the adjoint of im2col) of a layer's column gradient back to (N, C, H, W)."""

    def prepare(self) -> None:
        super().prepare()
        c = self.case
        self.col = fastconv.im2col(self.a["x"], self.kh, self.kw, c.stride, c.pad, backend=self.backend)

    def run(self) -> Any:
        c = self.case
        return fastconv.col2im(self.col, c.x_shape, self.kh, self.kw, c.stride, c.pad, backend=self.backend)


class ConvForward(_Conv):
    """conv2d(x, W, b): (N, C, H, W) -> (N, F, OH, OW)."""

    def run(self) -> Any:
        c, a = self.case, self.a
        return fastconv.conv2d(a["x"], a["W"], a["b"], c.stride, c.pad, backend=self.backend)


class ConvBackward(_Conv):
    """conv2d_backward(dout, x, W) -> (dx, dW, db)."""

    def run(self) -> Any:
        c, a = self.case, self.a
        return fastconv.conv2d_backward(a["dout"], a["x"], a["W"], c.stride, c.pad, backend=self.backend)


class _Pool(_Kernel):
    params = (BACKENDS, DTYPES, POOL_SHAPES)

    def prepare(self) -> None:
        c = self.case
        self.a = to_device(pool_inputs(c, self.dtype), self.backend)
        _, self.argmax = fastconv.max_pool2d(self.a["x"], c.kernel, c.stride, c.pad, backend=self.backend)


class MaxPoolForward(_Pool):
    """max_pool2d(x) -> (y, argmax)."""

    def run(self) -> Any:
        c = self.case
        return fastconv.max_pool2d(self.a["x"], c.kernel, c.stride, c.pad, backend=self.backend)


class MaxPoolBackward(_Pool):
    """max_pool2d_backward(dout, argmax) -> dx (N, C, H, W)."""

    def run(self) -> Any:
        c = self.case
        return fastconv.max_pool2d_backward(
            self.a["dout"], self.argmax, c.x_shape, c.kernel, c.stride, c.pad, backend=self.backend
        )
