"""flaxlstm.lab.traces and flaxlstm.lab.plots: traces of whole models against the numpy reference,
the cumsum model's crossing, every picture, and the ``flaxlstm inspect`` command."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from reference import lengths_to_mask, lstm_reference
from test_cli import run_main

from flaxlstm import Trace, capture_intermediates
from flaxlstm.data import imdb as imdb_data
from flaxlstm.data import synthetic
from flaxlstm.lab import plots, traces
from flaxlstm.models import CumsumModel, ParityModel, SentimentClassifier
from flaxlstm.training import runs
from flaxlstm.training.checkpoint import Checkpointer
from flaxlstm.training.loop import mode_view

PNG = b"\x89PNG\r\n\x1a\n"


def reference_trace(layer, x, lengths, reverse=False):
    """The numpy reference's per-step gates and states for ``layer`` on x [B, T, F]."""
    params = (np.asarray(p[...]) for p in (layer.kernel, layer.recurrent_kernel, layer.bias))
    mask = lengths_to_mask(np.asarray(lengths), x.shape[1])
    return lstm_reference(*params, np.asarray(x), mask, reverse=reverse)[3]


def assert_trace_equal(trace, ref):
    for name in Trace._fields:  # gates, states, pre-activations
        np.testing.assert_allclose(np.asarray(getattr(trace, name)), ref[name], atol=1e-5)


VOCABULARY = imdb_data.Vocabulary(["the", "film", "was", "good", "bad", ".", "a"])
REVIEW = "The film was good, a GOOD film. Not bad."  # "not" and "," are out of vocabulary
IDS = np.array([[1, 5, 7, 3, 9, 2], [1, 4, 6, 0, 0, 0]], np.int32)  # post-padded token ids
LENGTHS = np.array([6, 3], np.int32)
V, E, H = VOCABULARY.size, 3, 4  # one size for all small models: fewer compilations


def sentiment_model(**layers) -> SentimentClassifier:
    # Dropout on: traces and pictures must show the model in eval mode all the same.
    return SentimentClassifier(
        V, E, H, dropout=0.5, recurrent_dropout=0.3, **layers, rngs=nnx.Rngs(0)
    )


@pytest.fixture(scope="module")
def bilstm():
    return sentiment_model(bidirectional=True)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_sentiment_traces_equal_the_reference(bidirectional, bilstm):
    model = bilstm if bidirectional else sentiment_model()
    found = traces.trace_model(model, jnp.asarray(IDS), lengths=jnp.asarray(LENGTHS))
    x = model.embed(jnp.asarray(IDS))  # the LSTM's input: the embedding (dropout is identity)
    if bidirectional:
        assert set(found) == {"lstm/forward", "lstm/backward"}
        assert_trace_equal(found["lstm/forward"], reference_trace(model.lstm.forward, x, LENGTHS))
        backward = reference_trace(model.lstm.backward, x, LENGTHS, reverse=True)
        assert_trace_equal(found["lstm/backward"], backward)
    else:
        assert set(found) == {"lstm"}
        assert_trace_equal(found["lstm"], reference_trace(model.lstm, x, LENGTHS))


def test_synthetic_models_traces_equal_the_reference():
    cumsum = CumsumModel(H, rngs=nnx.Rngs(1))
    x = np.random.default_rng(0).random((2, 5, 1)).astype(np.float32)
    lengths = np.array([5, 2], np.int32)
    trace = traces.trace_model(cumsum, x, lengths=lengths)["lstm"]
    assert_trace_equal(trace, reference_trace(cumsum.lstm, x, lengths))
    parity = ParityModel(V, E, H, rngs=nnx.Rngs(2))
    trace = traces.trace_model(parity, IDS, lengths=LENGTHS)["lstm"]
    assert_trace_equal(trace, reference_trace(parity.lstm, parity.embed(IDS), LENGTHS))


def test_cnn_trace_runs_on_the_pooled_steps_the_model_reads():
    model = sentiment_model(conv_filters=2)
    trace = traces.trace_model(model, IDS, lengths=LENGTHS)["lstm"]
    assert trace.h.shape == (2, 3, 4)  # 6 steps pooled by 2
    last = np.asarray(trace.h)[[0, 1], [2, 1]]  # the last pooled step holding a real token
    lstm_output = np.asarray(
        capture_intermediates(mode_view(model, training=False), IDS, lengths=LENGTHS)[1][
            "lstm_output"
        ].get_value()
    )
    np.testing.assert_allclose(last, lstm_output, rtol=1e-5, atol=1e-7)
    assert not np.asarray(trace.h)[1, 2].any()  # a pooled window of padding only


def test_trace_model_refuses_an_unknown_model():
    with pytest.raises(TypeError, match="no flaxlstm LSTM layer in a Linear"):
        traces.trace_model(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), np.ones((1, 2, 2)))


