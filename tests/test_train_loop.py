"""The one training loop (fastconv.train.loop): batches, epochs, evaluation; Sequential.fit runs it."""

from __future__ import annotations

import numpy as np
import pytest

from fastconv.train import loop
from fastconv.train.keras import Dense, Flatten, Sequential
from fastconv.train.optimizers import SGD


@pytest.mark.parametrize("n, batch_size", [(10, 3), (9, 3), (1, 5)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_batch_indices_cover_every_sample_once_in_batches_of_the_size(rng, n, batch_size, shuffle):
    batches = list(loop.batch_indices(n, batch_size, rng if shuffle else None))
    assert [len(b) for b in batches[:-1]] == [batch_size] * (len(batches) - 1)
    assert 1 <= len(batches[-1]) <= batch_size
    order = np.concatenate(batches)
    np.testing.assert_array_equal(np.sort(order), np.arange(n))
    if not shuffle:
        np.testing.assert_array_equal(order, np.arange(n))


def _model(seed: int = 0) -> Sequential:
    model = Sequential(
        [Flatten(input_shape=(2, 2, 1)), Dense(3, activation="softmax")], dtype=np.float64, seed=seed
    )
    model.compile("sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.build()
    return model


def test_train_in_two_parts_with_the_rng_state_carried_over_equals_one_run(rng):
    x, t = rng.random((11, 1, 2, 2)), rng.integers(0, 3, 11)
    straight, parts = _model(), _model()
    run = dict(batch_size=4, validation=(x, t), validation_batch_size=5)
    whole = list(loop.train(straight, SGD(0.5), x, t, epochs=3, rng=np.random.default_rng(7), **run))
    shuffle, opt = np.random.default_rng(7), SGD(0.5)
    first = list(loop.train(parts, opt, x, t, epochs=1, rng=shuffle, **run))
    rest = list(loop.train(parts, opt, x, t, epochs=3, start_epoch=1, rng=shuffle, **run))
    assert [r.epoch for r in whole] == [1, 2, 3] and [r.epoch for r in first + rest] == [1, 2, 3]
    for a, b in zip(whole, first + rest):
        assert (a.loss, a.accuracy, a.val_loss, a.val_accuracy) == (
            b.loss,
            b.accuracy,
            b.val_loss,
            b.val_accuracy,
        )
        np.testing.assert_array_equal(a.val_predictions, b.val_predictions)
    for k in straight.params:
        np.testing.assert_array_equal(straight.params[k], parts.params[k])


def test_evaluate_reports_mean_loss_accuracy_and_predictions_over_uneven_batches(rng):
    model = _model()
    x, t = rng.random((7, 1, 2, 2)), rng.integers(0, 3, 7)
    loss, acc, preds = loop.evaluate(model, x, t, 3)
    probs = model.predict(x)
    np.testing.assert_array_equal(preds, probs.argmax(axis=1))
    assert acc == np.mean(preds == t)
    assert loss == pytest.approx(-np.mean(np.log(probs[np.arange(7), t])), rel=1e-9)
    with pytest.raises(ValueError, match="x has 0"):
        loop.evaluate(model, x[:0], t[:0], 3)


def test_fit_returns_the_loops_epochs_as_keras_history_and_prints_one_line_per_epoch(rng, capsys):
    x, t = rng.random((12, 2, 2, 1)), rng.integers(0, 3, 12)
    model = _model(seed=3)
    history = model.fit(x, t, batch_size=5, epochs=2, verbose=2, validation_data=(x, t))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" - ")[0] for line in lines] == ["Epoch 1/2", "Epoch 2/2"]
    assert history.epoch == [0, 1]
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert history.history["val_loss"][-1] == pytest.approx(model.evaluate(x, t)[0], rel=1e-12)
