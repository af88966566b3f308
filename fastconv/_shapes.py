"""Output sizes and argument normalisation, shared by every backend.

All sizes follow PyTorch / the classic layers (floor mode, cross-correlation), with a padding of
``top``/``bottom`` rows and ``left``/``right`` columns:

    OH = (H + top + bottom - dilation_h*(kh - 1) - 1) // stride_h + 1
    OW = (W + left + right - dilation_w*(kw - 1) - 1) // stride_w + 1

Pooling in ceil mode rounds up instead (:func:`pool_output_size`). Backends never re-derive these:
they call :func:`conv_output_size`, and get a pool's (OH, OW) as an argument.
"""

from __future__ import annotations

import numbers
from typing import Any

Pair = tuple[int, int]
IntOrPair = int | tuple[int, int]
Pad4 = tuple[int, int, int, int]
"""A padding as (top, bottom, left, right): what every backend kernel receives."""
PadSpec = int | tuple[int, int] | tuple[tuple[int, int], tuple[int, int]] | str
"""A padding as users write it: int, (h, w), ((top, bottom), (left, right)), "valid" or "same"."""
LAYOUTS = ("NCHW", "NHWC")


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


def as_pad4(pad: Pair | Pad4) -> Pad4:
    """A symmetric (h, w) pair or a (top, bottom, left, right) 4-tuple, as the 4-tuple."""
    if len(pad) == 2:
        return (pad[0], pad[0], pad[1], pad[1])
    return (pad[0], pad[1], pad[2], pad[3])  # type: ignore[misc]


def conv_output_size(in_hw: Pair, kernel: Pair, stride: Pair, pad: Pair | Pad4, dilation: Pair) -> Pair:
    """(OH, OW) of a convolution or pooling window sweep (floor mode).

    ``pad`` is (top, bottom, left, right), or a symmetric (h, w) pair. Raises ValueError when the
    dilated window is larger than the padded input, or when an output size reaches 2**31 (only an
    absurd padding does that).
    """
    top, bottom, left, right = as_pad4(pad)
    out = []
    for axis, size, k, s, (p0, p1), d in zip(
        ("height", "width"), in_hw, kernel, stride, ((top, bottom), (left, right)), dilation
    ):
        ek = effective_kernel(k, d)
        padded = size + p0 + p1
        if ek > padded:
            what = f"pad {p0}" if p0 == p1 else f"pads {p0} and {p1}"
            raise ValueError(
                f"window {axis} {ek} (kernel {k}, dilation {d}) is larger than the padded input "
                f"{axis} {padded} (input {size}, {what}); use a smaller kernel or more padding"
            )
        o = (padded - ek) // s + 1
        if o >= 2**31:  # no allocation could hold it; numba and CUDA index with 64-bit ints below this
            raise ValueError(
                f"output {axis} {o} (input {size}, pad {max(p0, p1)}, stride {s}) is not below 2**31: "
                f"pad {max(p0, p1)} is far too large"
            )
        out.append(o)
    return out[0], out[1]


