"""Losses beyond one binary label: sparse categorical cross-entropy, mse and any callable,
against numpy; labels that do not fit the loss are one-line errors before anything compiles."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxlstm import LSTM, PerStep
from flaxlstm.recipes import Recipe
from flaxlstm.training.fit import evaluate, fit, predict
from flaxlstm.training.losses import get_loss

N, T, F, H, C = 12, 5, 2, 6, 3
LENGTHS = np.array([5, 3, 1, 5, 2, 4, 5, 5, 1, 2, 3, 4], np.int32)


class Tagger(nnx.Module):
    """[B, T, F] → per-step outputs [B, T, C] (``per_step``) or per-sequence [B, C]; with
    ``C == 0``: one value per label ([B, T] or [B])."""

    def __init__(self, classes: int, *, per_step: bool, rngs: nnx.Rngs):
        self.lstm = LSTM(F, H, return_sequences=per_step, rngs=rngs)
        head = nnx.Linear(H, max(classes, 1), rngs=rngs)
        self.head = PerStep(head) if per_step else head
        self.per_step, self.squeeze = per_step, classes == 0

    def __call__(self, x, lengths=None):
        h = self.lstm(x, lengths)
        out = self.head(h, lengths) if self.per_step else self.head(h)
        return out[..., 0] if self.squeeze else out


def data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N, T, F)).astype(np.float32), rng


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_sparse_categorical_per_step_equals_numpy_over_real_steps():
    x, rng = data()
    y = rng.integers(0, C, (N, T))
    model = Tagger(C, per_step=True, rngs=nnx.Rngs(0))
    scores = evaluate(model, x, y, lengths=LENGTHS, loss="sparse_categorical_crossentropy")
    logits = np.asarray(model(jnp.asarray(x), jnp.asarray(LENGTHS)))  # [N, T, C]
    real = np.arange(T) < LENGTHS[:, None]
    nll = -np.take_along_axis(log_softmax(logits), y[..., None], -1)[..., 0]
    assert scores["loss"] == pytest.approx(nll[real].mean(), rel=1e-5)
    correct = logits.argmax(-1) == y
    assert scores["accuracy"] == pytest.approx(correct[real].mean(), rel=1e-6)
    probabilities = predict(model, x, lengths=LENGTHS, loss="sparse_categorical_crossentropy")
    assert probabilities.shape == (N, T, C)
    np.testing.assert_allclose(probabilities.sum(-1), 1, rtol=1e-5)


def test_sparse_categorical_training_learns_the_first_token_class():
    """Three classes: the class is the sign pattern of the first step's features."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, T, F)).astype(np.float32)
    y = (x[:, 0, 0] > 0).astype(np.int32) + (x[:, 0, 1] > 0.5)  # 0, 1 or 2
    model = Tagger(C, per_step=False, rngs=nnx.Rngs(1))
    history = fit(
        model, x, y, epochs=15, batch_size=20, loss="sparse_categorical_crossentropy",
        recipe=Recipe(learning_rate=1e-2), quiet=True,
    )  # fmt: skip
    assert set(history) == {"loss", "accuracy"}
    assert history["loss"][-1] < history["loss"][0] and history["accuracy"][-1] > 0.8


def test_mse_and_its_mean_absolute_error_equal_numpy():
    x, rng = data(2)
    y = rng.normal(size=(N, T)).astype(np.float32)
    model = Tagger(0, per_step=True, rngs=nnx.Rngs(2))
    scores = evaluate(model, x, y, lengths=LENGTHS, loss="mse")
    values = predict(model, x, lengths=LENGTHS, loss="mse")
    real = np.arange(T) < LENGTHS[:, None]
    assert set(scores) == {"loss", "mae"}
    assert scores["loss"] == pytest.approx(((values - y) ** 2)[real].mean(), rel=1e-5)
    assert scores["mae"] == pytest.approx(np.abs(values - y)[real].mean(), rel=1e-5)


