"""Output sizes and argument normalisation, shared by every backend.

All sizes follow PyTorch / the classic layers (floor mode, cross-correlation):

    OH = (H + 2*pad_h - dilation_h*(kh - 1) - 1) // stride_h + 1
    OW = (W + 2*pad_w - dilation_w*(kw - 1) - 1) // stride_w + 1

Backends never re-derive these: they call :func:`conv_output_size`.
"""

from __future__ import annotations

import numbers

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


def effective_kernel(k: int, dilation: int) -> int:
    """Extent of a dilated kernel: dilation*(k - 1) + 1."""
    return dilation * (k - 1) + 1


def conv_output_size(in_hw: Pair, kernel: Pair, stride: Pair, pad: Pair, dilation: Pair) -> Pair:
    """(OH, OW) of a convolution or pooling window sweep (floor mode).

    Raises ValueError when the dilated window is larger than the padded input.
    """
    out = []
    for axis, size, k, s, p, d in zip(("height", "width"), in_hw, kernel, stride, pad, dilation):
        ek = effective_kernel(k, d)
        if ek > size + 2 * p:
            raise ValueError(
                f"window {axis} {ek} (kernel {k}, dilation {d}) is larger than the padded input "
                f"{axis} {size + 2 * p} (input {size}, pad {p}); use a smaller kernel or more padding"
            )
        out.append((size + 2 * p - ek) // s + 1)
    return out[0], out[1]
