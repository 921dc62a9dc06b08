"""flaxlstm.train: losses from logits, batching, reproducibility, host-side checks."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from flaxlstm import LSTM
from flaxlstm.data.batches import Batch, batches
from flaxlstm.data.synthetic import cumsum_sequences, parity_sequences
from flaxlstm.models import CumsumModel, ParityModel
from flaxlstm.training.fit import evaluate, example_weights, fit, metric_sums, predict
from flaxlstm.training.losses import LOSSES


def binary_cross_entropy(logits, labels, lengths=None):
    """The mean binary cross-entropy over real labels, as a train step computes it."""
    batch = Batch(None, jnp.asarray(labels), lengths, np.ones(len(labels), np.float32))
    sums = metric_sums(jnp.asarray(logits, jnp.float32), batch, LOSSES["binary_crossentropy"])
    return sums[0] / sums[2]


class DropoutModel(nnx.Module):
    """Per-step logits [B, T] through an LSTM with both kinds of dropout."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.lstm = LSTM(1, 8, return_sequences=True, dropout=0.3, recurrent_dropout=0.3, rngs=rngs)
        self.head = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x, lengths=None):
        return self.head(self.lstm(x, lengths))[..., 0]


@pytest.fixture(scope="module")
def cumsum_data():
    return cumsum_sequences(50, seed=[0, 0])


def params_of(model) -> list[np.ndarray]:
    return [np.asarray(p) for p in jax.tree.leaves(nnx.state(model, nnx.Param))]


# ----------------------------------------------------------------------------- losses


def test_loss_from_logits_equals_naive_formula():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, 64)
    labels = rng.integers(0, 2, 64)
    p = 1 / (1 + np.exp(-logits))
    naive = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    got = binary_cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(labels))
    np.testing.assert_allclose(got, naive, rtol=1e-5)


def test_loss_is_finite_for_confident_logits():
    logits = jnp.array([100.0, -100.0, 100.0, -100.0])
    labels = jnp.array([1, 0, 0, 1])
    # two right (loss 0) and two wrong (loss 100): no inf, no nan
    np.testing.assert_allclose(binary_cross_entropy(logits, labels), 50.0, rtol=1e-6)


def test_masked_per_step_loss_ignores_padded_steps():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 5)).astype(np.float32)
    labels = rng.integers(0, 2, (3, 5))
    lengths = np.array([5, 2, 0])
    batch = Batch(None, labels, lengths, np.ones(3, np.float32))
    weights = example_weights(batch)
    np.testing.assert_array_equal(weights, np.arange(5) < lengths[:, None])
    real = weights.astype(bool)
    loss = binary_cross_entropy(logits, labels, lengths)
    # Anything at padded steps changes nothing ...
    noisy_logits = np.where(real, logits, 1e4)
    noisy_labels = np.where(real, labels, 1 - labels)
    np.testing.assert_array_equal(loss, binary_cross_entropy(noisy_logits, noisy_labels, lengths))
    # ... and the loss is the mean over the 7 real steps alone.
    np.testing.assert_allclose(loss, binary_cross_entropy(logits[real], labels[real]), rtol=1e-6)


# ----------------------------------------------------------------------------- batching


def test_batches_keep_one_shape_and_pad_last_batch_at_weight_zero():
    data = Batch(np.arange(10)[:, None], np.arange(10) % 2)
    out = list(batches(data, 4, order=np.arange(10)[::-1]))
    assert [b.inputs.shape for b in out] == [(4, 1)] * 3
    weights = np.concatenate([b.weights for b in out])
    taken = np.concatenate([b.inputs[:, 0] for b in out])
    np.testing.assert_array_equal(weights, [1] * 10 + [0] * 2)
    np.testing.assert_array_equal(np.sort(taken[weights == 1]), np.arange(10))


def test_partial_last_batch_is_counted(cumsum_data):
    # With a learning rate of 0 the epoch's training loss must be the loss over all 50
    # sequences (batches of 16: 16, 16, 16 and a last batch of 2).
    x, y = cumsum_data
    model = CumsumModel(4, rngs=nnx.Rngs(0))
    history = fit(model, x, y, epochs=1, batch_size=16, optimizer=optax.sgd(0.0), quiet=True)
    every = evaluate(model, x, y, batch_size=50)
    without_last = evaluate(model, x[:48], y[:48], batch_size=48)
    np.testing.assert_allclose(history["loss"][0], every["loss"], rtol=1e-5)
    np.testing.assert_allclose(history["accuracy"][0], every["accuracy"], rtol=1e-6)
    assert abs(history["loss"][0] - without_last["loss"]) > 1e-5


