"""Keras-like ``fit``, ``evaluate`` and ``predict`` for labelled examples, and their jitted
steps; ``fit`` trains in the one training loop (``flaxlstm.training.loop``).

Models output logits or values: [B] for one binary label per sequence, [B, T] for one per
step, or with a last axis of C classes. The loss (``flaxlstm.training.losses``: binary or
sparse categorical cross-entropy from logits, mse, or any callable) sets the metric (accuracy
or mean absolute error) and what ``predict`` returns. Data is checked and batched by
``flaxlstm.data.batches``; the targets are checked against the loss and the model's output
shape (``Loss.check_targets``) before anything is compiled.

The model is split once, ``graphdef, params, non_params = nnx.split(model, nnx.Param, ...)``;
the steps are pure functions of the train state that ``nnx.merge`` the model inside
``jax.jit``. The model's RNG streams (its dropout keys and counts) travel in the state, so a
model built with the same seed and trained with the same ``seed`` gives bit-identical results
on the same machine.

``fit``'s options:

- ``loss``: ``"binary_crossentropy"``, ``"sparse_categorical_crossentropy"``, ``"mse"``, or a
  callable ``(outputs, targets) -> per-label losses``; recorded on the model, as Keras's
  ``compile`` does. None (the default here and in ``evaluate``, ``predict``): the loss ``fit``
  last trained the model with, else binary_crossentropy (``losses.default_loss``).
- ``validation_split``: the fraction of examples, taken from the end before shuffling (as
  Keras), held out to validate on after every epoch; ``validation_data``: ``(x, y)`` or
  ``(x, y, lengths)`` to validate on instead. ``report_data``: ``{name: (x, y[, lengths])}``
  scored after every epoch into the history as ``name_loss``, ``name_accuracy``, for the
  record only (never to choose a model).
- ``shuffle``: draw a new order of the training examples every epoch from ``seed``.
- ``optimizer``: any optax GradientTransformation (Adam(1e-3) by default); ``clip_norm``: clip
  the gradients to this global norm first. Or ``recipe``, a ``flaxlstm.recipes.Recipe``: Adam
  with a constant or cosine-decayed learning rate over all of the run's steps, and clipping
  (``IMDB_RECIPE`` is the IMDB command's).
- ``bucket_width``: batch sequences of similar ``lengths`` together and cut each batch to a
  multiple of this many steps (``flaxlstm.data.batches.batches``): the padding is not
  computed, with the same loss as on fully padded batches. None or 0: no buckets (as the
  command's ``--bucket-width 0``).
- ``restore_best``: when validating, end with the parameters of the epoch of lowest
  ``val_loss`` rather than the last epoch's; ``patience``: stop after this many epochs
  without a lower ``val_loss``.
- ``checkpoint_dir``: save the whole training state there (orbax) after every epoch and every
  ``checkpoint_every`` steps; ``resume`` continues from the newest good one and ends exactly
  as an uninterrupted run. The directory is locked for the run; SIGINT (Ctrl-C) or SIGTERM
  ends the step under way, saves it and raises ``TrainingInterrupted``.
- ``model_dir``: also save the model's parameters there after every epoch (the best so far
  with ``restore_best``): the last complete model, for readers while training goes on.
- ``devices``: the devices to split each batch over (``processes.data_parallel``); all that
  JAX sees by default, in one process or several.
- ``quiet``: print nothing (no progress bar, no epoch lines); ``history_path``: also write
  the history there as JSON, after every epoch.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding

from flaxlstm.checks import check_positive_int
from flaxlstm.data.batches import Batch, batches, check_data, hold_out
from flaxlstm.recipes import Recipe
from flaxlstm.recurrent import make_mask
from flaxlstm.training import loop
from flaxlstm.training.loop import History, TrainState, create_train_state, split_model
from flaxlstm.training.losses import FIT_LOSS, LOSSES, Loss, default_loss, get_loss
from flaxlstm.training.processes import check_split, data_parallel, global_arrays

# ----------------------------------------------------------------------------- loss and steps


def example_weights(batch: Batch) -> jax.Array:
    """The weight of every label: [B] for sequence labels, [B, T] for per-step labels, where
    steps past ``lengths`` weigh 0."""
    if jnp.ndim(batch.labels) == 1:
        return batch.weights
    weights = jnp.broadcast_to(batch.weights[:, None], jnp.shape(batch.labels))
    steps = make_mask(*jnp.shape(batch.labels), lengths=batch.lengths)
    return weights if steps is None else weights * steps


def metric_sums(outputs: jax.Array, batch: Batch, loss: Loss) -> jax.Array:
    """[3]: the weighted sums of the loss and of the metric (0 without one) over ``batch``'s
    labels, and their total weight."""
    if loss.label_shape(outputs.shape) != batch.labels.shape:
        raise ValueError(f"the model gives outputs {outputs.shape} for labels {batch.labels.shape}")
    weights = example_weights(batch)
    # Labels of weight 0 (padding) count for nothing, even where their values are not valid
    # targets (a class id out of range gives a NaN loss there).
    weighted = lambda values: jnp.where(weights > 0, weights * values, 0).sum()  # noqa: E731
    losses = loss.per_label(outputs, batch.labels)
    metric = 0.0 if loss.metric is None else weighted(loss.metric(outputs, batch.labels))
    return jnp.stack([weighted(losses), metric, weights.sum()])


def apply_model(graphdef: nnx.GraphDef, params: nnx.State, non_params: nnx.State, batch: Batch):
    """The model's logits for ``batch`` and its non-parameter state after the call."""
    # New Variables (copy=True) belong to the current trace, so the RNG counts may advance.
    model = nnx.merge(graphdef, params, non_params, copy=True)
    if batch.lengths is None:
        logits = model(batch.inputs)
    else:
        logits = model(batch.inputs, lengths=batch.lengths)
    return logits, nnx.state(model, nnx.Not(nnx.Param))


