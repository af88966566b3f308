"""fastconv.compat.dezero against DeZero itself (its functions_conv, run in float64 as the oracle) and
against float64 loop references of DeZero's pooling semantics written here."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastconv

try:
    from fastconv.compat import dezero as fdz
except ImportError as error:  # DeZero not installed: the whole file skips, saying why (fails under CI,
    if os.environ.get("CI"):  # whose test extra installs DeZero)
        raise
    pytest.skip(f"DeZero cannot be imported: {error}", allow_module_level=True)

import dezero  # noqa: E402  (already imported by fdz, through its NumPy 2 shim)
import dezero.functions as F  # noqa: E402
import dezero.functions_conv as FC  # noqa: E402
import dezero.layers as L  # noqa: E402
from dezero import Variable  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("conv2d", "deconv2d", "pooling", "average_pooling")
# DeZero's own functions, taken before any test could patch them: the oracle.
DZ = {name: getattr(FC, name) for name in NAMES}
ORIGINALS = {(m.__name__, n): getattr(m, n) for m in (F, FC) for n in NAMES}
DTYPES = ["float32", "float64"]
HYPO = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True)
def _dezero_left_alone():
    """Every test starts and ends with DeZero's own functions in place."""
    fdz.uninstall()
    yield
    fdz.uninstall()
    for (mod, name), fn in ORIGINALS.items():
        assert getattr(sys.modules[mod], name) is fn, f"{mod}.{name} was left patched"


def tol(dtype) -> float:
    return 2e-4 if np.dtype(dtype) == np.float32 else 1e-10


def close(ours, ref, dtype, what="") -> None:
    """ours (any backend's array) equals the float64 reference within the dtype's tolerance."""
    ours = fastconv.to_host(ours)
    assert ours.shape == ref.shape, what
    scale = max(1.0, float(np.abs(ref).max(initial=0.0)))
    np.testing.assert_allclose(ours, ref, rtol=tol(dtype), atol=tol(dtype) * scale, err_msg=what)


def run(fn, arrays, g):
    """y = fn(*Variables), then the backward of sum(y * g): (y, [gradient of each input, or None]).

    ``g`` is the upstream gradient, or a function of y's shape that returns it."""
    vs = [None if a is None else Variable(a) for a in arrays]
    y = fn(*vs)
    if callable(g):
        g = g(y.shape)
    F.sum(y * Variable(g)).backward()
    return y.data, [None if v is None or v.grad is None else v.grad.data for v in vs]


def check(ours_fn, dz_fn, host_arrays, dtype, on, rng, refs=None):
    """Forward and every input's gradient of ours (arrays in ``dtype`` on the backend) against DeZero's
    (float64 on the host); ``refs`` optionally holds (y, grads) of a loop reference too."""
    upstream = {}

    def draw(shape):
        upstream["g"] = rng.standard_normal(shape)
        return upstream["g"]

    y_ref, grads_ref = run(dz_fn, [None if a is None else a.astype(np.float64) for a in host_arrays], draw)
    g = upstream["g"]
    dev = [None if a is None else on(a.astype(dtype)) for a in host_arrays]
    y, grads = run(ours_fn, dev, on(g.astype(dtype)))
    assert y.dtype == dtype
    close(y, y_ref, dtype, "forward")
    for i, (gr, gr_ref) in enumerate(zip(grads, grads_ref)):
        assert (gr is None) == (gr_ref is None), f"gradient {i}"
        if gr is not None:
            close(gr, gr_ref, dtype, f"gradient of input {i}")
    if refs is not None:
        refs_y, refs_grads = refs(*[None if a is None else a.astype(np.float64) for a in host_arrays], g)
        close(y, refs_y, dtype, "forward vs loop reference")
        for gr, gr_ref in zip(grads, refs_grads):
            close(gr, gr_ref, dtype, "gradient vs loop reference")
    return y, grads


@pytest.fixture
def use(backend):
    """Runs the test body with NumPy arrays on ``backend`` (CuPy arrays pick cupy themselves)."""
    with fastconv.use_backend(backend):
        yield backend


# =============================================================================
# Loop references of DeZero's pooling semantics (float64, written from functions_conv.py)
# =============================================================================
def _pr(v):
    """DeZero's pair: an int twice, or the pair itself."""
    return (v, v) if isinstance(v, int) else tuple(v)


def _windows(x, k, s, p):
    kh, kw = k
    sh, sw = s
    ph, pw = p
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))  # DeZero's im2col pads with zeros
    oh = (x.shape[2] + 2 * ph - kh) // sh + 1
    ow = (x.shape[3] + 2 * pw - kw) // sw + 1
    return xpad, oh, ow


