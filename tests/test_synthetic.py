"""The synthetic tasks' data, and their models learning them at CI size."""

import numpy as np
import optax
import pytest
from flax import nnx

from flaxlstm.data.synthetic import cumsum_sequences, parity_prefixes, parity_sequences
from flaxlstm.models import ParityModel
from flaxlstm.runs import train_cumsum_model
from flaxlstm.train import evaluate, fit, predict


def test_cumsum_sequences_follow_seed_001():
    x, y = cumsum_sequences(200, 10, seed=5)
    assert x.shape == (200, 10, 1) and x.dtype == np.float32
    assert y.shape == (200, 10) and y.dtype == np.int32
    assert x.min() >= 0 and x.max() < 1
    np.testing.assert_array_equal(y, np.cumsum(x[..., 0], axis=1) >= 2.5)
    assert (np.diff(y, axis=1) >= 0).all()  # once 1, always 1
    assert 0.3 < y.mean() < 0.8
    np.testing.assert_array_equal(cumsum_sequences(200, 10, seed=5)[0], x)
    assert not np.array_equal(cumsum_sequences(200, 10, seed=6)[0], x)


def test_parity_sequences_follow_seed_000():
    x, y = parity_sequences(500, seed=5)
    assert x.shape == (500, 10) and y.shape == (500,)
    assert x.min() >= 0 and x.max() < 100 and np.issubdtype(x.dtype, np.integer)
    np.testing.assert_array_equal(y, [sum(int(v) for v in row) % 2 for row in x])
    assert 0.4 < y.mean() < 0.6
    np.testing.assert_array_equal(parity_sequences(500, seed=5)[0], x)


def test_parity_prefixes_label_the_kept_numbers_only():
    x, _ = parity_sequences(500, seed=5)
    lengths, y = parity_prefixes(x, seed=1)
    assert lengths.min() == 1 and lengths.max() == 10
    np.testing.assert_array_equal(y, [row[:n].sum() % 2 for row, n in zip(x, lengths, strict=True)])


@pytest.fixture(scope="module")
def cumsum_model():
    # seed 001's 10,000 sequences, its LSTM 20, 10 epochs of batch 32, Adam 1e-3
    return train_cumsum_model(samples=10_000, learning_rate=1e-3)


def test_cumsum_model_reaches_99_percent_per_step_on_fresh_sequences(cumsum_model):
    x, y = cumsum_sequences(1000, seed=[0, 1])
    result = evaluate(cumsum_model, x, y, batch_size=250)
    assert result["accuracy"] >= 0.99, result


def test_cumsum_model_predicts_like_the_seed(cumsum_model):
    x, y = cumsum_sequences(1, seed=[0, 2])
    probabilities = predict(cumsum_model, x)
    assert probabilities.shape == (1, 10)
    assert ((probabilities[0] > 0.5) == (y[0] == 1)).mean() >= 0.9


def test_parity_model_reaches_99_percent_on_held_out_sequences():
    # Trained on random-length prefixes (docs/SYNTHETIC.md); tested on whole sequences that
    # were never in training.
    x, _ = parity_sequences(10_000, seed=[0, 0])
    lengths, y = parity_prefixes(x, seed=[0, 2])
    test_x, test_y = parity_sequences(2000, seed=[0, 1])
    seen = {row.tobytes() for row in x}
    assert not any(row.tobytes() in seen for row in test_x)
    model = ParityModel(100, 16, 64, rngs=nnx.Rngs(0))
    fit(
        model,
        x,
        y,
        lengths=lengths,
        epochs=3,
        batch_size=32,
        optimizer=optax.adam(1e-2),
        quiet=True,
    )
    result = evaluate(model, test_x, test_y, batch_size=250)
    assert result["accuracy"] >= 0.99, result
