"""The seeds' models. Every model returns logits; ``flaxlstm.train`` turns them into losses
and probabilities."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flaxlstm import config
from flaxlstm.checks import require_ngrams
from flaxlstm.config import IMDB_MODELS, ImdbModelConfig
from flaxlstm.data.vocabulary import padding_mask
from flaxlstm.layers import (
    LSTM,
    Bidirectional,
    Embedding,
    PerStep,
    capture_intermediates,
    sow_output,
)
from flaxlstm.recurrent import make_mask
from flaxlstm.stacked import StackedLSTM

# ============================================================================================
# Synthetic tasks (seeds 000, 001, adding, first token): flaxlstm.data.synthetic
# ============================================================================================


class CumsumModel(nnx.Module):
    """Seed 001: LSTM(1 → H, every step) → PerStep(Linear(H → 1)).

    ``model(x [B, T, 1], lengths=None)`` → per-step logits [B, T] (0 at padded steps).
    """

    def __init__(self, hidden: int = 20, *, rngs: nnx.Rngs):
        self.lstm = LSTM(1, hidden, return_sequences=True, rngs=rngs)
        self.head = PerStep(nnx.Linear(hidden, 1, rngs=rngs))

    def __call__(self, x: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        return self.head(self.lstm(x, lengths), lengths)[..., 0]


class ParityModel(nnx.Module):
    """Seed 000: Embedding(V → E) → LSTM(E → H, last step) → Linear(H → 1).

    ``model(ids [B, T], lengths=None)`` → logits [B].
    """

    def __init__(
        self, vocabulary: int = 100, embedding: int = 16, hidden: int = 64, *, rngs: nnx.Rngs
    ):
        self.embed = Embedding(vocabulary, embedding, rngs=rngs)
        self.lstm = LSTM(embedding, hidden, rngs=rngs)
        self.head = nnx.Linear(hidden, 1, rngs=rngs)

    def __call__(self, ids: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        return self.head(self.lstm(self.embed(ids), lengths))[..., 0]


class AddingModel(nnx.Module):
    """The adding problem: LSTM(2 → H, last step) → Linear(H → 1), a value per sequence.

    ``model(x [B, T, 2], lengths=None)`` → values [B] (trained with ``loss="mse"``).
    """

    def __init__(self, hidden: int = 64, *, rngs: nnx.Rngs):
        self.lstm = LSTM(2, hidden, rngs=rngs)
        self.head = nnx.Linear(hidden, 1, rngs=rngs)

    def __call__(self, x: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        return self.head(self.lstm(x, lengths))[..., 0]


class TokenClassifier(nnx.Module):
    """Embedding(V → E) → LSTM(E → H, last step) → Linear(H → C): C class logits per sequence.

    ``model(ids [B, T], lengths=None)`` → logits [B, C]
    (``loss="sparse_categorical_crossentropy"``).
    """

    def __init__(
        self, vocabulary: int, embedding: int, hidden: int, classes: int, *, rngs: nnx.Rngs
    ):
        self.embed = Embedding(vocabulary, embedding, rngs=rngs)
        self.lstm = LSTM(embedding, hidden, rngs=rngs)
        self.head = nnx.Linear(hidden, classes, rngs=rngs)

    def __call__(self, ids: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        return self.head(self.lstm(self.embed(ids), lengths))


# ============================================================================================
# End of the synthetic tasks' models.
# ============================================================================================


# ============================================================================================
# IMDB sentiment (seeds 002 and 003): flaxlstm.data.imdb
# ============================================================================================


def keras_embedding_init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Keras's Embedding initialiser, uniform in [−0.05, 0.05]: the seeds were tuned with it."""
    return jax.random.uniform(key, shape, dtype, -0.05, 0.05)


