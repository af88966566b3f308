"""Optimizers: convergence on a convex problem, the book's update rules, in-place updates, exact resume."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from fastconv.train.optimizers import (
    OPTIMIZERS,
    SGD,
    AdaGrad,
    Adam,
    Momentum,
    Nesterov,
    RMSprop,
    make_optimizer,
)

# Settings per optimizer that reaches the minimum of the quadratic below in a few hundred steps.
SETTINGS = {
    "sgd": {"lr": 0.1},
    "momentum": {"lr": 0.05, "momentum": 0.9},
    "nesterov": {"lr": 0.05, "momentum": 0.9},
    "adagrad": {"lr": 0.5},
    "rmsprop": {"lr": 0.01, "decay_rate": 0.9},
    "adam": {"lr": 0.05},
}


def _quadratic(rng: np.random.Generator):
    """f(w) = 0.5 (w - w*)^T A (w - w*) with A symmetric positive definite (condition number ~10)."""
    q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    a = q @ np.diag(np.linspace(1.0, 10.0, 5)) @ q.T
    target = rng.standard_normal(5)
    return a, target


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_reaches_the_minimum_of_a_convex_quadratic(name, rng):
    a, target = _quadratic(rng)
    params = {"w": rng.standard_normal(5), "b": rng.standard_normal(3)}
    opt = make_optimizer(name, **SETTINGS[name])
    for _ in range(600):
        grads = {"w": a @ (params["w"] - target), "b": params["b"] - 1.0}
        opt.update(params, grads)
    tol = 2e-2 if name in ("rmsprop", "adam") else 1e-4  # constant-step adaptive methods hover at ~lr
    np.testing.assert_allclose(params["w"], target, atol=tol)
    np.testing.assert_allclose(params["b"], 1.0, atol=tol)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_updates_the_parameter_arrays_in_place(name, rng):
    w = rng.standard_normal((3, 4)).astype(np.float32)
    before = w.copy()
    params = {"W": w}
    held_by_a_layer = params["W"]
    make_optimizer(name).update(params, {"W": rng.standard_normal((3, 4)).astype(np.float32)})
    assert params["W"] is held_by_a_layer
    assert params["W"].dtype == np.float32
    assert not np.array_equal(held_by_a_layer, before)


def _reference_steps(name: str, p0: np.ndarray, grads: list[np.ndarray], hp: dict) -> np.ndarray:
    """The book's update rules, written out independently in float64."""
    p = p0.copy()
    v = np.zeros_like(p)
    h = np.zeros_like(p)
    m = np.zeros_like(p)
    lr = hp["lr"]
    for it, g in enumerate(grads, start=1):
        if name == "sgd":
            p = p - lr * g
        elif name == "momentum":
            v = hp["momentum"] * v - lr * g
            p = p + v
        elif name == "nesterov":
            mu = hp["momentum"]
            v = mu * v - lr * g
            p = p + mu * mu * v - (1 + mu) * lr * g
        elif name == "adagrad":
            h = h + g * g
            p = p - lr * g / (np.sqrt(h) + 1e-7)
        elif name == "rmsprop":
            h = hp["decay_rate"] * h + (1 - hp["decay_rate"]) * g * g
            p = p - lr * g / (np.sqrt(h) + 1e-7)
        elif name == "adam":
            b1, b2 = 0.9, 0.999
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            m_hat, v_hat = m / (1 - b1**it), v / (1 - b2**it)
            # the book folds the bias corrections into the step size, which puts eps on sqrt(v), not sqrt(v_hat)
            p = p - lr * m_hat / (np.sqrt(v_hat) + 1e-7 / np.sqrt(1 - b2**it))
    return p


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_follows_the_books_update_rule(name, rng):
    p0 = rng.standard_normal(7)
    grads = [rng.standard_normal(7) for _ in range(5)]
    hp = SETTINGS[name]
    params = {"p": p0.copy()}
    opt = make_optimizer(name, **hp)
    for g in grads:
        opt.update(params, {"p": g})
    np.testing.assert_allclose(params["p"], _reference_steps(name, p0, grads, hp), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_resumed_from_its_state_dict_continues_bit_for_bit(name, rng):
    grads = [{"w": rng.standard_normal((2, 3)), "b": rng.standard_normal(3)} for _ in range(6)]
    start = {"w": rng.standard_normal((2, 3)), "b": rng.standard_normal(3)}

    straight = copy.deepcopy(start)
    opt = make_optimizer(name)
    for g in grads:
        opt.update(straight, g)

    first = copy.deepcopy(start)
    opt1 = make_optimizer(name)
    for g in grads[:3]:
        opt1.update(first, g)
    state = copy.deepcopy(opt1.state_dict())
    opt2 = make_optimizer(name)
    opt2.load_state_dict(state, first)
    for g in grads[3:]:
        opt2.update(first, g)
    for k in start:
        assert np.array_equal(first[k], straight[k])


def test_optimizer_state_of_another_kind_is_refused():
    with pytest.raises(ValueError, match="adam"):
        SGD().load_state_dict(Adam().state_dict())


@pytest.mark.parametrize("cls", [SGD, Momentum, Nesterov, AdaGrad, RMSprop, Adam])
@pytest.mark.parametrize("lr", [0.0, -1.0, float("nan")])
def test_optimizer_refuses_a_learning_rate_that_is_not_positive(cls, lr):
    with pytest.raises(ValueError, match="lr"):
        cls(lr=lr)


def test_make_optimizer_names_the_choices_for_an_unknown_name():
    with pytest.raises(ValueError, match="sgd, momentum, nesterov, adagrad, rmsprop, adam"):
        make_optimizer("adadelta")


def test_update_names_a_missing_or_misshapen_gradient(rng):
    with pytest.raises(KeyError, match="b"):
        SGD().update({"w": np.zeros(2), "b": np.zeros(2)}, {"w": np.ones(2)})
    with pytest.raises(ValueError, match="shape"):
        SGD().update({"w": np.zeros(2)}, {"w": np.ones(3)})
