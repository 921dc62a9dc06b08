"""Training: a train state, jitted train and eval steps, and Keras-like ``fit``, ``evaluate``
and ``predict``.

Models output logits or values: [B] for one binary label per sequence, [B, T] for one per
step, or with a last axis of C classes. The loss (``flaxlstm.losses``: binary or sparse
categorical cross-entropy from logits, mse, or any callable) sets the metric (accuracy or mean
absolute error) and what ``predict`` returns. Data is checked and batched by
``flaxlstm.data.batches``; the targets are checked against the loss and the model's output
shape (``check_targets``) before anything is compiled.

The model is split once, ``graphdef, params, non_params = nnx.split(model, nnx.Param, ...)``;
the steps are pure functions of the train state that ``nnx.merge`` the model inside
``jax.jit``. The model's RNG streams (its dropout keys and counts) travel in the state, so a
model built with the same seed and trained with the same ``seed`` gives bit-identical results
on the same machine.

``fit`` reads top to bottom as its stages: check the options, prepare the data (hold out a
validation slice), restore a run or refuse another's checkpoints, then per epoch train
(``train_epoch``), evaluate and checkpoint. Where a run stands is a ``Progress`` record, which
is also each checkpoint's metadata.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from flaxlstm.checkpoint import Checkpointer
from flaxlstm.checks import check_positive_int
from flaxlstm.config import Recipe
from flaxlstm.data.batches import Batch, batches, check_batching, check_data, hold_out
from flaxlstm.data.batches import split_point as split_point
from flaxlstm.files import DirectoryLock, save_json
from flaxlstm.interrupts import TrainingInterrupted, deferred_signals
from flaxlstm.losses import LOSSES, Loss, get_loss
from flaxlstm.recurrent import make_mask

History = dict[str, list[float]]


class TrainState(NamedTuple):
    """Everything that changes during training: a pytree that the train step donates.

    step: int32 scalar. params: the model's ``nnx.Param`` variables. non_params: the rest of
    the model's variables, its RNG streams (dropout keys and counts). opt_state: the
    optimizer's state.
    """

    step: jax.Array
    params: nnx.State
    non_params: nnx.State
    opt_state: optax.OptState


def default_optimizer() -> optax.GradientTransformation:
    """Adam with learning rate 1e-3, as Keras (one object, so compiled steps are reused)."""
    return Recipe().optimizer(0)


# ----------------------------------------------------------------------------- loss and steps


def example_weights(batch: Batch) -> jax.Array:
    """The weight of every label: [B] for sequence labels, [B, T] for per-step labels, where
    steps past ``lengths`` weigh 0."""
    if jnp.ndim(batch.labels) == 1:
        return batch.weights
    weights = jnp.broadcast_to(batch.weights[:, None], jnp.shape(batch.labels))
    steps = make_mask(*jnp.shape(batch.labels), lengths=batch.lengths)
    return weights if steps is None else weights * steps


def binary_cross_entropy(
    logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None
) -> jax.Array:
    """The weighted mean of −[y·log σ(z) + (1 − y)·log(1 − σ(z))], computed stably from the
    logits z. ``logits``, ``labels`` and ``weights`` share one shape ([B] or [B, T]); labels
    with weight 0 (padding) count for nothing."""
    losses = optax.sigmoid_binary_cross_entropy(logits, labels)
    if weights is None:
        return losses.mean()
    return (weights * losses).sum() / jnp.maximum(weights.sum(), 1e-12)


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


def check_targets(model: nnx.Module, data: Batch, loss: Loss) -> None:
    """Raise a one-line ValueError unless ``data``'s labels fit ``loss`` and the model's
    outputs: their shape, and their values at real labels (class ids in range, 0/1, ...)."""
    shape = output_shape(model, data)
    if loss.label_shape(shape) != data.labels.shape:
        raise ValueError(
            f"the model gives outputs {shape} for labels {data.labels.shape}"
            f" ({loss.name} takes labels {loss.label_shape(shape)})"
        )
    real = data.labels
    if real.ndim == 2 and data.lengths is not None:
        real = real[np.arange(real.shape[1]) < data.lengths[:, None]]
    loss.check_targets(real, shape)


# ----------------------------------------------------------------------------- model and state


def mode_view(model: nnx.Module, *, training: bool) -> nnx.Module:
    """``model`` in training mode or in eval mode (no dropout), as a view that shares its
    parameters; the model's own mode is left as it is."""
    return nnx.with_attributes(
        model,
        deterministic=not training,
        use_running_average=not training,
        raise_if_not_found=False,
    )


