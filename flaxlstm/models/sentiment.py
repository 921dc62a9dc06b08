"""The IMDB sentiment classifiers (seeds 002 and 003 and the later models; their data:
flaxlstm.data.imdb): ``SentimentClassifier`` built from a seed's settings (``MODELS``), its
pooling, and ``summary``, a Keras-like table of a model's layers."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from flaxlstm import config
from flaxlstm.config import IMDB_MODELS, ImdbModelConfig
from flaxlstm.data.vocabulary import padding_mask
from flaxlstm.layers import (
    LSTM,
    Bidirectional,
    Embedding,
    capture_intermediates,
    keras_embedding_init,
    sow_output,
)
from flaxlstm.models.ngrams import BigramBag, Nbsvm, NgramLinear
from flaxlstm.recurrent import make_mask


def max_mean_pool(outputs: jax.Array, mask: jax.Array) -> jax.Array:
    """[max_t h_t, mean_t h_t] [B, 2H] over the real steps (``mask`` [B, T]) of ``outputs``
    [B, T, H] (zero at padded steps; a sequence without real steps pools to zeros)."""
    real = mask[..., None]
    count = real.sum(axis=1)  # [B, 1]
    top = jnp.where(count > 0, jnp.max(jnp.where(real, outputs, -jnp.inf), axis=1), 0)
    return jnp.concatenate([top, outputs.sum(axis=1) / jnp.maximum(count, 1)], axis=-1)


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