def ref_max_pool(x, k, s, p, g):
    """Max over the zero-padded window; the gradient goes to the first maximum in row-major order."""
    k, s, p = _pr(k), _pr(s), _pr(p)
    xpad, oh, ow = _windows(x, k, s, p)
    n, c = x.shape[:2]
    y = np.zeros((n, c, oh, ow))
    gpad = np.zeros_like(xpad)
    for a in range(n):
        for b in range(c):
            for i in range(oh):
                for j in range(ow):
                    best, at = -np.inf, None
                    for u in range(k[0]):
                        for v in range(k[1]):
                            val = xpad[a, b, i * s[0] + u, j * s[1] + v]
                            if at is None or val > best:
                                best, at = val, (u, v)
                    y[a, b, i, j] = best
                    gpad[a, b, i * s[0] + at[0], j * s[1] + at[1]] += g[a, b, i, j]
    return y, [gpad[:, :, p[0] : p[0] + x.shape[2], p[1] : p[1] + x.shape[3]]]


def ref_avg_pool(x, k, s, p, g):
    """Mean over the zero-padded window (divisor KH*KW); each window spreads g / (KH*KW)."""
    k, s, p = _pr(k), _pr(s), _pr(p)
    xpad, oh, ow = _windows(x, k, s, p)
    y = np.zeros(x.shape[:2] + (oh, ow))
    gpad = np.zeros_like(xpad)
    area = k[0] * k[1]
    for i in range(oh):
        for j in range(ow):
            rows = slice(i * s[0], i * s[0] + k[0])
            cols = slice(j * s[1], j * s[1] + k[1])
            y[:, :, i, j] = xpad[:, :, rows, cols].sum(axis=(2, 3)) / area
            gpad[:, :, rows, cols] += g[:, :, i, j, None, None] / area
    return y, [gpad[:, :, p[0] : p[0] + x.shape[2], p[1] : p[1] + x.shape[3]]]


# =============================================================================
# Forward and backward against DeZero, every backend, float32 and float64
# =============================================================================
CONV_CASES = {
    "3x3-pad1": ((2, 3, 8, 8), (4, 3, 3, 3), 1, 1, True),
    "stride2-nontiling": ((2, 3, 9, 7), (5, 3, 3, 3), 2, 1, True),
    "pairs": ((2, 2, 9, 8), (3, 2, 3, 2), (2, 1), (1, 2), True),
    "nobias-5x5": ((1, 3, 10, 9), (2, 3, 5, 5), 1, 2, False),
    "pad-beyond-kernel": ((2, 2, 5, 6), (3, 2, 1, 2), (1, 3), (2, 0), True),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv2d_matches_dezero(case, dtype, use, on, rng):
    xs, ws, s, p, bias = CONV_CASES[case]
    arrays = [rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0]) if bias else None]
    y, grads = check(
        lambda x, W, b: fdz.conv2d(x, W, b, s, p),
        lambda x, W, b: DZ["conv2d"](x, W, b, s, p),
        arrays,
        dtype,
        on,
        rng,
    )
    assert (grads[2] is None) == (not bias)


DECONV_CASES = {
    "4x4-s2-p1": ((2, 3, 5, 5), (3, 4, 4, 4), 2, 1, None, True),
    "outsize-max": ((2, 3, 5, 4), (3, 2, 3, 3), 2, 1, (10, 8), True),  # default (9, 7), stride - 1 more
    "pairs-outsize": ((1, 2, 4, 5), (2, 3, 3, 2), (3, 2), (1, 0), (12, 11), False),
    "stride1-nobias": ((2, 2, 6, 5), (2, 3, 3, 3), 1, 1, None, False),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(DECONV_CASES))
def test_deconv2d_matches_dezero(case, dtype, use, on, rng):
    xs, ws, s, p, out, bias = DECONV_CASES[case]
    arrays = [rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[1]) if bias else None]
    y, _ = check(
        lambda x, W, b: fdz.deconv2d(x, W, b, s, p, out),
        lambda x, W, b: DZ["deconv2d"](x, W, b, s, p, out),
        arrays,
        dtype,
        on,
        rng,
    )
    if out is not None:
        assert y.shape[2:] == out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["conv2d", "deconv2d"])
