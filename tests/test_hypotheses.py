"""flaxlstm.internals' hypotheses (select_cells, match_spans) against hand-laid arrays, and its
attributions (saliency, gradient_flow) against gradients computed here by hand: jax.grad of
the model's own layers called on embedding vectors, and an LSTM loop written out below."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from flaxlstm import internals
from flaxlstm.models import CumsumModel, LanguageModel, SentimentClassifier, TokenClassifier
from flaxlstm.training.fit import fit

V, E, H = 8, 3, 4
IDS = np.array(
    [
        [3, 4, 5, 6, 7, 3],
        [5, 5, 3, 0, 0, 0],
        [7, 6, 5, 4, 1, 0],
        [4, 3, 0, 0, 0, 0],
    ],
    np.int32,
)
LENGTHS = np.array([6, 3, 5, 2], np.int32)
REAL = np.arange(IDS.shape[1]) < LENGTHS[:, None]

# ----------------------------------------------------------------------------- select_cells

ON = 0.5
# [T = 6, H = 6]: 1 (on) and 0 (off); unit 5 sits exactly at the threshold where on.
CELLS = np.array(
    [  # unit: 0  1  2  3  4  5
        [0, 0, 0, 0, 1, 0],  # t = 0
        [0, 1, 0, 0, 1, 0],  # t = 1
        [1, 1, 1, 1, 1, ON],  # t = 2
        [1, 1, 1, 1, 0, ON],  # t = 3
        [0, 0, 1, 0, 0, 0],  # t = 4
        [0, 0, 0, 1, 1, 0],  # t = 5
    ],
    np.float32,
)


def test_select_cells_takes_the_units_on_over_exactly_the_span():
    # unit 1 is on before the span, unit 2 after it, unit 4 not at step 3; unit 3 is on again
    # later (only the steps beside the span count); unit 5 is at the threshold: on.
    got = internals.select_cells(CELLS, 2, 4, ON)
    assert got.tolist() == [0, 3, 5]
    assert np.issubdtype(got.dtype, np.integer)
    assert internals.select_cells(CELLS, 1, 4, ON).tolist() == [1]
    assert internals.select_cells(CELLS, 2, 5, ON).tolist() == [2]


def test_select_cells_at_the_ends_of_the_text():
    assert internals.select_cells(CELLS, 0, 3, ON).tolist() == [4]  # no step before t = 0
    assert internals.select_cells(CELLS, 0, 2, ON).tolist() == []  # unit 4 is on at t = 2 too
    assert internals.select_cells(CELLS, 5, 6, ON).tolist() == [3, 4]  # none after the last
    assert internals.select_cells(np.ones((3, 2)), 0, 3, ON).tolist() == [0, 1]  # whole text
    assert internals.select_cells(CELLS, 2, 4, 2.0).size == 0  # nothing reaches it


@pytest.mark.parametrize(
    "values, start, end, threshold, message",
    [
        (CELLS[0], 0, 1, ON, r"\[T, H\]"),
        (CELLS[None], 0, 1, ON, r"\[T, H\]"),
        (CELLS, 3, 3, ON, "start < end"),
        (CELLS, 4, 2, ON, "start < end"),
        (CELLS, -1, 2, ON, "start < end"),
        (CELLS, 2, 7, ON, "T=6"),
        (CELLS, 1.0, 2, ON, "start must be an integer"),
        (CELLS, 1, 2, float("nan"), "threshold must be a finite number"),
        (CELLS, 1, 2, "high", "threshold must be a finite number"),
    ],
)
def test_select_cells_refuses_bad_input(values, start, end, threshold, message):
    with pytest.raises(ValueError, match=message):
        internals.select_cells(values, start, end, threshold)


# ----------------------------------------------------------------------------- match_spans


def texts(*patterns: str) -> list[np.ndarray]:
    """[T, 3] arrays from strings of one character per step: "b" both units 0 and 2 on, "0"
    only unit 0, "2" only unit 2, "." neither (unit 1 is on everywhere)."""
    both = {"b": (1, 1, 1), "0": (1, 1, 0), "2": (0, 1, 1), ".": (0, 1, 0)}
    return [np.array([both[c] for c in pattern], np.float32) for pattern in patterns]


def test_match_spans_orders_the_maximal_runs():
    values = texts(
        "bb.bbb.0",  # runs [0, 2) and [3, 6); step 7 has only unit 0 on
        ".bbb2",  # [1, 4): as long as text 0's [3, 6), after it (text index)
        "b.bb",  # [0, 1) and [2, 4), the run at the end of the text
        "2..0",  # nothing: never both at once
    )
    assert internals.match_spans(values, [0, 2], ON) == [
        (0, 3, 6),
        (1, 1, 4),
        (0, 0, 2),  # length 2: text 0 before text 2, ...
        (2, 2, 4),
        (2, 0, 1),
    ]
    assert internals.match_spans(values, [0, 2], ON, top=2) == [(0, 3, 6), (1, 1, 4)]
    assert internals.match_spans(values, [2], ON)[0] == (1, 1, 5)  # unit 2 alone: longer
    assert internals.match_spans(values, [1], ON)[:2] == [(0, 0, 8), (1, 0, 5)]  # whole texts
    assert internals.match_spans(values, [0, 2], 2.0) == []
    assert internals.match_spans([], [0], ON) == []
    spans = internals.match_spans(texts("bb.", "b.b"), np.array([2, 0]), ON)
    assert spans == [(0, 0, 2), (1, 0, 1), (1, 2, 3)]  # ties in one text by start
    assert all(type(n) is int for span in spans for n in span)


@pytest.mark.parametrize(
    "values, cells, top, message",
    [
        (texts("bb"), [3], 5, r"cells must lie in \[0, 3\)"),
        (texts("bb"), [-1], 5, r"cells must lie in \[0, 3\)"),
        (texts("bb"), [], 5, "non-empty"),
        (texts("bb"), [0.0], 5, "integer"),
        (texts("bb"), [0], 0, "top must be a positive integer"),
        ([np.ones(4)], [0], 5, r"values_list\[0\] must be \[T, H\]"),
    ],
)
def test_match_spans_refuses_bad_input(values, cells, top, message):
    with pytest.raises(ValueError, match=message):
        internals.match_spans(values, cells, ON, top=top)


# ----------------------------------------------------------------------------- saliency


def randomised(model: nnx.Module, seed: int = 0) -> nnx.Module:
    """``model`` with every parameter drawn again from N(0, 0.8²): far from its
    initialisation, so that the gradients are not small."""
    rng = np.random.default_rng(seed)
    for _, param in nnx.iter_graph(model):
        if isinstance(param, nnx.Param):
            param[...] = rng.normal(0, 0.8, param.shape).astype(np.float32)
    return model


@pytest.fixture(scope="module")
def classifier() -> SentimentClassifier:
    return randomised(SentimentClassifier(V, E, H, rngs=nnx.Rngs(0)))


def logit(model: SentimentClassifier, x: jax.Array, lengths) -> jax.Array:
    """The classifier's logit [B] from embedding vectors x [B, T, E], layer by layer."""
    return model.head(model.lstm(x, lengths))[:, 0]


