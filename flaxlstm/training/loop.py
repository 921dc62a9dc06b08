"""The training loop: one for every kind of training.

``fit`` (``flaxlstm.training.fit``: labelled examples) and ``train_lm``
(``flaxlstm.training.lm``: next tokens, the LSTM state carried from chunk to chunk) each give
``train`` an ``Objective`` — their batches, their jitted step, their evaluation, the state
their step hands the next — and a ``Plan``; everything else is here, once:

- **Steps and epochs.** Epoch after epoch, the objective's batches in the order it draws for
  that epoch, up to ``Plan.steps`` (the schedule's length) or early stopping.
- **Evaluations.** At the end of every epoch, every ``eval_every`` steps and at the last step.
  Each adds one entry to the history (the training since the last evaluation, then the
  objective's scores), written at once to ``history_path``, and saves the model to
  ``model_dir``. The lowest ``val_loss`` is the best: its parameters are what the model ends
  with under ``keep_best``; ``patience`` evaluations without a lower one stop the run.
- **Checkpoints and exact resume.** After every evaluation and every ``checkpoint_every``
  steps: the train state, the best parameters and the carried state, with the run's
  ``Progress`` as metadata. A resumed run draws the same batches and ends bit for bit as an
  uninterrupted one; a directory holding another run's checkpoints is refused.
- **The run lock and signals.** One run per checkpoint directory (``files.DirectoryLock``);
  SIGINT (Ctrl-C) or SIGTERM ends the step under way, saves it and raises
  ``TrainingInterrupted``.
- **Several processes.** Process 0 alone writes; every process stops at the same step.
- **The non-finite guard.** The steps' sums are read back every ``READ_EVERY`` steps (or
  ``READ_SECONDS``), so that the host rarely waits for the device; a NaN or infinite loss
  stops the run naming its step, before anything after it is saved.
- **The progress bar** (tqdm: the running loss) and one printed line per evaluation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from tqdm.auto import tqdm

from flaxlstm.files import DirectoryLock, save_json
from flaxlstm.training.checkpoint import Checkpointer, remove_incomplete
from flaxlstm.training.interrupts import TrainingInterrupted, deferred_signals
from flaxlstm.training.processes import agreed, global_arrays, primary, sync_processes

History = dict[str, list[float]]
READ_EVERY = 20  # steps between reads of their sums (the host waits for the device there)
READ_SECONDS = 1.0  # or sooner, once this long has passed since the last read


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
    """The graphdef of ``model`` in training mode and a fresh TrainState for its steps.

    The state holds copies of the model's arrays (the steps donate them); ``train`` writes
    the trained ones back into the model.
    """
    graphdef, params, non_params = split_model(model, training=True)
    params, non_params = jax.tree.map(jnp.copy, (params, non_params))
    return graphdef, TrainState(jnp.zeros((), jnp.int32), params, non_params, tx.init(params))


class Objective(Protocol):
    """What a kind of training gives the loop."""

    settings: dict[str, Any]  # what a resumed run must share: its data's size, batch, seed, ...

    def batches(self, epoch: int, first: int) -> tuple[int, Iterable]:
        """The number of batches of ``epoch`` (from 1), and its batches from the ``first``
        (from 0) on: the same order every time it is asked."""

    def step(self, state: TrainState, carry: Any, batch) -> tuple[TrainState, Any, jax.Array]:
        """One optimizer step: the new state, the carry for the next batch (None for none),
        and the batch's sums [K]: the loss sum first (NaN when the step left the parameters
        non-finite), the weight of its labels (or tokens) last."""

    def scores(self, state: TrainState) -> dict[str, float]:
        """The evaluation of ``state``'s parameters: ``val_loss`` and the rest."""

    def entry(self, sums: np.ndarray, seconds: float, step: int, seen: float) -> dict:
        """The training half of a history entry: from the steps' ``sums`` [K] and
        ``seconds`` since the last evaluation, at ``step``, after ``seen`` weight in all."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """How a run goes besides its objective (``fit``'s and ``train_lm``'s options)."""

    epochs: int
    steps: int  # the run's last step, which the learning-rate schedule spans
    eval_every: int | None = None
    patience: int | None = None
    keep_best: bool = False  # end with the parameters of the lowest val_loss, not the last
    checkpoint_dir: str | os.PathLike | None = None
    checkpoint_every: int | None = None
    resume: bool = False
    model_dir: str | os.PathLike | None = None
    history_path: str | os.PathLike | None = None
    quiet: bool = False
    replicated: NamedSharding | None = None  # where the train state lives, on several devices
    carried: NamedSharding | None = None  # and the carried state (its rows split)


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where a run stands: each checkpoint's metadata, so that a resumed run goes on exactly.

    settings: the objective's, which a resumed run must share; epoch: the epoch under way
    (from 1); batch: its batches trained; sums, seconds: the steps' summed sums [K] and the
    seconds trained since the last evaluation; seen: the weight (labels, tokens) trained in
    all; history: a list per name, one value per evaluation; best: the lowest ``val_loss``;
    waited: evaluations since it; stopped: early stopping has ended the run.
    """

    settings: list
    epoch: int = 1
    batch: int = 0
    sums: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    seen: float = 0.0
    history: History = dataclasses.field(default_factory=dict)
    best: float | None = None
    waited: int = 0
    stopped: bool = False

    def to_meta(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Progress:
        return cls(**{f.name: meta[f.name] for f in dataclasses.fields(cls)})


class NonFiniteLossError(ValueError):
    """The loss became NaN or infinite; the message names the step and the batch."""


def train(
    model: nnx.Module, objective: Objective, plan: Plan, state: TrainState, carry: Any = None
) -> History:
    """Train ``model`` in place from ``state`` (``create_train_state``) and ``carry`` (what
    the first step starts from, if the objective carries state) as ``plan`` says; returns
    the history."""
    trees = {"train": state}
    if plan.keep_best:  # its own buffers: the steps donate the state's
        trees["best"] = jax.tree.map(jnp.copy, state.params)
    if carry is not None:
        trees["carry"] = carry
    progress = Progress(list(objective.settings.values()))
    with contextlib.ExitStack() as guard:
        checkpoints = guard.enter_context(locked_checkpoints(plan.checkpoint_dir))
        received = agreed(guard.enter_context(deferred_signals()))
        trees, progress = restore_or_refuse(checkpoints, trees, progress, plan.resume, objective)
        if plan.replicated is not None:
            trees["train"] = global_arrays(trees["train"], plan.replicated)
        if plan.carried is not None and "carry" in trees:
            trees["carry"] = global_arrays(trees["carry"], plan.carried)
        trees, progress = Loop(objective, plan, checkpoints, received).run(trees, progress)
    final = trees["best"] if plan.keep_best else trees["train"].params
    final = jax.device_get((final, trees["train"].non_params))
    nnx.update(model, *jax.tree.map(jnp.asarray, final))
    if plan.history_path is not None and primary():
        save_json(plan.history_path, progress.history)
    sync_processes("flaxlstm: files written")  # every process returns after process 0 wrote
    return progress.history


class Loop:
    """A run's fixed parts — its objective, plan, checkpoints and signals — and its loop."""

    def __init__(self, objective: Objective, plan: Plan, checkpoints, received):
        self.objective, self.plan = objective, plan
        self.checkpoints, self.received = checkpoints, received
        self.models = None if plan.model_dir is None else Checkpointer(plan.model_dir)
        self.quiet = plan.quiet or not primary()

    def run(self, trees: dict, progress: Progress) -> tuple[dict, Progress]:
        """Epoch after epoch until the last step, the last epoch or early stopping."""
        if self.finished(trees, progress) and not self.quiet:
            print(f"The run is complete ({int(trees['train'].step)} steps): nothing left to train")
        while not self.finished(trees, progress):
            if signum := self.received():  # came while the last epoch was evaluated or saved
                raise self.interrupt(signum, progress, int(trees["train"].step))
            trees, progress = self.epoch(trees, progress)
        return trees, progress

    def finished(self, trees: dict, progress: Progress) -> bool:
        step = int(trees["train"].step)
        return progress.stopped or progress.epoch > self.plan.epochs or step >= self.plan.steps

    def epoch(self, trees: dict, progress: Progress) -> tuple[dict, Progress]:
        """Train the rest of epoch ``progress.epoch``, or up to the run's last step;
        evaluate and checkpoint on the way."""
        count, batches = self.objective.batches(progress.epoch, progress.batch)
        step, pending, since = int(trees["train"].step), [], time.perf_counter()
        bar = tqdm(
            total=count,
            initial=progress.batch,
            desc=f"Epoch {progress.epoch}/{self.plan.epochs}",
            leave=False,
            disable=self.quiet,
            unit="batch",
        )
        try:  # the bar is cleared however the epoch ends
            for i, batch in enumerate(batches, start=progress.batch):
                trees["train"], carry, sums = self.objective.step(
                    trees["train"], trees.get("carry"), batch
                )
                if carry is not None:
                    trees["carry"] = carry
                step += 1
                pending.append(sums)
                bar.update()
                last, final = i == count - 1, step == self.plan.steps
                evaluate = last or final or every(self.plan.eval_every, step)
                save = evaluate or every(self.plan.checkpoint_every, step)
                signum = self.received()
                late = time.perf_counter() - since >= READ_SECONDS
                if not (save or signum or late or len(pending) >= READ_EVERY):
                    continue
                progress = self.read(progress, pending, step, since, i + 1, last)
                pending = []
                bar.set_postfix(loss=f"{progress.sums[0] / max(progress.sums[-1], 1e-12):.4f}")
                if evaluate:
                    progress = self.evaluate(trees, progress, step, progress.epoch - last)
                if save or signum:
                    self.save(step, trees, progress)
                if signum:
                    raise self.interrupt(signum, progress, step)
                since = time.perf_counter()
                if final:
                    break
        finally:
            bar.close()
        return trees, progress

    def read(self, progress, pending: list, step: int, since: float, done: int, last: bool):
        """``progress`` with the ``pending`` steps' sums (the last of them ``step``, batch
        ``done`` of the epoch) read back and added, the seconds since ``since``, and
        ``done`` batches of its epoch trained; a NonFiniteLossError names the first step
        whose loss is not finite."""
        sums = [np.asarray(s, np.float64) for s in jax.device_get(pending)]
        for k, s in enumerate(sums):
            if not np.isfinite(s[0]):
                back = len(sums) - 1 - k
                kept = (
                    "the last good checkpoint is kept"
                    if self.checkpoints is not None
                    else "no checkpoint directory was given"
                )
                raise NonFiniteLossError(
                    f"the loss is not finite at step {step - back} (epoch {progress.epoch},"
                    f" batch {done - back}); training stopped, {kept}"
                )
        window = np.asarray(progress.sums, np.float64) if progress.sums else 0.0
        for s in sums:  # in order, as the metrics were always summed
            window = window + s
        return dataclasses.replace(
            progress, epoch=progress.epoch + last, batch=0 if last else done,
            sums=window.tolist(), seconds=progress.seconds + time.perf_counter() - since,
            seen=progress.seen + sum(float(s[-1]) for s in sums),
        )  # fmt: skip

    def evaluate(self, trees: dict, progress: Progress, step: int, epoch: int) -> Progress:
        """``progress`` with one more history entry (the training since the last evaluation,
        then the objective's scores), the best parameters kept; the model saved, the history
        written and a line printed."""
        started, state = time.perf_counter(), trees["train"]
        sums = np.asarray(progress.sums)
        entry = self.objective.entry(sums, progress.seconds, step, progress.seen)
        entry |= self.objective.scores(state)
        history = {k: [*progress.history.get(k, []), float(v)] for k, v in entry.items()}
        best, waited, improved = progress.best, progress.waited, False
        if "val_loss" in entry:
            improved = best is None or entry["val_loss"] < best
            best, waited = (float(entry["val_loss"]), 0) if improved else (best, waited + 1)
        if improved and "best" in trees:
            trees["best"] = jax.tree.map(jnp.copy, state.params)
        stopped = self.plan.patience is not None and waited >= self.plan.patience
        after = dataclasses.replace(
            progress,
            sums=[],
            seconds=0.0,
            history=history,
            best=best,
            waited=waited,
            stopped=stopped,
        )
        if self.models is not None:  # every process takes part; the files land once
            params = jax.device_get(trees.get("best", state.params))
            self.models.save(step, params, {"step": step, "epoch": epoch})
        if primary() and self.plan.history_path is not None:
            save_json(self.plan.history_path, history)  # a result outlives its process
        if not self.quiet:
            seconds = progress.seconds + time.perf_counter() - started
            tqdm.write(f"Epoch {epoch}/{self.plan.epochs} - {line(entry)} - {seconds:.1f}s")
            if stopped:
                tqdm.write(f"Early stopping: val_loss has not improved for {waited} evaluations")
        return after

    def save(self, step: int, trees: dict, progress: Progress) -> None:
        """Checkpoint ``trees`` and ``progress`` as ``step``; every process takes part, the
        files land once (``Checkpointer``)."""
        if self.checkpoints is not None:
            self.checkpoints.save(step, trees, progress.to_meta())

    def interrupt(self, signum: int, progress: Progress, step: int) -> TrainingInterrupted:
        """The exception that ends the run on ``signum`` after ``step``, saying what was
        saved."""
        if self.checkpoints is None:
            saved = "nothing saved (no checkpoint directory)"
        else:
            saved = f"checkpoint saved in {self.checkpoints.directory}; continue with --resume"
        where = f"epoch {progress.epoch}, batch {progress.batch} (step {step})"
        name = signal.Signals(signum).name
        return TrainingInterrupted(signum, f"interrupted by {name} at {where}; {saved}")


def every(n: int | None, step: int) -> bool:
    """Whether ``step`` is a multiple of ``n`` (never without an ``n``)."""
    return bool(n) and step % n == 0


def line(entry: dict) -> str:
    """A history entry on one line: counts and numbers from 1,000 up as integers, the rest
    to 4 decimals."""

    def number(value) -> str:
        whole = isinstance(value, int) or abs(value) >= 1000
        return f"{value:.0f}" if whole else f"{value:.4f}"

    return " - ".join(f"{name} {number(value)}" for name, value in entry.items())


def restore_or_refuse(
    checkpoints: Checkpointer | None, trees: dict, progress: Progress, resume: bool, objective
) -> tuple[dict, Progress]:
    """With ``resume``, the newest good checkpoint's (trees, progress), or ``trees`` and
    ``progress`` as they are if there is none; without, refuse a directory that holds a
    run's checkpoints. A checkpoint of a run with other ``objective.settings`` is refused."""
    if not resume:
        if checkpoints is not None and checkpoints.steps():  # never overwrite another run's
            raise ValueError(
                f"{checkpoints.directory} already holds checkpoints of a run: resume it"
                " (resume=True, --resume) or give another directory"
            )
        return trees, progress

    def same_run(meta: dict) -> None:  # checked before the arrays, whose shapes may differ
        if {field.name for field in dataclasses.fields(Progress)} - set(meta):
            raise ValueError(
                f"the checkpoints in {checkpoints.directory} were written by an older flaxlstm"
                " (before its one training loop): start the run again in another directory"
            )
        if meta["settings"] != progress.settings:
            names = ", ".join(objective.settings)
            raise ValueError(
                f"the checkpoints in {checkpoints.directory} are of a run with other data or"
                f" settings ({names}: {meta['settings']}, now {progress.settings});"
                " resume it with its own"
            )

    restored = checkpoints.restore_latest(trees, same_run)
    if restored is None:
        return trees, progress
    trees, meta = restored
    return trees, Progress.from_meta(meta)


@contextlib.contextmanager
def locked_checkpoints(directory: str | os.PathLike | None) -> Iterator[Checkpointer | None]:
    """A Checkpointer for ``directory`` (None without one), the directory locked for as long
    as it is used (``files.DirectoryLock``); what interrupted saves left there is removed.
    With several processes, process 0 holds the lock and cleans up before any process opens
    the directory."""
    if directory is None:
        yield None
        return
    with DirectoryLock(directory) if primary() else contextlib.nullcontext():
        if primary():
            remove_incomplete(directory)
        sync_processes("flaxlstm: checkpoints ready")
        yield Checkpointer(directory)
