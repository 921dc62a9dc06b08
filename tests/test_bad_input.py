"""Bad input, swept: wrong ranks, dtypes, ranges, empty and non-finite values and bad options
fed to the public API (the layers, ``lstm_scan``, ``fit`` / ``evaluate`` / ``predict``, the
loaders). Every case is a one-line ValueError or TypeError raised by flaxlstm that names what is
wrong (a missing file: the documented FileNotFoundError), never an error from deep inside JAX
and never a silently wrong number.

Shapes are small and fixed and the layers and models are built once: the errors come before
anything is compiled."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import flaxlstm
from flaxlstm import LSTM, Bidirectional, Embedding, LSTMState, PerStep, StackedLSTM, lstm_scan
from flaxlstm.data.imdb import load_imdb, pad_sequences
from flaxlstm.data.vocabulary import Vocabulary
from flaxlstm.models import CumsumModel, ParityModel
from flaxlstm.training.fit import evaluate, fit, predict
from flaxlstm.training.runs import load_run

B, T, F, H, V, N = 2, 4, 2, 3, 7, 3  # batch, steps, features, hidden, vocabulary, examples

sweep = settings(max_examples=60, deadline=None)


def assert_refused(call, names, errors=(ValueError, TypeError)):
    """``call()`` raises one of ``errors`` from flaxlstm's own code, with a one-line message
    that mentions one of ``names``."""
    with pytest.raises(errors) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    assert any(re.search(rf"(?<!\w){re.escape(name)}(?!\w)", message) for name in names), message
    assert "/flaxlstm/" in str(info.traceback[-1].path), f"raised in {info.traceback[-1].path}"


def case(x=None, names=(), **kwargs):
    """A call's inputs x (good ones by default), its keyword arguments, and the names its error
    must mention."""
    return (np.ones((B, T, F), np.float32) if x is None else x), kwargs, list(names)


# ----------------------------------------------------------------------------- layers

LAYERS = {
    "LSTM": LSTM(F, H, return_sequences=True, rngs=nnx.Rngs(0)),
    "Bidirectional": Bidirectional(LSTM(F, H, rngs=nnx.Rngs(1)), rngs=nnx.Rngs(2)),
    "StackedLSTM": StackedLSTM(F, H, num_layers=2, rngs=nnx.Rngs(3)),
    "PerStep": PerStep(nnx.Linear(F, 1, rngs=nnx.Rngs(4))),
}
outside_steps = st.one_of(st.integers(-5, -1), st.integers(T + 1, T + 5))
BAD_CALLS = {  # what is wrong → a strategy of case(...)
    "x rank": st.sampled_from([(), (B,), (B, T), (B, T, F, 1)]).map(
        lambda shape: case(np.ones(shape, np.float32), ["[B, T, F]"])
    ),
    "x features": st.sampled_from([1, F + 1]).map(
        lambda f: case(np.ones((B, T, f), np.float32), ["features"])
    ),
    "x dtype": st.sampled_from([np.int32, np.bool_]).map(
        lambda dtype: case(np.ones((B, T, F), dtype), ["features"])
    ),
    "lengths shape": st.sampled_from([(), (B + 1,), (B, 1)]).map(
        lambda shape: case(names=["lengths"], lengths=np.ones(shape, np.int32))
    ),
    "lengths dtype": st.sampled_from([np.float32, np.bool_]).map(
        lambda dtype: case(names=["lengths"], lengths=np.ones(B, dtype))
    ),
    "lengths range": st.tuples(outside_steps, st.integers(0, T))
    .flatmap(st.permutations)
    .map(lambda v: case(names=["lengths"], lengths=np.array(v))),
    "mask shape": st.sampled_from([(B, T + 1), (B,), (B, T, 1)]).map(
        lambda shape: case(names=["mask"], mask=np.ones(shape, bool))
    ),
    "mask dtype": st.sampled_from([np.int32, np.float32]).map(
        lambda dtype: case(names=["mask"], mask=np.ones((B, T), dtype))
    ),
    "lengths and mask": st.just(
        case(names=["lengths", "mask"], lengths=np.full(B, T), mask=np.ones((B, T), bool))
    ),
}
# PerStep's features and dtype are its module's business.
LAYER_CASES = [
    (layer, wrong)
    for layer in LAYERS
    for wrong in BAD_CALLS
    if layer != "PerStep" or not wrong.startswith(("x features", "x dtype"))
]


@sweep
@given(st.sampled_from(LAYER_CASES).flatmap(lambda c: st.tuples(st.just(c[0]), BAD_CALLS[c[1]])))
def test_layers_refuse_bad_calls(layer_and_case):
    layer, (x, kwargs, names) = layer_and_case
    assert_refused(lambda: LAYERS[layer](x, **kwargs), names)


W, U, b = (
    LAYERS["LSTM"].kernel[...],
    LAYERS["LSTM"].recurrent_kernel[...],
    LAYERS["LSTM"].bias[...],
)
other_size = st.sampled_from([1, 2, 5])
BAD_SCANS = {  # lstm_scan's arguments with one wrong → the names its error must mention
    "x": st.sampled_from([(B, T), (T, F), (B, T, F, 1)]).map(
        lambda s: (dict(x=jnp.ones(s)), ["[B, T, F]"])
    ),
    "kernel": other_size.map(lambda f: (dict(kernel=jnp.ones((f + F, 4 * H))), ["kernel"])),
    "recurrent_kernel": other_size.map(
        lambda h: (dict(recurrent_kernel=jnp.ones((H, h))), ["recurrent_kernel"])
    ),
    "bias": other_size.map(lambda n: (dict(bias=jnp.ones(4 * H + n)), ["bias"])),
    "mask": st.sampled_from([((B, T + 1), bool), ((B, T), np.int32), ((T, B), bool)]).map(
        lambda s: (dict(mask=jnp.ones(*s)), ["mask"])
    ),
    "initial_state": other_size.map(
        lambda h: (
            dict(initial_state=LSTMState(jnp.ones((B, h + H)), jnp.ones((B, H)))),
            ["initial_state"],
        )
    ),
    "recurrent_dropout_mask": other_size.map(
        lambda h: (dict(recurrent_dropout_mask=jnp.ones((B, H + h))), ["recurrent_dropout_mask"])
    ),
}


@sweep
@given(st.sampled_from(sorted(BAD_SCANS)).flatmap(BAD_SCANS.get))
def test_lstm_scan_refuses_arguments_that_disagree(bad):
    wrong, names = bad
    args = dict(kernel=W, recurrent_kernel=U, bias=b, x=jnp.ones((B, T, F))) | wrong
    assert_refused(lambda: lstm_scan(**args), names)


not_positive = st.one_of(st.integers(-3, 0), st.sampled_from([1.5, True, "2", None]))
bad_rate = st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.0), st.just(float("nan")))
R = nnx.Rngs(0)
BAD_OPTIONS = {  # a layer built with one bad option → the names its error must mention
    "in_features": not_positive.map(lambda v: (lambda: LSTM(v, H, rngs=R), ["in_features"])),
    "hidden_features": not_positive.map(
        lambda v: (lambda: LSTM(F, v, rngs=R), ["hidden_features"])
    ),
    "unroll": not_positive.map(lambda v: (lambda: LSTM(F, H, unroll=v, rngs=R), ["unroll"])),
    "dropout": bad_rate.map(lambda r: (lambda: LSTM(F, H, dropout=r, rngs=R), ["dropout"])),
    "recurrent_dropout": bad_rate.map(
        lambda r: (lambda: LSTM(F, H, recurrent_dropout=r, rngs=R), ["recurrent_dropout"])
    ),
    "num_embeddings": not_positive.map(
        lambda v: (lambda: Embedding(v, F, rngs=R), ["num_embeddings"])
    ),
    "embedding features": not_positive.map(
        lambda v: (lambda: Embedding(V, v, rngs=R), ["features"])
    ),
    "num_layers": not_positive.map(
        lambda v: (lambda: StackedLSTM(F, H, num_layers=v, rngs=R), ["num_layers"])
    ),
    "stack dropout": bad_rate.map(
        lambda r: (lambda: StackedLSTM(F, H, num_layers=2, dropout=r, rngs=R), ["dropout"])
    ),
    "proj_size": st.sampled_from([-1, H, H + 1]).map(
        lambda p: (lambda: StackedLSTM(F, H, proj_size=p, rngs=R), ["proj_size"])
    ),
    "Bidirectional layer": st.sampled_from(["linear", "per step", "string", None]).map(
        lambda kind: (lambda: Bidirectional(not_an_lstm(kind), rngs=R), ["LSTM"])
    ),
    "merge": st.text(max_size=5)
    .filter(lambda m: m not in ("concat", "sum", "mul", "ave"))
    .map(lambda m: (lambda: Bidirectional(LSTM(F, H, rngs=R), m, rngs=R), ["merge"])),
}


def not_an_lstm(kind):
    if kind == "linear":
        return nnx.Linear(F, H, rngs=R)
    return LAYERS["PerStep"] if kind == "per step" else kind


@sweep
@given(st.sampled_from(sorted(BAD_OPTIONS)).flatmap(BAD_OPTIONS.get))
def test_layers_refuse_bad_options(bad):
    build, names = bad
    assert_refused(build, names)


# --------------------------------------------------------------------------- fit, evaluate, predict

# A per-step model of features [N, T, 1] (labels [N, T]), and one of token ids [N, T] (labels [N]).
CUMSUM = CumsumModel(H, rngs=nnx.Rngs(5))
PARITY = ParityModel(V, F, H, rngs=nnx.Rngs(6))
TRAINING = {
    "fit": lambda model, x, y, **kw: fit(model, x, y, **({"epochs": 1, "quiet": True} | kw)),
    "evaluate": evaluate,
    "predict": lambda model, x, y, **kw: predict(model, x, **kw),
}


def features(shape=(N, T, 1), dtype=np.float32):
    return np.full(shape, 0.5, np.float32).astype(dtype)


def ids(position=None, value=None):
    """Token ids [N, T] in [0, V), or with ``value`` at ``position``."""
    ids = np.arange(N * T, dtype=np.int32).reshape(N, T) % V
    if position is not None:
        ids[position] = value
    return ids


def labels(model):
    return np.ones((N, T), np.float32) if model is CUMSUM else np.ones(N, np.float32)


def data_case(model=CUMSUM, x=None, y=None, names=(), **kwargs):
    """(model, x, y, keyword arguments, the names the error must mention)."""
    if x is None:
        x = features() if model is CUMSUM else ids()
    return model, x, labels(model) if y is None else y, kwargs, list(names)


def non_finite_x(position, value):
    x = features()
    x[position] = value
    return data_case(x=x, names=["x"])


positions = st.tuples(st.integers(0, N - 1), st.integers(0, T - 1))
BAD_DATA = {  # what is wrong → a strategy of data_case(...); "y ..." cases need labels
    "x non-finite": st.builds(non_finite_x, positions, st.sampled_from([np.nan, np.inf, -np.inf])),
    "x rank": st.sampled_from([(), (N,), (N, T), (N, T, 1, 1)]).map(
        lambda s: data_case(x=features(s), names=["x", "[B, T, F]"])
    ),
    "x features": st.sampled_from([2, 3]).map(
        lambda f: data_case(x=features((N, T, f)), names=["features"])
    ),
    "x empty": st.just(data_case(x=features((0, T, 1)), names=["x"])),
    "x dtype": st.sampled_from([np.bool_, np.str_, np.complex64]).map(
        lambda dtype: data_case(x=features(dtype=dtype), names=["x"])
    ),
    "ids float": st.just(data_case(PARITY, ids().astype(np.float32), names=["token ids"])),
    "ids range": st.builds(ids, positions, st.sampled_from([-1, V, V + 10, 2**31 - 1])).map(
        lambda x: data_case(PARITY, x, names=["token ids"])
    ),
    "lengths shape": st.sampled_from([(), (N - 1,), (N, 1)]).map(
        lambda s: data_case(names=["lengths"], lengths=np.ones(s, np.int32))
    ),
    "lengths dtype": st.sampled_from([np.float32, np.bool_]).map(
        lambda dtype: data_case(names=["lengths"], lengths=np.ones(N, dtype))
    ),
    "lengths range": outside_steps.map(
        lambda v: data_case(names=["lengths"], lengths=np.array([1, v, 2]))
    ),
    "batch_size": not_positive.map(lambda v: data_case(names=["batch_size"], batch_size=v)),
    "loss": st.sampled_from(["hinge", "", 3]).map(lambda v: data_case(names=["loss"], loss=v)),
    "y count": st.sampled_from([N - 1, N + 1]).map(
        lambda n: data_case(y=np.ones((n, T), np.float32), names=["y"])
    ),
    "y shape": st.sampled_from([(N, T + 1), (N, T, 1), ()]).map(
        lambda s: data_case(y=np.ones(s, np.float32), names=["y"])
    ),
    "y non-finite": st.sampled_from([np.nan, np.inf]).map(
        lambda v: data_case(y=np.where(np.eye(N, T) > 0, v, 1.0), names=["y"])
    ),
    "y not 0 or 1": st.sampled_from([-1, 2, 0.5]).map(
        lambda v: data_case(PARITY, y=np.array([0, v, 1]), names=["labels"])
    ),
    "y strings": st.just(data_case(y=np.full((N, T), "1"), names=["y"])),
    "y of no steps": st.just(data_case(x=features((N, 0, 1)), y=np.ones((N, 0)), names=["labels"])),
    "bucket_width": st.sampled_from([True, -2, 1.5]).map(
        lambda v: data_case(names=["bucket_width"], bucket_width=v, lengths=np.full(N, T))
    ),
    "fit epochs": not_positive.map(lambda v: data_case(names=["epochs"], epochs=v)),
    "fit patience": st.sampled_from([0, -1, 1.5]).map(
        lambda v: data_case(names=["patience"], patience=v)
    ),
    "fit validation_split": st.one_of(bad_rate, st.just(0.99)).map(
        lambda v: data_case(names=["validation_split"], validation_split=v)
    ),
    "fit clip_norm": st.sampled_from([0.0, -1.0, float("nan")]).map(
        lambda v: data_case(names=["clip_norm"], clip_norm=v)
    ),
    "fit checkpoint_every": st.just(data_case(names=["checkpoint_every"], checkpoint_every=2)),
    "fit validation_data": st.sampled_from([np.nan, np.inf]).map(
        lambda v: data_case(names=["x"], validation_data=(features() * v, labels(CUMSUM)))
    ),
}
DATA_CASES = [
    (call, wrong)
    for call in TRAINING
    for wrong in BAD_DATA
    if not (call == "predict" and wrong.startswith("y"))
    and not (call != "fit" and wrong.startswith("fit"))
    and not (call == "predict" and wrong == "bucket_width")  # predict takes none
]


@sweep
@given(st.sampled_from(DATA_CASES).flatmap(lambda c: st.tuples(st.just(c[0]), BAD_DATA[c[1]])))
def test_training_refuses_bad_data_and_options(call_and_case):
    call, (model, x, y, kwargs, names) = call_and_case
    assert_refused(lambda: TRAINING[call](model, x, y, **kwargs), names)


def test_non_finite_inputs_are_counted_before_anything_runs():
    x = features()
    x[0, 1, 0], x[2, 3, 0] = np.nan, -np.inf
    for call in TRAINING.values():
        with pytest.raises(ValueError, match=r"^x holds 2 non-finite values \(NaN or infinity\)$"):
            call(CUMSUM, x, labels(CUMSUM))
    y = labels(CUMSUM)
    y[1, 2] = np.inf
    with pytest.raises(ValueError, match=r"^y holds 1 non-finite labels \(NaN or infinity\)$"):
        evaluate(CUMSUM, features(), y)
    y[1, 2] = np.nan  # at a padded step it counts for nothing
    assert np.isfinite(evaluate(CUMSUM, features(), y, lengths=np.array([4, 2, 4]))["loss"])


# ----------------------------------------------------------------------------- loaders

BAD_SEQUENCES = st.sampled_from(
    [[[1, 2.5]], [[1, -1]], [[2**40]], [[[1], [2]]], [["a"]], [None], [[np.nan]], 5, "ab"]
)
BAD_PADDING = {
    "sequences": BAD_SEQUENCES.map(
        lambda s: (lambda: pad_sequences(s, maxlen=3), ["sequences", "token ids"])
    ),
    "maxlen": st.sampled_from([-1, 1.5, "3"]).map(
        lambda m: (lambda: pad_sequences([[1, 2]], maxlen=m), ["maxlen"])
    ),
    "padding": st.text(max_size=4)
    .filter(lambda s: s not in ("pre", "post"))
    .map(lambda side: (lambda: pad_sequences([[1]], padding=side), ["padding"])),
    "truncating": st.sampled_from(["", "both", None]).map(
        lambda side: (lambda: pad_sequences([[1]], truncating=side), ["truncating"])
    ),
    "texts": st.sampled_from(["a review", b"a review"]).map(
        lambda t: (lambda: Vocabulary(["a"]).encode(t), ["texts"])
    ),
    "text": st.sampled_from([[3], [None], [["a"]], ["fine", 2.5]]).map(
        lambda t: (lambda: Vocabulary(["a"]).encode(t), ["text"])
    ),
}


@sweep
@given(st.sampled_from(sorted(BAD_PADDING)).flatmap(BAD_PADDING.get))
def test_padding_and_encoding_refuse_bad_input(bad):
    call, names = bad
    assert_refused(call, names)


def test_pad_sequences_documented_results():
    """No sequences, or only empty ones: [N, 0] ids; ids arrays of any integer dtype."""
    assert pad_sequences([])[0].shape == (0, 0)
    ids, lengths = pad_sequences([[], np.array([3, 4], np.int64)], padding="post")
    assert ids.tolist() == [[0, 0], [3, 4]] and ids.dtype == np.int32
    assert lengths.tolist() == [0, 2]


@pytest.fixture(scope="module")
def bad_dirs(tmp_path_factory):
    """Directories that are not usable ``train imdb`` runs, by what is wrong."""
    root = tmp_path_factory.mktemp("runs")
    made = {}

    def run(name, config=None, vocabulary=None):
        path = root / name
        path.mkdir()
        if config is not None:
            (path / "config.json").write_text(config)
        if vocabulary is not None:
            (path / "vocabulary.json").write_text(vocabulary)
        made[name] = path

    good_config = json.dumps({"model": "simple", "vocab_size": 10, "seed": 0})
    good_vocabulary = json.dumps({"tokenizer_version": 1, "words": ["a"]})
    run("empty")
    run("no vocabulary", good_config)
    run("config not json", "{not json", good_vocabulary)
    run("config a list", "[]", good_vocabulary)
    run(
        "unknown model", json.dumps({"model": "lstm", "vocab_size": 10, "seed": 0}), good_vocabulary
    )
    run("no seed", json.dumps({"model": "simple", "vocab_size": 10}), good_vocabulary)
    run("vocabulary not json", good_config, "garbage")
    run("vocabulary words", good_config, json.dumps({"tokenizer_version": 1, "words": 3}))
    run("no model", good_config, good_vocabulary)
    made["missing"] = root / "missing"
    return made


RUN_NAMES = {  # what the error names
    "empty": "config.json",
    "missing": "config.json",
    "no vocabulary": "vocabulary.json",
    "config not json": "config",
    "config a list": "model",
    "unknown model": "model",
    "no seed": "seed",
    "vocabulary not json": "vocabulary",
    "vocabulary words": "vocabulary",
    "no model": "model",
}


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(sorted(RUN_NAMES)))
def test_load_run_refuses_what_is_not_a_run(bad_dirs, name):
    assert_refused(lambda: load_run(bad_dirs[name]), [RUN_NAMES[name]], errors=ValueError)


BAD_IMDB = {
    "vocab_size": st.sampled_from([0, 2, -1, 2.5]).map(lambda v: dict(vocab_size=v)),
    "maxlen": st.sampled_from([0, -1, 1.5]).map(lambda v: dict(maxlen=v)),
    "limit": st.sampled_from([0, -1]).map(lambda v: dict(limit=v)),
    "padding": st.sampled_from(["mid", None]).map(lambda v: dict(padding=v)),
}


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(sorted(BAD_IMDB)).flatmap(lambda k: st.tuples(st.just(k), BAD_IMDB[k])))
def test_load_imdb_refuses_bad_options_before_reading(tmp_path_factory, option_and_kwargs):
    option, kwargs = option_and_kwargs
    nowhere = tmp_path_factory.getbasetemp() / "no-imdb-here"  # never read, never written

    def call():
        load_imdb(data_dir=nowhere, cache_dir=nowhere.with_name("no-cache"), **kwargs)

    assert_refused(call, [option])


def test_missing_files_are_the_documented_file_not_found_errors(tmp_path):
    nowhere = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="no prepared imdb_reviews in .*nowhere") as info:
        load_imdb(data_dir=nowhere, cache_dir=tmp_path / "cache")
    assert "\n" not in str(info.value)
    for path in (nowhere / "model.keras", tmp_path):  # nothing there, or a directory
        with pytest.raises(FileNotFoundError, match=r"^from_keras: no Keras model file"):
            flaxlstm.from_keras(path)
    with pytest.raises(TypeError, match="from_keras takes a path or a Keras model"):
        flaxlstm.from_keras(3)


# ----------------------------------------------------------------------------- fixed cases


@pytest.mark.parametrize(
    "options",
    [
        {},  # the hand-written backward, weight gradients after the loop
        {"accumulate_above_bytes": -1},  # ... summed inside it
        {"remat": True},
        {"remat": True, "accumulate_above_bytes": -1},
        {"recurrent_dropout": 0.5},
        {"hand_written_backward": False},  # jax autodiff of scan_cell
    ],
)
def test_a_batch_of_no_steps_has_outputs_of_no_steps_and_zero_gradients(options):
    """T = 0 (once a ZeroDivisionError in the backward): outputs [B, 0, H], the final state is
    the initial state, the weights' gradients are zero and the initial state's are the final
    state's."""
    layer = LSTM(F, H, return_sequences=True, return_state=True, rngs=nnx.Rngs(0), **options)
    x = jnp.zeros((B, 0, F))
    start = LSTMState(jnp.full((B, H), 0.5), jnp.full((B, H), -0.25))

    def loss(layer, start):
        outputs, final = layer(x, lengths=jnp.zeros(B, jnp.int32), initial_state=start)
        return outputs.sum() + (3 * final.c).sum() + (5 * final.h).sum()

    outputs, final = layer(x, initial_state=start)
    assert outputs.shape == (B, 0, H)
    np.testing.assert_array_equal(final.c, start.c)
    np.testing.assert_array_equal(final.h, start.h)
    grads, d_start = nnx.grad(loss, argnums=(0, 1))(layer, start)
    for g in jax.tree.leaves(grads):
        np.testing.assert_array_equal(g, 0)
    np.testing.assert_array_equal(d_start.c, 3)
    np.testing.assert_array_equal(d_start.h, 5)


def test_predict_on_sequences_of_no_steps_gives_no_steps():
    """x [N, 0, F] is a documented result for predict: [N, 0] (fit and evaluate refuse it: no
    labels to score)."""
    assert predict(CUMSUM, features((N, 0, 1))).shape == (N, 0)


def test_layers_that_once_failed_deep_inside_are_one_line_errors():
    assert_refused(lambda: Embedding(0, F, rngs=R), ["num_embeddings"])  # ZeroDivisionError
    assert_refused(lambda: Embedding(V, 0, rngs=R), ["features"])  # ZeroDivisionError
    per_step = LAYERS["PerStep"]
    assert_refused(lambda: per_step(jnp.ones((B, T))), ["[B, T, F]"])  # a broadcasting error
    linear = nnx.Linear(F, H, rngs=R)
    assert_refused(lambda: Bidirectional(linear, rngs=R), ["LSTM"])  # an AttributeError
