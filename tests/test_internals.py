"""flaxlstm.lab.internals: pre-activations in traces, gate saturation, interpretable units and
ablation, against direct numpy computations and the numpy reference LSTM."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from reference import lengths_to_mask, lstm_reference, sigmoid
from test_core import make_layer, random_params
from test_variants import MASK, VARIANTS, X

from flaxlstm.cell import Clamp
from flaxlstm.lab import internals, plots, traces
from flaxlstm.lab.internals import Ablation
from flaxlstm.models import SentimentClassifier
from flaxlstm.training.fit import predict
from flaxlstm.variants import PeepholeLSTM

F, H = 3, 4
V = 8  # token ids 0 (padding) to 7
IDS = np.array(
    [
        [3, 4, 5, 6, 7, 3],
        [5, 5, 3, 0, 0, 0],
        [7, 6, 5, 4, 0, 0],
        [4, 3, 0, 0, 0, 0],
        [6, 6, 6, 6, 6, 5],
    ],
    np.int32,
)
LENGTHS = np.array([6, 3, 4, 2, 6], np.int32)
REAL = lengths_to_mask(LENGTHS, IDS.shape[1])
LABELS = np.array([1, 0, 1, 0, 1], np.float32)


def standard():
    params = random_params(20)
    return make_layer(params, return_sequences=True, return_state=True), params


def classifier(seed=0) -> SentimentClassifier:
    """Embedding(V → 3) → LSTM(4) → Dense(1), its weights far from their initialisation."""
    model = SentimentClassifier(V, F, H, rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    for p in (model.lstm.kernel, model.lstm.recurrent_kernel, model.lstm.bias):
        p[...] = rng.normal(0, 0.8, p.shape).astype(np.float32)
    return model


# ----------------------------------------------------------------------------- pre-activations


@pytest.mark.parametrize("make", [standard, *VARIANTS], ids=lambda f: f.__name__)
def test_pre_activations_are_what_the_gates_are_given(make):
    layer = make()[0]
    trace = jax.tree.map(np.asarray, layer.trace(jnp.asarray(X), mask=jnp.asarray(MASK)))
    real = MASK[..., None]
    for gate, z, activation in (("i", "zi", sigmoid), ("f", "zf", sigmoid), ("o", "zo", sigmoid)):
        expected = np.where(real, activation(getattr(trace, z)), 0)
        np.testing.assert_allclose(getattr(trace, gate), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(trace.g, np.where(real, np.tanh(trace.zg), 0), atol=1e-6)
    for z in ("zi", "zf", "zg", "zo"):
        assert not getattr(trace, z)[~MASK].any()  # zero at padded steps
        assert np.abs(getattr(trace, z)[MASK]).min() > 0  # and recorded at real ones


def test_standard_pre_activations_equal_the_reference():
    layer, params = standard()
    *_, ref = lstm_reference(*params, X, MASK, reverse=False)
    trace = layer.trace(jnp.asarray(X), mask=jnp.asarray(MASK))
    for z in ("zi", "zf", "zg", "zo"):
        np.testing.assert_allclose(np.asarray(getattr(trace, z)), ref[z], rtol=1e-5, atol=1e-5)
    # z = x·W + h_prev·U + b, from the outputs of the step before (h_0 = 0)
    W, U, b = params
    h_prev = np.concatenate([np.zeros_like(ref["h"][:, :1]), ref["h"][:, :-1]], axis=1)
    z = X @ W + h_prev @ U + b
    full = np.all(MASK, axis=1)  # the sequence with no padding: every step follows the last
    np.testing.assert_allclose(np.asarray(trace.zi)[full], z[full][..., :H], atol=1e-5)


# ----------------------------------------------------------------------------- saturation


def test_saturation_counts_real_steps_over_batches():
    model = classifier()
    low, high = 0.3, 0.7
    found = internals.saturation(model, IDS, LENGTHS, batch_size=2, low=low, high=high)
    assert set(found) == {"lstm"} and set(found["lstm"]) == {"i", "f", "g", "o"}
    trace = traces.trace_model(model, IDS, lengths=LENGTHS)["lstm"]  # one batch of all
    for gate, fractions in found["lstm"].items():
        values = np.asarray(getattr(trace, gate))[REAL]  # [real steps, H]
        values = (values + 1) / 2 if gate == "g" else values
        np.testing.assert_allclose(fractions.left, (values < low).mean(axis=0))
        np.testing.assert_allclose(fractions.right, (values > high).mean(axis=0))
    everything = np.concatenate([f.left for f in found["lstm"].values()])
    assert 0 < everything.mean() < 1  # the test is not vacuous
    # Padded steps, zero in the trace, would count as left-saturated i, f and o.
    naive = (np.asarray(trace.i) < low).mean(axis=(0, 1))
    assert not np.allclose(naive, found["lstm"]["i"].left)
    figure = plots.plot_saturation(found)
    assert len(figure.axes) == 4 and len(figure.axes[0].collections[0].get_offsets()) == H
    with pytest.raises(ValueError, match="0 <= low <= high <= 1"):
        internals.saturation(model, IDS, LENGTHS, low=0.9, high=0.1)


# ----------------------------------------------------------------------------- units and signals


def brute_force_accuracy(values, labels):
    """The best accuracy of ``v > θ`` or ``v < θ`` over thresholds at and between the values."""
    points = np.unique(values)
    thresholds = np.concatenate([[points[0] - 1], (points[1:] + points[:-1]) / 2, [points[-1] + 1]])
    return max(
        max(np.mean((values > t) == labels), np.mean((values < t) == labels)) for t in thresholds
    )


def test_rank_units_by_correlation_and_exact_threshold_probes():
    rng = np.random.default_rng(0)
    signal = rng.random(200) < 0.3
    values = rng.normal(size=(200, 5))
    values[:, 3] = -2 * signal + 0.3 * rng.normal(size=200)  # follows the signal, downwards
    values[:, 1] = signal + 1.5 * rng.normal(size=200)  # weakly
    values[:, 4] = 1.0  # never changes
    values[:, 0] = rng.integers(0, 3, 200)  # ties
    ranking = internals.rank_units(values, signal)
    assert list(ranking.units[:2]) == [3, 1] and ranking.units[-1] == 4
    for unit, r in zip(ranking.units, ranking.correlation, strict=True):
        expected = 0.0 if unit == 4 else np.corrcoef(values[:, unit], signal)[0, 1]
        np.testing.assert_allclose(r, expected, atol=1e-12)
    for unit, accuracy in zip(ranking.units, ranking.accuracy, strict=True):
        np.testing.assert_allclose(accuracy, brute_force_accuracy(values[:, unit], signal))
    assert ranking.accuracy[0] > 0.95 and ranking.baseline == max(signal.mean(), 1 - signal.mean())
    numeric = internals.rank_units(values, signal * 2.0, real=np.arange(200) < 100)
    assert numeric.accuracy is None and numeric.units[0] == 3
    with pytest.raises(ValueError, match="one value per step"):
        internals.rank_units(values, signal[:10])


def test_last_values_are_the_states_at_each_examples_last_real_step():
    model = classifier()
    trace = traces.trace_model(model, IDS, lengths=LENGTHS)["lstm"]
    expected_h = np.asarray(trace.h)[np.arange(len(IDS)), LENGTHS - 1]  # [N, H]
    last_h = internals.last_values(model, IDS, LENGTHS, batch_size=2)
    np.testing.assert_allclose(last_h, expected_h, rtol=1e-6)
    # What the head reads: the logit is Dense(last h).
    logits = np.asarray(model(IDS, LENGTHS)).reshape(-1)
    head = last_h @ np.asarray(model.head.kernel).reshape(-1) + float(model.head.bias[0])
    np.testing.assert_allclose(head, logits, rtol=1e-5, atol=1e-6)
    last_c = internals.last_values(model, IDS, LENGTHS, state="c")
    expected_c = np.asarray(trace.c)[np.arange(len(IDS)), LENGTHS - 1]
    np.testing.assert_allclose(last_c, expected_c, rtol=1e-6)  # other batch: other rounding
    ranking = internals.rank_units(last_h, LABELS == 1)  # [N, H] against one label each
    assert len(ranking.units) == H and ranking.baseline == 0.6
    with pytest.raises(ValueError, match="example 1 has no real steps"):
        internals.last_values(model, IDS, np.array([6, 0, 4, 2, 6], np.int32))


def test_plot_text_values_puts_each_character_on_its_value():
    tokens = list("ab\ncd")  # the line break starts the second row
    values = np.array([1.0, -1.0, 0.5, 0.0, -0.5])
    figure = plots.plot_text_values(tokens, values, width=3)
    ax = figure.axes[0]
    grid = ax.images[0].get_array()
    np.testing.assert_allclose(grid.filled(np.nan), [[1, -1, 0.5], [0, -0.5, np.nan]])
    assert [t.get_text() for t in ax.texts] == ["a", "b", "↵", "c", "d"]
    wrapped = plots.plot_text_values(list("abcd"), np.arange(4.0), width=3)  # a full row wraps
    assert wrapped.axes[0].images[0].get_array().shape == (2, 3)
    with pytest.raises(ValueError, match=r"values must be \[T\] = \[5\]"):
        plots.plot_text_values(tokens, values[:4])


def test_signals_from_token_ids():
    q, o, c, dot = 3, 4, 5, 6  # '"', '(', ')', '.'
    ids = np.array([[7, q, 7, 7, q, 7, q, 7], [o, 7, o, c, 7, c, c, 7]])
    inside = [[0, 1, 1, 1, 0, 0, 0, 0], [0] * 8]  # the third quote has no partner
    np.testing.assert_array_equal(internals.inside_quotes(ids, q), inside)
    parentheses = [[0] * 8, [1, 1, 1, 1, 1, 0, 0, 0]]  # nested; the last ')' closes nothing
    np.testing.assert_array_equal(internals.inside_parentheses(ids, o, c), parentheses)
    ids = np.array([[7, 7, dot, 7, dot, 7, 7, 0], [7, dot, 7, 7, 7, 0, 0, 0]])
    distance = internals.to_sentence_end(ids, [dot], lengths=np.array([7, 5]))
    np.testing.assert_array_equal(distance[0, :7], [2, 1, 0, 1, 0, 1, 0])
    np.testing.assert_array_equal(distance[1, :5], [1, 0, 2, 1, 0])
    np.testing.assert_array_equal(internals.position(ids)[1], np.arange(8))
    np.testing.assert_array_equal(internals.in_set(ids, [dot, 0])[1], [0, 1, 0, 0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="token ids"):
        internals.position(np.zeros((2, 3, 1)))


def detector_model() -> SentimentClassifier:
    """Unit 1 of its LSTM holds c ≈ 1 exactly at token 5 (f ≈ 0, i ≈ 1, g = tanh(10·[token is
    5])); unit 2 counts the steps (f ≈ 1, i ≈ 1, g = tanh(0.5)); units 0 and 3 are random."""
    model = classifier(1)
    embedding = np.random.default_rng(2).normal(size=(V, F)).astype(np.float32)
    embedding[:, 2] = np.arange(V) == 5  # feature 2: whether the token is 5
    model.embed.embedding[...] = embedding
    kernel, bias = np.array(model.lstm.kernel[...]), np.array(model.lstm.bias[...])
    recurrent = np.array(model.lstm.recurrent_kernel[...])
    for unit in (1, 2):
        columns = unit + H * np.arange(4)  # its i, f, g, o
        kernel[:, columns] = recurrent[:, columns] = 0
        bias[columns] = [10, -10 if unit == 1 else 10, 0 if unit == 1 else 0.5, 0]
    kernel[2, 2 * H + 1] = 10.0
    model.lstm.kernel[...], model.lstm.bias[...] = kernel, bias
    model.lstm.recurrent_kernel[...] = recurrent
    return model


def test_find_units_finds_the_detector_and_the_counter():
    model = detector_model()
    is_five = internals.in_set(IDS, [5])
    (best,) = internals.find_units(model, IDS, LENGTHS, is_five, top=1)
    assert best.layer == "lstm" and best.unit == 1
    assert best.correlation > 0.999 and best.accuracy == 1.0
    counter = internals.find_units(model, IDS, LENGTHS, internals.position(IDS), top=2)
    assert counter[0].unit == 2 and counter[0].correlation > 0.99 and counter[0].accuracy is None
    values = internals.unit_values(model, IDS, LENGTHS, batch_size=2)  # [real steps, H]
    trace = traces.trace_model(model, IDS, lengths=LENGTHS)["lstm"]
    np.testing.assert_array_equal(values, np.asarray(trace.c)[REAL])
    with pytest.raises(ValueError, match="no LSTM layer 'lstm/forward'; the model has lstm"):
        internals.find_units(model, IDS, LENGTHS, is_five, layer="lstm/forward")
    with pytest.raises(ValueError, match="signal must be"):
        internals.find_units(model, IDS, LENGTHS, is_five[:, :3])


# ----------------------------------------------------------------------------- ablation


def test_ablated_forward_equals_the_reference_with_the_same_clamps():
    layer, params = standard()
    layer.reverse = True
    clamps = [("g", (0, 3), 0.5), ("c", (0,), 0.3), ("h", (1,), -0.2), ("f", (2,), 1.0)]
    clamps += [("i", (3,), 0.0), ("o", (2,), 0.25)]
    out, c, h, ref = lstm_reference(*params, X, MASK, reverse=True, clamps=clamps)
    with contextlib.ExitStack() as stack:
        for what, units, value in clamps:
            assert stack.enter_context(internals.ablate(layer, "lstm", units, what, value)) is layer
        assert layer.clamps == tuple(Clamp(*clamp) for clamp in clamps)
        got, state = layer(jnp.asarray(X), mask=jnp.asarray(MASK))
        trace = layer.trace(jnp.asarray(X), mask=jnp.asarray(MASK))
    assert layer.clamps == ()
    np.testing.assert_allclose(np.asarray(got), out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(state.c), c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(state.h), h, rtol=1e-5, atol=1e-6)
    for name in ("i", "f", "g", "o", "c", "h"):
        np.testing.assert_allclose(np.asarray(getattr(trace, name)), ref[name], atol=1e-6)
    assert np.all(np.asarray(trace.c)[..., 0][MASK] == np.float32(0.3))


def test_forget_one_and_input_zero_keep_the_cell_constant():
    layer = standard()[0]
    c0 = jnp.asarray(np.random.default_rng(3).normal(size=(3, H)), jnp.float32)
    initial = (c0, jnp.zeros_like(c0))
    frozen = [1, 2]
    with internals.ablate(layer, "lstm", frozen, "f", 1.0):
        with internals.ablate(layer, "lstm", frozen, "i", 0.0):
            trace = layer.trace(jnp.asarray(X), initial_state=initial)
    c = np.asarray(trace.c)  # [B, T, H]
    np.testing.assert_array_equal(
        c[..., frozen], np.broadcast_to(c0[:, None, frozen], c[..., frozen].shape)
    )
    np.testing.assert_allclose(
        np.asarray(trace.h)[..., frozen],
        np.asarray(trace.o)[..., frozen] * np.tanh(c[..., frozen]),
        atol=1e-6,
    )
    assert np.abs(np.diff(c[..., [0, 3]], axis=1)).max() > 0.01  # the other units move


def test_ablating_all_of_h_leaves_the_head_its_bias_through_evaluate_and_predict():
    model = classifier()
    graphdef, state = nnx.split(model)
    nothing = internals.ablation_effect(model, IDS, LABELS, Ablation("lstm", []), lengths=LENGTHS)
    assert all(abs(v) < 1e-6 for v in nothing.change.values())
    np.testing.assert_allclose(nothing.shift, 0, atol=1e-6)
    everything = Ablation("lstm", range(H), "h")
    effect = internals.ablation_effect(model, IDS, LABELS, everything, lengths=LENGTHS)
    p = sigmoid(float(model.head.bias[0]))  # σ(b): the prediction with h = 0
    before = predict(model, IDS, lengths=LENGTHS)
    np.testing.assert_allclose(effect.shift, p - before, rtol=1e-5, atol=1e-6)
    expected_loss = -np.mean(LABELS * np.log(p) + (1 - LABELS) * np.log(1 - p))
    np.testing.assert_allclose(effect.after["loss"], expected_loss, rtol=1e-5)
    np.testing.assert_allclose(
        effect.change["loss"], expected_loss - nothing.before["loss"], rtol=1e-5
    )
    with internals.ablate(model, "lstm", range(H), "h"):
        outputs = traces.trace_model(model, IDS, lengths=LENGTHS)["lstm"].h
        assert not np.asarray(outputs).any()
    # The model is as it was: same graph (no clamps left), same parameters, same predictions.
    after_graphdef, after_state = nnx.split(model)
    assert after_graphdef == graphdef and model.lstm.clamps == ()
    jax.tree.map(np.testing.assert_array_equal, after_state, state)
    np.testing.assert_array_equal(predict(model, IDS, lengths=LENGTHS), before)


def test_ablate_refuses_bad_requests_and_restores_after_an_error():
    model = classifier()
    with pytest.raises(ValueError, match="no LSTM layer 'lstm/forward'; the model has lstm"):
        internals.ablate(model, "lstm/forward", [0]).__enter__()
    with pytest.raises(ValueError, match=r"clamped units must lie in \[0, 4\)"):
        internals.ablate(model, "lstm", [4]).__enter__()
    with pytest.raises(ValueError, match="a clamp holds one of i, f, g, o, c, h"):
        internals.ablate(model, "lstm", [0], "z").__enter__()
    peephole = PeepholeLSTM(F, H, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="only LSTM can be ablated"):
        internals.ablate(peephole, "lstm", [0]).__enter__()
    with pytest.raises(TypeError, match="an Ablation or a sequence"):
        internals.ablation_effect(model, IDS, LABELS, ("lstm", [0]), lengths=LENGTHS)
    with pytest.raises(RuntimeError), internals.ablate(model, "lstm", [0], "c"):
        raise RuntimeError
    assert model.lstm.clamps == ()