@functools.partial(jax.jit, static_argnames=("graphdef", "tx", "loss"), donate_argnames="state")
def train_step(
    state: TrainState,
    batch: Batch,
    *,
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    loss: Loss = LOSSES["binary_crossentropy"],
) -> tuple[TrainState, jax.Array]:
    """One optimizer step on the mean loss over ``batch``'s real examples (or steps).

    Returns the new state and the batch's metric sums [3] (loss, metric, weight); the loss sum
    is NaN when the step leaves the parameters non-finite.
    """

    def loss_fn(params):
        outputs, non_params = apply_model(graphdef, params, state.non_params, batch)
        sums = metric_sums(outputs, batch, loss)
        return sums[0] / jnp.maximum(sums[2], 1e-12), (sums, non_params)

    grads, (sums, non_params) = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # A step that leaves parameters NaN or infinite counts as a non-finite loss, so that its
    # state is never checkpointed (fit checks the loss sums).
    finite = jnp.isfinite(optax.tree.norm(params))
    sums = sums.at[0].set(jnp.where(finite, sums[0], jnp.nan))
    return TrainState(state.step + 1, params, non_params, opt_state), sums


@functools.partial(jax.jit, static_argnames=("graphdef", "loss"))
def eval_step(
    params: nnx.State,
    non_params: nnx.State,
    batch: Batch,
    *,
    graphdef: nnx.GraphDef,
    loss: Loss = LOSSES["binary_crossentropy"],
) -> jax.Array:
    """The metric sums [3] (loss, metric, weight) of ``batch``; ``graphdef`` in eval mode."""
    return metric_sums(apply_model(graphdef, params, non_params, batch)[0], batch, loss)


@functools.partial(jax.jit, static_argnames=("graphdef", "loss"))
def output_step(
    params, non_params, batch: Batch, *, graphdef: nnx.GraphDef, loss: Loss
) -> jax.Array:
    """What ``predict`` returns for ``batch`` (σ(logits), softmax, or the values);
    ``graphdef`` in eval mode."""
    return loss.output(apply_model(graphdef, params, non_params, batch)[0])


