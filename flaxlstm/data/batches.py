"""The input pipeline from arrays to batches: check the data on the host, hold out a
validation slice, and cut it into batches of one shape (length-bucketed when asked).

Data enters as numpy arrays and is checked here before anything is compiled: lengths agree,
labels [N] or [N, T] (their values are checked against the loss by
``flaxlstm.training.losses``), token ids in the model's vocabulary (inside jit, an id outside
it would read another row of an ``nnx.Embed``, and a NaN row of a ``flaxlstm.Embedding``).
Batches keep one shape: the last batch of a pass is topped up with repeated examples of weight
0, so every example is seen and counted once and the padding counts for nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import nnx

from flaxlstm.checks import check_token_ids


class Batch(NamedTuple):
    """Examples, each array with leading dimension B (a whole data set is one big Batch).

    inputs: [B, T, F] floats or [B, T] token ids. labels: [B] or [B, T] targets, or None
    (predict). lengths: [B] ints, the real steps of padded sequences, or None. weights: [B],
    1.0 for real examples and 0.0 for the padding of the last batch (``batches`` fills it).
    """

    inputs: Any
    labels: Any = None
    lengths: Any = None
    weights: Any = None


def check_data(model: nnx.Module, data: Batch) -> Batch:
    """``data`` as numpy arrays, or a one-line ValueError naming what is wrong with it."""
    inputs = np.asarray(data.inputs)
    n = len(inputs) if inputs.ndim else 0
    if n == 0:
        raise ValueError("the data set is empty (no examples in x)")
    if inputs.ndim < 2:
        raise ValueError(f"x must be [N, T] token ids or [N, T, F] features, got {inputs.shape}")
    floats = jnp.issubdtype(inputs.dtype, jnp.floating)  # bfloat16 too (numpy: not floating)
    if not floats and not np.issubdtype(inputs.dtype, np.integer):
        raise TypeError(f"x must be integer token ids or float features, got {inputs.dtype}")
    if floats and not np.isfinite(inputs).all():
        bad = inputs.size - np.count_nonzero(np.isfinite(inputs))
        raise ValueError(f"x holds {bad} non-finite values (NaN or infinity)")
    lengths = None if data.lengths is None else _checked_lengths(data.lengths, n, inputs.shape[1])
    labels = None if data.labels is None else _checked_labels(data.labels, inputs)
    if np.issubdtype(inputs.dtype, np.integer):
        for _, module in nnx.iter_modules(model):
            if isinstance(module, nnx.Embed):  # flaxlstm.Embedding too
                check_token_ids(inputs, module.num_embeddings)
    return Batch(inputs, labels, lengths)


def _checked_lengths(lengths, n: int, time: int) -> np.ndarray:
    lengths = np.asarray(lengths)
    if lengths.shape != (n,) or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"lengths must be {n} integers, got {lengths.dtype} {lengths.shape}")
    if lengths.min() < 0 or lengths.max() > time:
        raise ValueError(f"lengths must lie in [0, {time}]")
    return lengths


def _checked_labels(labels, inputs: np.ndarray) -> np.ndarray:
    labels, n = np.asarray(labels), len(inputs)
    if labels.ndim == 0 or len(labels) != n:
        raise ValueError(f"x has {n} examples but y has {len(labels) if labels.ndim else 0}")
    if labels.shape not in ((n,), inputs.shape[:2]):
        raise ValueError(f"y must be [N] or [N, T] = {inputs.shape[:2]} labels, got {labels.shape}")
    if labels.dtype.kind not in "biuf" and not jnp.issubdtype(labels.dtype, jnp.floating):
        raise TypeError(f"y must be numbers (0/1, class ids or values), got {labels.dtype}")
    return labels


def split_point(examples: int, validation_split: float) -> int:
    """How many of ``examples`` ``fit`` trains on; the rest, taken from the end, validate."""
    return int(examples * (1 - validation_split))


def hold_out(data: Batch, validation_split: float) -> tuple[Batch, Batch]:
    """``data`` split into (train, validation): the last ``validation_split`` of the examples
    validate, taken before any shuffling (as Keras)."""
    n_train = split_point(len(data.inputs), validation_split)
    if not 0 < n_train < len(data.inputs):
        raise ValueError(f"validation_split={validation_split} leaves no examples on a side")
    take = lambda s: Batch(*(None if a is None else a[s] for a in data))  # noqa: E731
    return take(slice(None, n_train)), take(slice(n_train, None))


def batches(
    data: Batch,
    batch_size: int,
    order: np.ndarray | None = None,
    *,
    bucket_width: int | None = None,
    rng: np.random.Generator | None = None,
) -> Iterator[Batch]:
    """``data`` in batches of exactly ``batch_size`` examples, taken in ``order`` (all [N] of
    them by default). The last batch is topped up by repeating examples at weight 0.

    With ``bucket_width`` (None or 0: no buckets, as ``--bucket-width 0``) and ``lengths``,
    examples of similar length go together and each batch is cut to W steps, the smallest
    multiple of ``bucket_width`` that holds its longest example (at most T): inputs
    [B, W, ...]. Few widths means few compilations, and the steps cut off are padding that the
    model masks anyway (``lengths`` count real tokens first), so the loss is the same as on the
    full [B, T] batch. ``rng`` shuffles the order of batches.
    """
    order = np.arange(len(data.inputs)) if order is None else order
    time = data.inputs.shape[1]
    widths = None
    if bucket_width and data.lengths is not None:
        widths = np.minimum(-(-np.maximum(data.lengths, 1) // bucket_width) * bucket_width, time)
        order = order[np.argsort(widths[order], kind="stable")]  # buckets keep the shuffle
    padded = np.resize(order, -(-len(order) // batch_size) * batch_size)
    weights = (np.arange(len(padded)) < len(order)).astype(np.float32)
    starts = np.arange(0, len(padded), batch_size)
    if rng is not None and widths is not None:
        starts = rng.permutation(starts)
    for start in starts:
        take = padded[start : start + batch_size]
        cut = slice(None) if widths is None else slice(0, widths[take].max())
        labels = data.labels
        if labels is not None:
            labels = labels[take][:, cut] if labels.ndim == 2 else labels[take]
        yield Batch(
            data.inputs[take][:, cut],
            labels,
            None if data.lengths is None else data.lengths[take],
            weights[start : start + batch_size],
        )