def test_partial_last_batch_is_trained_on_and_padding_is_not():
    # 5 examples in batches of 4, in order: one SGD step on the first 4, then one on the 5th
    # alone. The same two steps done by hand must give the same parameters.
    x, y = parity_sequences(5, seed=3)
    lr = 0.5
    model = ParityModel(100, 4, 4, rngs=nnx.Rngs(0))
    reference = nnx.clone(model)
    fit(model, x, y, batch_size=4, shuffle=False, optimizer=optax.sgd(lr), quiet=True)

    def loss(m, ids, labels):
        return binary_cross_entropy(m(ids), labels)

    for part in (slice(0, 4), slice(4, 5)):
        grads = nnx.grad(loss)(reference, jnp.asarray(x[part]), jnp.asarray(y[part]))
        params = nnx.state(reference, nnx.Param)
        nnx.update(reference, jax.tree.map(lambda p, g: p - lr * g, params, grads))
    for got, want in zip(params_of(model), params_of(reference), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- fit


def test_same_seed_gives_bit_identical_runs_with_dropout(cumsum_data):
    x, y = cumsum_data

    def run(seed):
        model = DropoutModel(rngs=nnx.Rngs(0))
        history = fit(
            model, x, y, epochs=2, batch_size=16, validation_split=0.2, seed=seed, quiet=True
        )
        return history, params_of(model)

    first, second, other = run(7), run(7), run(8)
    assert first[0] == second[0]  # exact float equality of every metric
    for a, b in zip(first[1], second[1], strict=True):
        np.testing.assert_array_equal(a, b)
    assert first[0]["loss"] != other[0]["loss"]  # the seed matters (order and split)


def test_dropout_rng_is_part_of_the_state(cumsum_data):
    # Two epochs in one fit draw different dropout masks: with lr 0 and no shuffling the
    # epoch losses differ only through dropout, and a deterministic model gives equal ones.
    x, y = cumsum_data
    kwargs = dict(epochs=2, batch_size=16, shuffle=False, optimizer=optax.sgd(0.0), quiet=True)
    with_dropout = fit(DropoutModel(rngs=nnx.Rngs(0)), x, y, **kwargs)
    assert with_dropout["loss"][0] != with_dropout["loss"][1]
    model = DropoutModel(rngs=nnx.Rngs(0))
    model.lstm.dropout = model.lstm.recurrent_dropout = 0.0
    without = fit(model, x, y, **kwargs)
    assert without["loss"][0] == without["loss"][1]


def test_fit_learns_and_leaves_model_mode_alone(cumsum_data, tmp_path):
    x, y = cumsum_data
    model = DropoutModel(rngs=nnx.Rngs(0))
    before = params_of(model)
    path = tmp_path / "history.json"
    history = fit(
        model,
        x,
        y,
        epochs=3,
        batch_size=16,
        validation_data=(x[:10], y[:10]),
        quiet=True,
        history_path=path,
    )
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 3 for v in history.values())
    assert json.loads(path.read_text()) == history
    assert model.lstm.deterministic is False
    assert any(not np.array_equal(a, b) for a, b in zip(before, params_of(model), strict=True))


def test_fit_prints_keras_like_lines_unless_quiet(cumsum_data, capsys):
    x, y = cumsum_data
    fit(
        CumsumModel(4, rngs=nnx.Rngs(0)),
        x,
        y,
        epochs=2,
        batch_size=16,
        validation_split=0.2,
        quiet=True,
    )
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    fit(CumsumModel(4, rngs=nnx.Rngs(0)), x, y, epochs=2, batch_size=16, validation_split=0.2)
    lines = [line.strip() for line in capsys.readouterr().out.split("\n") if line.strip()]
    assert len(lines) == 2
    assert lines[1].startswith("Epoch 2/2 - loss ")
    assert " - accuracy " in lines[1] and " - val_loss " in lines[1]
    assert " - val_accuracy " in lines[1] and lines[1].endswith("s")


def test_predict_returns_probabilities_of_the_eval_mode_model(cumsum_data):
    x, _ = cumsum_data
    model = DropoutModel(rngs=nnx.Rngs(0))
    probabilities = predict(model, x, batch_size=16)
    assert probabilities.shape == (50, 10)
    model.eval()
    np.testing.assert_allclose(probabilities, jax.nn.sigmoid(model(jnp.asarray(x))), rtol=1e-5)


# ----------------------------------------------------------------------------- host checks


@pytest.mark.parametrize(
    "x, y, message",
    [
        (np.zeros((4, 10, 1), np.float32), np.zeros((3, 10)), "x has 4 examples but y has 3"),
        (np.zeros((4, 10, 1), np.float32), np.full((4, 10), 2), "labels must be 0 or 1"),
        (np.zeros((0, 10, 1), np.float32), np.zeros((0, 10)), "empty"),
    ],
)
def test_bad_data_is_one_line_value_error(x, y, message):
    model = CumsumModel(4, rngs=nnx.Rngs(0))
    for call in (lambda: fit(model, x, y, quiet=True), lambda: evaluate(model, x, y)):
        with pytest.raises(ValueError, match=message) as error:
            call()
        assert "\n" not in str(error.value)


def test_token_ids_out_of_range_are_refused_before_jit():
    x, y = parity_sequences(8, seed=0)
    x[3, 4] = 100
    model = ParityModel(100, 4, 4, rngs=nnx.Rngs(0))
    for call in (lambda: fit(model, x, y, quiet=True), lambda: predict(model, x)):
        with pytest.raises(ValueError, match=r"token ids must lie in \[0, 100\)"):
            call()


def test_labels_are_checked_only_at_real_steps():
    x, y = cumsum_sequences(4, seed=0)
    y[:, 8:] = -1  # padding labels past every length
    lengths = np.array([8, 5, 3, 8])
    result = evaluate(CumsumModel(4, rngs=nnx.Rngs(0)), x, y, lengths=lengths)
    assert 0.0 <= result["accuracy"] <= 1.0
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        evaluate(CumsumModel(4, rngs=nnx.Rngs(0)), x, y)