def max_mean_pool(outputs: jax.Array, mask: jax.Array) -> jax.Array:
    """[max_t h_t, mean_t h_t] [B, 2H] over the real steps (``mask`` [B, T]) of ``outputs``
    [B, T, H] (zero at padded steps; a sequence without real steps pools to zeros)."""
    real = mask[..., None]
    count = real.sum(axis=1)  # [B, 1]
    top = jnp.where(count > 0, jnp.max(jnp.where(real, outputs, -jnp.inf), axis=1), 0)
    return jnp.concatenate([top, outputs.sum(axis=1) / jnp.maximum(count, 1)], axis=-1)


def word_pairs(ids: jax.Array, mask: jax.Array, vocab_size: int, rows: int):
    """Every pair of neighbouring tokens (a, b) of ids [B, T] hashed to one of ``rows`` rows,
    (a·V + b) mod rows (exact pair ids when V² ≤ rows), [B, T − 1] int32, and where both are
    real tokens (``mask`` [B, T]), [B, T − 1] booleans."""
    first, second = ids[:, :-1].astype(jnp.uint32), ids[:, 1:].astype(jnp.uint32)
    pairs = ((first * vocab_size + second) % rows).astype(jnp.int32)
    return pairs, mask[:, :-1] & mask[:, 1:]


class BigramBag(nnx.Module):
    """fastText's bag of bigrams (Joulin et al. 2017): every pair of neighbouring real tokens
    (a, b) is hashed to one of ``buckets`` rows, (a·V + b) mod buckets (exact pair ids when
    V² ≤ buckets), embedded, and the rows are averaged.

    ``bag(ids [B, T], mask [B, T])`` → [B, features] (zeros for fewer than two real tokens).
    """

    def __init__(self, vocab_size: int, buckets: int, features: int, *, rngs: nnx.Rngs):
        self.vocab_size = vocab_size
        self.embed = Embedding(buckets, features, embedding_init=keras_embedding_init, rngs=rngs)

    def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        pairs, real = word_pairs(ids, mask, self.vocab_size, self.embed.num_embeddings)
        real = real[..., None]  # [B, T - 1, 1]
        rows = jnp.where(real, self.embed(pairs), 0)
        return rows.sum(axis=1) / jnp.maximum(real.sum(axis=1), 1)


def distinct_ngrams(ids: jax.Array, mask: jax.Array, vocab_size: int, buckets: int):
    """The rows of a review's unigram and bigram indicators x ∈ {0, 1}^buckets, each distinct
    n-gram once: a unigram (word id a) is row a; a pair of neighbouring real tokens (a, b) is
    row V + (a·V + b) mod (buckets − V). For ids [B, T] and ``mask`` [B, T]: (rows [B, 2T − 1]
    int32, sorted, and where a row is a distinct n-gram of the review, [B, 2T − 1] booleans)."""
    v = vocab_size
    pairs, real = word_pairs(ids, mask, v, buckets - v)
    grams = jnp.concatenate(
        [jnp.where(mask, ids, -1), jnp.where(real, v + pairs, -1)], axis=1
    )  # [B, 2T − 1], −1 where there is no n-gram
    grams = jnp.sort(grams, axis=1)  # each n-gram once: where it differs from its left
    left = jnp.pad(grams, ((0, 0), (1, 0)), constant_values=-1)[:, :-1]
    distinct = (grams >= 0) & (grams != left)
    return jnp.maximum(grams, 0), distinct


class NgramLinear(nnx.Module):
    """A linear model of which words and word pairs a review holds: logistic regression on
    binary unigram and bigram indicators x ∈ {0, 1}^buckets (Wang & Manning 2012's features,
    without their Naive Bayes scaling; rows as ``distinct_ngrams``), its logit
    w · x = Σ_{distinct n-grams g of the review} w[g], the weights starting at 0. During
    training each of a review's n-grams is dropped with probability ``dropout`` (the rest
    scaled by 1 / (1 − dropout)): the model cannot lean on a few of them.

    ``linear(ids [B, T], mask [B, T])`` → logits [B] (0 for a review without real tokens).
    """

    def __init__(self, vocab_size: int, buckets: int, dropout: float = 0.0, *, rngs: nnx.Rngs):
        if buckets <= vocab_size:
            raise ValueError(f"ngrams must exceed the vocabulary size {vocab_size}, got {buckets}")
        self.vocab_size = vocab_size
        self.weight = nnx.Param(jnp.zeros(buckets))
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout else None

    def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        grams, distinct = distinct_ngrams(ids, mask, self.vocab_size, self.weight.shape[0])
        terms = jnp.where(distinct, self.weight[...][grams], 0)
        if self.dropout is not None:
            terms = self.dropout(terms)
        return terms.sum(axis=1)