def test_fused_backward_equals_dezero_s_graph(kind, dtype, use, on, rng, monkeypatch):
    """backward() without create_graph takes one fastconv call for gx, gW and gb; with create_graph, DeZero's
    graph of three functions: the gradients agree, and the fused path really skips the graph."""
    if kind == "conv2d":
        xs, ws, s, p, _ = CONV_CASES["stride2-nontiling"]
        nb, fn = ws[0], (lambda x, W, b: fdz.conv2d(x, W, b, s, p))
        graph_only = "conv_transpose2d"  # the graph's gx is a deconv2d
    else:
        xs, ws, s, p, out, _ = DECONV_CASES["outsize-max"]
        nb, fn = ws[1], (lambda x, W, b: fdz.deconv2d(x, W, b, s, p, out))
        graph_only = "conv2d"  # the graph's gx is a conv2d
    arrays = [on(rng.standard_normal(shape).astype(dtype)) for shape in (xs, ws, (nb,))]
    calls = []
    real = getattr(fastconv, graph_only)
    monkeypatch.setattr(fastconv, graph_only, lambda *a, **k: calls.append(1) or real(*a, **k))
    grads, used = {}, {}
    for create_graph in (False, True):
        vs = [Variable(a) for a in arrays]
        y = fn(*vs)
        calls.clear()
        g = on(np.random.default_rng(1).standard_normal(y.shape).astype(dtype))
        F.sum(y * Variable(g)).backward(create_graph=create_graph)
        grads[create_graph] = [fastconv.to_host(v.grad.data) for v in vs]
        used[create_graph] = len(calls)
    assert used == {False: 0, True: 1}
    for fused, graph in zip(grads[False], grads[True]):
        assert fused.dtype == graph.dtype
        close(fused, graph.astype(np.float64), dtype, "fused vs graph")


POOL_CASES = {
    "2x2-s2": ((2, 3, 8, 8), 2, 2, 0),
    "2x2-dezero-default-stride1": ((2, 2, 5, 6), 2, 1, 0),
    "3x3-s2-p1-nontiling": ((2, 3, 9, 8), 3, 2, 1),
    "pairs": ((2, 2, 9, 7), (3, 2), (2, 1), (1, 1)),
    "pad-beyond-half": ((1, 2, 5, 5), 2, 2, (2, 1)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(POOL_CASES))
def test_pooling_matches_dezero_and_the_loop_reference(case, dtype, use, on, rng):
    xs, k, s, p = POOL_CASES[case]
    x = rng.standard_normal(xs)
    x[0, 0] = -np.abs(x[0, 0]) - 0.5  # a plane of negatives: windows touching the pad give 0
    y, _ = check(
        lambda x: fdz.pooling(x, k, s, p),
        lambda x: DZ["pooling"](x, k, s, p),
        [x],
        dtype,
        on,
        rng,
        refs=lambda x, g: ref_max_pool(x, k, s, p, g),
    )
    if p != 0:
        assert (fastconv.to_host(y)[0, 0, 0] == 0).all()  # the top row of windows holds padding


@pytest.mark.parametrize("dtype", DTYPES)
def test_pooling_ties_go_to_the_first_maximum_padding_included(dtype, use, on, rng):
    # small integers: many equal maxima in a window, zeros tying with the padding's zeros
    x = rng.integers(-2, 2, size=(2, 3, 7, 6)).astype(np.float64)
    for k, s, p in [(2, 2, 0), (3, 1, 1), ((2, 3), (1, 2), (1, 1))]:
        check(
            lambda x, k=k, s=s, p=p: fdz.pooling(x, k, s, p),
            lambda x, k=k, s=s, p=p: DZ["pooling"](x, k, s, p),
            [x],
            dtype,
            on,
            rng,
            refs=lambda x, g, k=k, s=s, p=p: ref_max_pool(x, k, s, p, g),
        )


def test_pooling_nan_is_the_maximum_as_numpy_argmax(use, on, rng):
    x = rng.standard_normal((1, 2, 6, 6))
    x[0, 0, 1, 1] = x[0, 1, 4, 3] = x[0, 1, 4, 4] = np.nan
    g = rng.standard_normal((1, 2, 3, 3))
    y_ref, (gx_ref,) = run(lambda v: DZ["pooling"](v, 2, 2), [x], g)
    y, (gx,) = run(lambda v: fdz.pooling(v, 2, 2), [on(x)], on(g))
    np.testing.assert_array_equal(fastconv.to_host(y), y_ref)
    np.testing.assert_array_equal(fastconv.to_host(gx), gx_ref)


AVG_CASES = {
    "2x2-s2": ((2, 3, 8, 8), 2, 2, 0),
    "3x3-s1-p1": ((2, 2, 7, 6), 3, 1, 1),
    "square-pairs-stride-pad": ((2, 2, 9, 7), 3, (2, 1), (1, 0)),
    "pad-beyond-half": ((1, 2, 5, 5), 2, 2, (2, 1)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(AVG_CASES))
def test_average_pooling_matches_dezero_and_the_loop_reference(case, dtype, use, on, rng):
    xs, k, s, p = AVG_CASES[case]
    check(
        lambda x: fdz.average_pooling(x, k, s, p),
        lambda x: DZ["average_pooling"](x, k, s, p),
        [rng.standard_normal(xs)],
        dtype,
        on,
        rng,
        refs=lambda x, g: ref_avg_pool(x, k, s, p, g),
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [(2, 3), (3, 2)])
def test_average_pooling_non_square_kernels_get_the_correct_gradient(k, dtype, use, on, rng):
    """DeZero's own backward swaps KH and KW and fails on these; its forward is fine."""
    x = rng.standard_normal((2, 2, 7, 8))
    s, p = (1, 2), (1, 1)
    y_dz = DZ["average_pooling"](Variable(x), k, s, p)
    g = rng.standard_normal(y_dz.shape)
    with pytest.raises(IndexError):
        F.sum(y_dz * Variable(g)).backward()
    y_ref, (gx_ref,) = ref_avg_pool(x, k, s, p, g)
    close(y_dz.data, y_ref, "float64", "DeZero's forward vs the loop reference")
    y, (gx,) = run(lambda v: fdz.average_pooling(v, k, s, p), [on(x.astype(dtype))], on(g.astype(dtype)))
    close(y, y_ref, dtype, "forward")
    close(gx, gx_ref, dtype, "gradient")


# =============================================================================
# Hypothesis-drawn shapes (every backend, float64, against DeZero and the loop references)
# =============================================================================
def _arrays(data, *shapes):
    r = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    return r, [r.standard_normal(s) for s in shapes]


@st.composite
def conv_geometry(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, kh - 2 * ph), 8))
    w = draw(st.integers(max(1, kw - 2 * pw), 8))
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    return (n, c, h, w), (kh, kw), (sh, sw), (ph, pw)