# ----------------------------------------------------------------------------- cumsum


@pytest.fixture(scope="module")
def cumsum_model():
    return runs.train_cumsum_model()  # as `flaxlstm inspect cumsum` does: seconds


@pytest.fixture(scope="module")
def cumsum_test():
    return synthetic.cumsum_sequences(300, 10, seed=[0, 1])


def test_cumsum_prediction_crosses_where_the_running_sum_does(cumsum_model, cumsum_test):
    x, y = cumsum_test
    predicted, actual = traces.cumsum_crossings(cumsum_model, x, y)
    assert np.mean(predicted == actual) > 0.85
    assert np.all(np.abs(predicted - actual) <= 1)  # the rest are one step off at most


# ----------------------------------------------------------------------------- pictures


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 5000


def test_cumsum_pictures(cumsum_model, cumsum_test, tmp_path):
    written = plots.write_cumsum_pictures(cumsum_model, *cumsum_test, tmp_path, index=3)
    assert [p.split("/")[-1] for p in written] == ["cumsum.png", "cumsum-gates.png"]
    for path in written:
        assert_png(tmp_path / path.split("/")[-1])


def test_history_picture(tmp_path):
    history = {"loss": [0.6, 0.4], "accuracy": [0.6, 0.8], "val_loss": [0.5, 0.45]}
    history |= {"val_accuracy": [0.7, 0.78], "test_accuracy": [0.69, 0.77]}
    plots.save_figure(plots.plot_history(history), tmp_path / "curves.png")
    assert_png(tmp_path / "curves.png")


def test_review_pictures(bilstm, tmp_path):
    model = mode_view(bilstm, training=False)  # for the direct call below: no dropout
    words, p = traces.review_prefixes(model, VOCABULARY, REVIEW)
    assert len(words) == len(p) == 12 and np.all((p > 0) & (p < 1))
    # The prefix predictions end with the whole review's prediction.
    (ids,) = VOCABULARY.encode([REVIEW])
    np.testing.assert_allclose(p[-1], float(jax.nn.sigmoid(model(ids[None]))[0]), rtol=1e-5)
    figures = {
        "review.png": plots.plot_review(model, VOCABULARY, REVIEW),
        "gates.png": plots.plot_review_gates(model, VOCABULARY, REVIEW, layer="lstm/backward"),
    }
    for name, figure in figures.items():
        plots.save_figure(figure, tmp_path / name)
        assert_png(tmp_path / name)
    with pytest.raises(ValueError, match="no words"):
        traces.review_prefixes(model, VOCABULARY, "   ")
    with pytest.raises(ValueError, match="no LSTM layer 'lstm'; the model has lstm/forward, lstm/"):
        plots.plot_review_gates(model, VOCABULARY, REVIEW, layer="lstm")


# ----------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 'train imdb' run directory as the command writes it, with a small untrained model."""
    run = tmp_path_factory.mktemp("run")
    config = {"model": "simple", "vocab_size": VOCABULARY.size, "maxlen": 20, "seed": 0}
    (run / "config.json").write_text(json.dumps(config))
    VOCABULARY.save(run / "vocabulary.json")
    model = runs.imdb_model(config)
    Checkpointer(run / "model").save(0, nnx.state(model, nnx.Param), {})
    (run / "history.json").write_text(json.dumps({"loss": [0.7, 0.5], "accuracy": [0.5, 0.8]}))
    return run


def test_inspect_commands_write_pictures(run_dir, tmp_path, capsys):
    for argv in (
        ["review", "--model-dir", str(run_dir), REVIEW, "--out", str(tmp_path / "r.png")],
        ["curves", str(run_dir), "--out", str(tmp_path / "c.png")],
    ):
        code, out, err = run_main(["inspect", *argv], capsys)
        assert code == 0, err
        assert out == f"wrote {argv[-1]}\n"
        assert_png(tmp_path / argv[-1].split("/")[-1])


@pytest.mark.parametrize(
    "argv,message",
    [
        (["curves", "{missing}"], "holds no history.json"),
        (["review", "--model-dir", "{missing}", "good"], "holds no 'train imdb' run"),
        (["gates", "--model-dir", "{missing}", "good"], "holds no 'train imdb' run"),
        (["review", "--model-dir", "{run}", " "], "no words"),
        (["cumsum", "--sequence", "5000"], "--sequence must lie in [0, 1000)"),
    ],
)
def test_inspect_errors_are_one_line(argv, message, run_dir, tmp_path, capsys):
    argv = [a.format(missing=tmp_path / "nothing", run=run_dir) for a in argv]
    code, out, err = run_main(["inspect", *argv, "--out", str(tmp_path / "x")], capsys)
    assert code == 1 and out == ""
    assert err.startswith("flaxlstm: error: ") and message in err
    assert len(err.strip().splitlines()) == 1
