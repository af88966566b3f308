"""Bad arguments to the convolution family get a clear error: one line naming the argument, what it got
and what it needs (groups, layouts, pad forms, output_padding, ceil mode, count_include_pad)."""

from __future__ import annotations

import re

import numpy as np
import pytest

import fastconv


def raises_one_line(error: type[Exception], pattern: str, call) -> str:
    """Run ``call``; it must raise ``error`` with a one-line message matching ``pattern``."""
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    assert re.search(pattern, message), (pattern, message)
    return message


@pytest.fixture
def x(on, rng):
    return on(rng.standard_normal((2, 4, 6, 7)))


# -- groups --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("W_shape", "groups", "pattern"),
    [
        (
            (6, 1, 3, 3),
            3,
            r"groups=3 must divide both the input channels \(4\) and the output channels \(6\)",
        ),
        (
            (6, 1, 3, 3),
            4,
            r"groups=4 must divide both the input channels \(4\) and the output channels \(6\)",
        ),
        ((5, 2, 3, 3), 2, r"groups=2 must divide both .* output channels \(5\)"),
    ],
    ids=["C", "F", "F odd"],
)
def test_groups_must_divide_the_channels_and_the_filters(on, rng, x, W_shape, groups, pattern):
    W = on(rng.standard_normal(W_shape))
    raises_one_line(ValueError, pattern, lambda: fastconv.conv2d(x, W, groups=groups, backend=on.name))
    dout = on(rng.standard_normal((2, W_shape[0], 4, 5)))
    raises_one_line(
        ValueError, pattern, lambda: fastconv.conv2d_backward(dout, x, W, groups=groups, backend=on.name)
    )


@pytest.mark.parametrize(
    ("W_shape", "groups", "expects"),
    [((6, 4, 3, 3), 2, 8), ((4, 2, 3, 3), 4, 8), ((4, 4, 3, 3), 4, 16), ((4, 2, 3, 3), 1, 2)],
    ids=["C//2 expected", "depthwise with 2", "depthwise with C", "dense"],
)
def test_W_second_dim_must_be_C_over_groups(on, rng, x, W_shape, groups, expects):
    W = on(rng.standard_normal(W_shape))
    msg = raises_one_line(
        ValueError,
        rf"channel mismatch: x has 4 channels .* but W \({', '.join(map(str, W_shape))}\) with "
        rf"groups={groups} expects {expects}",
        lambda: fastconv.conv2d(x, W, groups=groups, backend=on.name),
    )
    assert "W must be (F, C // groups, kh, kw)" in msg


@pytest.mark.parametrize(
    ("groups", "error", "pattern"),
    [
        (0, ValueError, r"groups must be at least 1, got 0"),
        (2.0, TypeError, r"groups must be an int, got float 2\.0"),
        (True, TypeError, r"groups must be an int"),
    ],
)
def test_groups_must_be_a_positive_int(on, rng, x, groups, error, pattern):
    W = on(rng.standard_normal((4, 2, 3, 3)))
    raises_one_line(error, pattern, lambda: fastconv.conv2d(x, W, groups=groups, backend=on.name))


def test_transposed_convolution_checks_its_W_and_groups(on, rng, x):
    W = on(rng.standard_normal((6, 3, 3, 3)))  # C_in 6 but x has 4 channels
    raises_one_line(
        ValueError,
        r"channel mismatch: x has 4 channels .* W \(6, 3, 3, 3\) expects 6; a transposed convolution's W is "
        r"\(C_in, C_out // groups, kh, kw\)",
        lambda: fastconv.conv_transpose2d(x, W, backend=on.name),
    )
    W = on(rng.standard_normal((4, 3, 3, 3)))
    raises_one_line(
        ValueError,
        r"groups=3 must divide both the input channels \(4\)",
        lambda: fastconv.conv_transpose2d(x, W, groups=3, backend=on.name),
    )


# -- layouts -------------------------------------------------------------------------------------------