@HYPO
@given(geo=conv_geometry(), oc=st.integers(1, 3), bias=st.booleans(), data=st.data())
def test_conv2d_drawn_shapes(geo, oc, bias, data, use, on):
    xs, (kh, kw), s, p = geo
    rng, (x, W, b) = _arrays(data, xs, (oc, xs[1], kh, kw), (oc,))
    check(
        lambda x, W, b: fdz.conv2d(x, W, b, s, p),
        lambda x, W, b: DZ["conv2d"](x, W, b, s, p),
        [x, W, b if bias else None],
        "float64",
        on,
        rng,
    )


@HYPO
@given(geo=conv_geometry(), oc=st.integers(1, 3), data=st.data())
def test_deconv2d_drawn_shapes_and_outsizes(geo, oc, data, use, on):
    xs, (kh, kw), (sh, sw), (ph, pw) = geo
    n, c, h, w = xs
    base = (sh * (h - 1) + kh - 2 * ph, sw * (w - 1) + kw - 2 * pw)
    extra = (data.draw(st.integers(0, sh - 1)), data.draw(st.integers(0, sw - 1)))
    out = (base[0] + extra[0], base[1] + extra[1])
    if min(out) < 1:
        with pytest.raises(ValueError, match="outsize"):
            fdz.deconv2d(np.zeros(xs), np.zeros((c, oc, kh, kw)), None, (sh, sw), (ph, pw), out)
        return
    outsize = None if extra == (0, 0) and data.draw(st.booleans()) else out
    rng, (x, W, b) = _arrays(data, xs, (c, oc, kh, kw), (oc,))
    y, _ = check(
        lambda x, W, b: fdz.deconv2d(x, W, b, (sh, sw), (ph, pw), outsize),
        lambda x, W, b: DZ["deconv2d"](x, W, b, (sh, sw), (ph, pw), outsize),
        [x, W, b],
        "float64",
        on,
        rng,
    )
    assert y.shape[2:] == out


@HYPO
@given(geo=conv_geometry(), mode=st.sampled_from(["normal", "negative", "ties"]), data=st.data())
def test_pooling_drawn_shapes(geo, mode, data, use, on):
    xs, k, s, p = geo
    rng, (x,) = _arrays(data, xs)
    if mode == "negative":
        x = -np.abs(x)
    elif mode == "ties":
        x = np.round(x)
    check(
        lambda x: fdz.pooling(x, k, s, p),
        lambda x: DZ["pooling"](x, k, s, p),
        [x],
        "float64",
        on,
        rng,
        refs=lambda x, g: ref_max_pool(x, k, s, p, g),
    )


@HYPO
@given(geo=conv_geometry(), data=st.data())
def test_average_pooling_drawn_shapes(geo, data, use, on):
    xs, k, s, p = geo
    rng, (x,) = _arrays(data, xs)
    if k[0] == k[1]:  # DeZero's backward runs: it is the oracle
        check(
            lambda x: fdz.average_pooling(x, k, s, p),
            lambda x: DZ["average_pooling"](x, k, s, p),
            [x],
            "float64",
            on,
            rng,
            refs=lambda x, g: ref_avg_pool(x, k, s, p, g),
        )
    else:
        y_dz = DZ["average_pooling"](Variable(x), k, s, p).data
        g = rng.standard_normal(y_dz.shape)
        y_ref, (gx_ref,) = ref_avg_pool(x, k, s, p, g)
        close(y_dz, y_ref, "float64", "DeZero's forward vs the loop reference")
        y, (gx,) = run(lambda v: fdz.average_pooling(v, k, s, p), [on(x)], on(g))
        close(y, y_ref, "float64", "forward")
        close(gx, gx_ref, "float64", "gradient")