# NBSVM's hashed n-gram rows, as many as `best`'s NgramLinear has. In a trial on the validation
# slice (rows hashed with V = 20,003, not the model's 20,000) more rows scored less: 90.68 % at
# 2^21, 90.32 at 2^22, 89.92 at 2^23 (the interpolation's mean |w| runs over all rows);
# scikit-learn's exact n-grams of the whole reviews: 90.72 (docs/IMDB-BEST.md).
NBSVM_BUCKETS = 2**21


class Nbsvm(nnx.Module):
    """Wang & Manning's NBSVM-bigrams (``flaxlstm.nbsvm``) on the indicators x of
    ``distinct_ngrams``, as the second member of an ensemble: ``fit`` sets it in closed form
    (Naive Bayes ratios r, a linear SVM on r ∘ x) before the network trains, gradients never
    change it, and only in eval mode does its margin, times ``weight``, join the logits:

        logit = network's logit + weight · (Σ_{distinct n-grams g} (r ∘ w′)[g] + b)

    ``nbsvm(ids [B, T], mask [B, T])`` → [B]: that weighted margin, zeros in training mode.
    """

    def __init__(self, vocab_size: int, weight: float, buckets: int = NBSVM_BUCKETS):
        self.vocab_size, self.weight = vocab_size, weight
        self.coef = nnx.Param(jnp.zeros(buckets))  # r ∘ w′ (Params: checkpointed with the rest)
        self.bias = nnx.Param(jnp.zeros(()))
        self.deterministic = False  # eval mode (set by model.eval() and train.mode_view)

    def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        if not self.deterministic:
            return jnp.zeros(ids.shape[0])
        grams, distinct = self.rows(ids, mask)
        coef, bias = jax.lax.stop_gradient((self.coef[...], self.bias[...]))
        return self.weight * (jnp.where(distinct, coef[grams], 0).sum(axis=1) + bias)

    def rows(self, ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``distinct_ngrams`` of ids [B, T] over this model's rows."""
        return distinct_ngrams(ids, mask, self.vocab_size, self.coef.shape[0])

    def fit(self, ids: np.ndarray, lengths: np.ndarray, labels: np.ndarray) -> None:
        """Fit r and the SVM to the post-padded reviews ids [N, T] with ``lengths`` [N] real
        tokens and 0/1 ``labels`` [N] (scikit-learn's LinearSVC; about a minute for 25,000)."""
        require_ngrams()
        from flaxlstm import nbsvm  # scikit-learn loads only for a model that has this member

        x = nbsvm.indicator_matrix(ids, lengths, self.rows, self.coef.shape[0])
        r, w, b = nbsvm.fit_nbsvm(x, np.asarray(labels))
        self.coef[...] = jnp.asarray(r * w, jnp.float32)
        self.bias[...] = jnp.asarray(b, jnp.float32)


class MaxPool1D(nnx.Module):
    """Keras's ``MaxPooling1D(pool_size)`` (padding "valid") over real steps only.

    ``pool(x [B, T, C], mask [B, T])`` → ``(x [B, T // p, C], mask [B, T // p])``. A window is
    real when any of its steps is, and its maximum is over its real steps; a ragged last window
    is dropped, as in Keras. So n post-padded real steps become min(ceil(n / p), T // p).
    """

    def __init__(self, pool_size: int = 2):
        self.pool_size = pool_size

    def __call__(self, x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        batch, time, channels = x.shape
        windows = time // self.pool_size
        steps = windows * self.pool_size
        x = jnp.where(mask[..., None], x, -jnp.inf)[:, :steps]
        x = x.reshape(batch, windows, self.pool_size, channels).max(axis=2)
        mask = mask[:, :steps].reshape(batch, windows, self.pool_size).any(axis=2)
        return jnp.where(mask[..., None], x, 0), mask


class SentimentClassifier(nnx.Module):
    """Seeds 002 and 003: Embedding → [Dropout] → [Conv1D → MaxPool1D] → LSTM or bidirectional
    LSTM → [Dropout] → Dense(1), with Keras's initialisers.

    ``model(ids [B, T] int, lengths=None, mask=None)`` → logits [B] (no sigmoid). ``lengths``
    [B] count the real tokens of post-padded ids; ``mask`` [B, T] marks real tokens wherever
    they are; with neither, every id but 0 is real (Keras's ``mask_zero=True``). Padding never
    reaches the result, so pre- and post-padded reviews give the same logits, except with the
    convolution when pre-padding shifts the pooling windows by an odd number of steps.

    ``dropout`` is the rate of the Dropout layers after the embedding and after the LSTM;
    ``lstm_dropout`` and ``recurrent_dropout`` are the LSTM's own (see ``flaxlstm.LSTM``).
    ``conv_filters`` > 0 adds Conv1D(conv_filters, kernel 3, same, relu) → MaxPool1D(2).
    ``dtype`` is the LSTM's mixed precision (``flaxlstm.LSTM``), e.g. ``jnp.bfloat16``.
    ``word_dropout`` drops whole token vectors after the embedding (Keras's
    ``SpatialDropout1D``). ``pooling="max-mean"`` gives the head the maximum and the mean of
    the LSTM's outputs over the real steps (``max_mean_pool``, 2× the features) instead of
    its h after the last one. ``bigrams`` > 0 adds a ``BigramBag`` of that many hashed
    bigram rows (``embedding_dim`` features each) whose average joins the head's input.
    ``ngrams`` > 0 adds an ``NgramLinear`` of that many unigram and hashed bigram weights
    (n-grams dropped at rate ``dropout``) whose logit adds to the head's. ``nbsvm`` > 0 adds
    an ``Nbsvm`` (fitted by ``model.nbsvm.fit`` before training) whose margin, times
    ``nbsvm``, adds to the logits in eval mode: an ensemble of the network and NBSVM.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        hidden: int,
        *,
        dropout: float = 0.0,
        lstm_dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        bidirectional: bool = False,
        conv_filters: int = 0,
        dtype=None,
        word_dropout: float = 0.0,
        pooling: str = "last",
        bigrams: int = 0,
        ngrams: int = 0,
        nbsvm: float = 0.0,
        rngs: nnx.Rngs,
    ):
        if pooling not in ("last", "max-mean"):
            raise ValueError(f"pooling must be 'last' or 'max-mean', got {pooling!r}")
        glorot = jax.nn.initializers.glorot_uniform()  # Keras's Conv1D and Dense default
        self.sow_intermediates = False  # record every layer's output (capture_intermediates)
        self.embed = Embedding(
            vocab_size, embedding_dim, embedding_init=keras_embedding_init, rngs=rngs
        )
        self.embed_dropout = nnx.Dropout(dropout, rngs=rngs) if dropout else None
        self.word_dropout = (
            nnx.Dropout(word_dropout, broadcast_dims=(2,), rngs=rngs) if word_dropout else None
        )
        self.conv = (
            nnx.Conv(embedding_dim, conv_filters, 3, padding="SAME", kernel_init=glorot, rngs=rngs)
            if conv_filters
            else None
        )
        self.pool = MaxPool1D(2) if conv_filters else None
        features = conv_filters or embedding_dim
        self.pooling = pooling
        lstm = LSTM(
            features,
            hidden,
            dropout=lstm_dropout,
            recurrent_dropout=recurrent_dropout,
            dtype=dtype,
            return_sequences=pooling != "last",
            rngs=rngs,
        )
        self.lstm = Bidirectional(lstm, rngs=rngs) if bidirectional else lstm
        self.head_dropout = nnx.Dropout(dropout, rngs=rngs) if dropout else None
        pooled = self.lstm.out_features if bidirectional else hidden
        pooled *= 1 if pooling == "last" else 2
        self.bigrams = BigramBag(vocab_size, bigrams, embedding_dim, rngs=rngs) if bigrams else None
        pooled += embedding_dim if bigrams else 0
        self.head = nnx.Linear(pooled, 1, kernel_init=glorot, rngs=rngs)
        self.ngrams = NgramLinear(vocab_size, ngrams, dropout, rngs=rngs) if ngrams else None
        self.nbsvm = Nbsvm(vocab_size, nbsvm) if nbsvm else None

    # The layers in the order the forward pass runs them (those set to None are left out).
    layers = (
        "embed", "embed_dropout", "word_dropout", "conv", "pool", "lstm", "bigrams",
        "head_dropout", "head", "ngrams", "nbsvm",
    )  # fmt: skip

    def __call__(
        self, ids: jax.Array, lengths: jax.Array | None = None, mask: jax.Array | None = None
    ) -> jax.Array:
        if lengths is None and mask is None:
            mask = padding_mask(ids)
        tokens = make_mask(*ids.shape, lengths, mask)  # (the convolution's pooling changes mask)
        x = sow_output(self, "embed_output", self.embed(ids))
        if self.embed_dropout is not None:
            x = sow_output(self, "embed_dropout_output", self.embed_dropout(x))
        if self.word_dropout is not None:
            x = sow_output(self, "word_dropout_output", self.word_dropout(x))
        if self.conv is not None:
            mask, lengths = make_mask(*ids.shape, lengths, mask), None
            # Padded steps are zeroed so that the convolution sees them as its own "same"
            # zero-padding: a real step's output does not depend on where the padding is.
            x = sow_output(
                self, "conv_output", nnx.relu(self.conv(jnp.where(mask[..., None], x, 0)))
            )
            x, mask = self.pool(x, mask)  # the LSTM sees the pooled steps and mask
            sow_output(self, "pool_output", x)
        x = self.lstm(x, lengths, mask)
        if self.pooling == "max-mean":
            x = max_mean_pool(x, make_mask(*x.shape[:2], lengths, mask))
        x = sow_output(self, "lstm_output", x)
        if self.bigrams is not None:
            bag = sow_output(self, "bigrams_output", self.bigrams(ids, tokens))
            x = jnp.concatenate([x, bag], axis=-1)
        if self.head_dropout is not None:
            x = sow_output(self, "head_dropout_output", self.head_dropout(x))
        logits = sow_output(self, "head_output", self.head(x))[:, 0]
        if self.ngrams is not None:
            logits += sow_output(self, "ngrams_output", self.ngrams(ids, tokens))
        if self.nbsvm is not None:
            logits += sow_output(self, "nbsvm_output", self.nbsvm(ids, tokens))
        return logits


def language_model_layers(
    vocab_size: int, embedding: int, hidden: int, num_layers: int, dropout: float, rngs
) -> tuple[Embedding, StackedLSTM, nnx.Dropout]:
    """What a ``LanguageModel`` and an ``LmClassifier`` share, of the same shapes so that one's
    parameters load into the other: Embedding(V → E), StackedLSTM(E → H, L layers, every step
    and the final state) and the dropout around it."""
    embed = Embedding(vocab_size, embedding, rngs=rngs)  # (first: the order draws the values)
    lstm = StackedLSTM(
        embedding, hidden, num_layers=num_layers, dropout=dropout, return_sequences=True,
        return_state=True, rngs=rngs,
    )  # fmt: skip
    return embed, lstm, nnx.Dropout(dropout, rngs=rngs)


class LmClassifier(nnx.Module):
    """A sentiment classifier built on a language model's layers (``flaxlstm train imdb
    --init-from LM_RUN``, Dai & Le 2015; Howard & Ruder 2018): Embedding(V → E) → Dropout →
    StackedLSTM(E → H, L layers, every step) → concat pooling [h_last, max_t h_t, mean_t h_t]
    over the real steps (ULMFiT's) → Dropout → Linear(3H → 1). ``embed`` and ``lstm`` have the
    shapes of a ``LanguageModel``'s, so its parameters load into them (``load_pretrained``).

    ``model(ids [B, T] int, lengths=None, mask=None)`` → logits [B], padding as
    ``SentimentClassifier``'s. ``nbsvm`` > 0 adds an ``Nbsvm`` as ``SentimentClassifier``'s.
    """

    # What comes from the language model: these layers (the head is new).
    pretrained = config.LM_PRETRAINED_LAYERS

    def __init__(
        self,
        vocab_size: int,
        embedding: int,
        hidden: int,
        *,
        num_layers: int = 1,
        dropout: float = 0.0,
        nbsvm: float = 0.0,
        rngs: nnx.Rngs,
    ):
        self.embed, self.lstm, self.drop = language_model_layers(
            vocab_size, embedding, hidden, num_layers, dropout, rngs
        )
        self.head = nnx.Linear(3 * hidden, 1, rngs=rngs)
        self.nbsvm = Nbsvm(vocab_size, nbsvm) if nbsvm else None

    def __call__(
        self, ids: jax.Array, lengths: jax.Array | None = None, mask: jax.Array | None = None
    ) -> jax.Array:
        if lengths is None and mask is None:
            mask = padding_mask(ids)
        mask = make_mask(*ids.shape, lengths, mask)
        outputs, state = self.lstm(self.drop(self.embed(ids)), None, mask)
        # The last layer's h after the last real step, and the max and mean over the steps.
        pooled = jnp.concatenate([state.h[-1], max_mean_pool(outputs, mask)], axis=-1)
        logits = self.head(self.drop(pooled))[:, 0]
        return logits if self.nbsvm is None else logits + self.nbsvm(ids, mask)

    def load_pretrained(self, language_model: LanguageModel) -> None:
        """Copy ``language_model``'s embedding and LSTM parameters into this model."""
        for name in self.pretrained:
            nnx.update(getattr(self, name), nnx.state(getattr(language_model, name), nnx.Param))


Settings = ImdbModelConfig  # the seeds' settings; the name earlier versions exported
SEED_003 = ImdbModelConfig(**config.SEED_003)
SEED_002 = ImdbModelConfig(**config.SEED_002)
SETTINGS: dict[str, ImdbModelConfig] = IMDB_MODELS
# name → factory: ``MODELS["simple"](rngs=nnx.Rngs(0))``; keywords override the seed's.
MODELS: dict[str, Callable[..., SentimentClassifier]] = {
    name: partial(SentimentClassifier, vocab_size=seed.vocab_size, **seed.layers)
    for name, seed in IMDB_MODELS.items()
}


def count_params(module: nnx.Module) -> int:
    """The number of trainable parameters (``nnx.Param`` elements) in ``module``."""
    return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(module, nnx.Param)))