def test_nhwc_data_whose_channels_do_not_match_names_the_layout_and_axis(on, rng):
    x_nchw = on(rng.standard_normal((2, 3, 8, 7)))  # NCHW data passed as NHWC: 7 "channels"
    W = on(rng.standard_normal((4, 3, 3, 3)))
    raises_one_line(
        ValueError,
        r"channel mismatch: x has 7 channels \(shape \(2, 3, 8, 7\), layout 'NHWC', channels on axis 3\) "
        r"but W \(4, 3, 3, 3\) with groups=1 expects 3",
        lambda: fastconv.conv2d(x_nchw, W, layout="NHWC", backend=on.name),
    )
    raises_one_line(
        ValueError,
        r"x has 7 channels .* layout 'NHWC'",
        lambda: fastconv.conv_transpose2d(
            x_nchw, on(rng.standard_normal((3, 2, 3, 3))), layout="NHWC", backend=on.name
        ),
    )


def test_a_dout_in_the_other_layout_is_refused(on, rng, x):
    W = on(rng.standard_normal((6, 2, 3, 3)))
    dout_nhwc = on(rng.standard_normal((2, 4, 5, 6)))
    raises_one_line(
        ValueError,
        r"dout must have the shape of conv2d's output, \(2, 6, 4, 5\) \(layout 'NCHW'\), got \(2, 4, 5, 6\)",
        lambda: fastconv.conv2d_backward(dout_nhwc, x, W, groups=2, backend=on.name),
    )


@pytest.mark.parametrize("layout", ["NCWH", "nhwc", "", 1, None])
def test_a_bad_layout_is_refused_by_every_function(on, rng, x, layout):
    pattern = rf"layout must be 'NCHW' or 'NHWC', got {re.escape(repr(layout))}"
    W = on(rng.standard_normal((4, 4, 3, 3)))
    calls = [
        lambda: fastconv.conv2d(x, W, layout=layout, backend=on.name),
        lambda: fastconv.conv_transpose2d(x, W, layout=layout, backend=on.name),
        lambda: fastconv.max_pool2d(x, 2, layout=layout, backend=on.name),
        lambda: fastconv.avg_pool2d(x, 2, layout=layout, backend=on.name),
        lambda: fastconv.global_avg_pool2d(x, layout=layout, backend=on.name),
        lambda: fastconv.avg_pool2d_backward(x, (2, 4, 12, 14), 2, layout=layout, backend=on.name),
    ]
    for call in calls:
        raises_one_line(ValueError, pattern, call)


# -- pad forms ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pad", "error", "pattern"),
    [
        (-1, ValueError, r"pad must be >= 0, got -1"),
        ((1, -2), ValueError, r"pad must be >= 0, got \(1, -2\)"),
        (((0, -1), (1, 1)), ValueError, r"pad must be >= 0, got \(0, -1\)"),
        (
            ((1, 1), (1,)),
            ValueError,
            r"pad as \(\(top, bottom\), \(left, right\)\) needs two pairs, got \(\(1, 1\), \(1,\)\)",
        ),
        (((1, 2, 3), (0, 0)), ValueError, r"needs two pairs, got \(\(1, 2, 3\), \(0, 0\)\)"),
        (
            ((1, 2), 3),
            TypeError,
            r"pad must be an int, a pair, \(\(top, bottom\), \(left, right\)\), 'valid' or 'same'; got \(\(1, 2\), 3\)",
        ),
        ((1, 2, 3), TypeError, r"pad must be an int, a pair, .*; got \(1, 2, 3\)"),
        (1.5, TypeError, r"pad must be an int, a pair, .*; got 1\.5"),
        ("full", ValueError, r"pad must be an int, a pair, .*'valid' or 'same'; got 'full'"),
        ("SAME", ValueError, r"got 'SAME'"),
    ],
    ids=[
        "negative",
        "negative pair",
        "negative nested",
        "short pair",
        "triple pair",
        "mixed nesting",
        "triple",
        "float",
        "unknown string",
        "upper case",
    ],
)
def test_bad_pad_forms_are_refused_by_convolutions_and_pools(on, rng, x, pad, error, pattern):
    W = on(rng.standard_normal((4, 4, 3, 3)))
    raises_one_line(error, pattern, lambda: fastconv.conv2d(x, W, pad=pad, backend=on.name))
    raises_one_line(error, pattern, lambda: fastconv.conv_transpose2d(x, W, pad=pad, backend=on.name))
    raises_one_line(error, pattern, lambda: fastconv.max_pool2d(x, 3, 1, pad, backend=on.name))
    raises_one_line(error, pattern, lambda: fastconv.avg_pool2d(x, 3, 1, pad, backend=on.name))


