"""Every kernel on every backend against the float64 references in ``reference.py``."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv.testing import reference as ref

TOL = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}

# (x shape, W shape, stride, pad, dilation)
CONV_CASES = [
    ((2, 3, 7, 7), (4, 3, 3, 3), 1, 0, 1),
    ((2, 3, 7, 7), (4, 3, 3, 3), 2, 1, 1),
    ((1, 1, 28, 28), (5, 1, 5, 5), 1, 0, 1),  # the book's MNIST layer, smaller
    ((2, 4, 9, 11), (3, 4, 3, 2), (2, 1), (1, 0), 1),
    ((2, 2, 10, 9), (3, 2, 3, 3), 1, 2, 2),  # dilated
    ((3, 5, 6, 6), (2, 5, 1, 1), 1, 0, 1),  # 1x1
    ((2, 3, 8, 8), (4, 3, 3, 3), 3, 1, (2, 1)),
    ((1, 2, 5, 5), (2, 2, 5, 5), 1, 0, 1),  # window = input
]
POOL_CASES = [
    ((2, 3, 8, 8), 2, 2, 0, 1),
    ((2, 3, 7, 7), 2, 2, 0, 1),  # floor mode drops the last row/column
    ((2, 2, 9, 9), 3, 2, 1, 1),  # overlapping 3x3/2 with padding
    ((1, 2, 8, 7), (2, 3), (1, 2), (1, 1), 1),
    ((2, 2, 9, 9), 2, 1, 0, 2),  # dilated
]


def pairs(*values):
    return [(v, v) if isinstance(v, int) else tuple(v) for v in values]


def scaled_tol(dtype, want):
    tol = TOL[dtype]
    return dict(rtol=tol["rtol"], atol=tol["atol"] * max(1.0, float(np.abs(want).max(initial=0.0))))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("xs, ws, stride, pad, dilation", CONV_CASES)
def test_conv2d_forward_matches_direct_loop(on, rng, dtype, xs, ws, stride, pad, dilation):
    x = rng.standard_normal(xs).astype(dtype)
    W = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    y = fastconv.conv2d(*on(x, W, b), stride, pad, dilation, backend=on.name)
    want = ref.conv2d(x, W, b, *pairs(stride, pad, dilation))
    assert y.dtype == dtype and y.shape == want.shape
    np.testing.assert_allclose(on.host(y), want, **scaled_tol(dtype, want))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("xs, ws, stride, pad, dilation", CONV_CASES)
def test_conv2d_backward_matches_direct_loop(on, rng, dtype, xs, ws, stride, pad, dilation):
    x = rng.standard_normal(xs).astype(dtype)
    W = rng.standard_normal(ws).astype(dtype)
    s, p, d = pairs(stride, pad, dilation)
    oh, ow = ref.out_size(xs[2], ws[2], s[0], p[0], d[0]), ref.out_size(xs[3], ws[3], s[1], p[1], d[1])
    dout = rng.standard_normal((xs[0], ws[0], oh, ow)).astype(dtype)
    dx, dW, db = fastconv.conv2d_backward(*on(dout, x, W), stride, pad, dilation, backend=on.name)
    want = ref.conv2d_backward(dout, x, W, s, p, d)
    for name, got, exp in zip(("dx", "dW", "db"), (dx, dW, db), want):
        assert got.dtype == dtype, name
        np.testing.assert_allclose(on.host(got), exp, err_msg=name, **scaled_tol(dtype, exp))


def test_conv2d_backward_without_dx_returns_none(on, rng):
    x, W = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((2, 3, 3, 3))
    dout = rng.standard_normal((2, 2, 4, 4))
    dx, dW, db = fastconv.conv2d_backward(*on(dout, x, W), need_dx=False, backend=on.name)
    assert dx is None
    np.testing.assert_allclose(on.host(dW), ref.conv2d_backward(dout, x, W)[1], rtol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("xs, k, stride, pad, dilation", POOL_CASES)
def test_max_pool_forward_and_backward_match_direct_loop(on, rng, dtype, xs, k, stride, pad, dilation):
    x = rng.standard_normal(xs).astype(dtype)
    kk, s, p, d = pairs(k, stride, pad, dilation)
    y, arg = fastconv.max_pool2d(on(x), k, stride, pad, dilation, backend=on.name)
    want_y, want_arg = ref.max_pool2d(x, kk, s, p, d)
    assert y.dtype == dtype and arg.dtype == np.int32
    np.testing.assert_array_equal(on.host(y), want_y.astype(dtype))
    np.testing.assert_array_equal(on.host(arg), want_arg)
    dout = rng.standard_normal(y.shape).astype(dtype)
    dx = fastconv.max_pool2d_backward(on(dout), arg, xs, k, stride, pad, dilation, backend=on.name)
    want_dx = ref.max_pool2d_backward(dout.astype(np.float64), want_arg, xs, kk, s, p, d)
    assert dx.dtype == dtype
    np.testing.assert_allclose(on.host(dx), want_dx, **scaled_tol(dtype, want_dx))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "xs, kh, kw, stride, pad",
    [
        ((1, 3, 7, 7), 5, 5, 1, 0),
        ((2, 3, 8, 8), 3, 3, 2, 1),
        ((2, 2, 7, 9), 3, 2, 3, 2),
        ((3, 1, 5, 5), 1, 1, 1, 0),
    ],
)
def test_im2col_and_col2im_match_the_book(on, rng, dtype, xs, kh, kw, stride, pad):
    x = rng.standard_normal(xs).astype(dtype)
    col = fastconv.im2col(on(x), kh, kw, stride, pad, backend=on.name)
    want = ref.im2col(x, kh, kw, stride, pad)
    assert col.dtype == dtype
    np.testing.assert_array_equal(on.host(col), want)
    c = rng.standard_normal(want.shape).astype(dtype)
    img = fastconv.col2im(on(c), xs, kh, kw, stride, pad, backend=on.name)
    want_img = ref.col2im(c.astype(np.float64), xs, kh, kw, stride, pad)
    np.testing.assert_allclose(on.host(img), want_img, **scaled_tol(dtype, want_img))


@pytest.mark.parametrize(
    "xs, kh, kw, expected",
    [((1, 1, 3, 3), 1, 1, (9, 1)), ((1, 3, 7, 7), 5, 5, (9, 75)), ((10, 3, 7, 7), 5, 5, (90, 75))],
)
def test_im2col_gives_the_classic_shapes(on, rng, xs, kh, kw, expected):
    assert fastconv.im2col(on(rng.random(xs)), kh, kw, backend=on.name).shape == expected


def test_col2im_is_the_adjoint_of_im2col(on, rng):
    # <im2col(x), c> == <x, col2im(c)> for any x, c, with stride, pad and dilation.
    xs, args = (2, 3, 9, 8), dict(stride=(2, 1), pad=(1, 2), dilation=(1, 2))
    x = rng.standard_normal(xs)
    col = on.host(fastconv.im2col(on(x), 3, 3, backend=on.name, **args))
    c = rng.standard_normal(col.shape)
    img = on.host(fastconv.col2im(on(c), xs, 3, 3, backend=on.name, **args))
    assert np.isclose(np.vdot(col, c), np.vdot(x, img), rtol=1e-12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_shapes_strides_pads_and_dtypes_match_reference(on, data):
    draw = data.draw
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    n, c, f = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    h = draw(st.integers(max(1, d[0] * (kh - 1) + 1 - 2 * p[0]), 12))
    w = draw(st.integers(max(1, d[1] * (kw - 1) + 1 - 2 * p[1]), 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    W = rng.standard_normal((f, c, kh, kw)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    y = fastconv.conv2d(*on(x, W, b), s, p, d, backend=on.name)
    want = ref.conv2d(x, W, b, s, p, d)
    np.testing.assert_allclose(on.host(y), want, **scaled_tol(dtype, want))
    dout = rng.standard_normal(want.shape).astype(dtype)
    grads = fastconv.conv2d_backward(*on(dout, x, W), s, p, d, backend=on.name)
    for got, exp in zip(grads, ref.conv2d_backward(dout, x, W, s, p, d)):
        np.testing.assert_allclose(on.host(got), exp, **scaled_tol(dtype, exp))
    # pooling on the same draw, when the window allows this padding and every window reaches x
    if 2 * p[0] <= d[0] * (kh - 1) + 1 and 2 * p[1] <= d[1] * (kw - 1) + 1:
        out = ref.out_size(h, kh, s[0], p[0], d[0]), ref.out_size(w, kw, s[1], p[1], d[1])
        reach = [
            all(any(0 <= o * ss - pp + i * dd < size for i in range(k)) for o in range(oo))
            for size, k, ss, pp, dd, oo in zip((h, w), (kh, kw), s, p, d, out)
        ]
        if not all(reach):  # a dilated window of padding alone: refused (test_conv_family_errors.py)
            with pytest.raises(ValueError, match="reads only padding"):
                fastconv.max_pool2d(on(x), (kh, kw), s, p, d, backend=on.name)
            return
        yp, arg = fastconv.max_pool2d(on(x), (kh, kw), s, p, d, backend=on.name)
        want_y, want_arg = ref.max_pool2d(x, (kh, kw), s, p, d)
        np.testing.assert_array_equal(on.host(yp), want_y.astype(dtype))
        np.testing.assert_array_equal(on.host(arg), want_arg)
        dp = rng.standard_normal(want_y.shape).astype(dtype)
        dx = fastconv.max_pool2d_backward(on(dp), arg, x.shape, (kh, kw), s, p, d, backend=on.name)
        exp = ref.max_pool2d_backward(dp.astype(np.float64), want_arg, x.shape, (kh, kw), s, p, d)
        np.testing.assert_allclose(on.host(dx), exp, **scaled_tol(dtype, exp))


# -- numerical gradients ------------------------------------------------------------------------


def numerical_grad(f, a, eps=1e-6):
    """Central differences of the scalar f() with respect to every element of a (perturbed in place)."""
    g = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        old = a[idx]
        a[idx] = old + eps
        fp = f()
        a[idx] = old - eps
        fm = f()
        a[idx] = old
        g[idx] = (fp - fm) / (2 * eps)
    return g


@pytest.mark.parametrize("stride, pad, dilation", [(1, 0, 1), (2, 1, 1), (1, 1, 2)])
def test_conv2d_gradients_match_numerical_gradients(on, rng, stride, pad, dilation):
    x = rng.standard_normal((2, 2, 6, 5))
    W = rng.standard_normal((3, 2, 3, 3))
    b = rng.standard_normal(3)
    y0 = on.host(fastconv.conv2d(*on(x, W, b), stride, pad, dilation, backend=on.name))
    R = rng.standard_normal(y0.shape)  # loss = sum(R * y)

    def loss():
        return float(
            np.sum(R * on.host(fastconv.conv2d(*on(x, W, b), stride, pad, dilation, backend=on.name)))
        )

    dx, dW, db = fastconv.conv2d_backward(*on(R, x, W), stride, pad, dilation, backend=on.name)
    for name, got, param in (("dx", dx, x), ("dW", dW, W), ("db", db, b)):
        np.testing.assert_allclose(
            on.host(got), numerical_grad(loss, param), rtol=1e-6, atol=1e-7, err_msg=name
        )


def shuffled_linspace(shape, rng):
    """Distinct values in random order: no ties, so max pooling is differentiable everywhere."""
    values = np.linspace(-1, 1, int(np.prod(shape)))
    rng.shuffle(values)
    return values.reshape(shape)


@pytest.mark.parametrize("k, stride, pad", [(2, 2, 0), (3, 2, 1), (3, 1, 1)])
def test_max_pool_gradient_matches_numerical_gradient(on, rng, k, stride, pad):
    x = shuffled_linspace((2, 2, 7, 7), rng)
    y, arg = fastconv.max_pool2d(on(x), k, stride, pad, backend=on.name)
    R = rng.standard_normal(y.shape)

    def loss():
        return float(np.sum(R * on.host(fastconv.max_pool2d(on(x), k, stride, pad, backend=on.name)[0])))

    dx = fastconv.max_pool2d_backward(on(R), arg, x.shape, k, stride, pad, backend=on.name)
    np.testing.assert_allclose(on.host(dx), numerical_grad(loss, x, eps=1e-5), rtol=1e-6, atol=1e-8)


# -- semantics -----------------------------------------------------------------------------------


def test_pooling_sends_gradient_to_first_maximum(on):
    # Every window of this input is all ties (MNIST has many): the first element in row-major order wins.
    x = np.ones((1, 1, 4, 4))
    y, arg = fastconv.max_pool2d(on(x), 2, 2, backend=on.name)
    assert (on.host(arg) == 0).all()
    dx = on.host(fastconv.max_pool2d_backward(on(np.ones((1, 1, 2, 2))), arg, x.shape, 2, backend=on.name))
    np.testing.assert_array_equal(dx[0, 0], [[1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    # a tie between the second and fourth element of a window goes to the second
    x2 = np.array([[[[0.0, 5.0], [1.0, 5.0]]]])
    assert int(on.host(fastconv.max_pool2d(on(x2), 2, backend=on.name)[1]).item()) == 1


def test_overlapping_pool_windows_accumulate_gradient(on):
    # 3x3/1 windows over a single peak: every window picks it, so it receives every window's gradient.
    x = np.zeros((1, 1, 5, 5))
    x[0, 0, 2, 2] = 1.0
    y, arg = fastconv.max_pool2d(on(x), 3, 1, backend=on.name)
    dx = on.host(fastconv.max_pool2d_backward(on(np.ones((1, 1, 3, 3))), arg, x.shape, 3, 1, backend=on.name))
    assert dx[0, 0, 2, 2] == 9.0 and dx.sum() == 9.0


def test_conv_is_translation_equivariant_away_from_borders(on, rng):
    x = rng.standard_normal((1, 2, 12, 12))
    W = rng.standard_normal((3, 2, 3, 3))
    shifted = np.roll(x, (2, 1), axis=(2, 3))
    y = on.host(fastconv.conv2d(*on(x, W), backend=on.name))
    ys = on.host(fastconv.conv2d(*on(shifted, W), backend=on.name))
    np.testing.assert_allclose(ys[:, :, 2:, 1:], y[:, :, :-2, :-1], rtol=1e-12, atol=1e-12)


def test_nan_propagates_through_conv_and_pool(on, rng):
    x = rng.standard_normal((1, 1, 6, 6))
    x[0, 0, 1, 1] = np.nan
    y = on.host(fastconv.conv2d(*on(x, rng.standard_normal((1, 1, 3, 3))), backend=on.name))
    assert np.isnan(y[0, 0, :2, :2]).all() and np.isfinite(y[0, 0, 3:, 3:]).all()
    yp, arg = fastconv.max_pool2d(on(x), 2, backend=on.name)
    assert np.isnan(on.host(yp)[0, 0, 0, 0]) and int(on.host(arg)[0, 0, 0, 0]) == 3


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dtype_is_preserved_and_float16_is_computed_in_float32(on, rng, dtype):
    x = rng.standard_normal((2, 3, 6, 6)).astype(dtype)
    W = rng.standard_normal((2, 3, 3, 3)).astype(dtype)
    y = fastconv.conv2d(*on(x, W), backend=on.name)
    assert y.dtype == dtype
    yp, _ = fastconv.max_pool2d(on(x), 2, backend=on.name)
    assert yp.dtype == dtype
    dx, dW, db = fastconv.conv2d_backward(
        on(rng.standard_normal(y.shape).astype(dtype)), *on(x, W), backend=on.name
    )
    assert dx.dtype == dW.dtype == db.dtype == dtype
    if dtype == np.float16:
        want = ref.conv2d(x, W, None).astype(np.float32).astype(np.float16)
        np.testing.assert_allclose(on.host(y).astype(np.float64), want, rtol=2e-3, atol=2e-3)


def test_mixed_float_dtypes_are_promoted_like_numpy(on, rng):
    # The book feeds float32 images to float64 weights: the result is float64.
    x = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
    W = rng.standard_normal((2, 1, 3, 3))
    y = fastconv.conv2d(*on(x, W), backend=on.name)
    assert y.dtype == np.float64
    np.testing.assert_allclose(on.host(y), ref.conv2d(x, W, None), rtol=1e-10)


def test_inputs_are_never_modified(on, rng):
    x = np.asfortranarray(rng.standard_normal((2, 3, 7, 7)))  # non-contiguous on purpose
    W, b = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    dout = rng.standard_normal((2, 4, 4, 4))
    dp = rng.standard_normal((2, 3, 4, 4))
    arrays = on(x, W, b, dout, dp)
    before = [on.host(a).copy() for a in arrays]
    xd, Wd, bd, doutd, dpd = arrays
    fastconv.conv2d(xd, Wd, bd, 2, 1, backend=on.name)
    fastconv.conv2d_backward(doutd, xd, Wd, 2, 1, backend=on.name)
    _, arg = fastconv.max_pool2d(xd, 3, 2, 1, backend=on.name)
    arg_before = on.host(arg).copy()
    fastconv.max_pool2d_backward(dpd, arg, x.shape, 3, 2, 1, backend=on.name)
    col = fastconv.im2col(xd, 3, 3, backend=on.name)
    col_before = on.host(col).copy()
    fastconv.col2im(col, x.shape, 3, 3, backend=on.name)
    for a, want in zip(arrays, before):
        np.testing.assert_array_equal(on.host(a), want)
    np.testing.assert_array_equal(on.host(arg), arg_before)
    np.testing.assert_array_equal(on.host(col), col_before)


def test_results_are_fresh_arrays_not_views_of_inputs(on, rng):
    x = rng.standard_normal((1, 2, 4, 4))
    xd = on(x)
    y, _ = fastconv.max_pool2d(xd, 1, backend=on.name)  # a 1x1 pool is an identity
    y[...] = 0
    assert on.host(xd).any()


def test_non_contiguous_inputs_give_the_same_result(on, rng):
    base = rng.standard_normal((2, 6, 6, 3)).transpose(0, 3, 1, 2)  # NHWC memory, NCHW view
    W = rng.standard_normal((2, 3, 3, 3))
    y = on.host(fastconv.conv2d(*on(base, W), backend=on.name))
    np.testing.assert_allclose(y, ref.conv2d(base, W, None), rtol=1e-10)


def test_results_are_deterministic_run_to_run(on, rng):
    x, W = rng.standard_normal((4, 8, 12, 12)), rng.standard_normal((8, 8, 3, 3))
    dout = rng.standard_normal((4, 8, 12, 12))
    a = [on.host(g) for g in fastconv.conv2d_backward(*on(dout, x, W), 1, 1, backend=on.name)]
    b = [on.host(g) for g in fastconv.conv2d_backward(*on(dout, x, W), 1, 1, backend=on.name)]
    for ga, gb in zip(a, b):
        np.testing.assert_array_equal(ga, gb)


# -- PyTorch as a second, independent oracle (optional: skips when torch is not installed) -------


@pytest.mark.parametrize("stride, pad, dilation", [(1, 0, 1), (2, 1, 1), (1, 2, 2)])
def test_conv_and_pool_agree_with_pytorch(on, rng, stride, pad, dilation):
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    x = rng.standard_normal((2, 3, 11, 10))
    W, b = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    xt, Wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, W, b))
    yt = tf.conv2d(xt, Wt, bt, stride, pad, dilation)
    dout = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.tensor(dout))
    y = fastconv.conv2d(*on(x, W, b), stride, pad, dilation, backend=on.name)
    np.testing.assert_allclose(on.host(y), yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    grads = fastconv.conv2d_backward(*on(dout, x, W), stride, pad, dilation, backend=on.name)
    for got, want in zip(grads, (xt.grad, Wt.grad, bt.grad)):
        np.testing.assert_allclose(on.host(got), want.numpy(), rtol=1e-10, atol=1e-12)
    pool_pad = min(pad, 1)
    pt = tf.max_pool2d(torch.tensor(x), 3, stride, pool_pad, dilation)
    yp, arg = fastconv.max_pool2d(on(x), 3, stride, pool_pad, dilation, backend=on.name)
    np.testing.assert_array_equal(on.host(yp), pt.numpy())
