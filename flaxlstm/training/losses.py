"""Losses and the metric that goes with each, by Keras's names or as any callable.

A model outputs ``outputs``: logits or values. A loss compares them with ``targets`` per label,
where a label is one per sequence ([B]) or one per step ([B, T]):

- ``"binary_crossentropy"``: logits [B] or [B, T]; targets 0 or 1 of the same shape; metric
  ``accuracy``.
- ``"sparse_categorical_crossentropy"``: logits [B, C] or [B, T, C]; targets class ids [B] or
  [B, T] in [0, C); metric ``accuracy``.
- ``"mse"``: values [B] or [B, T]; float targets of the same shape; metric ``mae`` (mean
  absolute error).
- a callable ``(outputs, targets) -> losses`` [B] or [B, T]: no metric.

Every loss is computed from logits (stably), weighted per label (padding and topped-up
examples weigh 0) and averaged over the real labels. ``predict`` returns σ(logits), softmax
probabilities, or the values.

``fit`` records the ``Loss`` it trains a model with on the model, as Keras's ``compile`` does
(``FIT_LOSS``), and ``fit``, ``evaluate`` and ``predict`` given no loss take that one, else
``"binary_crossentropy"``, refused in one line for outputs that are not one logit per example
or per step (``default_loss``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

PerLabel = Callable[[jax.Array, jax.Array], jax.Array]


class Loss(NamedTuple):
    """A loss and its metric, each ``(outputs, targets) -> [B] or [B, T]`` per label.

    ``metric`` is None for a user's callable (then only the loss is reported); ``metric_name``
    names it in histories (``accuracy``, ``mae``). ``classes`` says the outputs carry one more
    axis than the targets (C class logits). ``output`` turns outputs into what ``predict``
    returns. ``check_values(targets, output_shape)`` raises a one-line ValueError for target
    values this loss cannot take (None: any finite value).
    """

    name: str
    per_label: PerLabel
    metric: PerLabel | None
    metric_name: str | None
    output: Callable[[jax.Array], jax.Array]
    classes: bool = False
    check_values: Callable[[np.ndarray, tuple[int, ...]], None] | None = None

    def label_shape(self, output_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape the targets must have for outputs of ``output_shape``."""
        return output_shape[:-1] if self.classes else output_shape

    def check_targets(
        self, labels: np.ndarray, lengths: np.ndarray | None, output_shape: tuple[int, ...]
    ) -> None:
        """Raise a one-line ValueError unless ``labels`` ([N] or [N, T], steps past
        ``lengths`` [N] ignored) fit this loss and outputs of ``output_shape``: their shape,
        and their values at real labels (finite; 0/1, class ids in range, ...)."""
        if self.label_shape(output_shape) != labels.shape:
            raise ValueError(
                f"the model gives outputs {output_shape} for labels {labels.shape}"
                f" ({self.name} takes labels {self.label_shape(output_shape)})"
            )
        if labels.ndim == 2 and lengths is not None:
            labels = labels[np.arange(labels.shape[1]) < lengths[:, None]]
        if not labels.size:  # the loss would be 0 / 0
            raise ValueError("y holds no real labels (T = 0, or every step is padding)")
        if jnp.issubdtype(labels.dtype, jnp.floating) and not np.isfinite(labels).all():
            bad = labels.size - np.count_nonzero(np.isfinite(labels))
            raise ValueError(f"y holds {bad} non-finite labels (NaN or infinity)")
        if self.check_values is not None:
            self.check_values(labels, output_shape)


def _check_binary(labels: np.ndarray, output_shape) -> None:
    bad = labels[~np.isin(labels, (0, 1))]
    if bad.size:
        raise ValueError(f"labels must be 0 or 1, got {bad.size} others such as {bad[0]}")


def _check_class_ids(labels: np.ndarray, output_shape) -> None:
    classes = output_shape[-1]
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"sparse_categorical_crossentropy takes integer class ids, got {labels.dtype}"
        )
    if labels.min() < 0 or labels.max() >= classes:
        raise ValueError(
            f"class ids must lie in [0, {classes}) (the model gives {classes} logits),"
            f" got values from {labels.min()} to {labels.max()}"
        )


def _identity(values: jax.Array) -> jax.Array:
    return values


def _binary_correct(logits, labels):
    return (logits > 0) == (labels > 0)


def _sparse_cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels.astype(jnp.int32))


def _sparse_correct(logits, labels):
    return jnp.argmax(logits, axis=-1) == labels


LOSSES: dict[str, Loss] = {
    "binary_crossentropy": Loss(
        "binary_crossentropy",
        optax.sigmoid_binary_cross_entropy,  # −[y·log σ(z) + (1 − y)·log(1 − σ(z))]
        _binary_correct,
        "accuracy",
        jax.nn.sigmoid,
        check_values=_check_binary,
    ),
    "sparse_categorical_crossentropy": Loss(
        "sparse_categorical_crossentropy",
        _sparse_cross_entropy,  # −log softmax(z)_y
        _sparse_correct,
        "accuracy",
        jax.nn.softmax,
        classes=True,
        check_values=_check_class_ids,
    ),
    "mse": Loss(
        "mse",
        lambda values, targets: (values - targets) ** 2,
        lambda values, targets: jnp.abs(values - targets),
        "mae",
        _identity,
    ),
}


# The model's attribute where ``fit`` records its ``Loss``: a static field of the module (no
# array in it), so it travels in the model's graphdef through nnx.split / nnx.merge and
# nnx.jit; a model built anew (e.g. loaded from its parameters) has none.
FIT_LOSS = "fit_loss"


def default_loss(output_shape: tuple[int, ...], time: int) -> Loss:
    """``"binary_crossentropy"``, the loss where none is given and ``fit`` never trained the
    model, for outputs of ``output_shape`` from inputs of ``time`` steps; a one-line ValueError
    unless they are one logit per example [N] or per step [N, T] (class logits [N, C] are not:
    σ of each would be read as a probability of its own)."""
    if tuple(output_shape[1:]) not in ((), (time,)):
        raise ValueError(
            f"the model gives outputs {tuple(output_shape)}, not the logits [N] or [N, T={time}]"
            " of binary_crossentropy, the loss when none is given and fit never trained it:"
            " pass loss= (e.g. 'sparse_categorical_crossentropy' for class logits)"
        )
    return LOSSES["binary_crossentropy"]


def get_loss(loss: str | PerLabel | Loss) -> Loss:
    """The ``Loss`` for a Keras name, a ``Loss``, or a callable ``(outputs, targets) -> per-label
    losses`` (its outputs must have the targets' shape; ``predict`` returns them as they are)."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose from {sorted(LOSSES)} or a callable")
        return LOSSES[loss]
    if callable(loss):
        name = getattr(loss, "__name__", type(loss).__name__)
        return Loss(name, loss, None, None, _identity)
    raise TypeError(f"loss must be a name, a Loss or a callable, got {type(loss).__name__}")