@pytest.mark.parametrize("stride", [2, (1, 2), (3, 1)])
def test_same_padding_of_a_strided_convolution_is_refused_with_the_fix(on, rng, x, stride):
    W = on(rng.standard_normal((4, 4, 3, 3)))
    s = (stride, stride) if isinstance(stride, int) else stride
    msg = raises_one_line(
        ValueError,
        rf"pad='same' needs stride 1, got stride \({s[0]}, {s[1]}\)",
        lambda: fastconv.conv2d(x, W, stride=stride, pad="same", backend=on.name),
    )
    assert "((top, bottom), (left, right))" in msg
    # pools take "same" with any stride (TensorFlow's)
    fastconv.max_pool2d(x, 3, stride, "same", backend=on.name)


def test_same_padding_of_a_transposed_convolution_is_refused(on, rng, x):
    W = on(rng.standard_normal((4, 4, 3, 3)))
    raises_one_line(
        ValueError,
        r"pad='same' is not defined for a transposed convolution",
        lambda: fastconv.conv_transpose2d(x, W, pad="same", backend=on.name),
    )


# -- output_padding --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stride", "dilation", "output_padding", "pattern"),
    [
        (2, 1, 2, r"output_padding height 2 must be smaller than the stride \(2\) or the dilation \(1\)"),
        (1, 1, 1, r"output_padding height 1 must be smaller than the stride \(1\) or the dilation \(1\)"),
        (
            (2, 1),
            1,
            (1, 1),
            r"output_padding width 1 must be smaller than the stride \(1\) or the dilation \(1\)",
        ),
        (
            1,
            (1, 2),
            (0, 2),
            r"output_padding width 2 must be smaller than the stride \(1\) or the dilation \(2\)",
        ),
        (3, 2, 3, r"output_padding height 3 must be smaller than the stride \(3\) or the dilation \(2\)"),
    ],
)
def test_output_padding_must_be_smaller_than_the_stride_or_the_dilation(
    on, rng, x, stride, dilation, output_padding, pattern
):
    W = on(rng.standard_normal((4, 2, 3, 3)))
    raises_one_line(
        ValueError,
        pattern,
        lambda: fastconv.conv_transpose2d(
            x, W, stride=stride, output_padding=output_padding, dilation=dilation, backend=on.name
        ),
    )
    y_shape = (2, 2, 40, 40)  # never reached: the arguments are checked first
    raises_one_line(
        ValueError,
        pattern,
        lambda: fastconv.conv_transpose2d_backward(
            on(rng.standard_normal(y_shape)), x, W, stride, 0, output_padding, dilation, backend=on.name
        ),
    )


def test_a_negative_output_padding_is_refused(on, rng, x):
    W = on(rng.standard_normal((4, 2, 3, 3)))
    raises_one_line(
        ValueError,
        r"output_padding must be >= 0, got -1",
        lambda: fastconv.conv_transpose2d(x, W, stride=2, output_padding=-1, backend=on.name),
    )


# -- pools: ceil mode, pads, count_include_pad ------------------------------------------------------


