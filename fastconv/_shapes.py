"""Output sizes and argument normalisation, shared by every backend.

All sizes follow PyTorch / the classic layers (floor mode, cross-correlation):

    OH = (H + 2*pad_h - dilation_h*(kh - 1) - 1) // stride_h + 1
    OW = (W + 2*pad_w - dilation_w*(kw - 1) - 1) // stride_w + 1

Backends never re-derive these: they call :func:`conv_output_size`.
"""

from __future__ import annotations

import numbers
from typing import Any

Pair = tuple[int, int]
IntOrPair = int | tuple[int, int]


def pair(value: IntOrPair, name: str, *, minimum: int) -> Pair:
    """Normalise an int or an (h, w) pair to a tuple of two ints >= ``minimum``.

    ``name`` is the argument's name, used in the error message.
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got bool {value!r}")
    if isinstance(value, numbers.Integral):
        values = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value):
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
        values = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    for v in values:
        if v < minimum:
            need = "at least 1" if minimum == 1 else f">= {minimum}"
            raise ValueError(f"{name} must be {need}, got {value!r}")
    return values


def positive_int(value: int, name: str) -> int:
    """``value`` as an int >= 1 (a NumPy integer is fine); TypeError for anything else, such as a pair."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value!r}")
    return int(value)


def shape4(value: Any, name: str) -> tuple[int, int, int, int]:
    """A 4-D shape (N, C, H, W) of non-negative ints with H, W >= 1, as a tuple."""
    try:
        dims = tuple(value)
    except TypeError:
        raise TypeError(
            f"{name} must be a shape (N, C, H, W), got {type(value).__name__} {value!r}"
        ) from None
    if len(dims) != 4 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in dims):
        raise ValueError(f"{name} must be 4 ints (N, C, H, W), got {value!r}")
    out = tuple(int(v) for v in dims)
    if min(out) < 0 or min(out[2:]) < 1:
        raise ValueError(f"{name} must have N, C >= 0 and H, W >= 1, got {out}")
    return out  # type: ignore[return-value]


def effective_kernel(k: int, dilation: int) -> int:
    """Extent of a dilated kernel: dilation*(k - 1) + 1."""
    return dilation * (k - 1) + 1


def conv_output_size(in_hw: Pair, kernel: Pair, stride: Pair, pad: Pair, dilation: Pair) -> Pair:
    """(OH, OW) of a convolution or pooling window sweep (floor mode).

    Raises ValueError when the dilated window is larger than the padded input, or when an output
    size reaches 2**31 (only an absurd padding does that).
    """
    out = []
    for axis, size, k, s, p, d in zip(("height", "width"), in_hw, kernel, stride, pad, dilation):
        ek = effective_kernel(k, d)
        if ek > size + 2 * p:
            raise ValueError(
                f"window {axis} {ek} (kernel {k}, dilation {d}) is larger than the padded input "
                f"{axis} {size + 2 * p} (input {size}, pad {p}); use a smaller kernel or more padding"
            )
        o = (size + 2 * p - ek) // s + 1
        if o >= 2**31:  # no allocation could hold it; numba and CUDA index with 64-bit ints below this
            raise ValueError(
                f"output {axis} {o} (input {size}, pad {p}, stride {s}) is not below 2**31: pad {p} is far too large"
            )
        out.append(o)
    return out[0], out[1]


def bad_argmax_error(argmax: Any, window: int) -> ValueError:
    """The error every backend raises for argmax values outside [0, window) (``window = kh*kw``)."""
    count = int(((argmax < 0) | (argmax >= window)).sum())
    low, high = int(argmax.min()), int(argmax.max())
    return ValueError(
        f"argmax holds {count} value{'s' if count != 1 else ''} outside [0, {window}) (kh*kw of the pooling "
        f"window; got min {low}, max {high}): pass the argmax that max_pool2d returned for this x, "
        "kernel_size, stride, pad and dilation"
    )