# =============================================================================
# Double backward (create_graph=True)
# =============================================================================
def _double(fn, x, W, g, h):
    """Gradients of sum(x.grad * h), x.grad from sum(fn(x, W)**2 * g) with create_graph."""
    xv, Wv = Variable(x), Variable(W)
    y = fn(xv, Wv)
    F.sum(y * y * Variable(g)).backward(create_graph=True)
    gx = xv.grad
    xv.cleargrad()
    Wv.cleargrad()
    F.sum(gx * Variable(h)).backward()
    return gx.data, xv.grad.data, Wv.grad.data


@pytest.mark.parametrize("kind", ["conv2d", "deconv2d"])
def test_double_backward_through_the_input_gradient_matches_dezero(kind, use, on, rng):
    if kind == "conv2d":
        x, W, args = rng.standard_normal((2, 2, 6, 5)), rng.standard_normal((3, 2, 3, 2)), ((2, 1), 1)
    else:
        x, W, args = rng.standard_normal((2, 2, 4, 3)), rng.standard_normal((2, 3, 3, 2)), ((2, 1), 1)
    y_shape = DZ[kind](Variable(x), Variable(W), None, *args).shape
    g, h = rng.standard_normal(y_shape), rng.standard_normal(x.shape)
    ref = _double(lambda a, b: DZ[kind](a, b, None, *args), x, W, g, h)
    ours = _double(lambda a, b: getattr(fdz, kind)(a, b, None, *args), on(x), on(W), on(g), on(h))
    for a, b, what in zip(ours, ref, ("x.grad", "second x.grad", "second W.grad")):
        close(a, b, "float64", what)


def test_weight_gradient_is_differentiable(use, on, rng):
    """d sum(W.grad * h) / d(x, gy), against DeZero's own differentiable im2col and matmul (DeZero's
    Conv2DGradW.backward itself raises TypeError: it passes a weakref of its output)."""
    x, W = rng.standard_normal((2, 3, 6, 5)), rng.standard_normal((4, 3, 3, 2))
    s, p = (2, 1), (1, 0)
    n, oc, kh, kw = 2, 4, 3, 2
    oh, ow = (6 + 2 - 3) // 2 + 1, (5 - 2) // 1 + 1
    g, h = rng.standard_normal((n, oc, oh, ow)), rng.standard_normal(W.shape)

    xr, gr = Variable(x), Variable(g)
    col = F.im2col(xr, (kh, kw), s, p, to_matrix=True)  # (N*OH*OW, C*KH*KW)
    gmat = F.reshape(F.transpose(gr, (0, 2, 3, 1)), (n * oh * ow, oc))
    gW_ref = F.reshape(F.matmul(F.transpose(gmat), col), W.shape)
    F.sum(gW_ref * Variable(h)).backward()

    xv, Wv, gv = Variable(on(x)), Variable(on(W)), Variable(on(g))
    F.sum(fdz.conv2d(xv, Wv, None, s, p) * gv).backward(create_graph=True)
    gW = Wv.grad
    close(gW.data, gW_ref.data, "float64", "W.grad")
    xv.cleargrad()
    gv.cleargrad()
    F.sum(gW * Variable(on(h))).backward()
    close(xv.grad.data, xr.grad.data, "float64", "x.grad")
    close(gv.grad.data, gr.grad.data, "float64", "gy.grad")

    xd, Wd, gd = Variable(x), Variable(W), Variable(g)
    F.sum(DZ["conv2d"](xd, Wd, None, s, p) * gd).backward(create_graph=True)
    with pytest.raises(TypeError, match="weakref"):
        F.sum(Wd.grad * Variable(h)).backward()


@pytest.mark.parametrize("kind", ["pooling", "average_pooling"])
def test_pooling_double_backward_matches_dezero(kind, use, on, rng):
    x = np.round(rng.standard_normal((2, 2, 7, 6)) * 2)  # ties too
    args = (3, 2, 1)

    def second(fn, x, g, h):
        xv, gv = Variable(x), Variable(g)
        F.sum(fn(xv, *args) * gv).backward(create_graph=True)
        gx = xv.grad
        gv.cleargrad()
        F.sum(gx * Variable(h)).backward()
        return gx.data, gv.grad.data

    g = rng.standard_normal(DZ[kind](Variable(x), *args).shape)
    h = rng.standard_normal(x.shape)
    ref = second(DZ[kind], x, g, h)
    ours = second(getattr(fdz, kind), on(x), on(g), on(h))
    close(ours[0], ref[0], "float64", "x.grad")
    close(ours[1], ref[1], "float64", "gy.grad")


