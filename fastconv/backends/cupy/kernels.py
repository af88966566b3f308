"""The CUDA kernel sources of the cupy backend: files, template instantiations, launch arguments.

Pure Python and NumPy, no CUDA: this module is shared by the three consumers of the sources, so that
all three see exactly the same kernels called with exactly the same arguments:

* :mod:`fastconv.backends.cupy.runtime` loads them with ``cupy.RawModule`` on the GPU (for
  :mod:`~fastconv.backends.cupy.ops` and :mod:`~fastconv.backends.cupy.pooling`);
* ``tests/cuda_tools/check.py`` compiles them with NVRTC for compute_70/80/90 (no GPU needed), and
  compiles them with g++ and ``tests/cuda_tools/cpu_compat.h`` into a CPU library called through
  ctypes.

Shapes given to the ``*_args`` helpers are in the tensor's own layout ("NCHW" or "NHWC"); ``pad`` is
always (top, bottom, left, right). Kernels take only top/left for their index math (bottom/right set
OH/OW, and the average pool's divisor).

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

Pad4 = tuple[int, int, int, int]  # (top, bottom, left, right)
Shape = tuple[int, ...]  # a 4-D shape, in its tensor's layout

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


_GEOMETRY = ("I",) * 8  # kh, kw, sh, sw, top, left, dh, dw
_AVG_GEOMETRY = ("I",) * 8  # kh, kw, sh, sw, top, bottom, left, right
KERNELS: dict[str, Kernel] = {
    k.name: k
    for k in (
        # N, Cx, c0, C, H, W, OH, OW, geometry, k_major
        Kernel("fc_im2col", "im2col.cu", ("const T*", "T*", *("I",) * 8, *_GEOMETRY, "int")),
        Kernel("fc_col2im", "im2col.cu", ("const T*", "T*", *("I",) * 8, *_GEOMETRY, "int")),
        # N, H, W, Ctot, g0, G, Cg, OH, OW, geometry
        Kernel("fc_im2col_nhwc", "im2col.cu", ("const T*", "T*", *("I",) * 9, *_GEOMETRY)),
        Kernel("fc_col2im_nhwc", "im2col.cu", ("const T*", "T*", *("I",) * 9, *_GEOMETRY)),
        # has_bias, N, C, H, W, M, OH, OW, geometry, nhwc
        Kernel(
            "fc_dw_fwd",
            "depthwise.cu",
            ("const T*", "const T*", "const T*", "T*", "int", *("I",) * 7, *_GEOMETRY, "int"),
        ),
        Kernel(
            "fc_dw_bwd_data", "depthwise.cu", ("const T*", "const T*", "T*", *("I",) * 7, *_GEOMETRY, "int")
        ),
        # P, L, N, C, H, W, M, OH, OW, geometry, nhwc
        Kernel(
            "fc_dw_bwd_filter_partial",
            "depthwise.cu",
            ("const T*", "const T*", "T*", *("I",) * 9, *_GEOMETRY, "int"),
        ),
        Kernel("fc_dw_bwd_filter_reduce", "depthwise.cu", ("const T*", "T*", "I", "I")),
        # N, C, H, W, OH, OW, geometry, nhwc
        Kernel("fc_maxpool_fwd", "pool.cu", ("const T*", "T*", "int*", *("I",) * 6, *_GEOMETRY, "int")),
        Kernel("fc_maxpool_bwd", "pool.cu", ("const T*", "const int*", "T*", *("I",) * 6, *_GEOMETRY, "int")),
        # N, C, H, W, OH, OW, avg geometry, count_include_pad, nhwc
        Kernel("fc_avgpool_fwd", "pool.cu", ("const T*", "T*", *("I",) * 6, *_AVG_GEOMETRY, "int", "int")),
        Kernel("fc_avgpool_bwd", "pool.cu", ("const T*", "T*", *("I",) * 6, *_AVG_GEOMETRY, "int", "int")),
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


def _geometry(kh: int, kw: int, stride: Pair, pad: Pad4, dilation: Pair) -> tuple[int, ...]:
    """The kernels' window scalars: kh, kw, sh, sw, top, left, dh, dw."""
    return (kh, kw, stride[0], stride[1], pad[0], pad[2], dilation[0], dilation[1])


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def _nhwc(layout: str) -> int:
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    return int(layout == "NHWC")


def _nchw(shape: Shape, layout: str) -> tuple[int, int, int, int]:
    """A shape in ``layout``'s order as (N, C, H, W)."""
    n, a, b, c = shape
    return (n, c, a, b) if _nhwc(layout) else (n, a, b, c)


def _in_layout(n: int, c: int, h: int, w: int, layout: str) -> tuple[int, int, int, int]:
    return (n, h, w, c) if _nhwc(layout) else (n, c, h, w)


@dataclass(frozen=True)
class Launch:
    """What a wrapper needs to launch one kernel: output shape, loop size, index type, scalar args."""

    out_shape: tuple[int, ...]
    total: int
    index: str
    scalars: tuple[int, ...]


# --- im2col / col2im ---------------------------------------------------------------------------------