def summary(model: str | SentimentClassifier, maxlen: int | None = None) -> str:
    """A Keras-like table of ``model``'s layers, output shapes and parameter counts.

    ``model`` is a name in ``MODELS`` (built abstractly, without computing its parameters) or
    a model; ``maxlen`` defaults to the seed's for a name and must be given for a model.
    """
    name = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, str):
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; choose from {sorted(MODELS)}")
        maxlen = maxlen or SETTINGS[model].maxlen
        model = nnx.eval_shape(lambda: MODELS[name](rngs=nnx.Rngs(0)))
    if maxlen is None:
        raise ValueError("summary of a model object needs maxlen")
    ids = jax.ShapeDtypeStruct((1, maxlen), jnp.int32)
    # Shapes only: nothing is computed, so this is instant even for maxlen 500.
    _, outputs = nnx.eval_shape(lambda m, ids: capture_intermediates(m, ids), model, ids)
    layers = [layer for layer in model.layers if f"{layer}_output" in outputs]
    rule, columns = "_" * 66, (29, 26)
    header = " Layer (type)".ljust(columns[0]) + "Output Shape".ljust(columns[1]) + "Param #"
    lines = [f'Model: "{name}"', rule, header, "=" * 66]
    for layer in layers:
        module, shape = getattr(model, layer), outputs[f"{layer}_output"].get_value().shape
        output = "(" + ", ".join(["None", *map(str, shape[1:])]) + ")"
        lines.append(
            f" {layer} ({type(module).__name__})".ljust(columns[0])
            + output.ljust(columns[1])
            + f"{count_params(module):,}"
        )
    lines += ["=" * 66, f"Total params: {count_params(model):,}", rule]
    return "\n".join(lines)