def pool_output_size(
    in_hw: Pair, kernel: Pair, stride: Pair, pad: Pad4, dilation: Pair, ceil_mode: bool
) -> Pair:
    """(OH, OW) of a pooling window sweep, PyTorch's rule.

    Floor mode is :func:`conv_output_size`. Ceil mode rounds the window count up, then drops the
    last window when it would start past the input and its top/left padding
    (``(OH - 1)*stride >= H + top``), so every window holds at least one input element.
    """
    floor = conv_output_size(in_hw, kernel, stride, pad, dilation)
    if not ceil_mode:
        return floor
    top, bottom, left, right = pad
    out = []
    for size, k, s, p0, p1, d in zip(in_hw, kernel, stride, (top, left), (bottom, right), dilation):
        span = size + p0 + p1 - effective_kernel(k, d)
        o = -(-span // s) + 1
        if (o - 1) * s >= size + p0:
            o -= 1
        out.append(o)
    return out[0], out[1]


def pad4(
    pad: Any,
    name: str = "pad",
    *,
    kernel: Pair | None = None,
    dilation: Pair = (1, 1),
    stride: Pair = (1, 1),
    in_hw: Pair | None = None,
    same: str = "conv",
) -> Pad4:
    """Normalise a padding as users write it to (top, bottom, left, right).

    Forms: ``int``, ``(h, w)``, ``((top, bottom), (left, right))``, ``"valid"`` (no padding) and
    ``"same"``. For convolutions (``same="conv"``) "same" needs stride 1 and pads
    ``dilation*(k - 1)`` in all, the odd one at the bottom/right as PyTorch and TensorFlow do. For
    pooling (``same="pool"``) it is TensorFlow's for any stride: ``OH = ceil(H / stride)``, padded
    ``max((OH - 1)*stride + k - H, 0)`` in all, split the same way (needs ``in_hw``).
    """
    if isinstance(pad, str):
        if pad == "valid":
            return (0, 0, 0, 0)
        if pad != "same":
            raise ValueError(
                f"{name} must be an int, a pair, ((top, bottom), (left, right)), 'valid' or 'same'; got {pad!r}"
            )
        if kernel is None:
            raise ValueError(f"{name}='same' needs a kernel size")
        totals = []
        for k, d, s, size in zip(kernel, dilation, stride, in_hw or (None, None)):
            if same == "conv":
                if s != 1:
                    raise ValueError(
                        f"{name}='same' needs stride 1, got stride {tuple(stride)}; pass the padding "
                        "explicitly as ((top, bottom), (left, right)) for a strided layer"
                    )
                totals.append(effective_kernel(k, d) - 1)
            else:
                assert size is not None
                o = -(-size // s)
                totals.append(max((o - 1) * s + effective_kernel(k, d) - size, 0))
        (th, tw) = totals
        return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    if isinstance(pad, (tuple, list)) and len(pad) == 2 and all(isinstance(v, (tuple, list)) for v in pad):
        if not all(len(v) == 2 for v in pad):
            raise ValueError(f"{name} as ((top, bottom), (left, right)) needs two pairs, got {pad!r}")
        (t, b), (l, r) = pair(tuple(pad[0]), name, minimum=0), pair(tuple(pad[1]), name, minimum=0)
        return (t, b, l, r)
    try:
        ph, pw = pair(pad, name, minimum=0)
    except TypeError:
        raise TypeError(
            f"{name} must be an int, a pair, ((top, bottom), (left, right)), 'valid' or 'same'; got {pad!r}"
        ) from None
    return (ph, ph, pw, pw)


def layout_name(layout: Any) -> str:
    """``layout`` checked: "NCHW" or "NHWC"."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    return str(layout)


def to_nchw(shape: tuple[int, ...], layout: str) -> tuple[int, int, int, int]:
    """A 4-D shape given in ``layout``'s order, as (N, C, H, W)."""
    if layout == "NHWC":
        return (shape[0], shape[3], shape[1], shape[2])
    return (shape[0], shape[1], shape[2], shape[3])


def from_nchw(shape: tuple[int, int, int, int], layout: str) -> tuple[int, int, int, int]:
    """(N, C, H, W) in ``layout``'s order."""
    if layout == "NHWC":
        return (shape[0], shape[2], shape[3], shape[1])
    return shape


def bad_argmax_error(argmax: Any, window: int) -> ValueError:
    """The error every backend raises for argmax values outside [0, window) (``window = kh*kw``)."""
    count = int(((argmax < 0) | (argmax >= window)).sum())
    low, high = int(argmax.min()), int(argmax.max())
    return ValueError(
        f"argmax holds {count} value{'s' if count != 1 else ''} outside [0, {window}) (kh*kw of the pooling "
        f"window; got min {low}, max {high}): pass the argmax that max_pool2d returned for this x, "
        "kernel_size, stride, pad and dilation"
    )