def output_shape(model: nnx.Module, data: Batch) -> tuple[int, ...]:
    """The shape of ``model``'s outputs for the (checked) ``data``, found without computing."""
    graphdef, params, non_params = split_model(model, training=False)
    one = Batch(data.inputs[:1], None, None if data.lengths is None else data.lengths[:1])
    shape = jax.eval_shape(
        lambda p, r, b: apply_model(graphdef, p, r, b)[0], params, non_params, one
    ).shape
    return (len(data.inputs), *shape[1:])


# Evaluation (no gradients, nothing saved for a backward pass) runs batches this many times
# as large as training's: fewer loop steps for the same reviews; 4 scored the test split
# fastest of the factors 1, 4 and 16 (docs/PERFORMANCE.md has the times).
EVAL_BATCH_FACTOR = 4


def run_eval(
    graphdef,
    params,
    non_params,
    data: Batch,
    batch_size: int,
    bucket_width: int | None = None,
    loss: Loss = LOSSES["binary_crossentropy"],
) -> dict[str, float]:
    """The loss and metric over all of ``data`` (checked), with eval-mode ``graphdef``."""
    sums = [
        eval_step(params, non_params, batch, graphdef=graphdef, loss=loss)
        for batch in batches(data, batch_size, bucket_width=bucket_width)
    ]
    return mean_metrics(np.sum(jax.device_get(sums), axis=0, dtype=np.float64), loss)


# ----------------------------------------------------------------------------- fit


