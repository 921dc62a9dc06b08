"""Training: a train state, jitted train and eval steps, and Keras-like ``fit``, ``evaluate``
and ``predict``.

Models output logits: [B] for one binary label per sequence, or [B, T] for one per step.
Losses are computed from the logits (``optax.sigmoid_binary_cross_entropy``), and ``predict``
returns probabilities σ(logits).

Data enters as numpy arrays and is checked on the host (lengths agree, labels in {0, 1}, token
ids in range) before anything is compiled. Batches keep one shape: the last batch of an epoch is
topped up with repeated examples of weight 0, so every example is trained on and counted once
and the padding counts for nothing.

The model is split once, ``graphdef, params, rng = nnx.split(model, nnx.Param, ...)``; the steps
are pure functions of the train state that ``nnx.merge`` the model inside ``jax.jit``. The
model's RNG streams (its dropout keys and counts) travel in the state, so a model built with the
same seed and trained with the same ``seed`` gives bit-identical results on the same machine.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from flaxlstm.checkpoint import Checkpointer
from flaxlstm.files import save_json
from flaxlstm.layers import Embedding, check_token_ids
from flaxlstm.recurrent import make_mask

History = dict[str, list[float]]


class Batch(NamedTuple):
    """Examples, each array with leading dimension B (a whole data set is one big Batch).

    inputs: [B, T, F] floats or [B, T] token ids. labels: [B] or [B, T] in {0, 1}, or None
    (predict). lengths: [B] ints, the real steps of padded sequences, or None. weights: [B],
    1.0 for real examples and 0.0 for the padding of the last batch (``batches`` fills it).
    """

    inputs: Any
    labels: Any = None
    lengths: Any = None
    weights: Any = None


class TrainState(NamedTuple):
    """Everything that changes during training: a pytree that the train step donates.

    step: int32 scalar. params: the model's ``nnx.Param`` variables. rng: the rest of the model,
    its RNG streams (dropout keys and counts). opt_state: the optimizer's state.
    """

    step: jax.Array
    params: nnx.State
    rng: nnx.State
    opt_state: optax.OptState


@functools.cache
def default_optimizer() -> optax.GradientTransformation:
    """Adam with learning rate 1e-3, as Keras (one object, so compiled steps are reused)."""
    return optax.adam(1e-3)


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


def _metric_sums(logits: jax.Array, batch: Batch) -> jax.Array:
    """[3]: the weighted sums of the loss and of the correct predictions, and the total weight."""
    if logits.shape != batch.labels.shape:
        raise ValueError(f"the model gives logits {logits.shape} for labels {batch.labels.shape}")
    weights = example_weights(batch)
    losses = optax.sigmoid_binary_cross_entropy(logits, batch.labels)
    correct = (logits > 0) == (batch.labels > 0)
    return jnp.stack([(weights * losses).sum(), (weights * correct).sum(), weights.sum()])


def _forward(graphdef: nnx.GraphDef, params: nnx.State, rng: nnx.State, batch: Batch):
    """The model's logits for ``batch`` and its RNG state after the call."""
    # New Variables (copy=True) belong to the current trace, so the RNG counts may advance.
    model = nnx.merge(graphdef, params, rng, copy=True)
    if batch.lengths is None:
        logits = model(batch.inputs)
    else:
        logits = model(batch.inputs, lengths=batch.lengths)
    return logits, nnx.state(model, nnx.Not(nnx.Param))


@functools.partial(jax.jit, static_argnames=("graphdef", "tx"), donate_argnames="state")
def train_step(
    state: TrainState, batch: Batch, *, graphdef: nnx.GraphDef, tx: optax.GradientTransformation
) -> tuple[TrainState, jax.Array]:
    """One optimizer step on the mean loss over ``batch``'s real examples (or steps).

    Returns the new state and the batch's metric sums [3] (loss, correct, weight); the loss sum
    is NaN when the step leaves the parameters non-finite.
    """

    def loss_fn(params):
        logits, rng = _forward(graphdef, params, state.rng, batch)
        sums = _metric_sums(logits, batch)
        return sums[0] / jnp.maximum(sums[2], 1e-12), (sums, rng)

    grads, (sums, rng) = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # A step that leaves parameters NaN or infinite counts as a non-finite loss, so that its
    # state is never checkpointed (fit checks the loss sums).
    finite = jnp.isfinite(optax.tree.norm(params))
    sums = sums.at[0].set(jnp.where(finite, sums[0], jnp.nan))
    return TrainState(state.step + 1, params, rng, opt_state), sums


