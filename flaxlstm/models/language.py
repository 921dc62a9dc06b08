"""Language models (``flaxlstm.training.lm`` trains them) and the classifier fine-tuned from one
(``LmClassifier``: ``flaxlstm train imdb --init-from LM_RUN``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from flaxlstm import recipes
from flaxlstm.data.vocabulary import padding_mask
from flaxlstm.layers import (
    Embedding,
)
from flaxlstm.models.ngrams import Nbsvm
from flaxlstm.models.sentiment import max_mean_pool
from flaxlstm.recurrent import make_mask
from flaxlstm.stacked import StackedLSTM


def language_model_layers(
    vocab_size: int, embedding: int, hidden: int, num_layers: int, dropout: float, rngs
) -> tuple[Embedding, StackedLSTM, nnx.Dropout]:
    """What a ``LanguageModel`` and an ``LmClassifier`` share, of the same shapes so that one's
    parameters load into the other: Embedding(V → E), StackedLSTM(E → H, L layers, every step
    and the final state) and the dropout around it."""
    embed = Embedding(vocab_size, embedding, rngs=rngs)  # (first: the order draws the values)
    lstm = StackedLSTM(
        embedding,
        hidden,
        num_layers=num_layers,
        dropout=dropout,
        return_sequences=True,
        return_state=True,
        rngs=rngs,
    )
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
    pretrained = recipes.LM_PRETRAINED_LAYERS

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
