"""The IMDB models of flaxlstm.models: the seeds' parameter counts, shapes, masking, summary."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import sparse

from flaxlstm.data.imdb import pad_sequences
from flaxlstm.data.vocabulary import padding_mask
from flaxlstm.models import MODELS, SETTINGS, MaxPool1D, Nbsvm, count_params, nbsvm, summary

# The totals of the seeds' Keras model summaries (seed 002's: 256,000 + 131,584 + 129).
KERAS_PARAMS = {
    "simple": 213_301,
    "dropout": 213_301,
    "lstm-dropout": 213_301,
    "bilstm": 266_601,
    "cnn-lstm": 216_405,
    "seed002": 387_713,
}


SMALL = dict(embedding_dim=8, hidden=8)  # the forward tests' layers: quick to compile


@pytest.fixture(scope="module")
def models():
    """Every IMDB model with small layers, in eval mode (dropout off), built once."""
    built = {name: factory(**SMALL, rngs=nnx.Rngs(0)) for name, factory in MODELS.items()}
    for model in built.values():
        model.eval()
    return built


@nnx.jit
def forward(model, ids, lengths=None, mask=None):
    # Compiled once per model and shapes; eager calls would trace the scan on every call.
    return model(ids, lengths, mask)


def reviews(maxlen: int = 12, padding: str = "post"):
    """Four reviews of 3 to 12 ids (even and odd lengths), padded to ``maxlen``."""
    rng = np.random.default_rng(0)
    sequences = [np.concatenate([[1], rng.integers(3, 2000, n - 1)]) for n in (3, 8, 12, 7)]
    return pad_sequences(sequences, maxlen, padding=padding)


def test_registry_and_settings_follow_the_seeds():
    issue_14 = {"bilstm-big", "bilstm-ngrams", "best"}
    assert set(MODELS) == set(SETTINGS) == set(KERAS_PARAMS) | issue_14
    sizes = lambda s: (s.vocab_size, s.maxlen, s.embedding_dim, s.batch_size, s.epochs)  # noqa: E731
    assert sizes(SETTINGS["simple"]) == (5000, 500, 32, 64, 3)
    assert sizes(SETTINGS["seed002"]) == (2000, 80, 128, 32, 15)


@pytest.mark.parametrize("name", sorted(KERAS_PARAMS))
def test_parameter_counts_equal_the_keras_summaries(name):
    model = nnx.eval_shape(lambda: MODELS[name](rngs=nnx.Rngs(0)))  # shapes only, no values
    assert count_params(model) == KERAS_PARAMS[name]
    assert f"Total params: {KERAS_PARAMS[name]:,}" in summary(name)


def test_summary_lists_layers_and_shapes():
    text = summary("cnn-lstm")
    assert "embed (Embedding)           (None, 500, 32)           160,000" in text
    assert "conv (Conv)                 (None, 500, 32)           3,104" in text
    assert "pool (MaxPool1D)            (None, 250, 32)           0" in text
    assert "lstm (LSTM)                 (None, 100)               53,200" in text
    assert "(None, 200)" in summary("bilstm")
    assert "(None, 80, 128)" in summary("seed002")
    model = nnx.eval_shape(lambda: MODELS["simple"](vocab_size=100, rngs=nnx.Rngs(0)))
    assert "(None, 7, 32)" in summary(model, maxlen=7)
    with pytest.raises(ValueError, match="maxlen"):
        summary(model)
    with pytest.raises(ValueError, match="unknown model"):
        summary("transformer")


def test_factories_take_overrides():
    model = nnx.eval_shape(lambda: MODELS["simple"](vocab_size=100, rngs=nnx.Rngs(0)))
    assert count_params(model) == KERAS_PARAMS["simple"] - (5000 - 100) * 32


@pytest.mark.parametrize("name", sorted(KERAS_PARAMS))
def test_forward_gives_one_logit_per_review(models, name):
    ids, lengths = reviews()
    logits = forward(models[name], jnp.asarray(ids), jnp.asarray(lengths))
    assert logits.shape == (4,) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize("name", sorted(KERAS_PARAMS))
def test_padding_never_reaches_the_logits(models, name):
    model = models[name]
    ids, lengths = reviews()
    expected = np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(lengths)))
    # With neither lengths nor mask, id 0 marks the padding.
    np.testing.assert_allclose(forward(model, jnp.asarray(ids)), expected, atol=1e-6)
    # Whatever ids stand in the padded steps, lengths (or a mask) keep them out.
    noisy = jnp.asarray(np.where(padding_mask(ids), ids, 7))
    np.testing.assert_allclose(forward(model, noisy, jnp.asarray(lengths)), expected, atol=1e-6)
    mask = jnp.asarray(padding_mask(ids))
    np.testing.assert_allclose(forward(model, noisy, mask=mask), expected, atol=1e-6)
    # Pre-padding gives the same logits, except where the convolution's pooling windows shift:
    # there only an even number of pads leaves them in place.
    pre, _ = reviews(padding="pre")
    pre_logits = np.asarray(forward(model, jnp.asarray(pre)))
    same = np.ones(4, bool) if name != "cnn-lstm" else (12 - lengths) % 2 == 0
    assert same.any() and (name != "cnn-lstm" or not same.all())
    np.testing.assert_allclose(pre_logits[same], expected[same], atol=1e-6)


def test_cnn_lstm_convolution_sees_padding_as_zeros(models):
    """A review alone (no padding at all) and post-padded in a longer batch: same logit."""
    model = models["cnn-lstm"]
    ids, lengths = reviews()
    expected = np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(lengths)))
    # Odd reviews are left out: unpadded, one loses its last step to the pool (as in Keras).
    for row in np.flatnonzero(lengths % 2 == 0):
        alone = forward(model, jnp.asarray(ids[row : row + 1, : lengths[row]]))
        np.testing.assert_allclose(alone, expected[row : row + 1], atol=1e-6)


def test_max_pool_ignores_padded_steps_and_halves_lengths():
    x = jnp.asarray([[1.0, -5.0, 3.0, 100.0, 100.0, 100.0, 9.0]])[..., None]  # [1, 7, 1]
    for n, pooled_length in ((0, 0), (1, 1), (3, 2), (4, 2), (6, 3), (7, 3)):
        mask = jnp.arange(7)[None, :] < n
        y, pooled = MaxPool1D(2)(x, mask)
        assert y.shape == (1, 3, 1) and int(pooled.sum()) == pooled_length
        real = np.asarray(x[0, :n, 0])
        expected = [real[i : i + 2].max() for i in range(0, 2 * pooled_length, 2)]
        np.testing.assert_array_equal(y[0, :pooled_length, 0], expected)
        assert (y[0, pooled_length:] == 0).all()


def test_dropout_is_active_until_eval():
    model = MODELS["dropout"](**SMALL, rngs=nnx.Rngs(0))
    ids = jnp.asarray(reviews()[0])
    assert not np.allclose(forward(model, ids), forward(model, ids))
    model.eval()
    np.testing.assert_array_equal(forward(model, ids), forward(model, ids))


def test_max_mean_pooling_reads_the_real_steps_of_both_directions():
    model = MODELS["bilstm"](**SMALL, pooling="max-mean", rngs=nnx.Rngs(0))
    model.eval()
    ids, lengths = reviews()
    outputs = model.lstm(model.embed(jnp.asarray(ids)), jnp.asarray(lengths))  # [B, T, 2H]
    pooled = []
    for row, n in enumerate(lengths):
        real = np.asarray(outputs[row, :n])
        pooled.append(np.concatenate([real.max(0), real.mean(0)]))
    expected = np.asarray(model.head(jnp.asarray(np.stack(pooled))))[:, 0]
    np.testing.assert_allclose(forward(model, jnp.asarray(ids)), expected, rtol=1e-5, atol=1e-6)
    pre = reviews(padding="pre")[0]  # padding before the tokens: the same logits
    np.testing.assert_allclose(forward(model, jnp.asarray(pre)), expected, rtol=1e-5, atol=1e-6)
    assert "(None, 32)" in summary(model, maxlen=12)  # [max, mean] of 2 × 8 features
    with pytest.raises(ValueError, match="pooling must be 'last' or 'max-mean'"):
        MODELS["simple"](**SMALL, pooling="sum", rngs=nnx.Rngs(0))


def test_word_dropout_drops_whole_token_vectors():
    model = MODELS["simple"](**SMALL, word_dropout=0.5, rngs=nnx.Rngs(0))
    x = jnp.ones((4, 50, 8))
    dropped = np.asarray(model.word_dropout(x))
    kept = (dropped != 0).all(-1)
    assert ((dropped == 0).all(-1) | kept).all()  # a token's vector goes or stays whole
    assert 0.3 < kept.mean() < 0.7
    np.testing.assert_allclose(dropped[kept], 2.0)  # the kept ones scaled by 1 / (1 - 0.5)
    model.eval()
    np.testing.assert_array_equal(model.word_dropout(x), x)


def test_the_bigram_bag_averages_the_rows_of_neighbouring_real_tokens():
    model = MODELS["simple"](**SMALL, vocab_size=50, bigrams=7, rngs=nnx.Rngs(0))
    model.eval()
    ids = np.array([[1, 4, 9, 4, 9, 0], [1, 30, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    table = np.asarray(model.bigrams.embed.embedding[...])
    expected = []
    for row in ids:
        real = row[row > 0]
        pairs = [(a * 50 + b) % 7 for a, b in zip(real[:-1], real[1:], strict=True)]
        expected.append(table[pairs].mean(0) if pairs else np.zeros(8))
    bag = model.bigrams(jnp.asarray(ids), jnp.asarray(ids > 0))
    np.testing.assert_allclose(bag, np.stack(expected), rtol=1e-6)
    pre = np.array([row[np.argsort(row > 0, kind="stable")] for row in ids])  # padding first
    np.testing.assert_allclose(model.bigrams(jnp.asarray(pre), jnp.asarray(pre > 0)), bag)
    # The head reads [h, bag]: 8 + 8 features; the summary lists the bag.
    assert model.head.in_features == 16 and "bigrams (BigramBag)" in summary(model, maxlen=6)
    np.testing.assert_allclose(forward(model, jnp.asarray(pre)), forward(model, jnp.asarray(ids)),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_the_ngram_linear_model_sums_the_weights_of_each_distinct_unigram_and_bigram_once():
    model = MODELS["simple"](**SMALL, vocab_size=50, ngrams=57, dropout=0.5, rngs=nnx.Rngs(0))
    weight = np.random.default_rng(0).normal(size=57).astype(np.float32)
    model.ngrams.weight[...] = jnp.asarray(weight)
    ids = np.array([[4, 9, 4, 9, 4, 0], [7, 7, 7, 0, 0, 0], [1, 0, 0, 0, 0, 0], [0] * 6])
    expected = []
    for row in ids:
        real = list(row[row > 0])
        grams = set(real) | {50 + (a * 50 + b) % 7 for a, b in zip(real, real[1:], strict=False)}
        expected.append(weight[sorted(grams)].sum())  # [4, 9] and [4, 9] → (4, 9) once
    model.eval()
    logits = model.ngrams(jnp.asarray(ids), jnp.asarray(ids > 0))
    np.testing.assert_allclose(logits, expected, rtol=1e-6)
    pre = np.array([row[np.argsort(row > 0, kind="stable")] for row in ids])  # padding first
    np.testing.assert_allclose(model.ngrams(jnp.asarray(pre), jnp.asarray(pre > 0)), logits)
    # The model's logit is the head's plus this one.
    no_ngrams = nnx.clone(model)
    no_ngrams.ngrams = None
    with_ngrams, without = forward(model, jnp.asarray(ids)), forward(no_ngrams, jnp.asarray(ids))
    np.testing.assert_allclose(with_ngrams, without + logits, rtol=1e-5, atol=1e-6)
    # Training drops n-grams: some terms go, the rest double (rate 0.5).
    model.train()
    dropped = model.ngrams(jnp.asarray(ids[:1]), jnp.asarray(ids[:1] > 0))
    assert not np.isclose(dropped, logits[0])
    with pytest.raises(ValueError, match="ngrams must exceed the vocabulary size 50"):
        MODELS["simple"](**SMALL, vocab_size=50, ngrams=50, rngs=nnx.Rngs(0))


def test_nbsvm_is_wang_and_mannings_on_the_ngram_indicators_and_joins_only_in_eval_mode():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 9, 60)
    ids = np.where(np.arange(8) < lengths[:, None], rng.integers(3, 50, (60, 8)), 0)
    labels = ((ids == 7) | (ids == 11)).any(axis=1).astype(np.int32)
    x = np.zeros((60, 128), np.float32)  # the indicators, written out: words, then word pairs
    for n, row in enumerate(ids):
        real = list(row[: lengths[n]])
        grams = set(real) | {50 + (a * 50 + b) % 78 for a, b in zip(real, real[1:], strict=False)}
        x[n, sorted(grams)] = 1
    r, w, b = nbsvm.fit_nbsvm(sparse.csr_matrix(x), labels)
    member = Nbsvm(50, 2.0, buckets=128)
    member.fit(ids, lengths, labels)
    np.testing.assert_allclose(member.coef[...], r * w, rtol=1e-3, atol=1e-5)  # (SVM tolerance)
    np.testing.assert_allclose(member.bias[...], b, rtol=1e-3)
    member.eval()
    margin = member(jnp.asarray(ids), jnp.asarray(ids > 0))
    expected = 2.0 * (x @ np.asarray(member.coef[...]) + np.asarray(member.bias[...]))
    np.testing.assert_allclose(margin, expected, rtol=1e-5, atol=1e-5)
    assert ((np.asarray(margin) > 0) == labels).mean() >= 0.8  # it learnt the two words
    member.train()  # the network trains alone: the member adds nothing
    assert not np.asarray(member(jnp.asarray(ids), jnp.asarray(ids > 0))).any()
    with pytest.raises(ValueError, match="NBSVM needs labels of both classes"):
        member.fit(ids, lengths, np.ones(60, np.int32))


def test_a_model_with_nbsvm_adds_its_margin_in_eval_mode_and_never_trains_it():
    rng = np.random.default_rng(1)
    ids = np.where(np.arange(6) < rng.integers(1, 7, (24, 1)), rng.integers(3, 50, (24, 6)), 0)
    labels = (ids == 5).any(axis=1).astype(np.int32)
    model = MODELS["simple"](**SMALL, vocab_size=50, nbsvm=3.0, rngs=nnx.Rngs(0))
    model.nbsvm.fit(ids, (ids > 0).sum(axis=1), labels)
    without = nnx.clone(model)
    without.nbsvm = None
    model.eval()
    margin = model.nbsvm(jnp.asarray(ids), jnp.asarray(ids > 0))
    assert np.abs(np.asarray(margin)).min() > 0
    expected = forward(without, jnp.asarray(ids)) + margin
    np.testing.assert_allclose(forward(model, jnp.asarray(ids)), expected, rtol=1e-5, atol=1e-5)
    grads = nnx.grad(lambda m: m(jnp.asarray(ids)).sum())(model)
    assert not np.asarray(grads.nbsvm.coef[...]).any() and np.asarray(grads.head.kernel[...]).any()


def test_the_best_model_is_the_validated_bilstm_with_ngrams_and_nbsvm():
    lstm, hybrid, best = SETTINGS["bilstm-big"], SETTINGS["bilstm-ngrams"], SETTINGS["best"]
    assert (lstm.vocab_size, lstm.maxlen, lstm.embedding_dim, lstm.epochs) == (20000, 800, 64, 4)
    assert hybrid == dataclasses.replace(lstm, ngrams=2**21)
    assert best == dataclasses.replace(hybrid, nbsvm=8.0)
    model = nnx.eval_shape(lambda: MODELS["best"](rngs=nnx.Rngs(0)))
    assert model.pooling == "max-mean" and model.head.in_features == 4 * best.hidden
    assert model.word_dropout.rate == 0.1 and model.head_dropout.rate == 0.3
    assert model.ngrams.weight.shape == (2**21,) and model.ngrams.dropout.rate == 0.3
    assert model.nbsvm.coef.shape == (2**21,) and model.nbsvm.weight == 8.0
    text = summary("best")
    assert "(None, 800, 64)" in text and "ngrams (NgramLinear)" in text and "nbsvm (Nbsvm)" in text