@functools.partial(jax.jit, static_argnames="graphdef")
def eval_step(
    params: nnx.State, rng: nnx.State, batch: Batch, *, graphdef: nnx.GraphDef
) -> jax.Array:
    """The metric sums [3] (loss, correct, weight) of ``batch``; ``graphdef`` in eval mode."""
    return _metric_sums(_forward(graphdef, params, rng, batch)[0], batch)


@functools.partial(jax.jit, static_argnames="graphdef")
def _probabilities(params, rng, batch: Batch, *, graphdef: nnx.GraphDef) -> jax.Array:
    return jax.nn.sigmoid(_forward(graphdef, params, rng, batch)[0])


# ----------------------------------------------------------------------------- data on the host


def check_data(model: nnx.Module, data: Batch) -> Batch:
    """``data`` as numpy arrays, or a one-line ValueError naming what is wrong with it."""
    inputs = np.asarray(data.inputs)
    n = len(inputs) if inputs.ndim else 0
    if n == 0:
        raise ValueError("the data set is empty (no examples in x)")
    if inputs.ndim < 2:
        raise ValueError(f"x must be [N, T] token ids or [N, T, F] features, got {inputs.shape}")
    lengths = None if data.lengths is None else np.asarray(data.lengths)
    if lengths is not None:
        if lengths.shape != (n,) or not np.issubdtype(lengths.dtype, np.integer):
            raise ValueError(f"lengths must be {n} integers, got {lengths.dtype} {lengths.shape}")
        if lengths.min() < 0 or lengths.max() > inputs.shape[1]:
            raise ValueError(f"lengths must lie in [0, {inputs.shape[1]}]")
    labels = None if data.labels is None else np.asarray(data.labels)
    if labels is not None:
        if labels.ndim == 0 or len(labels) != n:
            raise ValueError(f"x has {n} examples but y has {len(labels) if labels.ndim else 0}")
        if labels.shape not in ((n,), inputs.shape[:2]):
            raise ValueError(
                f"y must be [N] or [N, T] = {inputs.shape[:2]} labels, got {labels.shape}"
            )
        real = labels
        if labels.ndim == 2 and lengths is not None:
            real = labels[np.arange(labels.shape[1]) < lengths[:, None]]
        bad = real[~np.isin(real, (0, 1))]
        if bad.size:
            raise ValueError(f"labels must be 0 or 1, got {bad.size} others such as {bad[0]}")
    if np.issubdtype(inputs.dtype, np.integer):
        for _, module in nnx.iter_modules(model):
            if isinstance(module, Embedding):
                check_token_ids(inputs, module.num_embeddings)
    return Batch(inputs, labels, lengths)


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

    With ``bucket_width`` and ``lengths``, examples of similar length go together and each
    batch is cut to W steps, the smallest multiple of ``bucket_width`` that holds its longest
    example (at most T): inputs [B, W, ...]. Few widths means few compilations, and the steps
    cut off are padding that the model masks anyway (``lengths`` count real tokens first), so
    the loss is the same as on the full [B, T] batch. ``rng`` shuffles the order of batches.
    """
    order = np.arange(len(data.inputs)) if order is None else order
    time = data.inputs.shape[1]
    widths = None
    if bucket_width is not None and data.lengths is not None:
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


def mode_view(model: nnx.Module, *, training: bool) -> nnx.Module:
    """``model`` in training mode or in eval mode (no dropout), as a view that shares its
    parameters; the model's own mode is left as it is."""
    return nnx.with_attributes(
        model,
        deterministic=not training,
        use_running_average=not training,
        raise_if_not_found=False,
    )


def _split_model(model: nnx.Module, *, training: bool):
    """(graphdef, params, rng) of ``model`` viewed in training or eval mode."""
    return nnx.split(mode_view(model, training=training), nnx.Param, ...)


