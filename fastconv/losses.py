"""Softmax and the losses, with their gradients: the one definition of each, for NumPy and CuPy arrays.

Two cross-entropies, because two conventions are tested against:

* :func:`cross_entropy_error` is the book's: ``-mean(log(y[t] + 1e-7))``. :class:`fastconv.layers.SoftmaxWithLoss`
  uses it, so losses match the book's to the last digit;
* :func:`cross_entropy` is Keras': probabilities clipped to ``[1e-7, 1 - 1e-7]``, then ``-sum(t * log(y)) / N``
  (it also takes soft targets). The Keras-style :class:`~fastconv.train.keras.Sequential` uses it.

Targets ``t`` are class indices ``(N,)`` or one-hot rows ``(N, K)`` for every cross-entropy here; ``y`` are
probabilities ``(N, K)``. Every ``*_backward`` returns the gradient of the mean loss, shaped like its first
argument.
"""

from __future__ import annotations

from typing import Any

from fastconv._arrays import array_module

__all__ = [
    "EPSILON",
    "cross_entropy",
    "cross_entropy_backward",
    "cross_entropy_error",
    "mean_squared_error",
    "mean_squared_error_backward",
    "softmax",
    "softmax_backward",
    "softmax_cross_entropy_backward",
]

EPSILON = 1e-7  # the book's ``delta`` and Keras' ``epsilon()``


def softmax(x: Any) -> Any:
    """Softmax over the last axis, shifted by the maximum for stability: x (..., K) -> probabilities (..., K)."""
    xp = array_module(x)
    e = xp.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_backward(dout: Any, y: Any) -> Any:
    """Gradient through :func:`softmax` given its output ``y``: ``y * (dout - sum(dout * y))``, shapes (..., K)."""
    return y * (dout - (dout * y).sum(axis=-1, keepdims=True))


def _as_matrix(y: Any, t: Any) -> tuple[Any, Any]:
    """One sample (K,) as a batch of one (1, K), its target alongside, as the book does."""
    if y.ndim == 1:
        return y.reshape(1, y.size), t.reshape(1, t.size)
    return y, t


def _is_one_hot(y: Any, t: Any) -> bool:
    return t.ndim == y.ndim and t.size == y.size


def cross_entropy_error(y: Any, t: Any) -> Any:
    """The book's mean cross-entropy of probabilities y (N, K) (or one sample (K,)) against t: indices (N,)
    or one-hot (N, K), whose argmax is taken. ``1e-7`` is added inside the log, as the book does."""
    xp = array_module(y)
    y, t = _as_matrix(y, t)
    if t.size == y.size:
        t = t.argmax(axis=1)
    n = y.shape[0]
    return -xp.sum(xp.log(y[xp.arange(n), t] + EPSILON)) / n


def cross_entropy(y: Any, t: Any) -> Any:
    """Keras' mean cross-entropy: probabilities y (N, K) clipped to ``[1e-7, 1 - 1e-7]``; t indices (N,) or
    targets (N, K) (one-hot or soft)."""
    xp = array_module(y)
    yc = xp.clip(y, EPSILON, 1.0 - EPSILON)
    n = y.shape[0]
    if _is_one_hot(y, t):
        return -(t * xp.log(yc)).sum() / n
    return -xp.log(yc[xp.arange(n), t]).sum() / n


def cross_entropy_backward(y: Any, t: Any) -> Any:
    """Gradient of :func:`cross_entropy` with respect to y (N, K): ``-t / y / N`` where y is inside the clip
    range, 0 where the clip holds it."""
    xp = array_module(y)
    n = y.shape[0]
    inside = (y >= EPSILON) & (y <= 1.0 - EPSILON)
    if _is_one_hot(y, t):
        target = t
    else:
        target = xp.zeros_like(y)
        target[xp.arange(n), t] = 1
    return xp.where(inside, -target / xp.clip(y, EPSILON, 1.0) / n, 0).astype(y.dtype, copy=False)


def softmax_cross_entropy_backward(y: Any, t: Any) -> Any:
    """Gradient of the mean cross-entropy of ``softmax(x)`` with respect to the logits x, given
    ``y = softmax(x)`` (N, K) and t indices (N,) or targets (N, K): ``(y - t) / N``, as the book's
    ``SoftmaxWithLoss.backward``."""
    n = t.shape[0]
    if _is_one_hot(y, t):
        return (y - t) / n
    xp = array_module(y)
    dx = y.copy()
    dx[xp.arange(n), t] -= 1
    return dx / n


def mean_squared_error(y: Any, t: Any) -> Any:
    """Mean of ``(y - t) ** 2`` over every element (Keras' ``mse``); y and t of the same shape."""
    diff = y - t
    return (diff * diff).mean()


def mean_squared_error_backward(y: Any, t: Any) -> Any:
    """Gradient of :func:`mean_squared_error` with respect to y: ``2 * (y - t) / y.size``."""
    return 2 * (y - t) / y.size