def test_max_pooling_third_derivative_is_the_adjoint_of_the_second(use, on, rng):
    """Pooling2DWithIndexes (gather at the argmax) has Pooling2DGrad (scatter) as its backward."""
    x, a, b = (rng.standard_normal((2, 2, 7, 6)) for _ in range(3))
    y = fdz.Pooling(3, 2, 1)
    y(Variable(on(x)))
    gather = fdz.Pooling2DWithIndexes(y)
    av = Variable(on(a))
    out = gather(av)
    bb = rng.standard_normal(out.shape)
    F.sum(out * Variable(on(bb))).backward()
    lhs = float(np.sum(fastconv.to_host(out.data) * bb))
    rhs = float(np.sum(a * fastconv.to_host(av.grad.data)))
    assert abs(lhs - rhs) < 1e-10 * max(1.0, abs(lhs))


# =============================================================================
# dtypes (mixed float32/float64 too), inputs never modified
# =============================================================================
def _dtypes(fn, arrays, gdtype):
    vs = [None if a is None else Variable(a) for a in arrays]
    y = fn(*vs)
    F.sum(y * Variable(np.ones(y.shape, dtype=gdtype))).backward()
    return y.dtype, [None if v is None or v.grad is None else v.grad.dtype for v in vs]


@pytest.mark.parametrize("gdtype", DTYPES)
@pytest.mark.parametrize("bdt", [None, "float32", "float64"])
@pytest.mark.parametrize("wdt", DTYPES)
@pytest.mark.parametrize("xdt", DTYPES)
def test_conv_and_deconv_dtypes_are_dezero_s(xdt, wdt, bdt, gdtype, rng):
    x = rng.standard_normal((2, 3, 5, 5)).astype(xdt)
    b = None if bdt is None else rng.standard_normal(4).astype(bdt)
    W = rng.standard_normal((4, 3, 3, 3)).astype(wdt)
    Wd = rng.standard_normal((3, 4, 3, 3)).astype(wdt)
    for ours, theirs, w in (
        (fdz.conv2d, DZ["conv2d"], W),
        (fdz.deconv2d, DZ["deconv2d"], Wd),
    ):
        mine = _dtypes(lambda x, W, b, f=ours: f(x, W, b, 2, 1), [x, w, b], gdtype)
        ref = _dtypes(lambda x, W, b, f=theirs: f(x, W, b, 2, 1), [x, w, b], gdtype)
        assert mine == ref


@pytest.mark.parametrize("gdtype", DTYPES)
@pytest.mark.parametrize("xdt", DTYPES)
def test_pooling_dtypes_are_dezero_s(xdt, gdtype, rng):
    """Max pooling's gradient has x's dtype; average pooling's that of gy / numpy.array(KH*KW)."""
    x = rng.standard_normal((2, 3, 6, 6)).astype(xdt)
    for name in ("pooling", "average_pooling"):
        ours = getattr(fdz, name)
        mine = _dtypes(lambda x, f=ours: f(x, 2, 2), [x], gdtype)
        ref = _dtypes(lambda x, f=DZ[name]: f(x, 2, 2), [x], gdtype)
        assert mine == ref, name


def test_inputs_and_upstream_gradients_are_never_modified(use, on, rng):
    x = on(rng.standard_normal((2, 3, 6, 6)))
    W = on(rng.standard_normal((4, 3, 3, 3)))
    Wd = on(rng.standard_normal((3, 4, 3, 3)))
    b = on(rng.standard_normal(4))
    calls = [
        (lambda v: fdz.conv2d(v[0], v[1], v[2], 1, 1), [x, W, b]),
        (lambda v: fdz.deconv2d(v[0], v[1], v[2], 2, 1, (12, 12)), [x, Wd, b]),
        (lambda v: fdz.pooling(v[0], 3, 2, 1), [x]),
        (lambda v: fdz.average_pooling(v[0], 3, 2, 1), [x]),
    ]
    for fn, arrays in calls:
        copies = [fastconv.to_host(a).copy() for a in arrays]
        vs = [Variable(a) for a in arrays]
        y = fn(vs)
        gy = on(rng.standard_normal(y.shape))
        gy_copy = fastconv.to_host(gy).copy()
        y.grad = Variable(gy)
        y.backward(create_graph=True)
        for a, c in zip(arrays, copies):
            np.testing.assert_array_equal(fastconv.to_host(a), c)
        np.testing.assert_array_equal(fastconv.to_host(gy), gy_copy)


# =============================================================================
# patch(), install(), and DeZero's layers and models on top
# =============================================================================
def _is_ours():
    return all(getattr(m, n) is getattr(fdz, n) for m in (F, FC) for n in NAMES)


def _is_dezero_s():
    return all(getattr(sys.modules[mod], n) is fn for (mod, n), fn in ORIGINALS.items())


def test_patch_swaps_all_four_in_both_modules_and_restores_them():
    with fdz.patch():
        assert _is_ours()
        with fdz.patch():  # nesting
            assert _is_ours()
        assert _is_ours()
    assert _is_dezero_s()
    with pytest.raises(RuntimeError, match="boom"), fdz.patch():
        raise RuntimeError("boom")
    assert _is_dezero_s()


