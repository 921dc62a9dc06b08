"""The synthetic tasks' models: seeds 000 and 001, the adding problem, first-token classes
(their data: flaxlstm.data.synthetic). Every model returns logits (or values);
flaxlstm.train turns them into losses and probabilities."""

from __future__ import annotations

import jax
from flax import nnx

from flaxlstm.layers import (
    LSTM,
    Embedding,
    PerStep,
)


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