def im2col_args(
    x_shape: Shape,
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    k_major: bool,
    c0: int = 0,
    channels: int | None = None,
) -> Launch:
    """fc_im2col: x (N, Cx, H, W) -> col (N*OH*OW, C*kh*kw), or its transpose when ``k_major``.

    The columns are those of channels ``c0 .. c0 + channels - 1`` (default: all of x).
    """
    n, cx, h, w = x_shape
    c = cx - c0 if channels is None else channels
    oh, ow = conv_output_size((h, w), (kh, kw), stride, pad, dilation)
    rows, cols = n * oh * ow, c * kh * kw
    shape = (cols, rows) if k_major else (rows, cols)
    total = rows * cols
    geometry = _geometry(kh, kw, stride, pad, dilation)
    return Launch(
        shape, total, index_type(total, _prod(x_shape)), (n, cx, c0, c, h, w, oh, ow, *geometry, int(k_major))
    )


def col2im_args(
    x_shape: Shape,
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    k_major: bool,
    c0: int = 0,
    channels: int | None = None,
) -> Launch:
    """fc_col2im: col of channels ``c0 ..`` (as :func:`im2col_args`) -> those channels of dx (N, Cx, H, W).

    ``out_shape`` is the whole dx; the kernel writes only the channel window.
    """
    n, cx, h, w = x_shape
    c = cx - c0 if channels is None else channels
    oh, ow = conv_output_size((h, w), (kh, kw), stride, pad, dilation)
    total = n * c * h * w
    geometry = _geometry(kh, kw, stride, pad, dilation)
    col_size = n * oh * ow * c * kh * kw
    return Launch(
        tuple(x_shape),
        total,
        index_type(_prod(x_shape), col_size),
        (n, cx, c0, c, h, w, oh, ow, *geometry, int(k_major)),
    )


def im2col_nhwc_args(
    x_shape: Shape,
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    groups: int,
    g0: int = 0,
    count: int | None = None,
) -> Launch:
    """fc_im2col_nhwc: x (N, H, W, C) -> col (G, N*OH*OW, kh*kw*Cg) for groups ``g0 .. g0 + G - 1``.

    ``count`` is G (default: every group from g0); Cg = C // groups.
    """
    n, h, w, c = x_shape
    cg = c // groups
    g = groups - g0 if count is None else count
    oh, ow = conv_output_size((h, w), (kh, kw), stride, pad, dilation)
    shape = (g, n * oh * ow, kh * kw * cg)
    total = _prod(shape)
    geometry = _geometry(kh, kw, stride, pad, dilation)
    return Launch(shape, total, index_type(total, _prod(x_shape)), (n, h, w, c, g0, g, cg, oh, ow, *geometry))


def col2im_nhwc_args(
    x_shape: Shape,
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    groups: int,
    g0: int = 0,
    count: int | None = None,
) -> Launch:
    """fc_col2im_nhwc: col (G, N*OH*OW, kh*kw*Cg) -> the channels of groups ``g0 ..`` of dx (N, H, W, C).

    ``out_shape`` is the whole dx; the kernel writes only those groups' channels.
    """
    n, h, w, c = x_shape
    cg = c // groups
    g = groups - g0 if count is None else count
    oh, ow = conv_output_size((h, w), (kh, kw), stride, pad, dilation)
    total = n * h * w * g * cg
    geometry = _geometry(kh, kw, stride, pad, dilation)
    col_size = g * n * oh * ow * kh * kw * cg
    return Launch(
        tuple(x_shape),
        total,
        index_type(_prod(x_shape), col_size),
        (n, h, w, c, g0, g, cg, oh, ow, *geometry),
    )


# --- depthwise convolution ---------------------------------------------------------------------------

#: Threads the first stage of the depthwise dW reduction aims for: enough to fill a large GPU, so the
#: chunk count P depends on the shapes alone (never on the device), which keeps dW reproducible.
DW_FILTER_THREADS = 1 << 16


def _dw_common(
    x_shape: Shape,
    filters: int,
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    layout: str,
) -> tuple[int, int, int, int, int, int, int, tuple[int, ...]]:
    n, c, h, w = _nchw(x_shape, layout)
    if filters % c:
        raise ValueError(f"depthwise: F = {filters} is not a multiple of C = {c}")
    oh, ow = conv_output_size((h, w), (kh, kw), stride, pad, dilation)
    return n, c, h, w, filters // c, oh, ow, _geometry(kh, kw, stride, pad, dilation)


def dw_fwd_args(
    x_shape: Shape,
    filters: int,
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    layout: str,
    has_bias: bool,
) -> Launch:
    """fc_dw_fwd: x (layout order), W (F, 1, kh, kw), F = C*M -> y (N, F, OH, OW) in x's layout."""
    n, c, h, w, m, oh, ow, geometry = _dw_common(x_shape, filters, kh, kw, stride, pad, dilation, layout)
    out = _in_layout(n, filters, oh, ow, layout)
    total = _prod(out)
    return Launch(
        out,
        total,
        index_type(total, _prod(x_shape)),
        (int(has_bias), n, c, h, w, m, oh, ow, *geometry, _nhwc(layout)),
    )