def fit(
    model: nnx.Module,
    x,
    y,
    *,
    lengths=None,
    epochs: int = 1,
    batch_size: int = 32,
    validation_split: float = 0.0,
    validation_data: tuple | None = None,
    report_data: dict[str, tuple] | None = None,
    shuffle: bool = True,
    seed: int = 0,
    loss: str | Callable | Loss | None = None,
    optimizer: optax.GradientTransformation | None = None,
    clip_norm: float | None = None,
    recipe: Recipe | None = None,
    bucket_width: int | None = None,
    restore_best: bool = True,
    patience: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    model_dir: str | os.PathLike | None = None,
    devices=None,
    quiet: bool = False,
    history_path: str | os.PathLike | None = None,
) -> History:
    """Train ``model`` in place on inputs ``x`` ([N, T] ids or [N, T, F]) and labels ``y``
    ([N] or [N, T]: 0/1, class ids or values, as ``loss`` takes them), with optional
    ``lengths`` [N] of padded sequences; the options are the module docstring's. Returns the
    history: ``loss`` and the loss's metric (``accuracy``, ``mae``) per epoch, and
    ``val_loss``, ``val_accuracy`` (...) when validating: means over every label (every real
    step for per-step labels) of the epoch, measured during training as Keras does."""
    batch_sharding, replicated = data_parallel(devices)
    _check_fit_options(
        epochs, patience, checkpoint_every, validation_split, validation_data, clip_norm,
        resume, checkpoint_dir, optimizer, recipe, batch_size, bucket_width, lengths,
        batch_sharding.mesh.size,
    )  # fmt: skip
    train, evaluations, loss = prepare_data(
        model, Batch(x, y, lengths), validation_split, validation_data, report_data, loss
    )
    setattr(model, FIT_LOSS, loss)  # before the split: in every graphdef of the model
    steps = epochs * -(-len(train.inputs) // batch_size)
    tx = transformation(optimizer, clip_norm, recipe, steps)
    graphdef, state = create_train_state(model, tx)
    objective = Supervised(
        train=train, evaluations=evaluations, graphdef=graphdef,
        eval_graphdef=split_model(model, training=False)[0], tx=tx, loss=loss,
        sharding=batch_sharding, batch_size=batch_size, epochs=epochs, seed=seed,
        shuffle=shuffle, bucket_width=bucket_width or None,  # 0: no buckets, as None
    )  # fmt: skip
    plan = loop.Plan(
        epochs=epochs, steps=steps, patience=patience,
        keep_best="val" in evaluations and restore_best, checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every, resume=resume, model_dir=model_dir,
        history_path=history_path, quiet=quiet, replicated=replicated,
    )  # fmt: skip
    return loop.train(model, objective, plan, state)


@dataclasses.dataclass(frozen=True, eq=False)
class Supervised:
    """``fit``'s objective for the loop (``loop.Objective``): labelled examples in batches,
    a new order every epoch, scored after every epoch on the held-out and reported data."""

    train: Batch
    evaluations: dict[str, Batch]  # "val" and any reported data
    graphdef: nnx.GraphDef  # the model in training mode
    eval_graphdef: nnx.GraphDef  # and in eval mode
    tx: optax.GradientTransformation
    loss: Loss
    sharding: NamedSharding  # each batch split over the devices
    batch_size: int
    epochs: int
    seed: int
    shuffle: bool
    bucket_width: int | None

    @property
    def settings(self) -> dict:
        names = ("batch_size", "seed", "shuffle", "bucket_width", "epochs")
        settings = {name: getattr(self, name) for name in names}
        return {"examples": len(self.train.inputs)} | settings | {"loss": self.loss.name}

    def batches(self, epoch: int, first: int):
        # One generator per epoch, so that a resumed epoch draws the same order.
        shuffler = np.random.default_rng([self.seed, epoch])
        n = len(self.train.inputs)
        order = shuffler.permutation(n) if self.shuffle else np.arange(n)
        drawn = batches(
            self.train, self.batch_size, order, bucket_width=self.bucket_width, rng=shuffler
        )
        return -(-n // self.batch_size), itertools.islice(drawn, first, None)

    def step(self, state: TrainState, carry: None, batch: Batch):
        batch = global_arrays(batch, self.sharding)
        state, sums = train_step(state, batch, graphdef=self.graphdef, tx=self.tx, loss=self.loss)
        return state, carry, sums

    def scores(self, state: TrainState) -> dict[str, float]:
        scores = {}
        for name, data in self.evaluations.items():
            metrics = run_eval(
                self.eval_graphdef,
                state.params,
                state.non_params,
                data,
                EVAL_BATCH_FACTOR * self.batch_size,
                self.bucket_width,
                self.loss,
            )
            scores |= {f"{name}_{key}": value for key, value in metrics.items()}
        return scores

    def entry(self, sums: np.ndarray, seconds: float, step: int, seen: float) -> dict:
        return mean_metrics(sums, self.loss)


def mean_metrics(sums: np.ndarray, loss: Loss) -> dict[str, float]:
    """The mean loss and metric (``accuracy``, ``mae``; none for a callable loss) from
    summed metric sums [3]."""
    metrics = {"loss": sums[0] / sums[2]}
    if loss.metric_name is not None:
        metrics[loss.metric_name] = sums[1] / sums[2]
    return metrics


def _check_fit_options(
    epochs, patience, checkpoint_every, validation_split, validation_data, clip_norm, resume,
    checkpoint_dir, optimizer, recipe, batch_size, bucket_width, lengths, devices,
) -> None:  # fmt: skip
    check_batching(batch_size, bucket_width, lengths)
    check_positive_int("epochs", epochs)
    check_positive_int("patience", patience, optional=True)
    check_positive_int("checkpoint_every", checkpoint_every, optional=True)
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split must lie in [0, 1), got {validation_split}")
    if validation_split and validation_data is not None:
        raise ValueError("give validation_split or validation_data, not both")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be positive, got {clip_norm}")
    if recipe is not None and (optimizer is not None or clip_norm is not None):
        raise ValueError("give a recipe, or an optimizer and clip_norm, not both")
    if (resume or checkpoint_every) and checkpoint_dir is None:
        raise ValueError("resume and checkpoint_every need a checkpoint_dir")
    check_split(batch_size, devices)


def check_batching(batch_size: int, bucket_width: int | None, lengths) -> None:
    """Raise a one-line ValueError for a bad ``batch_size`` or ``bucket_width`` (a positive
    integer, or None or 0: no buckets, as the command's ``--bucket-width 0``)."""
    check_positive_int("batch_size", batch_size)
    is_int = isinstance(bucket_width, int) and not isinstance(bucket_width, bool)
    if bucket_width is not None and not (is_int and bucket_width >= 0):
        raise ValueError(
            f"bucket_width must be an integer >= 0 (0: no buckets), got {bucket_width!r}"
        )
    if bucket_width and lengths is None:
        raise ValueError("bucket_width needs lengths (the real tokens of each padded sequence)")


def prepare_data(
    model, data: Batch, validation_split: float, validation_data, report_data, loss
) -> tuple[Batch, dict[str, Batch], Loss]:
    """The checked training data, the data sets scored after every epoch (``val``, held out
    or given, and the ``report_data``) and the loss (``checked``)."""
    train, loss = checked(model, data, loss)
    evaluations = {}
    if validation_data is not None:
        evaluations["val"] = checked(model, Batch(*validation_data), loss)[0]
    elif validation_split:
        train, evaluations["val"] = hold_out(train, validation_split)
    for name, extra in (report_data or {}).items():
        evaluations[name] = checked(model, Batch(*extra), loss)[0]
    return train, evaluations, loss


def checked(model: nnx.Module, data: Batch, loss) -> tuple[Batch, Loss]:
    """``data`` checked as inputs (``check_data``) and, with labels, as targets of the loss
    for the model's outputs (``Loss.check_targets``); and the loss: ``loss``, or where it is
    None the one ``fit`` trained the model with, else the default (``losses.default_loss``)."""
    data = check_data(model, data)
    loss = getattr(model, FIT_LOSS, None) if loss is None else get_loss(loss)
    shape = None
    if loss is None or data.labels is not None:  # the outputs' shape, without computing
        shape = output_shape(model, data)
    if loss is None:
        loss = default_loss(shape, data.inputs.shape[1])
    if data.labels is not None:
        loss.check_targets(data.labels, data.lengths, shape)
    return data, loss


def transformation(optimizer, clip_norm, recipe: Recipe | None, steps: int):
    """The optax transformation of ``fit``'s options for a run of ``steps`` steps."""
    if optimizer is None:
        return (recipe or Recipe(clip_norm=clip_norm or 0.0)).optimizer(steps)
    if clip_norm is None:
        return optimizer
    return optax.chain(optax.clip_by_global_norm(clip_norm), optimizer)


def evaluate(
    model: nnx.Module,
    x,
    y,
    *,
    lengths=None,
    batch_size: int = 32,
    bucket_width: int | None = None,
    loss: str | Callable | Loss | None = None,
) -> dict[str, float]:
    """The loss and its metric (``{"loss", "accuracy"}`` for binary_crossentropy) of ``model``
    in eval mode (no dropout) over all of (x, y): the mean over examples, or over real steps for
    per-step labels [N, T]. ``bucket_width`` and ``loss`` as in ``fit``."""
    check_batching(batch_size, bucket_width, lengths)
    data, loss = checked(model, Batch(x, y, lengths), loss)
    graphdef, params, non_params = split_model(model, training=False)
    return run_eval(graphdef, params, non_params, data, batch_size, bucket_width, loss)


def predict(
    model: nnx.Module,
    x,
    *,
    lengths=None,
    batch_size: int = 32,
    loss: str | Callable | Loss | None = None,
) -> np.ndarray:
    """What ``model`` in eval mode predicts for ``loss`` (as in ``fit``): probabilities
    σ(logits) [N] or [N, T] (0.5 at padded steps of a model that outputs zero logits there, as
    ``PerStep`` does), softmax probabilities [N(, T), C], or the values."""
    check_batching(batch_size, None, lengths)
    data, loss = checked(model, Batch(x, None, lengths), loss)
    graphdef, params, non_params = split_model(model, training=False)
    out = [
        output_step(params, non_params, b, graphdef=graphdef, loss=loss)
        for b in batches(data, batch_size)
    ]
    return np.concatenate(jax.device_get(out))[: len(data.inputs)]