def split_model(model: nnx.Module, *, training: bool):
    """(graphdef, params, non_params) of ``model`` viewed in training or eval mode."""
    return nnx.split(mode_view(model, training=training), nnx.Param, ...)


def create_train_state(
    model: nnx.Module, tx: optax.GradientTransformation
) -> tuple[nnx.GraphDef, TrainState]:
    """The graphdef of ``model`` in training mode and a fresh TrainState for ``train_step``.

    The state holds copies of the model's arrays (the step donates them); write the trained
    ones back with ``nnx.update(model, state.params, state.non_params)``.
    """
    graphdef, params, non_params = split_model(model, training=True)
    params, non_params = jax.tree.map(jnp.copy, (params, non_params))
    return graphdef, TrainState(jnp.zeros((), jnp.int32), params, non_params, tx.init(params))


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
    return epoch_metrics(jax.device_get(sums), loss)


def data_parallel(devices=None) -> tuple[NamedSharding, NamedSharding]:
    """Shardings over a one-axis mesh ``data`` of ``devices`` (all that JAX sees by default):
    batches split along their first axis, parameters and optimizer state replicated. The same
    code runs on one device or many, in one process or several: after
    ``jax.distributed.initialize()`` every process's devices join the mesh, every process
    holds the whole data and runs the same steps, and ``global_arrays`` places its part."""
    mesh = Mesh(np.array(devices if devices is not None else jax.devices()), ("data",))
    return NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())


def global_arrays(tree, sharding: NamedSharding):
    """``tree`` (a batch or a train state, the same on every process) as arrays laid out by
    ``sharding``. In one process ``jax.device_put``; in several, each process places the
    parts of ``tree`` that its own devices hold (``jax.make_array_from_process_local_data``)."""
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)

    def place(leaf):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            key_data = place(jax.random.key_data(leaf))
            return jax.random.wrap_key_data(key_data, impl=jax.random.key_impl(leaf))
        leaf = np.asarray(leaf)
        return jax.make_array_from_process_local_data(sharding, leaf, leaf.shape)

    return jax.tree.map(place, tree)


def primary() -> bool:
    """Whether this process writes the run's files (checkpoints, model, history): process 0,
    the only one when there is one."""
    return jax.process_index() == 0


