"""Bad input gets a clear error naming the argument, what it got and what it needs."""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv.layers import Pooling


@pytest.fixture
def x(on, rng):
    return on(rng.standard_normal((2, 3, 8, 8)))


@pytest.fixture
def W(on, rng):
    return on(rng.standard_normal((4, 3, 3, 3)))


def test_wrong_ndim_names_the_argument_and_shape(on, x, W):
    with pytest.raises(ValueError, match=r"x must be 4-D .*got shape \(3, 8, 8\)"):
        fastconv.conv2d(x[0], W, backend=on.name)
    with pytest.raises(ValueError, match=r"W must be 4-D .*got shape \(4, 27\)"):
        fastconv.conv2d(x, W.reshape(4, 27), backend=on.name)
    with pytest.raises(ValueError, match=r"x must be 4-D"):
        fastconv.max_pool2d(x[0], 2, backend=on.name)
    with pytest.raises(ValueError, match=r"input_data must be 4-D"):
        fastconv.im2col(x[0], 3, 3, backend=on.name)
    with pytest.raises(ValueError, match=r"col must be 2-D"):
        fastconv.col2im(x, (2, 3, 8, 8), 3, 3, backend=on.name)


def test_channel_mismatch_between_x_and_W_is_an_error(on, x, rng):
    W2 = on(rng.standard_normal((4, 2, 3, 3)))
    with pytest.raises(ValueError, match=r"channel mismatch: x has 3 channels .* expects 2"):
        fastconv.conv2d(x, W2, backend=on.name)


def test_window_larger_than_padded_input_is_an_error(on, rng):
    x = on(rng.standard_normal((1, 1, 4, 4)))
    W = on(rng.standard_normal((1, 1, 5, 5)))
    with pytest.raises(ValueError, match=r"window height 5 .* larger than the padded input height 4"):
        fastconv.conv2d(x, W, backend=on.name)
    fastconv.conv2d(x, W, pad=1, backend=on.name)  # padding makes it fit
    with pytest.raises(ValueError, match=r"window height 5 \(kernel 3, dilation 2\)"):
        fastconv.conv2d(x, on(rng.standard_normal((1, 1, 3, 3))), dilation=2, backend=on.name)
    with pytest.raises(ValueError, match=r"larger than the padded input"):
        fastconv.max_pool2d(x, 5, backend=on.name)


@pytest.mark.parametrize("stride", [0, -1, (1, 0)])
def test_stride_below_one_is_an_error(on, x, W, stride):
    with pytest.raises(ValueError, match=r"stride must be at least 1, got"):
        fastconv.conv2d(x, W, stride=stride, backend=on.name)
    with pytest.raises(ValueError, match=r"stride must be at least 1"):
        fastconv.max_pool2d(x, 2, stride, backend=on.name)


def test_negative_pad_and_bad_dilation_are_errors(on, x, W):
    with pytest.raises(ValueError, match=r"pad must be >= 0, got -1"):
        fastconv.conv2d(x, W, pad=-1, backend=on.name)
    with pytest.raises(ValueError, match=r"dilation must be at least 1, got 0"):
        fastconv.conv2d(x, W, dilation=0, backend=on.name)
    with pytest.raises(TypeError, match=r"stride must be an int or a pair of ints, got 1.5"):
        fastconv.conv2d(x, W, stride=1.5, backend=on.name)
    with pytest.raises(TypeError, match=r"pad must be an int, a pair, .*got \(1, 2, 3\)"):
        fastconv.conv2d(x, W, pad=(1, 2, 3), backend=on.name)


def test_pool_pad_over_half_the_window_is_an_error(on, x):
    with pytest.raises(ValueError, match=r"pad 2 must be at most half the pooling window height 3"):
        fastconv.max_pool2d(x, 3, 1, 2, backend=on.name)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, np.complex128, np.uint8, np.longdouble])
def test_non_float_dtypes_are_refused(on, rng, dtype):
    xi = on((rng.standard_normal((1, 1, 4, 4)) * 3).astype(dtype))
    W = on(rng.standard_normal((1, 1, 2, 2)))
    with pytest.raises(TypeError, match=rf"x must have a floating dtype .* got {np.dtype(dtype)}"):
        fastconv.conv2d(xi, W, backend=on.name)
    with pytest.raises(TypeError, match=rf"W must have a floating dtype .* got {np.dtype(dtype)}"):
        fastconv.conv2d(W, xi, backend=on.name)
    with pytest.raises(TypeError, match=r"x must have a floating dtype"):
        fastconv.max_pool2d(xi, 2, backend=on.name)


def test_non_array_input_is_a_type_error(on, W):
    with pytest.raises(TypeError, match=r"x must be an array .* got list"):
        fastconv.conv2d([[[[1.0]]]], W, backend=on.name)


def test_bias_of_the_wrong_shape_is_an_error(on, x, W, rng):
    with pytest.raises(ValueError, match=r"b must have shape \(4,\) .* got shape \(3,\)"):
        fastconv.conv2d(x, W, on(rng.standard_normal(3)), backend=on.name)


def test_dout_of_the_wrong_shape_is_an_error(on, x, W, rng):
    with pytest.raises(
        ValueError,
        match=r"dout must have the shape of conv2d's output, \(2, 4, 6, 6\) \(layout 'NCHW'\), got \(2, 4, 5, 5\)",
    ):
        fastconv.conv2d_backward(on(rng.standard_normal((2, 4, 5, 5))), x, W, backend=on.name)
    y, arg = fastconv.max_pool2d(x, 2, backend=on.name)
    with pytest.raises(
        ValueError,
        match=r"dout must have the shape of max_pool2d's output, \(2, 3, 4, 4\) \(layout 'NCHW'\), got \(2, 3, 3, 3\)",
    ):
        fastconv.max_pool2d_backward(
            on(rng.standard_normal((2, 3, 3, 3))), arg, (2, 3, 8, 8), 2, backend=on.name
        )
    with pytest.raises(ValueError, match=r"argmax must be the integer array"):
        fastconv.max_pool2d_backward(y, y, (2, 3, 8, 8), 2, backend=on.name)


def test_col_of_the_wrong_shape_is_an_error(on, rng):
    with pytest.raises(ValueError, match=r"col must have shape \(32, 27\) for input_shape \(2, 3, 8, 8\)"):
        fastconv.col2im(
            on(rng.standard_normal((70, 27))), (2, 3, 8, 8), 3, 3, pad=1, stride=2, backend=on.name
        )


def test_pooling_layer_with_too_much_padding_says_why(on, x):
    with pytest.raises(ValueError, match=r"pad 2 must be at most half"):
        Pooling(2, 2, stride=2, pad=2, backend=on.name).forward(x)


def test_array_of_another_device_is_refused_with_the_fix(rng):
    # A backend given an array type it does not own names the fix (no silent host/device copy).
    x = rng.standard_normal((1, 1, 4, 4))
    fastconv.register_backend("strict_numpy", _StrictNumpy())
    try:
        with pytest.raises(
            TypeError,
            match=r"x is a numpy.ndarray, but backend 'strict_numpy' needs its own "
            r"array type: move it with fastconv.to_device",
        ):
            fastconv.conv2d(x, x, backend="strict_numpy")
    finally:
        fastconv.unregister_backend("strict_numpy")


class _StrictNumpy:
    """The numpy backend, but claiming no array type is its own: every input is 'on another device'."""

    def __getattr__(self, attr):
        from fastconv.backends import numpy as numpy_backend

        return getattr(numpy_backend, attr)

    name = "strict_numpy"

    @staticmethod
    def owns(array):
        return False