def split_point(examples: int, validation_split: float) -> int:
    """How many of ``examples`` ``fit`` trains on; the rest, taken from the end, validate."""
    return int(examples * (1 - validation_split))


def create_train_state(
    model: nnx.Module, tx: optax.GradientTransformation
) -> tuple[nnx.GraphDef, TrainState]:
    """The graphdef of ``model`` in training mode and a fresh TrainState for ``train_step``.

    The state holds copies of the model's arrays (the step donates them); write the trained
    ones back with ``nnx.update(model, state.params, state.rng)``.
    """
    graphdef, params, rng = _split_model(model, training=True)
    params, rng = jax.tree.map(jnp.copy, (params, rng))
    return graphdef, TrainState(jnp.zeros((), jnp.int32), params, rng, tx.init(params))


def _run_eval(
    graphdef, params, rng, data: Batch, batch_size: int, bucket_width: int | None = None
) -> dict[str, float]:
    sums = sum(
        np.asarray(eval_step(params, rng, batch, graphdef=graphdef), np.float64)
        for batch in batches(data, batch_size, bucket_width=bucket_width)
    )
    return {"loss": sums[0] / sums[2], "accuracy": sums[1] / sums[2]}


def _check_bucket_width(bucket_width: int | None, lengths) -> None:
    if bucket_width is None:
        return
    if not isinstance(bucket_width, int) or bucket_width < 1:
        raise ValueError(f"bucket_width must be a positive integer, got {bucket_width!r}")
    if lengths is None:
        raise ValueError("bucket_width needs lengths (the real tokens of each padded sequence)")


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


# ----------------------------------------------------------------------------- fit and friends


class NonFiniteLossError(ValueError):
    """The loss became NaN or infinite; the message names the step and the batch."""


