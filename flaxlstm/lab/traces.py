"""Look inside a model: every LSTM layer's gates and states over time, and what a model
predicts step by step. Numbers only (flaxlstm.lab.plots draws them)::

    trace_model(model, inputs)        {"lstm": Trace} or {"lstm/forward", "lstm/backward"}
    traced_steps(model, inputs)       the same, with each layer's real steps
    lstm_layers(model)                the LSTM layers by the same names
    review_prefixes(model, vocab, t)  P(positive) after each word of a review
    cumsum_crossings(model, x, y)     where the prediction and the label first cross

Traces come from each LSTM layer's own time loop, recording every step
(``flaxlstm.capture_intermediates``).
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from flaxlstm.cell import Trace
from flaxlstm.data.batches import Batch, check_data
from flaxlstm.data.vocabulary import Vocabulary, tokenize
from flaxlstm.layers import LSTM, capture_intermediates
from flaxlstm.models import CumsumModel, SentimentClassifier
from flaxlstm.training.fit import predict
from flaxlstm.training.loop import mode_view


def trace_model(model: nnx.Module, inputs: jax.Array, lengths=None, mask=None) -> dict[str, Trace]:
    """Every LSTM layer's gates, states and pre-activations at every step, in eval mode (no
    dropout).

    Args:
      model: any NNX module whose LSTM layers are ``flaxlstm.LSTM`` (or variants), e.g. an
        ``LSTM``, a ``Bidirectional`` or a model of ``flaxlstm.models``.
      inputs: the model's inputs, [B, T, F] features or [B, T] token ids.
      lengths, mask: padding as the model takes it ([B] or [B, T] booleans).
    Returns:
      ``{layer path: Trace}``, e.g. ``{"lstm": Trace}``, or
      ``{"lstm/forward": Trace, "lstm/backward": Trace}`` for a bidirectional layer (a model
      that is itself an LSTM: ``"lstm"``); each field [B, T', H] (T' = T // 2 after the CNN's
      pooling), zero at padded steps. The backward direction's steps stay aligned with the inputs.
    """
    return {name: trace for name, (trace, _) in traced_steps(model, inputs, lengths, mask).items()}


def traced_steps(
    model: nnx.Module, inputs: jax.Array, lengths=None, mask=None
) -> dict[str, tuple[Trace, jax.Array]]:
    """``trace_model`` with each layer's real steps: ``{layer path: (Trace, real)}``, ``real``
    [B, T'] booleans, True where the layer read a real step (its own mask, after any pooling,
    or the padding the model found by itself)."""
    # Checked on the host: inside jit, token ids out of range would be clamped silently.
    data = check_data(model, Batch(inputs, None, lengths))
    recorded = _recorded(mode_view(model, training=False), data.inputs, data.lengths, mask)
    if not recorded["trace"]:
        raise TypeError(f"no flaxlstm LSTM layer in a {type(model).__name__} to trace")
    traces, real = recorded["trace"], recorded["real"]
    return {name: (traces[name], real[name]) for name in sorted(traces, key=_forward_first)}


def _forward_first(name: str) -> str:
    """Sorting by this puts a bidirectional layer's forward direction before its backward."""
    return name.replace("/forward", "/0").replace("/backward", "/1")


def layer_name(path: tuple) -> str:
    """A layer's name as ``trace_model`` gives it: its path in the model, joined by "/" (a
    model that is itself an LSTM: "lstm")."""
    return "/".join(map(str, path)) or "lstm"


def lstm_layers(model: nnx.Module) -> dict[str, LSTM]:
    """Every flaxlstm LSTM layer and direction of ``model``, by ``trace_model``'s names."""
    found = {layer_name(path): m for path, m in nnx.iter_modules(model) if isinstance(m, LSTM)}
    return {name: found[name] for name in sorted(found, key=_forward_first)}


@nnx.jit  # one compilation per model and shape, instead of one per operation
def _recorded(model: nnx.Module, inputs, lengths, mask) -> dict[str, dict[str, jax.Array]]:
    """Every LSTM layer's recorded ``trace`` and ``real`` steps: {kind: {layer name: value}}."""
    padding = {k: v for k, v in (("lengths", lengths), ("mask", mask)) if v is not None}
    _, recorded = capture_intermediates(model, inputs, **padding)
    found = {"trace": {}, "real": {}}
    for path, value in nnx.to_flat_state(recorded):
        if path[-1] in found:
            found[path[-1]][layer_name(path[:-1])] = value.get_value()
    return found


def first_step(above: np.ndarray) -> np.ndarray:
    """[N, T] booleans → [N]: the first step that is True, or T where none is."""
    return np.where(above.any(axis=1), above.argmax(axis=1), above.shape[1])


def cumsum_crossings(
    model: CumsumModel, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For cumsum sequences x [N, T, 1] and labels y [N, T]: the step where the prediction first
    exceeds 0.5 and the step where the label first turns 1 (the running sum reaches T/4), each
    [N] (T where it never does)."""
    return first_step(predict(model, x) > 0.5), first_step(np.asarray(y) == 1)


def review_prefixes(
    model: SentimentClassifier,
    vocabulary: Vocabulary,
    text: str,
    max_words: int = 60,
) -> tuple[list[str], np.ndarray]:
    """The first ``max_words`` words of a review and P(positive) after each of them [n]: the
    prediction if the review ended there.

    Every prefix is scored as a review of its own (``predict`` with lengths 2, 3, ...
    after the START id), so this holds for any model: bidirectional and CNN ones included.
    """
    words = tokenize(text)[:max_words]
    if not words:
        raise ValueError(f"the review has no words after tokenisation: {text[:40]!r}")
    (ids,) = vocabulary.encode_tokens([words])  # [1 + n]: START, then the words
    n = len(words)
    prefixes = np.broadcast_to(ids, (n, n + 1))  # padding past each length is masked
    return words, predict(model, prefixes, lengths=np.arange(2, n + 2, dtype=np.int32))