# ============================================================================================
# Language models (flaxlstm.lm trains them)
# ============================================================================================


class LanguageModel(nnx.Module):
    """Embedding(V → E) → StackedLSTM(E → H, L layers, every step) → logits over the V tokens
    at every step, logits = features · Wᵀ + b with one output row W[v] per token: its own
    [V, H] rows, or with ``tie`` the embedding matrix itself, [V, E] (after a Linear(H → E)
    when H ≠ E). ``dropout`` applies to the embeddings, between the layers and to the last
    layer's outputs (until ``model.eval()``).

    ``model(ids [B, T], lengths=None, initial_state=None)`` → ``(features, state)``: features
    [B, T, D] (D = E when tied, else H) that ``logits(features)`` turns into [B, T, V], and the
    final state ``LSTMState(c, h)`` of every layer, each [L, B, H], which the rows' next chunk
    takes as ``initial_state`` (None: zeros).
    """

    def __init__(
        self,
        vocab_size: int,
        embedding: int = 64,
        hidden: int = 256,
        *,
        num_layers: int = 1,
        dropout: float = 0.0,
        tie: bool = False,
        rngs: nnx.Rngs,
    ):
        self.embed, self.lstm, self.drop = language_model_layers(
            vocab_size, embedding, hidden, num_layers, dropout, rngs
        )
        projected = tie and hidden != embedding
        self.project = nnx.Linear(hidden, embedding, rngs=rngs) if projected else None
        # Rows, not Linear's [H, V] columns: the sampled softmax gathers rows (contiguous).
        init = nnx.initializers.lecun_normal(in_axis=1, out_axis=0)
        self.output_rows = None if tie else nnx.Param(init(rngs.params(), (vocab_size, hidden)))
        self.output_bias = nnx.Param(jnp.zeros(vocab_size))

    def __call__(self, ids: jax.Array, lengths=None, initial_state=None):
        x = self.drop(self.embed(ids))
        features, state = self.lstm(x, lengths, None, initial_state)
        features = self.drop(features)
        if self.project is not None:
            features = self.project(features)
        return features, state

    def load_language_model(self, source: LanguageModel) -> None:
        """Copy ``source``'s parameters into this model, of the same sizes but maybe more
        layers: then only the embedding and ``source``'s layers, under the new ones (a grown
        model, ``train lm --init-from --grow``), whose output layer keeps its fresh values."""
        grown = len(self.lstm.layers) - len(source.lstm.layers)
        if grown < 0:
            raise ValueError(f"the model has fewer layers than the source ({-grown} fewer)")
        if not grown:
            nnx.update(self, nnx.state(source, nnx.Param))
            return
        nnx.update(self.embed, nnx.state(source.embed, nnx.Param))
        for layer, source_layer in zip(self.lstm.layers, source.lstm.layers, strict=False):
            nnx.update(layer, nnx.state(source_layer, nnx.Param))

    def output_layer(self) -> tuple[jax.Array, jax.Array]:
        """The output rows W [V, D] and bias b [V]: logits = features · Wᵀ + b."""
        rows = self.embed.embedding if self.output_rows is None else self.output_rows
        return rows[...], self.output_bias[...]

    def logits(self, features: jax.Array) -> jax.Array:
        """[..., V] logits of features [..., D]."""
        rows, bias = self.output_layer()
        return features @ rows.T + bias
