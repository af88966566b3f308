"""The CUDA kernel sources of the cupy backend: files, template instantiations, launch arguments.

Pure Python and NumPy, no CUDA: this module is shared by the three consumers of the sources, so that
all three see exactly the same kernels called with exactly the same arguments:

* :mod:`fastconv.backends.cupy.ops` loads them with ``cupy.RawModule`` on the GPU;
* ``tests/cuda/check.py`` compiles them with NVRTC for compute_70/80/90 (no GPU needed), and
  compiles them with g++ and ``tests/cuda/cpu_compat.h`` into a CPU library called through ctypes.

Every kernel is a template ``kernel<T, I>``: ``T`` the element type (float, double), ``I`` the index
type (int when every tensor of the call has fewer than 2**31 elements, else long long; 32-bit
division is several times faster on a GPU). Each ``*_args`` helper below returns the output shape,
the number of elements the kernel's grid-stride loop visits, and the scalar arguments in kernel order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from fastconv._shapes import Pair, conv_output_size

SOURCE_DIR = Path(__file__).resolve().parent
HEADER = "fastconv_common.cuh"

#: NumPy dtype name -> C type, for T and for I.
ELEMENT_TYPES = {"float32": "float", "float64": "double"}
INDEX_TYPES = {"int32": "int", "int64": "long long"}
INT32_LIMIT = 2**31

#: Options for NVRTC, the same for cupy.RawModule and for the CI compile check (which adds the arch).
NVRTC_OPTIONS = ("--std=c++17",)


@dataclass(frozen=True)
class Kernel:
    """A templated ``__global__`` function: its name, its file, its C parameter types (T, I symbolic)."""

    name: str
    file: str
    params: tuple[str, ...]

    def expression(self, dtype: str, index: str) -> str:
        """The name expression of one instantiation, e.g. ``fc_im2col<float, int>``."""
        return f"{self.name}<{ELEMENT_TYPES[dtype]}, {INDEX_TYPES[index]}>"

    def c_params(self, dtype: str, index: str) -> tuple[str, ...]:
        """Parameter types with T and I substituted, e.g. ``('const float*', 'float*', 'int', ...)``."""
        t, i = ELEMENT_TYPES[dtype], INDEX_TYPES[index]
        return tuple(re.sub(r"\bI\b", i, re.sub(r"\bT\b", t, p)) for p in self.params)


_GEOMETRY = ("I",) * 8  # kh, kw, sh, sw, ph, pw, dh, dw
KERNELS: dict[str, Kernel] = {
    k.name: k
    for k in (
        Kernel("fc_im2col", "im2col.cu", ("const T*", "T*", *("I",) * 6, *_GEOMETRY, "int")),
        Kernel("fc_col2im", "im2col.cu", ("const T*", "T*", *("I",) * 6, *_GEOMETRY, "int")),
        Kernel("fc_maxpool_fwd", "maxpool.cu", ("const T*", "T*", "int*", *("I",) * 5, *_GEOMETRY)),
        Kernel("fc_maxpool_bwd", "maxpool.cu", ("const T*", "const int*", "T*", *("I",) * 5, *_GEOMETRY)),
    )
}
FILES = tuple(sorted({k.file for k in KERNELS.values()}))


def name_expressions(file: str) -> list[str]:
    """Every instantiation (both element types, both index types) of every kernel in ``file``."""
    return [
        k.expression(dtype, index)
        for k in KERNELS.values()
        if k.file == file
        for dtype in ELEMENT_TYPES
        for index in INDEX_TYPES
    ]


@cache
def source(file: str) -> str:
    """The compilable text of ``file`` with the shared header inlined.

    Inlining (rather than ``-I``) makes the text self-contained, so CuPy's on-disk kernel cache,
    keyed on the source text, is invalidated when the header changes.
    """
    header = (SOURCE_DIR / HEADER).read_text()
    text = (SOURCE_DIR / file).read_text()
    include = f'#include "{HEADER}"'
    if include not in text:
        raise RuntimeError(f"{file} does not include {HEADER}")
    return text.replace(include, f"// ---- {HEADER} (inlined) ----\n{header}// ---- end {HEADER} ----\n")


def index_type(*sizes: int) -> str:
    """``"int32"`` when every size is below 2**31, else ``"int64"``."""
    return "int32" if max(sizes, default=0) < INT32_LIMIT else "int64"


def _geometry(kh: int, kw: int, stride: Pair, pad: Pair, dilation: Pair) -> tuple[int, ...]:
    return (kh, kw, stride[0], stride[1], pad[0], pad[1], dilation[0], dilation[1])


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


@dataclass(frozen=True)
class Launch:
    """What a wrapper needs to launch one kernel: output shape, loop size, index type, scalar args."""

    out_shape: tuple[int, ...]
    total: int
    index: str
    scalars: tuple[int, ...]


def im2col_args(
    x_shape: tuple[int, int, int, int],
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pair,
    dilation: Pair,
    k_major: bool,
) -> Launch:
    """fc_im2col: x (N, C, H, W) -> col (N*OH*OW, C*kh*kw), or its transpose when ``k_major``."""
    n, c, h, w = x_shape
    oh, ow = conv_output_size((h, w), (kh, kw), stride, pad, dilation)
    rows, cols = n * oh * ow, c * kh * kw
    shape = (cols, rows) if k_major else (rows, cols)
    total = rows * cols
    geometry = _geometry(kh, kw, stride, pad, dilation)
    return Launch(
        shape, total, index_type(total, _prod(x_shape)), (n, c, h, w, oh, ow, *geometry, int(k_major))
    )


def col2im_args(
    x_shape: tuple[int, int, int, int],
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pair,
    dilation: Pair,
    k_major: bool,
) -> Launch:
    """fc_col2im: col (N*OH*OW, C*kh*kw) (or its transpose when ``k_major``) -> dx (N, C, H, W)."""
    n, c, h, w = x_shape
    oh, ow = conv_output_size((h, w), (kh, kw), stride, pad, dilation)
    total = _prod(x_shape)
    geometry = _geometry(kh, kw, stride, pad, dilation)
    col_size = n * oh * ow * c * kh * kw
    return Launch(
        tuple(x_shape), total, index_type(total, col_size), (n, c, h, w, oh, ow, *geometry, int(k_major))
    )


def maxpool_fwd_args(
    x_shape: tuple[int, int, int, int], kh: int, kw: int, stride: Pair, pad: Pair, dilation: Pair
) -> Launch:
    """fc_maxpool_fwd: x (N, C, H, W) -> y, argmax (N, C, OH, OW)."""
    n, c, h, w = x_shape
    oh, ow = conv_output_size((h, w), (kh, kw), stride, pad, dilation)
    total = n * c * oh * ow
    geometry = _geometry(kh, kw, stride, pad, dilation)
    return Launch((n, c, oh, ow), total, index_type(total, _prod(x_shape)), (n * c, h, w, oh, ow, *geometry))


def maxpool_bwd_args(
    x_shape: tuple[int, int, int, int], kh: int, kw: int, stride: Pair, pad: Pair, dilation: Pair
) -> Launch:
    """fc_maxpool_bwd: dout, argmax (N, C, OH, OW) -> dx (N, C, H, W)."""
    n, c, h, w = x_shape
    oh, ow = conv_output_size((h, w), (kh, kw), stride, pad, dilation)
    total = _prod(x_shape)
    geometry = _geometry(kh, kw, stride, pad, dilation)
    return Launch(tuple(x_shape), total, index_type(total, n * c * oh * ow), (n * c, h, w, oh, ow, *geometry))