def test_install_is_idempotent_and_uninstall_restores_dezero():
    fdz.install()
    fdz.install()
    assert _is_ours() and fdz.installed()
    with fdz.patch():
        assert _is_ours()
    assert _is_ours()
    fdz.uninstall()
    assert _is_dezero_s() and not fdz.installed()
    fdz.uninstall()
    assert _is_dezero_s()
    with fdz.patch():  # installed inside a patch: uninstall still brings DeZero's back
        fdz.install()
        fdz.uninstall()
    assert _is_dezero_s()


def test_conv_layer_inside_patch_runs_ours_with_the_same_values(use, rng):
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    layer = L.Conv2d(5, kernel_size=3, stride=2, pad=1)
    deconv = L.Deconv2d(2, kernel_size=4, stride=2, pad=1)
    y_ref = layer(x)
    z_ref = deconv(y_ref)
    assert type(y_ref.creator) is FC.Conv2d
    with fdz.patch():
        y = layer(x)
        z = deconv(y)
        assert dezero.functions.conv2d is fdz.conv2d
        assert type(y.creator) is fdz.Conv2d and type(z.creator) is fdz.Deconv2d
    close(y.data, y_ref.data.astype(np.float64), "float32")
    close(z.data, z_ref.data.astype(np.float64), "float32")
    assert type(layer(x).creator) is FC.Conv2d


class _Net(dezero.Model):
    def __init__(self):
        super().__init__()
        self.c1 = L.Conv2d(6, kernel_size=3, pad=1)
        self.c2 = L.Conv2d(8, kernel_size=3, pad=1)
        self.fc = L.Linear(10)

    def forward(self, x):
        x = F.pooling(F.relu(self.c1(x)), 2, 2)
        x = F.average_pooling(F.relu(self.c2(x)), 2, 2)
        return self.fc(F.reshape(x, (x.shape[0], -1)))


def _train(patched, x, t, steps=4):
    # DeZero's layers initialise from NumPy's global generator: seed it, and put its state back after
    state = np.random.get_state()  # noqa: NPY002
    np.random.seed(0)  # noqa: NPY002
    try:
        model = _Net()
        opt = dezero.optimizers.MomentumSGD(lr=0.05).setup(model)
        losses = []
        with fdz.patch() if patched else contextlib.nullcontext():
            for _ in range(steps):
                loss = F.softmax_cross_entropy(model(x), t)
                model.cleargrads()
                loss.backward()
                opt.update()
                losses.append(float(loss.data))
    finally:
        np.random.set_state(state)  # noqa: NPY002
    return losses, {
        f"{layer}.{name}": getattr(getattr(model, layer), name).data.copy()
        for layer in ("c1", "c2", "fc")
        for name in ("W", "b")
    }


def test_a_dezero_cnn_trains_identically_patched(use, rng):
    x = rng.standard_normal((16, 1, 12, 12)).astype(np.float32)
    x[:, :, 3:9, 3:9] += np.arange(16).reshape(16, 1, 1, 1) % 3  # some learnable signal
    t = np.arange(16) % 3
    losses_ref, params_ref = _train(False, x, t)
    losses, params = _train(True, x, t)
    assert losses_ref[-1] < losses_ref[0]
    np.testing.assert_allclose(losses, losses_ref, rtol=1e-4)
    for name in params_ref:
        close(params[name], params_ref[name].astype(np.float64), "float32", name)


@pytest.mark.gpu
def test_cupy_arrays_run_on_the_cupy_backend_whatever_the_selection(rng):
    status = fastconv.list_backends()["cupy"]
    if not status["available"]:
        pytest.skip(f"backend cupy unavailable here: {status['reason']}")
    import cupy

    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    layer = L.Conv2d(4, kernel_size=3, stride=1, pad=1)
    y_ref = F.pooling(layer(x), 2, 2).data
    layer.to_gpu()
    with fastconv.use_backend("numpy"), fdz.patch():  # the numpy selection cannot take CuPy arrays
        y = F.pooling(layer(cupy.asarray(x)), 2, 2)
        y.backward()
    assert isinstance(y.data, cupy.ndarray) and isinstance(layer.W.grad.data, cupy.ndarray)
    close(y.data, y_ref.astype(np.float64), "float32")


def test_numpy_arrays_take_fastconv_s_selection(rng):
    x, W = rng.standard_normal((1, 2, 5, 5)), rng.standard_normal((3, 2, 3, 3))
    with fastconv.use_backend("numpy"):
        y = fdz.conv2d(x, W)
    close(y.data, DZ["conv2d"](x, W).data, "float64")
    # the selection is honoured: cupy cannot take NumPy arrays (nor run here without a GPU)
    with fastconv.use_backend("cupy"), pytest.raises((fastconv.BackendUnavailableError, TypeError)):
        fdz.conv2d(x, W)