def dw_bwd_data_args(
    x_shape: Shape,
    filters: int,
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    layout: str,
) -> Launch:
    """fc_dw_bwd_data: dout (y's shape), W (F, 1, kh, kw) -> dx of ``x_shape`` (layout order)."""
    n, c, h, w, m, oh, ow, geometry = _dw_common(x_shape, filters, kh, kw, stride, pad, dilation, layout)
    total = _prod(x_shape)
    return Launch(
        tuple(x_shape),
        total,
        index_type(total, n * filters * oh * ow),
        (n, c, h, w, m, oh, ow, *geometry, _nhwc(layout)),
    )


def dw_bwd_filter_args(
    x_shape: Shape,
    filters: int,
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    layout: str,
) -> tuple[Launch, Launch]:
    """fc_dw_bwd_filter_partial then fc_dw_bwd_filter_reduce: x, dout -> partial (P, F, kh, kw) -> dW.

    The N*OH*OW terms of each dW element are split into P chunks of L (fixed by the shapes), summed
    in parallel, then the P partial sums are added in order.
    """
    n, c, h, w, m, oh, ow, geometry = _dw_common(x_shape, filters, kh, kw, stride, pad, dilation, layout)
    rows = n * oh * ow
    k = filters * kh * kw
    p = max(1, min(rows, -(-DW_FILTER_THREADS // k)))
    chunk = -(-rows // p)
    p = -(-rows // chunk)
    partial = (p, filters, kh, kw)
    first = Launch(
        partial,
        p * k,
        index_type(p * k, _prod(x_shape), n * filters * oh * ow),
        (p, chunk, n, c, h, w, m, oh, ow, *geometry, _nhwc(layout)),
    )
    second = Launch((filters, 1, kh, kw), k, index_type(p * k), (p, k))
    return first, second


# --- pooling -----------------------------------------------------------------------------------------


def _pool_common(
    x_shape: Shape, out_hw: Pair, layout: str
) -> tuple[int, int, int, int, int, int, tuple[int, int, int, int]]:
    n, c, h, w = _nchw(x_shape, layout)
    oh, ow = out_hw
    return n, c, h, w, oh, ow, _in_layout(n, c, oh, ow, layout)


def maxpool_fwd_args(
    x_shape: Shape,
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    out_hw: Pair,
    layout: str,
) -> Launch:
    """fc_maxpool_fwd: x (layout order) -> y, argmax (N, C, OH, OW) in x's layout."""
    n, c, h, w, oh, ow, out = _pool_common(x_shape, out_hw, layout)
    total = _prod(out)
    geometry = _geometry(kh, kw, stride, pad, dilation)
    return Launch(
        out, total, index_type(total, _prod(x_shape)), (n, c, h, w, oh, ow, *geometry, _nhwc(layout))
    )


def maxpool_bwd_args(
    x_shape: Shape,
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pad4,
    dilation: Pair,
    out_hw: Pair,
    layout: str,
) -> Launch:
    """fc_maxpool_bwd: dout, argmax (y's shape) -> dx of ``x_shape`` (layout order)."""
    n, c, h, w, oh, ow, out = _pool_common(x_shape, out_hw, layout)
    total = _prod(x_shape)
    geometry = _geometry(kh, kw, stride, pad, dilation)
    return Launch(
        tuple(x_shape), total, index_type(total, _prod(out)), (n, c, h, w, oh, ow, *geometry, _nhwc(layout))
    )


def _avg_geometry(kh: int, kw: int, stride: Pair, pad: Pad4) -> tuple[int, ...]:
    """The average-pool window scalars: kh, kw, sh, sw, top, bottom, left, right."""
    return (kh, kw, stride[0], stride[1], *pad)


def avgpool_fwd_args(
    x_shape: Shape,
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pad4,
    out_hw: Pair,
    count_include_pad: bool,
    layout: str,
) -> Launch:
    """fc_avgpool_fwd: x (layout order) -> y (N, C, OH, OW) in x's layout."""
    n, c, h, w, oh, ow, out = _pool_common(x_shape, out_hw, layout)
    total = _prod(out)
    return Launch(
        out,
        total,
        index_type(total, _prod(x_shape)),
        (n, c, h, w, oh, ow, *_avg_geometry(kh, kw, stride, pad), int(count_include_pad), _nhwc(layout)),
    )


def avgpool_bwd_args(
    x_shape: Shape,
    kh: int,
    kw: int,
    stride: Pair,
    pad: Pad4,
    out_hw: Pair,
    count_include_pad: bool,
    layout: str,
) -> Launch:
    """fc_avgpool_bwd: dout (y's shape) -> dx of ``x_shape`` (layout order)."""
    n, c, h, w, oh, ow, out = _pool_common(x_shape, out_hw, layout)
    total = _prod(x_shape)
    return Launch(
        tuple(x_shape),
        total,
        index_type(total, _prod(out)),
        (n, c, h, w, oh, ow, *_avg_geometry(kh, kw, stride, pad), int(count_include_pad), _nhwc(layout)),
    )
