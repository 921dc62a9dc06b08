"""flaxlstm.from_keras: saved Keras 3 models (JAX backend) rebuilt as NNX models predict what
Keras predicts, masks included, on pre- and post-padded ids."""

import os
import re

os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is imported: no TensorFlow

import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")
from keras import layers as kl  # noqa: E402

from flaxlstm import from_keras  # noqa: E402
from flaxlstm.config import IMDB_MODELS  # noqa: E402
from flaxlstm.interop.keras import KerasSequential  # noqa: E402
from flaxlstm.lab import traces  # noqa: E402
from flaxlstm.training.fit import fit, predict  # noqa: E402

# Keras warns that Conv1D and the max poolings drop the mask: that is what is matched here.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Layer .* does not support masking:UserWarning"),
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]
VOCAB, MAXLEN, EMBED, HIDDEN = 50, 12, 8, 6
LENGTHS = np.array([12, 7, 3, 1, 0])


def padded(padding: str) -> np.ndarray:
    """Ids [5, MAXLEN] of LENGTHS real tokens (ids ≥ 1), padded with 0 before or after."""
    rng = np.random.default_rng(1)
    ids = np.zeros((len(LENGTHS), MAXLEN), np.int32)
    for row, n in enumerate(LENGTHS):
        tokens = rng.integers(1, VOCAB, n)
        if padding == "post":
            ids[row, :n] = tokens
        else:
            ids[row, MAXLEN - n :] = tokens
    return ids


IDS = np.concatenate([padded("post"), padded("pre")])  # [10, MAXLEN], one empty review each


def keras_model(*body, mask_zero: bool = True):
    """Input → Embedding(VOCAB, EMBED) → ``body``, with weights large enough that a mismatch
    shows (Keras's initialisers keep everything near 0)."""
    embedding = kl.Embedding(VOCAB, EMBED, mask_zero=mask_zero)
    model = keras.Sequential([keras.Input((MAXLEN,), dtype="int32"), embedding, *body])
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.7, w.shape) for w in model.get_weights()])
    return model


def assert_loads_equal(model, tmp_path, ids=IDS, name="m.keras", **options) -> KerasSequential:
    """Save the Keras ``model``, load it with from_keras, and compare predictions."""
    model.save(tmp_path / name)
    loaded = from_keras(tmp_path / name, **options)
    expected = model.predict(ids, verbose=0)
    np.testing.assert_allclose(np.asarray(loaded(ids)), expected, rtol=0, atol=1e-5)
    return loaded


def seed_model(name: str):
    """The Keras model of one of the seeds' IMDB models (config.IMDB_MODELS), at small sizes."""
    seed = IMDB_MODELS[name]
    dropouts = dict(dropout=seed.lstm_dropout, recurrent_dropout=seed.recurrent_dropout)
    lstm = kl.LSTM(HIDDEN, name="lstm", **dropouts)
    dropout = [kl.Dropout(seed.dropout)] if seed.dropout else []
    conv = [kl.Conv1D(5, 3, padding="same", activation="relu"), kl.MaxPooling1D(2)]
    return keras_model(
        *dropout,
        *(conv if seed.conv_filters else []),
        kl.Bidirectional(lstm) if seed.bidirectional else lstm,
        *dropout,
        kl.Dense(1, activation="sigmoid"),
    )


SEEDS_MODELS = sorted(set(IMDB_MODELS) - {"bilstm-big", "best"})  # the later models are not Keras's


@pytest.mark.parametrize("name", SEEDS_MODELS)
def test_the_seeds_models_predict_as_keras(name, tmp_path):
    loaded = assert_loads_equal(seed_model(name), tmp_path)
    assert isinstance(loaded, KerasSequential)


def test_an_h5_file_loads_too(tmp_path):
    assert_loads_equal(seed_model("simple"), tmp_path, name="m.h5")


@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("zero_output", [False, True])
def test_lstm_outputs_at_masked_steps_and_go_backwards(go_backwards, zero_output, tmp_path):
    # Keras runs go_backwards LSTMs from the end and returns their steps in that order, and
    # repeats the previous output at a masked step (zeros with zero_output_for_mask).
    options = dict(go_backwards=go_backwards, zero_output_for_mask=zero_output)
    sequences = lambda: kl.LSTM(HIDDEN, return_sequences=True, **options)  # noqa: E731
    activations = dict(activation="relu", recurrent_activation="hard_sigmoid")
    last = kl.LSTM(HIDDEN, use_bias=False, **activations, **options)
    assert_loads_equal(keras_model(sequences(), last, kl.Dense(2, use_bias=False)), tmp_path)
    assert_loads_equal(keras_model(sequences(), kl.Dense(3, activation="tanh")), tmp_path)