def by_hand(output, x: jax.Array) -> np.ndarray:
    """Gradient × input [B, T] of ``output(x)`` [B] (rows independent), summed over E."""
    gradient = jax.grad(lambda x: output(x).sum())(x)
    return np.asarray((gradient * x).sum(axis=-1))


def test_gradient_times_input_is_the_hand_computation(classifier):
    x = classifier.embed(jnp.asarray(IDS))
    expected = np.where(REAL, by_hand(lambda x: logit(classifier, x, LENGTHS), x), 0)
    got = internals.saliency(classifier, IDS, LENGTHS)
    assert got.shape == IDS.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert np.abs(got[REAL]).min() > 0


def test_padded_steps_get_nothing_and_their_ids_do_not_matter(classifier):
    junk = np.where(REAL, IDS, 7)  # other tokens (not the padding id 0) past each length
    for method in ("grad_x_input", "integrated_gradients"):
        got = internals.saliency(classifier, IDS, LENGTHS, method=method, steps=8)
        assert (got[~REAL] == 0).all() and (got[REAL] != 0).all()
        again = internals.saliency(classifier, junk, LENGTHS, method=method, steps=8)
        np.testing.assert_allclose(again, got, rtol=1e-5, atol=1e-7)
    # Without lengths the classifier's own padding (id 0) gets no gradient either.
    np.testing.assert_array_equal(internals.saliency(classifier, IDS)[IDS == 0], 0)