def sync_processes(name: str) -> None:
    """Wait until every process of a ``jax.distributed`` job gets here (none in one)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def agreed(received: Callable[[], int | None]) -> Callable[[], int | None]:
    """``received`` (the SIGINT or SIGTERM that came to this process, if any) agreed on by
    every process of a ``jax.distributed`` job: the largest that came to any, asked of all at
    each call, so that every process stops at the same step (one that stopped alone would
    leave the others waiting in the next step's collectives)."""
    if jax.process_count() == 1:
        return received
    return lambda: int(np.max(multihost_utils.process_allgather(np.int32(received() or 0)))) or None


# ----------------------------------------------------------------------------- fit and friends


class NonFiniteLossError(ValueError):
    """The loss became NaN or infinite; the message names the step and the batch."""


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where a run stands: what a checkpoint holds besides the arrays (its metadata), so that
    a resumed run goes on exactly.

    epoch: the epoch under way (from 1); batch: its batches already trained; sums: their
    metric sums [3] each; history: the finished epochs' metrics; best: the lowest val_loss so
    far; waited: epochs since it; stopped: early stopping has ended the run; settings:
    [examples, batch_size, seed, shuffle, bucket_width, epochs, loss name], which a resumed
    run must share.
    """

    SETTINGS: ClassVar[str] = "examples, batch_size, seed, shuffle, bucket_width, epochs, loss"

    settings: list
    epoch: int = 1
    batch: int = 0
    sums: list = dataclasses.field(default_factory=list)
    history: History = dataclasses.field(default_factory=dict)
    best: float | None = None
    waited: int = 0
    stopped: bool = False

    def to_meta(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Progress:
        return cls(**{f.name: meta[f.name] for f in dataclasses.fields(cls)})


class Run(NamedTuple):
    """What stays fixed while ``fit`` trains: the data, the compiled steps' static
    arguments, and the plan."""

    train: Batch
    evaluations: dict[str, Batch]  # scored after every epoch: "val" and any reported data
    graphdef: nnx.GraphDef  # the model in training mode
    eval_graphdef: nnx.GraphDef  # and in eval mode
    tx: optax.GradientTransformation
    loss: Loss
    batch_sharding: NamedSharding
    batch_size: int
    epochs: int
    seed: int
    shuffle: bool
    bucket_width: int | None
    patience: int | None
    keep_best: bool  # the model is the epoch of lowest val_loss, not the last
    checkpoints: Checkpointer | None
    checkpoint_every: int | None
    model_checkpoints: Checkpointer | None  # the model as it stands after every epoch
    received: Callable[[], int | None]  # the SIGINT or SIGTERM that came, if any
    quiet: bool

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.train.inputs) // self.batch_size)

    def save(self, step: int, state: TrainState, best_params, progress: Progress) -> None:
        """Checkpoint the train state, the best parameters and ``progress`` as ``step``; at
        an epoch's end (``progress.batch`` 0) also the model as it stands. Only process 0
        writes: every process holds the same replicated state."""
        if not primary():
            return
        if self.checkpoints is not None:
            trees = {"train": state, "best": best_params}
            self.checkpoints.save(step, trees, progress.to_meta())
        if self.model_checkpoints is not None and progress.batch == 0:
            params = best_params if self.keep_best else state.params
            self.model_checkpoints.save(step, jax.device_get(params), {"epoch": progress.epoch - 1})

    def interrupt(self, signum: int, step: int, progress: Progress) -> TrainingInterrupted:
        """The exception that ends training on ``signum`` after ``step`` (checkpointed)."""
        where = f"epoch {progress.epoch}, batch {progress.batch} of {self.steps_per_epoch}"
        return interruption(signum, f"{where} (step {step})", self.checkpoints)


def interruption(signum: int, where: str, checkpoints: Checkpointer | None) -> TrainingInterrupted:
    """The exception that ends a run on ``signum`` at ``where``, saying what was saved."""
    if checkpoints is None:
        saved = "nothing saved (no checkpoint directory)"
    else:
        saved = f"checkpoint saved in {checkpoints.directory}; continue with --resume"
    name = signal.Signals(signum).name
    return TrainingInterrupted(signum, f"interrupted by {name} at {where}; {saved}")


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
    loss: str | Callable | Loss = "binary_crossentropy",
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
    ``lengths`` [N] of padded sequences.

    Args:
      loss: ``"binary_crossentropy"``, ``"sparse_categorical_crossentropy"``, ``"mse"``, or a
        callable ``(outputs, targets) -> per-label losses`` (``flaxlstm.losses``).
      validation_split: the fraction of examples, taken from the end before shuffling (as
        Keras), held out to validate on after every epoch.
      validation_data: ``(x, y)`` or ``(x, y, lengths)`` to validate on instead.
      report_data: ``{name: (x, y[, lengths])}`` scored after every epoch into the history as
        ``name_loss`` and ``name_accuracy``, for the record only (never to choose a model).
      shuffle: draw a new order of the training examples every epoch from ``seed``.
      optimizer: any optax GradientTransformation; Adam(1e-3) when None.
      clip_norm: clip the gradients to this global norm first, when given.
      recipe: a ``flaxlstm.config.Recipe`` instead of ``optimizer`` and ``clip_norm``: Adam
        with a constant or cosine-decayed learning rate (over all of this run's steps) and
        clipping; ``flaxlstm.config.IMDB_RECIPE`` is the one the IMDB command trains with.
      bucket_width: batch sequences of similar ``lengths`` together and cut each batch to a
        multiple of this many steps (``flaxlstm.data.batches.batches``): the padding is not
        computed, with the same loss as on fully padded batches.
      restore_best: when validating, end with the parameters of the epoch of lowest
        ``val_loss`` rather than the last epoch's.
      patience: when validating, stop after this many epochs without a lower ``val_loss``.
      checkpoint_dir: save the whole training state there (orbax) after every epoch, and
        every ``checkpoint_every`` steps; ``resume`` continues from the newest good one.
        A resumed run ends exactly as an uninterrupted one with the same seed. The directory
        is locked for the run (one run per directory), and SIGINT (Ctrl-C) or SIGTERM ends
        the step under way, saves it and raises ``TrainingInterrupted``.
      model_dir: also save the model's parameters there after every epoch (the best so far
        with ``restore_best``): the last complete model, for readers while training goes on.
      devices: the devices to split each batch over (``data_parallel``); all by default.
      quiet: print nothing (no progress bar, no epoch lines).
      history_path: also write the history there as JSON.
    Returns:
      the history: ``loss`` and the loss's metric (``accuracy``, ``mae``) per epoch, and
      ``val_loss`` and ``val_accuracy`` (...) when validating. They are means over every label
      (every real step for per-step labels) of the epoch, measured during training as Keras
      does.
    """
    batch_sharding, replicated = data_parallel(devices)
    _check_fit_options(
        epochs, patience, checkpoint_every, validation_split, validation_data, clip_norm,
        resume, checkpoint_dir, optimizer, recipe, batch_size, batch_sharding.mesh.size,
    )  # fmt: skip
    check_batching(batch_size, bucket_width, lengths)
    loss = get_loss(loss)
    train, evaluations = prepare_data(
        model, Batch(x, y, lengths), validation_split, validation_data, report_data, loss
    )
    tx = transformation(optimizer, clip_norm, recipe, epochs * -(-len(train.inputs) // batch_size))
    graphdef, state = create_train_state(model, tx)
    progress = Progress(
        [len(train.inputs), batch_size, seed, shuffle, bucket_width, epochs, loss.name]
    )
    best_params = jax.tree.map(jnp.copy, state.params)  # its own buffers: steps donate state's
    keep_best = "val" in evaluations and restore_best
    with contextlib.ExitStack() as guard:
        checkpoints = guard.enter_context(locked_checkpoints(checkpoint_dir))
        run = Run(
            train, evaluations, graphdef, split_model(model, training=False)[0], tx, loss,
            batch_sharding, batch_size, epochs, seed, shuffle, bucket_width, patience,
            keep_best, checkpoints, checkpoint_every,
            None if model_dir is None else Checkpointer(model_dir),
            agreed(guard.enter_context(deferred_signals())), quiet or not primary(),
        )  # fmt: skip
        trees = {"train": state, "best": best_params}
        trees, progress = restore_or_refuse(checkpoints, trees, progress, resume)
        state, best_params = trees["train"], trees["best"]
        state, best_params, progress = train_epochs(
            run, global_arrays(state, replicated), best_params, progress
        )
    final = jax.device_get((best_params if keep_best else state.params, state.non_params))
    nnx.update(model, *jax.tree.map(jnp.asarray, final))
    if history_path is not None and primary():
        save_json(history_path, progress.history)
    sync_processes("flaxlstm.fit: files written")  # every process returns after process 0 wrote
    return progress.history


def train_epochs(run: Run, state: TrainState, best_params, progress: Progress):
    """Train, evaluate and checkpoint epoch after epoch until the last (or early stopping);
    returns the final state, the best parameters and the progress."""
    if (progress.epoch > run.epochs or progress.stopped) and not run.quiet:
        print(f"The run is complete ({progress.epoch - 1} epochs): nothing left to train")
    while progress.epoch <= run.epochs and not progress.stopped:
        if signum := run.received():  # came while the last epoch was evaluated or saved
            raise run.interrupt(signum, int(state.step), progress)
        start = time.perf_counter()
        state, sums = train_epoch(run, state, best_params, progress)
        metrics = epoch_metrics(sums, run.loss)
        for name, data in run.evaluations.items():
            scores = run_eval(
                run.eval_graphdef, state.params, state.non_params, data,
                EVAL_BATCH_FACTOR * run.batch_size, run.bucket_width, run.loss,
            )  # fmt: skip
            metrics |= {f"{name}_{key}": value for key, value in scores.items()}
        progress, improved = end_of_epoch(progress, metrics, run.patience)
        if improved:
            best_params = jax.tree.map(jnp.copy, state.params)
        run.save(int(state.step), state, best_params, progress)
        if not run.quiet:
            line = " - ".join(f"{name} {value:.4f}" for name, value in metrics.items())
            seconds = time.perf_counter() - start
            print(f"Epoch {progress.epoch - 1}/{run.epochs} - {line} - {seconds:.1f}s")
            if progress.stopped:
                print(f"Early stopping: val_loss has not improved for {run.patience} epochs")
    return state, best_params, progress


def _check_fit_options(
    epochs, patience, checkpoint_every, validation_split, validation_data, clip_norm, resume,
    checkpoint_dir, optimizer, recipe, batch_size, devices,
) -> None:  # fmt: skip
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
    if isinstance(batch_size, int) and batch_size % devices:
        raise ValueError(
            f"batch_size {batch_size} must be a multiple of the {devices} devices it is split over"
        )


def prepare_data(
    model, data: Batch, validation_split: float, validation_data, report_data, loss: Loss
) -> tuple[Batch, dict[str, Batch]]:
    """The checked training data and the data sets scored after every epoch: ``val`` (held
    out or given) and the ``report_data``."""
    train = checked(model, data, loss)
    evaluations = {}
    if validation_data is not None:
        evaluations["val"] = checked(model, Batch(*validation_data), loss)
    elif validation_split:
        train, evaluations["val"] = hold_out(train, validation_split)
    for name, extra in (report_data or {}).items():
        evaluations[name] = checked(model, Batch(*extra), loss)
    return train, evaluations


def checked(model: nnx.Module, data: Batch, loss: Loss) -> Batch:
    """``data`` checked as inputs (``check_data``) and as targets of ``loss``."""
    data = check_data(model, data)
    if data.labels is not None:
        check_targets(model, data, loss)
    return data


def transformation(optimizer, clip_norm, recipe: Recipe | None, steps: int):
    """The optax transformation of ``fit``'s options for a run of ``steps`` steps."""
    if optimizer is None:
        return (recipe or Recipe(clip_norm=clip_norm or 0.0)).optimizer(steps)
    if clip_norm is None:
        return optimizer
    return optax.chain(optax.clip_by_global_norm(clip_norm), optimizer)


def restore_or_refuse(checkpoints: Checkpointer | None, trees: dict, progress, resume: bool):
    """With ``resume``, the newest good checkpoint's (trees, progress) — ``trees`` and
    ``progress`` (a ``Progress`` or ``lm.LmProgress``) as they are if there is none; without,
    refuse a directory that holds another run's checkpoints. A checkpoint of a run with other
    ``progress.settings`` is refused."""
    if not resume:
        if checkpoints is not None and checkpoints.steps():  # never overwrite another run's
            raise ValueError(
                f"{checkpoints.directory} already holds checkpoints of a run: resume it"
                " (resume=True, --resume) or give another directory"
            )
        return trees, progress

    def same_settings(meta: dict) -> None:  # checked before the arrays, whose shapes may differ
        if meta["settings"] != progress.settings:
            raise ValueError(
                f"the checkpoints in {checkpoints.directory} are of a run with other data or"
                f" settings ({progress.SETTINGS}: {meta['settings']}, now {progress.settings});"
                " resume it with its own"
            )

    restored = checkpoints.restore_latest(trees, same_settings)
    if restored is None:
        return trees, progress
    trees, meta = restored
    return trees, type(progress).from_meta(meta)


def train_epoch(run: Run, state: TrainState, best_params, progress: Progress):
    """Train the rest of epoch ``progress.epoch`` (from batch ``progress.batch``); returns
    the state and every batch's metric sums [3] of the epoch."""
    epoch, first = progress.epoch, progress.batch
    # One generator per epoch, so a resumed epoch draws the same order.
    shuffler = np.random.default_rng([run.seed, epoch])
    n = len(run.train.inputs)
    order = shuffler.permutation(n) if run.shuffle else np.arange(n)
    sums = [np.asarray(s, np.float32) for s in progress.sums]
    step = int(state.step)  # counted on the host: reading state.step would wait for it
    bar = tqdm(
        batches(run.train, run.batch_size, order, bucket_width=run.bucket_width, rng=shuffler),
        total=run.steps_per_epoch,
        initial=first,
        desc=f"Epoch {epoch}/{run.epochs}",
        leave=False,
        disable=run.quiet,
        unit="batch",
    )
    for i, batch in enumerate(bar):
        if i < first:
            continue
        batch = global_arrays(batch, run.batch_sharding)
        state, batch_sums = train_step(
            state, batch, graphdef=run.graphdef, tx=run.tx, loss=run.loss
        )
        step += 1
        sums.append(batch_sums)
        last = i == run.steps_per_epoch - 1
        checkpoint_now = bool(run.checkpoint_every) and step % run.checkpoint_every == 0
        signum = run.received()
        if i % 20 == 19 or last or checkpoint_now or signum:
            sums = [np.asarray(s) for s in jax.device_get(sums)]
            check_finite(sums, epoch, step, kept=run.checkpoints is not None)
            running = np.sum(sums, axis=0, dtype=np.float64)
            bar.set_postfix(loss=f"{running[0] / running[2]:.4f}")
        if (checkpoint_now and not last) or signum:
            done = dataclasses.replace(progress, batch=i + 1, sums=[s.tolist() for s in sums])
            run.save(step, state, best_params, done)
            if signum:
                bar.close()
                raise run.interrupt(signum, step, done)
    return state, sums


def epoch_metrics(sums: list[np.ndarray], loss: Loss) -> dict[str, float]:
    """The mean loss and metric (``accuracy``, ``mae``; none for a callable loss) from
    batches' metric sums [3]."""
    total = np.sum(sums, axis=0, dtype=np.float64)
    metrics = {"loss": total[0] / total[2]}
    if loss.metric_name is not None:
        metrics[loss.metric_name] = total[1] / total[2]
    return metrics


def end_of_epoch(
    progress: Progress, metrics: dict[str, float], patience: int | None
) -> tuple[Progress, bool]:
    """The progress after an epoch with these ``metrics``, and whether its ``val_loss`` is
    the lowest yet (then its parameters are the best)."""
    history = dict(progress.history)
    for name, value in metrics.items():
        history[name] = [*history.get(name, []), float(value)]
    best, waited, stopped, improved = progress.best, progress.waited, False, False
    if "val_loss" in metrics:
        improved = best is None or metrics["val_loss"] < best
        best, waited = (float(metrics["val_loss"]), 0) if improved else (best, waited + 1)
        stopped = patience is not None and waited >= patience
    after = dataclasses.replace(
        progress, epoch=progress.epoch + 1, batch=0, sums=[], history=history, best=best,
        waited=waited, stopped=stopped,
    )  # fmt: skip
    return after, improved


@contextlib.contextmanager
def locked_checkpoints(directory: str | os.PathLike | None) -> Iterator[Checkpointer | None]:
    """A Checkpointer for ``directory`` (None without one), the directory locked for as long
    as it is used (``files.DirectoryLock``); what interrupted saves left there is removed.
    With several processes, process 0 (the writer) holds the lock and cleans up before any
    process reads the directory."""
    if directory is None:
        yield None
        return
    with DirectoryLock(directory) if primary() else contextlib.nullcontext():
        checkpoints = Checkpointer(directory)
        if primary():
            checkpoints.remove_incomplete()
        sync_processes("flaxlstm.fit: checkpoints ready")
        yield checkpoints


def check_finite(sums: list[np.ndarray], epoch: int, last_step: int, *, kept: bool) -> None:
    """Raise NonFiniteLossError naming the first step whose loss is NaN or infinite.
    ``sums`` are the epoch's metric sums so far, batch by batch; the last is step ``last_step``;
    ``kept``: there are checkpoints, and the last good one stays."""
    bad = np.flatnonzero(~np.isfinite([s[0] for s in sums]))
    if bad.size:
        k = int(bad[0])
        after = "the last good checkpoint is kept" if kept else "no checkpoint directory was given"
        raise NonFiniteLossError(
            f"the loss is not finite at step {last_step - (len(sums) - 1 - k)} (epoch {epoch},"
            f" batch {k + 1}); training stopped, {after}"
        )


def evaluate(
    model: nnx.Module,
    x,
    y,
    *,
    lengths=None,
    batch_size: int = 32,
    bucket_width: int | None = None,
    loss: str | Callable | Loss = "binary_crossentropy",
) -> dict[str, float]:
    """The loss and its metric (``{"loss", "accuracy"}`` by default) of ``model`` in eval mode
    (no dropout) over all of (x, y): the mean over examples, or over real steps for per-step
    labels [N, T]. ``bucket_width`` and ``loss`` as in ``fit``."""
    check_batching(batch_size, bucket_width, lengths)
    loss = get_loss(loss)
    data = checked(model, Batch(x, y, lengths), loss)
    graphdef, params, non_params = split_model(model, training=False)
    return run_eval(graphdef, params, non_params, data, batch_size, bucket_width, loss)


def predict(
    model: nnx.Module,
    x,
    *,
    lengths=None,
    batch_size: int = 32,
    loss: str | Callable | Loss = "binary_crossentropy",
) -> np.ndarray:
    """What ``model`` in eval mode predicts for ``loss``: probabilities σ(logits) [N] or
    [N, T] (0.5 at padded steps of a model that outputs zero logits there, as ``PerStep``
    does), softmax probabilities [N(, T), C], or the values."""
    check_batching(batch_size, None, lengths)
    loss = get_loss(loss)
    data = check_data(model, Batch(x, None, lengths))
    graphdef, params, non_params = split_model(model, training=False)
    out = [
        output_step(params, non_params, b, graphdef=graphdef, loss=loss)
        for b in batches(data, batch_size)
    ]
    return np.concatenate(jax.device_get(out))[: len(data.inputs)]