# =============================================================================
# Bad input, importing
# =============================================================================
def test_errors_name_the_argument(rng):
    x = rng.standard_normal((2, 3, 6, 6))
    W = rng.standard_normal((4, 3, 3, 3))
    Wd = rng.standard_normal((3, 4, 3, 3))
    with pytest.raises(ValueError, match=r"x must be 4-D"):
        fdz.conv2d(x[0], W)
    with pytest.raises(ValueError, match=r"W must be 4-D"):
        fdz.conv2d(x, W[0])
    with pytest.raises(ValueError, match=r"channel mismatch.*3 channels.*expects 2"):
        fdz.conv2d(x, W[:, :2])
    with pytest.raises(ValueError, match=r"channel mismatch.*expects 2.*\(C, OC, KH, KW\)"):
        fdz.deconv2d(x, Wd[:2])
    with pytest.raises(ValueError, match=r"larger than the padded input height 8"):
        fdz.conv2d(x, rng.standard_normal((4, 3, 9, 3)), pad=1)
    with pytest.raises(ValueError, match=r"kernel_size width 7 is larger than the padded input width 6"):
        fdz.pooling(x, (2, 7))
    with pytest.raises(ValueError, match=r"kernel_size height 9"):
        fdz.average_pooling(x, 9, pad=1)
    with pytest.raises(ValueError, match=r"stride must be at least 1"):
        fdz.conv2d(x, W, stride=0)
    with pytest.raises(ValueError, match=r"stride must be at least 1"):
        fdz.pooling(x, 2, (1, -1))
    with pytest.raises(ValueError, match=r"pad must be >= 0"):
        fdz.average_pooling(x, 2, pad=-1)
    with pytest.raises(TypeError, match=r"kernel_size must be an int or a pair"):
        fdz.pooling(x, "2")
    with pytest.raises(ValueError, match=r"b must have shape \(4,\)"):
        fdz.conv2d(x, W, np.zeros(3))
    with pytest.raises(
        ValueError, match=r"outsize height 13 cannot come from input height 6.*valid heights: 11 to 12"
    ):
        fdz.deconv2d(x, Wd, None, 2, 1, (13, 12))
    with pytest.raises(ValueError, match=r"outsize width 10 cannot come"):
        fdz.deconv2d(x, Wd, None, 2, 1, (11, 10))
    with pytest.raises(ValueError, match=r"outsize must be at least 1"):
        fdz.deconv2d(x, Wd, None, 2, 1, 0)
    with pytest.raises(ValueError, match=r"output height would be -1"):
        fdz.deconv2d(x[:, :, :1], Wd[:, :, :1], None, 1, 1)
    with pytest.raises(ValueError, match=r"valid heights: none"):
        fdz.deconv2d(x[:, :, :1], Wd[:, :, :1], None, 1, 1, (1, 8))
    with pytest.raises(ValueError, match=r"b must have shape \(4,\) \(one bias per output channel"):
        fdz.deconv2d(x, Wd, np.zeros(3))
    with pytest.raises(TypeError, match=r"x must have a floating dtype"):
        fdz.conv2d(x.astype(np.int64), W)
    pool = fdz.Pooling(2, 2)
    pool(x)
    with pytest.raises(ValueError, match=r"pooled input's shape \(2, 3, 6, 6\)"):
        fdz.Pooling2DWithIndexes(pool)(x[:, :2])


def test_importing_fastconv_does_not_import_dezero():
    code = "import sys, fastconv, fastconv.compat; assert 'dezero' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_import_dezero_retries_with_np_int_only_during_the_import():
    assert "int" not in vars(np)  # the shim is gone after the import at the top of this file
    saved = {m: mod for m, mod in sys.modules.items() if m == "dezero" or m.startswith("dezero.")}
    try:
        for name in saved:
            del sys.modules[name]
        fresh = fdz.import_dezero()  # NumPy >= 1.24: the first import fails on np.int, the retry works
        assert fresh is not dezero and fresh.functions_conv.conv2d is not FC.conv2d
        assert "int" not in vars(np)
    finally:
        for name in [m for m in sys.modules if m == "dezero" or m.startswith("dezero.")]:
            del sys.modules[name]
        sys.modules.update(saved)


def test_import_dezero_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "dezero", None)  # `import dezero` now fails as if not installed
    with pytest.raises(ImportError, match="pip install dezero"):
        fdz.import_dezero()


def test_benchmark_script_runs_in_quick_mode(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "compat_dezero.py"),
            "--quick",
            "--parts",
            "--threads",
            "1",
            "--backend",
            "numpy",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    assert "| case |" in done.stdout and "speedup" in done.stdout and "gW: conv2d_backward" in done.stdout
    rows = json.loads(out.read_text())["rows"]
    assert {r["case"] for r in rows} == {"M1", "M2", "MP", "V1", "VP", "AP", "D1"}