def test_a_callable_loss_trains_and_reports_only_the_loss():
    x, rng = data(3)
    y = rng.normal(size=N).astype(np.float32)
    model = Tagger(0, per_step=False, rngs=nnx.Rngs(3))

    def huber(values, targets):
        return jnp.where(jnp.abs(values - targets) < 1, 0.5 * (values - targets) ** 2, 1.0)

    history = fit(model, x, y, epochs=2, batch_size=4, loss=huber, quiet=True)
    assert set(history) == {"loss"} and len(history["loss"]) == 2
    assert get_loss(huber).name == "huber"


def test_predict_and_evaluate_default_to_the_loss_fit_trained_with():
    """As Keras's compile: after ``fit(loss=...)``, ``predict`` and ``evaluate`` take that
    loss, on the model and on a copy of it through ``nnx.split``/``nnx.merge``; a model that
    ``fit`` never trained takes binary_crossentropy, refused for class logits [N, C]."""
    x, rng = data(6)
    y = rng.integers(0, C, N)
    model = Tagger(C, per_step=False, rngs=nnx.Rngs(6))
    for call in (lambda: predict(model, x), lambda: evaluate(model, x, y)):
        with pytest.raises(
            ValueError, match=r"outputs \(12, 3\), not the logits \[N\] or \[N, T=5\]"
        ):
            call()
    loss = "sparse_categorical_crossentropy"
    fit(model, x, y, epochs=1, batch_size=N, loss=loss, quiet=True)
    probabilities = predict(model, x, loss=loss)
    np.testing.assert_allclose(probabilities.sum(-1), 1, rtol=1e-5)  # softmax, not 3 sigmoids
    for fitted in (model, nnx.merge(*nnx.split(model))):
        np.testing.assert_array_equal(predict(fitted, x), probabilities)
        assert evaluate(fitted, x, y) == evaluate(model, x, y, loss=loss)
    with pytest.raises(ValueError, match=r"binary_crossentropy takes labels"):  # as given
        evaluate(model, x, y, loss="binary_crossentropy")


@pytest.mark.parametrize(
    "loss, y, message",
    [
        ("sparse_categorical_crossentropy", np.full(N, C), r"class ids must lie in \[0, 3\)"),
        ("sparse_categorical_crossentropy", np.full(N, -1), r"class ids must lie in \[0, 3\)"),
        ("sparse_categorical_crossentropy", np.zeros(N, np.float32), "integer class ids"),
        ("sparse_categorical_crossentropy", np.zeros((N, T), int), r"takes labels \(12,\)"),
        ("binary_crossentropy", np.zeros(N, int), r"outputs \(12, 3\) for labels \(12,\)"),
        ("mse", np.full(N, np.nan), "finite"),
        ("hinge", np.zeros(N, int), "unknown loss 'hinge'"),
    ],
)
def test_labels_that_do_not_fit_the_loss_are_one_line_errors(loss, y, message):
    x, _ = data(4)
    model = Tagger(C, per_step=False, rngs=nnx.Rngs(4))
    if loss == "mse":
        model = Tagger(0, per_step=False, rngs=nnx.Rngs(4))
    with pytest.raises(ValueError, match=message) as error:
        fit(model, x, y, epochs=1, batch_size=4, loss=loss, quiet=True)
    assert "\n" not in str(error.value)


def test_padding_steps_may_hold_any_class_id():
    x, rng = data(5)
    y = rng.integers(0, C, (N, T))
    y[np.arange(T) >= LENGTHS[:, None]] = 99  # never read: beyond each sequence's length
    model = Tagger(C, per_step=True, rngs=nnx.Rngs(5))
    loss = "sparse_categorical_crossentropy"
    history = fit(model, x, y, lengths=LENGTHS, epochs=1, batch_size=4, loss=loss, quiet=True)
    assert np.isfinite(history["loss"][0])  # and the gradients: fit stops at a non-finite step
    assert np.isfinite(
        evaluate(model, x, y, lengths=LENGTHS, loss="sparse_categorical_crossentropy")["loss"]
    )
