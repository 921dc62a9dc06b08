"""The n-gram members of ``--model bilstm-ngrams`` and ``best``: hashed word pairs and
n-grams (``word_pairs``, ``distinct_ngrams``), a bag of bigrams, a linear model of the
n-grams (``NgramLinear``) and NBSVM-bigrams as an ensemble member (``Nbsvm``, fitted by
``flaxlstm.models.nbsvm`` with scikit-learn: the extra ``flaxlstm[ngrams]``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flaxlstm.checks import require_ngrams
from flaxlstm.layers import (
    Embedding,
    keras_embedding_init,
)


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
    """Wang & Manning's NBSVM-bigrams (``flaxlstm.models.nbsvm``) on the indicators x of
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
        from flaxlstm.models import nbsvm  # scikit-learn loads only for a model with this member

        x = nbsvm.indicator_matrix(ids, lengths, self.rows, self.coef.shape[0])
        r, w, b = nbsvm.fit_nbsvm(x, np.asarray(labels))
        self.coef[...] = jnp.asarray(r * w, jnp.float32)
        self.bias[...] = jnp.asarray(b, jnp.float32)
