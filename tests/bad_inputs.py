"""Bad input a real program produces, one case per kind, for every public function and layer.

Each case builds fresh random inputs on a backend, makes one call that must fail, and names the
exception type and a pattern its message must match (the argument's name and what it got). The
robustness tests run the cases in-process, except the ones that reach a kernel (``in_kernel``): those
run in a child process (``python tests/bad_inputs.py BACKEND``), so a crash fails the test instead of
ending the test run.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

import fastconv  # noqa: E402
from fastconv.layers import Convolution, Pooling  # noqa: E402


@dataclass(frozen=True)
class BadInput:
    """One kind of bad input: ``make(dev, rng)`` returns (the failing call, the arrays it receives)."""

    id: str
    make: Callable[[Callable[[np.ndarray], Any], np.random.Generator], tuple[Callable[[], Any], list[Any]]]
    error: type[Exception] | tuple[type[Exception], ...]
    match: str
    in_kernel: bool = False  # passes every check of the functional API: the backend must refuse it


def _x(dev, rng, shape=(2, 3, 8, 7), dtype=np.float64):
    return dev(rng.standard_normal(shape).astype(dtype))


def _conv(x, W, b=None, **kw):
    return lambda: fastconv.conv2d(x, W, b, **kw)


def _pool_parts(dev, rng, k=2, s=2, p=0):
    """(x, dout, argmax) of a real max pool, argmax on the host for editing."""
    x = _x(dev, rng)
    y, argmax = fastconv.max_pool2d(x, k, s, p)
    dout = dev(rng.standard_normal(tuple(y.shape)))
    return x, dout, fastconv.to_host(argmax).copy()


def _pool_backward(dev, rng, edit: Callable[[np.ndarray], Any], k=2, s=2, p=0):
    x, dout, argmax = _pool_parts(dev, rng, k, s, p)
    bad = edit(argmax)
    bad = dev(bad) if isinstance(bad, np.ndarray) else bad
    return (lambda: fastconv.max_pool2d_backward(dout, bad, tuple(x.shape), k, s, p)), [x, dout, bad]


def _torch_tensor(dev, rng):
    import torch  # the tests skip this case where PyTorch is not installed

    t = torch.from_numpy(rng.standard_normal((2, 3, 8, 7)))
    W = _x(dev, rng, (4, 3, 3, 3))
    return _conv(t, W), [W]


def _out_of_range(value: Callable[[int], int]) -> Callable[[np.ndarray], np.ndarray]:
    def edit(argmax: np.ndarray) -> np.ndarray:
        argmax.reshape(-1)[argmax.size // 2] = value(4)  # 2x2 window: valid values are 0..3
        return argmax

    return edit


def _nhwc_ceil_pool_backward(dev, rng):
    """A ceil-mode NHWC max pool's backward with one argmax value of kh*kw (outside the window)."""
    x = _x(dev, rng, (2, 7, 8, 3))
    geometry = ((3, 2), 2, ((1, 0), (0, 1)), 1, True, "NHWC")
    y, argmax = fastconv.max_pool2d(x, *geometry)
    bad = fastconv.to_host(argmax).copy()
    bad.reshape(-1)[bad.size // 2] = 6
    dout, bad = dev(rng.standard_normal(tuple(y.shape))), dev(bad)
    return (lambda: fastconv.max_pool2d_backward(dout, bad, tuple(x.shape), *geometry)), [x, dout, bad]


def _layer_forward(layer_factory, x_factory):
    def make(dev, rng):
        layer, x = layer_factory(dev, rng), x_factory(dev, rng)
        return (lambda: layer.forward(x)), [x]

    return make


def _cases() -> list[BadInput]:
    W3 = (4, 3, 3, 3)
    return [
        # -- arrays of the wrong kind ---------------------------------------------------------
        BadInput(
            "conv-x-list",
            lambda d, r: (_conv([[[[1.0]]]], _x(d, r, W3)), []),
            TypeError,
            r"x must be an array.*got list",
        ),
        BadInput("conv-x-torch-tensor", _torch_tensor, TypeError, r"x is a torch\.Tensor.*numpy"),
        BadInput(
            "conv-x-3d",
            lambda d, r: (_conv(x := _x(d, r, (3, 8, 7)), W := _x(d, r, W3)), [x, W]),
            ValueError,
            r"x must be 4-D.*got shape \(3, 8, 7\)",
        ),
        BadInput(
            "conv-x-int",
            lambda d, r: (_conv(x := d(r.integers(0, 9, (2, 3, 8, 7))), W := _x(d, r, W3)), [x, W]),
            TypeError,
            r"x must have a floating dtype.*got int64",
        ),
        BadInput(
            "conv-x-longdouble",
            lambda d, r: (_conv(x := np.ones((2, 3, 8, 7), np.longdouble), W := _x(d, r, W3)), [x, W]),
            TypeError,
            r"x must have a floating dtype.*got float128|x must have a floating dtype.*longdouble",
        ),
        BadInput(
            "conv-W-complex",
            lambda d, r: (_conv(x := _x(d, r), W := d(np.ones(W3, np.complex128))), [x, W]),
            TypeError,
            r"W must have a floating dtype.*got complex128",
        ),
        BadInput(
            "conv-x-object",
            lambda d, r: (_conv(x := np.ones((2, 3, 8, 7), object), W := _x(d, r, W3)), [x, W]),
            TypeError,
            r"x must have a floating dtype.*got object",
        ),
        BadInput(
            "conv-x-masked",
            lambda d, r: (
                _conv(x := np.ma.masked_less(r.standard_normal((2, 3, 8, 7)), 0), W := _x(d, r, W3)),
                [x, W],
            ),
            TypeError,
            r"x is a masked array",
        ),
        BadInput(
            "conv-x-empty-height",
            lambda d, r: (_conv(x := _x(d, r, (2, 3, 0, 7)), W := _x(d, r, (4, 3, 1, 1)), pad=1), [x, W]),
            ValueError,
            r"x must have a height and width of at least 1.*\(2, 3, 0, 7\)",
        ),
        # -- shapes that do not fit ------------------------------------------------------------
        BadInput(
            "conv-channel-mismatch",
            lambda d, r: (_conv(x := _x(d, r), W := _x(d, r, (4, 2, 3, 3))), [x, W]),
            ValueError,
            r"channel mismatch: x has 3 channels.*W \(4, 2, 3, 3\).* expects 2",
        ),
        BadInput(
            "conv-W-no-filters",
            lambda d, r: (_conv(x := _x(d, r), W := _x(d, r, (0, 3, 3, 3))), [x, W]),
            ValueError,
            r"W must have at least one filter.*\(0, 3, 3, 3\)",
        ),
        BadInput(
            "conv-b-shape",
            lambda d, r: (_conv(x := _x(d, r), W := _x(d, r, W3), b := _x(d, r, (5,))), [x, W, b]),
            ValueError,
            r"b must have shape \(4,\).*got shape \(5,\)",
        ),
        BadInput(
            "conv-b-string",
            lambda d, r: (_conv(x := _x(d, r), W := _x(d, r, W3), "0.1"), [x, W]),
            TypeError,
            r"b must be an array.*got str",
        ),
        BadInput(
            "conv-window-too-large",
            lambda d, r: (_conv(x := _x(d, r), W := _x(d, r, (4, 3, 9, 3))), [x, W]),
            ValueError,
            r"window height 9 \(kernel 9.*padded input height 8",
        ),
        BadInput(
            "conv-absurd-pad",
            lambda d, r: (_conv(x := _x(d, r), W := _x(d, r, W3), pad=2**40), [x, W]),
            ValueError,
            r"output height .* pad 1099511627776 is far too large",
        ),
        # -- geometry arguments ----------------------------------------------------------------
        BadInput(
            "conv-stride-zero",
            lambda d, r: (_conv(x := _x(d, r), W := _x(d, r, W3), stride=0), [x, W]),
            ValueError,
            r"stride must be at least 1, got 0",
        ),
        BadInput(
            "conv-stride-float",
            lambda d, r: (_conv(x := _x(d, r), W := _x(d, r, W3), stride=1.5), [x, W]),
            TypeError,
            r"stride must be an int or a pair of ints, got 1\.5",
        ),
        BadInput(
            "conv-stride-triple",
            lambda d, r: (_conv(x := _x(d, r), W := _x(d, r, W3), stride=(1, 1, 1)), [x, W]),
            TypeError,
            r"stride must be an int or a pair of ints, got \(1, 1, 1\)",
        ),
        BadInput(
            "conv-pad-negative",
            lambda d, r: (_conv(x := _x(d, r), W := _x(d, r, W3), pad=-1), [x, W]),
            ValueError,
            r"pad must be >= 0, got -1",
        ),
        BadInput(
            "conv-dilation-zero",
            lambda d, r: (_conv(x := _x(d, r), W := _x(d, r, W3), dilation=(1, 0)), [x, W]),
            ValueError,
            r"dilation must be at least 1, got \(1, 0\)",
        ),
        BadInput(
            "conv-backend-unknown",
            lambda d, r: (lambda: fastconv.conv2d(_x(d, r), _x(d, r, W3), backend="nope"), []),
            ValueError,
            r"unknown backend 'nope'.*known backends",
        ),
        BadInput(
            "conv-backend-not-a-string",
            lambda d, r: (lambda: fastconv.conv2d(_x(d, r), _x(d, r, W3), backend=3), []),
            TypeError,
            r"backend from backend= on the call must be a string.*got 3",
        ),
        # -- backward ---------------------------------------------------------------------------
        BadInput(
            "conv-backward-dout-shape",
            lambda d, r: (
                (lambda: fastconv.conv2d_backward(g, x, W)),
                [g := _x(d, r, (2, 4, 5, 5)), x := _x(d, r), W := _x(d, r, W3)],
            ),
            ValueError,
            r"dout must have the shape of conv2d's output, \(2, 4, 6, 5\).*got \(2, 4, 5, 5\)",
        ),
        BadInput(
            "conv-backward-dout-int",
            lambda d, r: (
                (lambda: fastconv.conv2d_backward(g, x, W)),
                [g := d(np.ones((2, 4, 6, 5), np.int32)), x := _x(d, r), W := _x(d, r, W3)],
            ),
            TypeError,
            r"dout must have a floating dtype.*got int32",
        ),
        BadInput(
            "conv-backward-need-dx",
            lambda d, r: (
                (lambda: fastconv.conv2d_backward(g, x, W, need_dx="yes")),
                [g := _x(d, r, (2, 4, 6, 5)), x := _x(d, r), W := _x(d, r, W3)],
            ),
            TypeError,
            r"need_dx must be True or False, got 'yes'",
        ),
        # -- max pooling -------------------------------------------------------------------------
        BadInput(
            "pool-kernel-zero",
            lambda d, r: ((lambda: fastconv.max_pool2d(x, 0)), [x := _x(d, r)]),
            ValueError,
            r"kernel_size must be at least 1, got 0",
        ),
        BadInput(
            "pool-pad-over-half",
            lambda d, r: ((lambda: fastconv.max_pool2d(x, 2, 2, 2)), [x := _x(d, r)]),
            ValueError,
            r"pad 2 must be at most half the pooling window",
        ),
        BadInput(
            "pool-argmax-too-large",
            lambda d, r: _pool_backward(d, r, _out_of_range(lambda w: w)),
            ValueError,
            r"argmax holds 1 value outside \[0, 4\).*max 4",
            in_kernel=True,
        ),
        BadInput(
            "pool-argmax-negative",
            lambda d, r: _pool_backward(d, r, _out_of_range(lambda w: -1)),
            ValueError,
            r"argmax holds 1 value outside \[0, 4\).*min -1",
            in_kernel=True,
        ),
        BadInput(
            "pool-argmax-huge-overlapping",
            lambda d, r: _pool_backward(d, r, _out_of_range(lambda w: 2**30), k=3, s=1, p=1),
            ValueError,
            r"argmax holds .* outside \[0, 9\)",
            in_kernel=True,
        ),
        BadInput(
            "pool-argmax-int64-wraps",
            lambda d, r: _pool_backward(
                d, r, lambda a: _out_of_range(lambda w: 2**32 + 1)(a.astype(np.int64))
            ),
            ValueError,
            r"argmax holds 1 value outside \[0, 4\)",
        ),
        BadInput(
            "pool-argmax-float",
            lambda d, r: _pool_backward(d, r, lambda a: a.astype(np.float64)),
            ValueError,
            r"argmax must be the integer array max_pool2d returned.*dtype float64",
        ),
        BadInput(
            "pool-argmax-shape",
            lambda d, r: _pool_backward(d, r, lambda a: a[:, :, :-1]),
            ValueError,
            r"argmax must be the integer array max_pool2d returned, shape \(2, 3, 4, 3\); got shape \(2, 3, 3, 3\)",
        ),
        BadInput(
            "pool-argmax-list",
            lambda d, r: _pool_backward(d, r, lambda a: a.tolist()),
            TypeError,
            r"argmax must be the integer array max_pool2d returned, got list",
        ),
        BadInput(
            "pool-x-shape-length",
            lambda d, r: (
                (lambda: fastconv.max_pool2d_backward(g, a, (2, 3, 8), 2)),
                [g := _x(d, r, (2, 3, 4, 3)), a := d(np.zeros((2, 3, 4, 3), np.int32))],
            ),
            ValueError,
            r"x_shape must be 4 ints \(N, C, H, W\), got \(2, 3, 8\)",
        ),
        BadInput(
            "pool-x-shape-not-a-shape",
            lambda d, r: (
                (lambda: fastconv.max_pool2d_backward(g, a, 5, 2)),
                [g := _x(d, r, (2, 3, 4, 3)), a := d(np.zeros((2, 3, 4, 3), np.int32))],
            ),
            TypeError,
            r"x_shape must be a shape \(N, C, H, W\), got int 5",
        ),
        BadInput(
            "pool-x-shape-negative",
            lambda d, r: (
                (lambda: fastconv.max_pool2d_backward(g, a, (-2, 3, 8, 7), 2)),
                [g := _x(d, r, (2, 3, 4, 3)), a := d(np.zeros((2, 3, 4, 3), np.int32))],
            ),
            ValueError,
            r"x_shape must have N, C >= 0 and H, W >= 1, got \(-2, 3, 8, 7\)",
        ),
        # -- contract v2: groups, layouts, pad forms, transposed convolution, pools ------------------
        BadInput(
            "conv-groups-not-dividing",
            lambda d, r: (_conv(x := _x(d, r), W := _x(d, r, (4, 1, 3, 3)), groups=2), [x, W]),
            ValueError,
            r"groups=2 must divide both the input channels \(3\) and the output channels \(4\)",
        ),
        BadInput(
            "conv-groups-W-channels",
            lambda d, r: (_conv(x := _x(d, r, (2, 4, 8, 7)), W := _x(d, r, (4, 4, 3, 3)), groups=2), [x, W]),
            ValueError,
            r"channel mismatch: x has 4 channels.*W \(4, 4, 3, 3\) with groups=2 expects 8",
        ),
        BadInput(
            "conv-groups-float",
            lambda d, r: (_conv(x := _x(d, r), W := _x(d, r, W3), groups=1.0), [x, W]),
            TypeError,
            r"groups must be an int, got float 1\.0",
        ),
        BadInput(
            "conv-same-strided",
            lambda d, r: (_conv(x := _x(d, r), W := _x(d, r, W3), stride=2, pad="same"), [x, W]),
            ValueError,
            r"pad='same' needs stride 1, got stride \(2, 2\)",
        ),
        BadInput(
            "conv-pad-nested-short",
            lambda d, r: (_conv(x := _x(d, r), W := _x(d, r, W3), pad=((1, 1), (1,))), [x, W]),
            ValueError,
            r"pad as \(\(top, bottom\), \(left, right\)\) needs two pairs, got \(\(1, 1\), \(1,\)\)",
        ),
        BadInput(
            "conv-pad-nested-negative",
            lambda d, r: (_conv(x := _x(d, r), W := _x(d, r, W3), pad=((0, -1), (1, 1))), [x, W]),
            ValueError,
            r"pad must be >= 0, got \(0, -1\)",
        ),
        BadInput(
            "conv-pad-unknown-string",
            lambda d, r: (_conv(x := _x(d, r), W := _x(d, r, W3), pad="full"), [x, W]),
            ValueError,
            r"pad must be an int, a pair, .*'valid' or 'same'; got 'full'",
        ),
        BadInput(
            "conv-layout-unknown",
            lambda d, r: (_conv(x := _x(d, r), W := _x(d, r, W3), layout="NWHC"), [x, W]),
            ValueError,
            r"layout must be 'NCHW' or 'NHWC', got 'NWHC'",
        ),
        BadInput(
            "conv-nhwc-channels",
            lambda d, r: (_conv(x := _x(d, r), W := _x(d, r, W3), layout="NHWC"), [x, W]),  # NCHW data
            ValueError,
            r"channel mismatch: x has 7 channels \(shape \(2, 3, 8, 7\), layout 'NHWC', channels on axis 3\)",
        ),
        BadInput(
            "conv-transpose-output-padding",
            lambda d, r: (
                (lambda: fastconv.conv_transpose2d(x, W, stride=2, output_padding=2)),
                [x := _x(d, r), W := _x(d, r, (3, 4, 3, 3))],
            ),
            ValueError,
            r"output_padding height 2 must be smaller than the stride \(2\) or the dilation \(1\)",
        ),
        BadInput(
            "conv-transpose-W-channels",
            lambda d, r: (
                (lambda: fastconv.conv_transpose2d(x, W)),
                [x := _x(d, r), W := _x(d, r, (4, 3, 3, 3))],
            ),
            ValueError,
            r"channel mismatch: x has 3 channels.*W \(4, 3, 3, 3\) expects 4",
        ),
        BadInput(
            "pool-ceil-window-too-large",
            lambda d, r: ((lambda: fastconv.max_pool2d(x, 3, ceil_mode=True)), [x := _x(d, r, (2, 3, 2, 7))]),
            ValueError,
            r"window height 3 \(kernel 3, dilation 1\) is larger than the padded input height 2",
        ),
        BadInput(
            "pool-pad-bottom-over-half",
            lambda d, r: (
                (lambda: fastconv.avg_pool2d(x, 3, 2, ((0, 2), (1, 1)), ceil_mode=True)),
                [x := _x(d, r)],
            ),
            ValueError,
            r"pad 2 must be at most half the pooling window height 3",
        ),
        BadInput(
            "avgpool-count-include-pad-int",
            lambda d, r: ((lambda: fastconv.avg_pool2d(x, 2, count_include_pad=1)), [x := _x(d, r)]),
            TypeError,
            r"count_include_pad must be True or False, got 1",
        ),
        BadInput(
            "pool-argmax-too-large-nhwc-ceil",
            lambda d, r: _nhwc_ceil_pool_backward(d, r),
            ValueError,
            r"argmax holds 1 value outside \[0, 6\)",
            in_kernel=True,
        ),
        # -- the book's im2col / col2im ------------------------------------------------------------
        BadInput(
            "im2col-filter-pair",
            lambda d, r: ((lambda: fastconv.im2col(x, (3, 5), 3)), [x := _x(d, r)]),
            TypeError,
            r"filter_h must be an int, got tuple \(3, 5\)",
        ),
        BadInput(
            "im2col-filter-zero",
            lambda d, r: ((lambda: fastconv.im2col(x, 3, 0)), [x := _x(d, r)]),
            ValueError,
            r"filter_w must be at least 1, got 0",
        ),
        BadInput(
            "col2im-filter-pair",
            lambda d, r: ((lambda: fastconv.col2im(c, (2, 3, 8, 7), 3, (3, 3))), [c := _x(d, r, (60, 27))]),
            TypeError,
            r"filter_w must be an int, got tuple \(3, 3\)",
        ),
        BadInput(
            "col2im-col-shape",
            lambda d, r: ((lambda: fastconv.col2im(c, (2, 3, 8, 7), 3, 3)), [c := _x(d, r, (60, 26))]),
            ValueError,
            r"col must have shape \(60, 27\) for input_shape \(2, 3, 8, 7\), got \(60, 26\)",
        ),
        BadInput(
            "col2im-input-shape",
            lambda d, r: ((lambda: fastconv.col2im(c, (3, 8, 7), 3, 3)), [c := _x(d, r, (60, 27))]),
            ValueError,
            r"input_shape must be 4 ints \(N, C, H, W\), got \(3, 8, 7\)",
        ),
        # -- selection, settings, transfers -------------------------------------------------------
        BadInput(
            "set-backend-unknown",
            lambda d, r: ((lambda: fastconv.set_backend("nope")), []),
            ValueError,
            r"unknown backend 'nope' \(from set_backend\(\)\)",
        ),
        BadInput(
            "use-backend-empty",
            lambda d, r: ((lambda: fastconv.use_backend(" , ").__enter__()), []),
            ValueError,
            r"backend from use_backend\(\) is empty",
        ),
        BadInput(
            "register-backend-incomplete",
            lambda d, r: ((lambda: fastconv.register_backend("half", object())), []),
            TypeError,
            r"backend 'half' does not implement the fastconv backend contract: missing name",
        ),
        BadInput(
            "configure-threads-zero",
            lambda d, r: ((lambda: fastconv.configure(threads=0)), []),
            ValueError,
            r"threads must be a positive int, got 0",
        ),
        BadInput(
            "configure-gemm-threads",
            lambda d, r: ((lambda: fastconv.configure(gemm_threads="fast")), []),
            ValueError,
            r"gemm_threads must be one of 'blas', 'split', got 'fast'",
        ),
        BadInput(
            "to-host-string",
            lambda d, r: ((lambda: fastconv.to_host("x")), []),
            TypeError,
            r"to_host needs an array, got builtins\.str",
        ),
        BadInput(
            "to-device-unknown-backend",
            lambda d, r: ((lambda: fastconv.to_device(np.ones(3), backend="nope")), []),
            ValueError,
            r"unknown backend 'nope'",
        ),
        # -- layers ------------------------------------------------------------------------------
        BadInput(
            "layer-convolution-W-3d",
            _layer_forward(lambda d, r: Convolution(_x(d, r, (4, 3, 3)), 0.0), _x),
            ValueError,
            r"W must be 4-D.*got shape \(4, 3, 3\)",
        ),
        BadInput(
            "layer-convolution-x-list",
            _layer_forward(lambda d, r: Convolution(_x(d, r, W3), 0.0), lambda d, r: [1.0]),
            TypeError,
            r"x must be an array.*got list",
        ),
        BadInput(
            "layer-pooling-stride-zero",
            _layer_forward(lambda d, r: Pooling(2, 2, stride=0), _x),
            ValueError,
            r"stride must be at least 1, got 0",
        ),
    ]


CASES = _cases()


def run_case(case: BadInput, backend: str, seed: int = 0) -> dict[str, Any]:
    """Run one case on ``backend``: what was raised, and whether the inputs were left unchanged."""
    rng = np.random.default_rng(seed)

    def dev(a: np.ndarray) -> Any:
        return (
            fastconv.to_device(a, backend=backend) if isinstance(a, np.ndarray) and a.dtype != object else a
        )

    with fastconv.use_backend(backend):
        call, inputs = case.make(dev, rng)
        before = [fastconv.to_host(a).copy() for a in inputs if hasattr(a, "shape")]
        try:
            call()
        except Exception as exc:  # the outcome is what the test checks
            raised, message = type(exc).__name__, str(exc)
        else:
            raised, message = None, ""
        after = [fastconv.to_host(a) for a in inputs if hasattr(a, "shape")]
    unchanged = all(np.array_equal(b, a, equal_nan=b.dtype.kind == "f") for b, a in zip(before, after))
    return {"id": case.id, "raised": raised, "message": message, "unchanged": unchanged}


def main(argv: list[str]) -> int:
    """Run the ``in_kernel`` cases on the backend named in ``argv``, printing one JSON line per case
    before and after it, so a crash shows which case caused it."""
    backend = argv[0]
    for case in CASES:
        if not case.in_kernel:
            continue
        print(json.dumps({"start": case.id}), flush=True)
        try:
            print(json.dumps(run_case(case, backend)), flush=True)
        except Exception:
            print(json.dumps({"id": case.id, "setup_error": traceback.format_exc()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