@pytest.fixture(scope="module")
def trained() -> tuple[SentimentClassifier, np.ndarray, np.ndarray]:
    """A SentimentClassifier(6 → 4 → 8) trained (10 epochs, Adam 0.02: accuracy 0.99) to
    tell whether token 1 occurs in a text of 3 to 8 tokens, and 8 of its texts."""
    rng = np.random.default_rng(0)
    n, time = 96, 8
    lengths = rng.integers(3, time + 1, n).astype(np.int32)
    ids = rng.integers(2, 6, (n, time)).astype(np.int32)
    has = rng.random(n) < 0.5
    ids[has, (rng.random(n) * lengths).astype(int)[has]] = 1
    ids[np.arange(time) >= lengths[:, None]] = 0
    model = SentimentClassifier(6, 4, 8, rngs=nnx.Rngs(0))
    history = fit(
        model, ids, has.astype(np.float32), lengths=lengths, epochs=10, batch_size=32,
        optimizer=optax.adam(0.02), quiet=True,
    )  # fmt: skip
    assert history["accuracy"][-1] > 0.9
    return model, ids[:8], lengths[:8]


def test_integrated_gradients_are_complete_on_a_trained_classifier(trained):
    """Σ_t a_t = F(text) − F(baseline) within 1 %: 16 Gauss–Legendre steps suffice here
    (relative error about 1e-3; 8 steps: about 2.5 %); the default 32 reach float32 rounding.
    (A model trained to saturation, logits ±8, needs more: 64 steps gave 3 %, 128 0.1 %.)"""
    model, ids, lengths = trained
    real = np.arange(ids.shape[1]) < lengths[:, None]
    x = model.embed(jnp.asarray(ids))
    difference = np.asarray(
        logit(model, x, lengths) - logit(model, jnp.where(real[..., None], 0, x), lengths)
    )
    error = {}
    for steps in (4, 16, 32):
        got = internals.saliency(model, ids, lengths, method="integrated_gradients", steps=steps)
        error[steps] = (np.abs(got.sum(axis=1) - difference) / np.abs(difference)).max()
    assert error[16] < 0.01 and error[32] < 1e-4
    assert error[4] > 0.01  # (so the sum is no identity: the steps are what converges)


def test_the_class_explained_is_the_target_or_the_predicted_one():
    model = randomised(TokenClassifier(V, E, H, 3, rngs=nnx.Rngs(0)), seed=7)
    x = model.embed(jnp.asarray(IDS))
    logits = lambda x: model.head(model.lstm(x, LENGTHS))  # noqa: E731
    rows = np.arange(len(IDS))
    for target in (0, 2, np.array([2, 1, 0, 1])):
        picked = np.broadcast_to(target, rows.shape)
        expected = np.where(REAL, by_hand(lambda x, picked=picked: logits(x)[rows, picked], x), 0)
        got = internals.saliency(model, IDS, LENGTHS, target=target)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    predicted = np.asarray(logits(x)).argmax(axis=1)
    assert len(set(predicted)) > 1  # (so that one fixed class would not pass)
    expected = internals.saliency(model, IDS, LENGTHS, target=predicted)
    np.testing.assert_array_equal(internals.saliency(model, IDS, LENGTHS), expected)
    ig = internals.saliency(model, IDS, LENGTHS, method="integrated_gradients")
    baseline = logits(jnp.where(REAL[..., None], 0, x))[rows, predicted]
    np.testing.assert_allclose(ig.sum(axis=1), logits(x)[rows, predicted] - baseline, rtol=1e-4)


def test_a_language_model_explains_its_last_token():
    model = randomised(LanguageModel(V, E, H, rngs=nnx.Rngs(0)), seed=2)
    x = model.embed(jnp.asarray(IDS))
    rows, last = np.arange(len(IDS)), LENGTHS - 1

    def log_p(x):  # log p(ids[L − 1] | ids[:L − 1]) [B], from the LSTM's outputs by hand
        outputs, _ = model.lstm(x, LENGTHS)
        logits = outputs[rows, last - 1] @ model.output_rows[...].T + model.output_bias[...]
        return jax.nn.log_softmax(logits)[rows, IDS[rows, last]]

    got = internals.saliency(model, IDS, LENGTHS)
    np.testing.assert_allclose(got, np.where(REAL, by_hand(log_p, x), 0), rtol=1e-5, atol=1e-7)
    assert (got[rows, last] == 0).all()  # the token explained tells nothing of itself
    ig = internals.saliency(model, IDS, LENGTHS, method="integrated_gradients")
    difference = log_p(x) - log_p(jnp.where(REAL[..., None], 0, x))
    np.testing.assert_allclose(ig.sum(axis=1), difference, rtol=1e-4)


