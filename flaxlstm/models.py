"""The seeds' models. Every model returns logits; ``flaxlstm.train`` turns them into losses
and probabilities."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from flaxlstm.data.imdb import padding_mask
from flaxlstm.layers import LSTM, Bidirectional, Embedding, PerStep
from flaxlstm.recurrent import make_mask

# ============================================================================================
# Synthetic tasks (seeds 000 and 001): flaxlstm.data.synthetic
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


# ============================================================================================
# End of the synthetic tasks' models.
# ============================================================================================


# ============================================================================================
# IMDB sentiment (seeds 002 and 003): flaxlstm.data.imdb
# ============================================================================================


def keras_embedding_init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Keras's Embedding initialiser, uniform in [−0.05, 0.05]: the seeds were tuned with it."""
    return jax.random.uniform(key, shape, dtype, -0.05, 0.05)


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
        rngs: nnx.Rngs,
    ):
        glorot = jax.nn.initializers.glorot_uniform()  # Keras's Conv1D and Dense default
        self.embed = Embedding(
            vocab_size, embedding_dim, embedding_init=keras_embedding_init, rngs=rngs
        )
        self.embed_dropout = nnx.Dropout(dropout, rngs=rngs) if dropout else None
        self.conv = (
            nnx.Conv(embedding_dim, conv_filters, 3, padding="SAME", kernel_init=glorot, rngs=rngs)
            if conv_filters
            else None
        )
        self.pool = MaxPool1D(2) if conv_filters else None
        features = conv_filters or embedding_dim
        lstm = LSTM(
            features, hidden, dropout=lstm_dropout, recurrent_dropout=recurrent_dropout, rngs=rngs
        )
        self.lstm = Bidirectional(lstm, rngs=rngs) if bidirectional else lstm
        self.head_dropout = nnx.Dropout(dropout, rngs=rngs) if dropout else None
        self.head = nnx.Linear(
            self.lstm.out_features if bidirectional else hidden, 1, kernel_init=glorot, rngs=rngs
        )

    def __call__(
        self, ids: jax.Array, lengths: jax.Array | None = None, mask: jax.Array | None = None
    ) -> jax.Array:
        return self.activations(ids, lengths, mask)[-1][1][:, 0]

    def activations(
        self, ids: jax.Array, lengths: jax.Array | None = None, mask: jax.Array | None = None
    ) -> list[tuple[str, jax.Array]]:
        """Each layer's name (its attribute) and output, in order; the last is [B, 1]."""
        if lengths is None and mask is None:
            mask = padding_mask(ids)
        outputs = []

        def record(name: str, x: jax.Array) -> jax.Array:
            outputs.append((name, x))
            return x

        x = record("embed", self.embed(ids))
        if self.embed_dropout is not None:
            x = record("embed_dropout", self.embed_dropout(x))
        if self.conv is not None:
            mask, lengths = make_mask(*ids.shape, lengths, mask), None
            # Padded steps are zeroed so that the convolution sees them as its own "same"
            # zero-padding: a real step's output does not depend on where the padding is.
            x = record("conv", nnx.relu(self.conv(jnp.where(mask[..., None], x, 0))))
            x, mask = self.pool(x, mask)
            record("pool", x)
        x = record("lstm", self.lstm(x, lengths, mask))
        if self.head_dropout is not None:
            x = record("head_dropout", self.head_dropout(x))
        record("head", self.head(x))
        return outputs


class Settings(NamedTuple):
    """A seed's data and training settings."""

    vocab_size: int  # ids < vocab_size, 3 of them reserved (flaxlstm.data.imdb)
    maxlen: int
    embedding_dim: int
    batch_size: int
    epochs: int


SEED_003 = Settings(vocab_size=5000, maxlen=500, embedding_dim=32, batch_size=64, epochs=3)
SEED_002 = Settings(vocab_size=2000, maxlen=80, embedding_dim=128, batch_size=32, epochs=15)

# name: (the seed's settings, the layers' arguments)
_IMDB_MODELS = {
    "simple": (SEED_003, dict(hidden=100)),
    "dropout": (SEED_003, dict(hidden=100, dropout=0.2)),
    "lstm-dropout": (SEED_003, dict(hidden=100, lstm_dropout=0.2, recurrent_dropout=0.2)),
    "bilstm": (
        SEED_003,
        dict(hidden=100, lstm_dropout=0.2, recurrent_dropout=0.2, bidirectional=True),
    ),
    "cnn-lstm": (SEED_003, dict(hidden=100, conv_filters=32)),
    "seed002": (SEED_002, dict(hidden=128, lstm_dropout=0.2, recurrent_dropout=0.2)),
}
SETTINGS: dict[str, Settings] = {name: seed for name, (seed, _) in _IMDB_MODELS.items()}
# name → factory: ``MODELS["simple"](rngs=nnx.Rngs(0))``; keywords override the seed's.
MODELS: dict[str, Callable[..., SentimentClassifier]] = {
    name: partial(
        SentimentClassifier,
        vocab_size=seed.vocab_size,
        embedding_dim=seed.embedding_dim,
        **layers,
    )
    for name, (seed, layers) in _IMDB_MODELS.items()
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
    graphdef, state = nnx.split(model)
    names = []

    def layer_outputs(state, ids):
        outputs = nnx.merge(graphdef, state).activations(ids)
        names.extend(layer for layer, _ in outputs)
        return [x for _, x in outputs]

    # Shapes only: nothing is computed, so this is instant even for maxlen 500.
    shapes = jax.eval_shape(layer_outputs, state, jax.ShapeDtypeStruct((1, maxlen), jnp.int32))
    rule, columns = "_" * 66, (29, 26)
    header = " Layer (type)".ljust(columns[0]) + "Output Shape".ljust(columns[1]) + "Param #"
    lines = [f'Model: "{name}"', rule, header, "=" * 66]
    for layer, shape in zip(names, shapes, strict=True):
        module = getattr(model, layer)
        output = "(" + ", ".join(["None", *map(str, shape.shape[1:])]) + ")"
        lines.append(
            f" {layer} ({type(module).__name__})".ljust(columns[0])
            + output.ljust(columns[1])
            + f"{count_params(module):,}"
        )
    lines += ["=" * 66, f"Total params: {count_params(model):,}", rule]
    return "\n".join(lines)