def test_a_window_larger_than_the_padded_input_is_refused_in_ceil_mode_too(on, rng):
    x = on(rng.standard_normal((1, 2, 2, 5)))
    for call in (
        lambda: fastconv.max_pool2d(x, 3, ceil_mode=True, backend=on.name),
        lambda: fastconv.avg_pool2d(x, 3, ceil_mode=True, backend=on.name),
    ):
        raises_one_line(
            ValueError,
            r"window height 3 \(kernel 3, dilation 1\) is larger than the padded input height 2",
            call,
        )
    # padding makes it fit
    fastconv.max_pool2d(x, 3, 2, 1, ceil_mode=True, backend=on.name)


@pytest.mark.parametrize(
    ("kernel", "pad", "pattern"),
    [
        (3, 2, r"pad 2 must be at most half the pooling window height 3 \(kernel 3, dilation 1\)"),
        (3, ((0, 2), (0, 0)), r"pad 2 must be at most half the pooling window height 3"),
        ((2, 3), ((0, 0), (2, 0)), r"pad 2 must be at most half the pooling window width 3"),
        (2, ((1, 1), (0, 2)), r"pad 2 must be at most half the pooling window width 2"),
    ],
)
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_pool_pads_over_half_the_window_are_refused(on, rng, x, kernel, pad, pattern, ceil_mode):
    msg = raises_one_line(
        ValueError,
        pattern,
        lambda: fastconv.max_pool2d(x, kernel, 1, pad, ceil_mode=ceil_mode, backend=on.name),
    )
    assert "only padding" in msg
    raises_one_line(
        ValueError,
        pattern,
        lambda: fastconv.avg_pool2d(x, kernel, 1, pad, ceil_mode=ceil_mode, backend=on.name),
    )


@pytest.mark.parametrize("value", [1, 0, "yes", None, np.int64(1)])
def test_count_include_pad_and_ceil_mode_must_be_bools(on, rng, x, value):
    pattern = rf"count_include_pad must be True or False, got {re.escape(repr(value))}"
    raises_one_line(
        TypeError, pattern, lambda: fastconv.avg_pool2d(x, 2, count_include_pad=value, backend=on.name)
    )
    dout = on(rng.standard_normal((2, 4, 3, 3)))
    raises_one_line(
        TypeError,
        pattern,
        lambda: fastconv.avg_pool2d_backward(dout, (2, 4, 6, 7), 2, count_include_pad=value, backend=on.name),
    )
    raises_one_line(
        TypeError,
        rf"ceil_mode must be True or False, got {re.escape(repr(value))}",
        lambda: fastconv.max_pool2d(x, 2, ceil_mode=value, backend=on.name),
    )


def test_pool_backward_checks_dout_against_the_ceil_mode_shape(on, rng, x):
    y, argmax = fastconv.max_pool2d(x, 2, ceil_mode=True, backend=on.name)
    assert tuple(y.shape) == (2, 4, 3, 4)
    raises_one_line(
        ValueError,
        r"dout must have the shape of max_pool2d's output, \(2, 4, 3, 3\) \(layout 'NCHW'\), got \(2, 4, 3, 4\)",
        lambda: fastconv.max_pool2d_backward(y, argmax, (2, 4, 6, 7), 2, ceil_mode=False, backend=on.name),
    )
    dout = on(rng.standard_normal((2, 4, 3, 3)))
    raises_one_line(
        ValueError,
        r"dout must have the shape of avg_pool2d's output, \(2, 4, 3, 4\)",
        lambda: fastconv.avg_pool2d_backward(dout, (2, 4, 6, 7), 2, ceil_mode=True, backend=on.name),
    )


def test_a_dilated_window_that_holds_no_input_element_is_refused(on, rng):
    # 1x1 input, kernel 2, dilation 2, pad 1: the window reads rows/cols -1 and 1, both outside, although
    # pad 1 is at most half the dilated window (3). The contract lets backends assume every window holds
    # an input element, so the functional layer must refuse this (PyTorch answers -inf with index -1).
    x = on(rng.standard_normal((1, 1, 1, 1)))
    msg = raises_one_line(
        ValueError, r"pad|dilation", lambda: fastconv.max_pool2d(x, 2, 1, 1, 2, backend=on.name)
    )
    assert "dilation" in msg and "pad" in msg, msg