def data_parallel(devices=None) -> tuple[NamedSharding, NamedSharding]:
    """Shardings over a one-axis mesh ``data`` of ``devices`` (all that JAX sees by default):
    batches split along their first axis, parameters and optimizer state replicated. The same
    code runs on one device or many; on several hosts, call ``jax.distributed.initialize()``
    first and every host's devices join the mesh."""
    mesh = Mesh(np.array(devices if devices is not None else jax.devices()), ("data",))
    return NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())


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
    optimizer: optax.GradientTransformation | None = None,
    clip_norm: float | None = None,
    bucket_width: int | None = None,
    restore_best: bool = True,
    patience: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    devices=None,
    quiet: bool = False,
    history_path: str | os.PathLike | None = None,
) -> History:
    """Train ``model`` in place on inputs ``x`` ([N, T] ids or [N, T, F]) and labels ``y``
    ([N] or [N, T] in {0, 1}), with optional ``lengths`` [N] of padded sequences.

    Args:
      validation_split: the fraction of examples, taken from the end before shuffling (as
        Keras), held out to validate on after every epoch.
      validation_data: ``(x, y)`` or ``(x, y, lengths)`` to validate on instead.
      report_data: ``{name: (x, y[, lengths])}`` scored after every epoch into the history as
        ``name_loss`` and ``name_accuracy``, for the record only (never to choose a model).
      shuffle: draw a new order of the training examples every epoch from ``seed``.
      optimizer: any optax GradientTransformation; Adam(1e-3) when None.
      clip_norm: clip the gradients to this global norm first, when given.
      bucket_width: batch sequences of similar ``lengths`` together and cut each batch to a
        multiple of this many steps (``batches``): the padding is not computed, with the same
        loss as on fully padded batches.
      restore_best: when validating, end with the parameters of the epoch of lowest
        ``val_loss`` rather than the last epoch's.
      patience: when validating, stop after this many epochs without a lower ``val_loss``.
      checkpoint_dir: save the whole training state there (orbax) after every epoch, and
        every ``checkpoint_every`` steps; ``resume`` continues from the newest good one.
        A resumed run ends exactly as an uninterrupted one with the same seed.
      devices: the devices to split each batch over (``data_parallel``); all by default.
      quiet: print nothing (no progress bar, no epoch lines).
      history_path: also write the history there as JSON.
    Returns:
      the history: ``loss`` and ``accuracy`` per epoch, and ``val_loss`` and ``val_accuracy``
      when validating. Loss and accuracy are means over every example (every real step for
      per-step labels) of the epoch, measured during training as Keras does.
    """
    for name, value in (
        ("epochs", epochs),
        ("patience", patience),
        ("checkpoint_every", checkpoint_every),
    ):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    _check_batch_size(batch_size)
    _check_bucket_width(bucket_width, lengths)
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split must lie in [0, 1), got {validation_split}")
    if validation_split and validation_data is not None:
        raise ValueError("give validation_split or validation_data, not both")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be positive, got {clip_norm}")
    if (resume or checkpoint_every) and checkpoint_dir is None:
        raise ValueError("resume and checkpoint_every need a checkpoint_dir")
    batch_sharding, replicated = data_parallel(devices)
    if batch_size % batch_sharding.mesh.size:
        raise ValueError(
            f"batch_size {batch_size} must be a multiple of the {batch_sharding.mesh.size}"
            " devices it is split over"
        )
    train = check_data(model, Batch(x, y, lengths))
    validation = None
    if validation_data is not None:
        validation = check_data(model, Batch(*validation_data))
    elif validation_split:
        n_train = split_point(len(train.inputs), validation_split)
        if not 0 < n_train < len(train.inputs):
            raise ValueError(f"validation_split={validation_split} leaves no examples on a side")
        take = lambda a, s: None if a is None else a[s]  # noqa: E731
        validation = Batch(*(take(a, slice(n_train, None)) for a in train))
        train = Batch(*(take(a, slice(None, n_train)) for a in train))
    evaluations = {"val": validation} if validation is not None else {}
    for name, data in (report_data or {}).items():
        evaluations[name] = check_data(model, Batch(*data))

    tx = optimizer or default_optimizer()
    if clip_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(clip_norm), tx)
    graphdef, state = create_train_state(model, tx)
    eval_graphdef = _split_model(model, training=False)[0]
    # Where the run stands: what a checkpoint needs besides the arrays to go on exactly.
    n = len(train.inputs)
    settings = [n, batch_size, seed, shuffle, bucket_width]
    progress = {
        "epoch": 1, "batch": 0, "sums": [], "history": {}, "best": None, "waited": 0,
        "stopped": False, "settings": settings,
    }  # fmt: skip
    best_params = jax.tree.map(jnp.copy, state.params)  # its own buffers: steps donate state's
    checkpoints = None if checkpoint_dir is None else Checkpointer(checkpoint_dir)
    if resume:
        restored = checkpoints.restore_latest({"train": state, "best": best_params})
        if restored is not None:
            trees, meta = restored
            if meta["settings"] != settings:
                raise ValueError(
                    f"the checkpoints in {checkpoint_dir} are of a run with other data or settings"
                    f" (examples, batch_size, seed, shuffle, bucket_width: {meta['settings']},"
                    f" now {settings})"
                )
            progress = {key: meta[key] for key in progress}
            state, best_params = trees["train"], trees["best"]
    elif checkpoints is not None and checkpoints.steps():  # never overwrite another run's
        raise ValueError(
            f"{checkpoint_dir} already holds checkpoints of a run: resume it (resume=True,"
            " --resume) or give another directory"
        )
    state = jax.device_put(state, replicated)
    step = int(state.step)  # counted on the host too: reading state.step would wait for it

    def save(done: dict) -> None:
        if checkpoints is not None:
            trees = {"train": state, "best": best_params}
            checkpoints.save(step, trees, done)

    steps = -(-n // batch_size)
    history: History = progress["history"]
    for epoch in range(progress["epoch"], epochs + 1 if not progress["stopped"] else 0):
        start = time.perf_counter()
        # One generator per epoch, so a resumed epoch draws the same order.
        shuffler = np.random.default_rng([seed, epoch])
        order = shuffler.permutation(n) if shuffle else np.arange(n)
        sums = [np.asarray(s, np.float32) for s in progress["sums"]]
        first = progress["batch"]
        bar = tqdm(
            batches(train, batch_size, order, bucket_width=bucket_width, rng=shuffler),
            total=steps,
            initial=first,
            desc=f"Epoch {epoch}/{epochs}",
            leave=False,
            disable=quiet,
            unit="batch",
        )
        for i, batch in enumerate(bar):
            if i < first:
                continue
            batch = jax.device_put(batch, batch_sharding)
            state, batch_sums = train_step(state, batch, graphdef=graphdef, tx=tx)
            step += 1
            sums.append(batch_sums)
            last = i == steps - 1
            checkpoint_now = bool(checkpoint_every) and step % checkpoint_every == 0 and not last
            if i % 20 == 19 or last or checkpoint_now:
                sums = [np.asarray(s) for s in jax.device_get(sums)]
                _check_finite(sums, epoch, step)
                running = np.sum(sums, axis=0, dtype=np.float64)
                bar.set_postfix(loss=f"{running[0] / running[2]:.4f}")
                if checkpoint_now:
                    done = dict(progress, epoch=epoch, batch=i + 1, sums=[s.tolist() for s in sums])
                    save(done)
        total = np.sum(sums, axis=0, dtype=np.float64)
        metrics = {"loss": total[0] / total[2], "accuracy": total[1] / total[2]}
        for name, data in evaluations.items():
            scores = _run_eval(
                eval_graphdef, state.params, state.rng, data, batch_size, bucket_width
            )
            metrics |= {f"{name}_{key}": value for key, value in scores.items()}
        for name, value in metrics.items():
            history.setdefault(name, []).append(float(value))
        if validation is not None:
            if progress["best"] is None or metrics["val_loss"] < progress["best"]:
                progress["best"], progress["waited"] = float(metrics["val_loss"]), 0
                best_params = jax.tree.map(jnp.copy, state.params)
            else:
                progress["waited"] += 1
            progress["stopped"] = patience is not None and progress["waited"] >= patience
        progress = dict(progress, epoch=epoch + 1, batch=0, sums=[], history=history)
        save(progress)
        if not quiet:
            line = " - ".join(f"{name} {value:.4f}" for name, value in metrics.items())
            print(f"Epoch {epoch}/{epochs} - {line} - {time.perf_counter() - start:.1f}s")
        if progress["stopped"]:
            if not quiet:
                print(f"Early stopping: val_loss has not improved for {patience} epochs")
            break
    keep_best = validation is not None and restore_best
    final = jax.device_get((best_params if keep_best else state.params, state.rng))
    nnx.update(model, *jax.tree.map(jnp.asarray, final))
    if history_path is not None:
        save_json(history_path, history)
    return history


def _check_finite(sums: list[np.ndarray], epoch: int, last_step: int) -> None:
    """Raise NonFiniteLossError naming the first step whose loss is NaN or infinite.
    ``sums`` are the epoch's metric sums so far, batch by batch; the last is step ``last_step``."""
    bad = np.flatnonzero(~np.isfinite([s[0] for s in sums]))
    if bad.size:
        k = int(bad[0])
        raise NonFiniteLossError(
            f"the loss is not finite at step {last_step - (len(sums) - 1 - k)} (epoch {epoch},"
            f" batch {k + 1}); training stopped, the last good checkpoint is kept"
        )


def evaluate(
    model: nnx.Module,
    x,
    y,
    *,
    lengths=None,
    batch_size: int = 32,
    bucket_width: int | None = None,
) -> dict[str, float]:
    """``{"loss", "accuracy"}`` of ``model`` in eval mode (no dropout) over all of (x, y): the
    mean over examples, or over real steps for per-step labels [N, T]. ``bucket_width`` as in
    ``fit``."""
    _check_batch_size(batch_size)
    _check_bucket_width(bucket_width, lengths)
    data = check_data(model, Batch(x, y, lengths))
    graphdef, params, rng = _split_model(model, training=False)
    return _run_eval(graphdef, params, rng, data, batch_size, bucket_width)


def predict(model: nnx.Module, x, *, lengths=None, batch_size: int = 32) -> np.ndarray:
    """Probabilities σ(logits) of ``model`` in eval mode: [N] or [N, T] (0.5 at padded steps of
    a model that outputs zero logits there, as ``PerStep`` does)."""
    _check_batch_size(batch_size)
    data = check_data(model, Batch(x, None, lengths))
    graphdef, params, rng = _split_model(model, training=False)
    out = [_probabilities(params, rng, b, graphdef=graphdef) for b in batches(data, batch_size)]
    return np.concatenate(jax.device_get(out))[: len(data.inputs)]