@pytest.mark.parametrize("merge", ["concat", "sum", "mul", "ave"])
def test_bidirectional_merges(merge, tmp_path):
    # Inside Bidirectional, Keras's LSTMs output zeros at masked steps.
    sequences = kl.Bidirectional(kl.LSTM(HIDDEN, return_sequences=True), merge_mode=merge)
    model = keras_model(sequences, kl.TimeDistributed(kl.Dense(3, activation="softmax")))
    assert_loads_equal(model, tmp_path)
    sequences = kl.Bidirectional(kl.LSTM(HIDDEN, return_sequences=True), merge_mode=merge)
    assert_loads_equal(keras_model(sequences, kl.Bidirectional(kl.LSTM(HIDDEN))), tmp_path)


@pytest.mark.parametrize("pool", [kl.GlobalMaxPooling1D, kl.GlobalAveragePooling1D])
def test_global_pooling(pool, tmp_path):
    # Keras's global max ignores the mask, the average takes the real steps (NaN for none).
    sequences = kl.LSTM(HIDDEN, return_sequences=True)
    assert_loads_equal(keras_model(sequences, pool(), kl.Dense(2)), tmp_path)
    conv = kl.Conv1D(4, 3, padding="valid", activation="tanh")  # no mask after a convolution
    maximum = kl.MaxPooling1D(3, strides=2, padding="same")
    assert_loads_equal(keras_model(conv, maximum, pool(keepdims=True), kl.Dense(2)), tmp_path)


def test_a_functional_chain_loads_and_a_graph_is_refused(tmp_path):
    ids = keras.Input((MAXLEN,), dtype="int32")
    x = kl.Embedding(VOCAB, EMBED, mask_zero=True)(ids)
    chain = keras.Model(ids, kl.Dense(1)(kl.LSTM(HIDDEN)(x)))
    assert_loads_equal(chain, tmp_path)
    graph = keras.Model(ids, kl.Concatenate()([kl.LSTM(2)(x), kl.LSTM(3)(x)]))
    with pytest.raises(ValueError, match="not a chain"):
        from_keras(graph)


def test_logits_for_flaxlstm_training(tmp_path):
    model = seed_model("bilstm")
    loaded = assert_loads_equal(model, tmp_path, logits=False)
    logits = from_keras(tmp_path / "m.keras", logits=True)
    expected = model.predict(IDS, verbose=0)[:, 0]
    assert logits(IDS).shape == (len(IDS),)
    np.testing.assert_allclose(predict(logits, IDS), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(predict(loaded, IDS, loss="mse")[:, 0], expected, atol=1e-6)
    history = fit(logits, IDS, (LENGTHS[np.arange(10) % 5] > 3).astype(int), quiet=True)
    assert np.isfinite(history["loss"]).all()
    with pytest.raises(ValueError, match="sigmoid or softmax"):
        from_keras(keras_model(kl.LSTM(HIDDEN), kl.Dense(1)), logits=True)


def test_trace_model_reads_the_keras_lstm_gates(tmp_path):
    model = seed_model("simple")
    loaded = assert_loads_equal(model, tmp_path)
    gates = traces.trace_model(loaded, IDS)
    assert list(gates) == ["lstm"]
    trace = gates["lstm"]
    assert trace.f.shape == (len(IDS), MAXLEN, HIDDEN)
    assert 0 <= float(np.min(trace.f)) and float(np.max(trace.f)) <= 1
    # h at each post-padded review's last real token is Keras's LSTM output.
    lstm = keras.Model(model.inputs, model.get_layer("lstm").output).predict(IDS, verbose=0)
    rows = np.flatnonzero(LENGTHS)
    last = np.asarray(trace.h)[rows, LENGTHS[rows] - 1]
    np.testing.assert_allclose(last, lstm[rows], rtol=0, atol=1e-5)


def one_line_error(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "layer, expected",
    [
        (kl.GRU(HIDDEN, name="gru"), "layer 'gru' (GRU) is not supported; supported: Bidi"),
        (kl.LSTM(HIDDEN, stateful=True), "return_state or stateful is not supported"),
        (kl.TimeDistributed(kl.Dropout(0.1)), "a wrapped Dropout (only Dense)"),
        (kl.LSTM(HIDDEN, activation=lambda x: x), "activation '<lambda>' of layer"),
    ],
)
def test_what_has_no_equivalent_is_a_one_line_error(layer, expected):
    ids = keras.Input((MAXLEN,), batch_size=2, dtype="int32")
    model = keras.Sequential([ids, kl.Embedding(VOCAB, EMBED), layer])
    with pytest.raises(ValueError, match=re.escape(expected)) as error:
        from_keras(model)
    one_line_error(error)


def test_a_missing_file_is_a_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Keras model file") as error:
        from_keras(tmp_path / "missing.keras")
    one_line_error(error)