def test_an_ensemble_attributes_the_network_part():
    model = randomised(SentimentClassifier(V, E, H, ngrams=4 * V, rngs=nnx.Rngs(0)))
    network = internals.saliency(model, IDS, LENGTHS)
    x = model.embed(jnp.asarray(IDS))
    np.testing.assert_allclose(
        network, np.where(REAL, by_hand(lambda x: logit(model, x, LENGTHS), x), 0), rtol=1e-5
    )
    ig = internals.saliency(model, IDS, LENGTHS, method="integrated_gradients")
    baseline = logit(model, jnp.where(REAL[..., None], 0, x), LENGTHS)
    np.testing.assert_allclose(ig.sum(axis=1), logit(model, x, LENGTHS) - baseline, rtol=1e-4)
    assert not np.allclose(model(IDS, LENGTHS), logit(model, x, LENGTHS))  # n-grams count


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: internals.saliency(m, IDS, method="gradient"), "method must be one of"),
        (lambda m: internals.saliency(m, IDS, method="integrated_gradients", steps=0), "steps"),
        (lambda m: internals.saliency(m, IDS[0]), r"token ids \[B, T\]"),
        (lambda m: internals.saliency(m, IDS * 1.0), r"token ids \[B, T\]"),
        (lambda m: internals.saliency(m, IDS + V), "token ids must lie in"),
        (lambda m: internals.saliency(m, IDS, LENGTHS[:2]), "lengths must be 4 integers"),
        (lambda m: internals.saliency(m, IDS, LENGTHS + 1), r"lengths must lie in \[0, 6\]"),
        (lambda m: internals.saliency(m, IDS, target=0), "target picks a class"),
        (lambda m: internals.gradient_flow(m, IDS, layer="lstm/backward"), "no LSTM layer"),
    ],
)
def test_bad_input_is_refused_in_one_line(classifier, call, message):
    with pytest.raises(ValueError, match=message):
        call(classifier)


def test_bad_models_and_targets_are_refused():
    with pytest.raises(ValueError, match="one token Embedding; a CumsumModel has none"):
        internals.saliency(CumsumModel(2, rngs=nnx.Rngs(0)), IDS)
    three = TokenClassifier(V, E, H, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"target must be class ids in \[0, 3\)"):
        internals.saliency(three, IDS, target=3)
    language = LanguageModel(V, E, H, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="at least 2 real tokens, got 1"):
        internals.saliency(language, IDS, np.array([6, 1, 3, 2], np.int32))


# ----------------------------------------------------------------------------- gradient flow


def test_gradient_flow_is_the_gradient_reaching_each_h(classifier):
    """‖∂F/∂h_t‖ against an LSTM loop written out here, with δ_t added to each h_t."""
    W, U, b = (p[...] for p in (classifier.lstm.kernel, classifier.lstm.recurrent_kernel,
                                classifier.lstm.bias))  # fmt: skip
    x = classifier.embed(jnp.asarray(IDS))

    def F(delta):  # Σ_b logit_b with h_t + δ_t in place of every h_t
        c = h = jnp.zeros((len(IDS), H))
        for t in range(IDS.shape[1]):
            i, f, g, o = jnp.split(x[:, t] @ W + h @ U + b, 4, axis=-1)
            c_t = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h_t = jax.nn.sigmoid(o) * jnp.tanh(c_t) + delta[:, t]
            real = jnp.asarray(REAL[:, t, None])
            c, h = jnp.where(real, c_t, c), jnp.where(real, h_t, h)
        return classifier.head(h)[:, 0].sum()

    expected = np.linalg.norm(jax.grad(F)(jnp.zeros((*IDS.shape, H))), axis=-1)
    got = internals.gradient_flow(classifier, IDS, LENGTHS)
    assert got.shape == IDS.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert (got[~REAL] == 0).all() and (got[REAL] > 0).all()
    head = np.linalg.norm(classifier.head.kernel[...])  # ∂logit/∂h at the last real step
    np.testing.assert_allclose(got[np.arange(len(IDS)), LENGTHS - 1], head, rtol=1e-5)


def test_gradient_flow_of_a_bidirectional_layer_takes_both_directions():
    model = randomised(SentimentClassifier(V, E, H, bidirectional=True, rngs=nnx.Rngs(0)))
    both = internals.gradient_flow(model, IDS, LENGTHS)  # the last layer: "lstm", both ways
    forward, backward = (
        internals.gradient_flow(model, IDS, LENGTHS, layer=f"lstm/{way}")
        for way in ("forward", "backward")
    )
    np.testing.assert_allclose(both, np.sqrt(forward**2 + backward**2), rtol=1e-5)
    assert (forward[REAL] > 0).all() and (backward[REAL] > 0).all()
    # The backward direction's h at step 0 is what the head reads: ‖∂logit/∂h‖ is its weights'.
    head = np.linalg.norm(model.head.kernel[...][H:])
    np.testing.assert_allclose(backward[:, 0], head, rtol=1e-5)
