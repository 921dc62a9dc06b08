"""Language models: next-token training over long text with the state carried from chunk to
chunk (truncated backpropagation through time), a sampled softmax for large vocabularies,
evaluation with the exact softmax, and sampling text.

Every row of a batch reads its documents chunk after chunk (``flaxlstm.data.text``). A chunk
starts from the state that the row's previous chunk ended in, without gradient through it
(Keras's ``stateful=True``, PyTorch's ``repackage_hidden``), or from zeros where a document
starts (``Chunk.resets``). The loss is the mean over real steps of −log p(next token):

- full softmax, −log softmax(z)_y with z = features · Wᵀ + b over all V tokens: exact,
  and what evaluation always computes (perplexity exp(loss), bits per token loss / ln 2);
- with ``samples = K``, a sampled softmax (Jean et al. 2015; Miyato et al. 2017 pretrain
  their IMDB LM with one): K classes s_j drawn from a log-uniform q (ids sorted by falling
  frequency, as ``Vocabulary`` numbers them) stand in for the vocabulary, the partition
  function Σ_v exp(z_v) estimated by exp(z_y) + Σ_{s_j ≠ y} exp(z_{s_j}) / (K q(s_j)), whose
  expectation it is. The cost per step falls from V to K output columns.

``train_lm`` runs the loop with the same guarantees as ``flaxlstm.train.fit``: checkpoints
that hold the carried state too (a resumed run ends bit for bit as an uninterrupted one),
one run per locked directory, SIGINT/SIGTERM saved at the step under way.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from flaxlstm.cell import LSTMState
from flaxlstm.checkpoint import Checkpointer
from flaxlstm.checks import check_positive_int
from flaxlstm.config import Recipe
from flaxlstm.data.text import Chunk, chunk_at, chunks, layout, steps_of
from flaxlstm.data.vocabulary import OOV, PAD, START
from flaxlstm.files import save_json
from flaxlstm.interrupts import deferred_signals
from flaxlstm.models import LanguageModel
from flaxlstm.recurrent import make_mask
from flaxlstm.train import (
    NonFiniteLossError,
    TrainState,
    create_train_state,
    interruption,
    locked_checkpoints,
    restore_or_refuse,
    split_model,
)

# ----------------------------------------------------------------------------- losses


def log_uniform(key: jax.Array, vocab_size: int, samples: int) -> tuple[jax.Array, jax.Array]:
    """K ids drawn with replacement from q(k) = log((k + 2) / (k + 1)) / log(V + 1), a Zipf
    law over ids sorted by falling frequency, and their log q: ([K] int32, [K])."""
    u = jax.random.uniform(key, (samples,))
    ids = jnp.clip(jnp.floor(jnp.exp(u * math.log(vocab_size + 1))) - 1, 0, vocab_size - 1)
    log_q = jnp.log(jnp.log((ids + 2) / (ids + 1)) / math.log(vocab_size + 1))
    return ids.astype(jnp.int32), log_q


def full_softmax_losses(features, targets, rows, bias) -> jax.Array:
    """[N] −log softmax(features · rowsᵀ + bias)_target, for features [N, D], targets [N],
    the output layer's rows [V, D] and bias [V]."""
    return optax.softmax_cross_entropy_with_integer_labels(features @ rows.T + bias, targets)


def sampled_softmax_losses(features, targets, rows, bias, key, samples: int) -> jax.Array:
    """[N] the sampled-softmax estimate of ``full_softmax_losses``: log Ẑ − z_y with
    Ẑ = exp(z_y) + Σ_{s_j ≠ y} exp(z_{s_j} − log(K q(s_j))) over ``samples`` = K classes
    s_j ~ ``log_uniform`` (drawn once for the batch from ``key``)."""
    ids, log_q = log_uniform(key, bias.shape[0], samples)
    true = jnp.sum(features * rows[targets], axis=-1) + bias[targets]  # z_y [N]
    drawn = features @ rows[ids].T + bias[ids] - (math.log(samples) + log_q)  # [N, K]
    drawn = jnp.where(ids[None, :] == targets[:, None], -jnp.inf, drawn)  # y is counted once
    return jax.nn.logsumexp(jnp.concatenate([true[:, None], drawn], axis=1), axis=1) - true


def loss_sums(model: LanguageModel, features, chunk: Chunk, key, samples: int) -> jax.Array:
    """[2]: the sum of the per-step losses over ``chunk``'s real steps, and their count; the
    full softmax when ``samples`` is 0, else the sampled one."""
    batch, steps = chunk.inputs.shape
    real = make_mask(batch, steps, chunk.lengths).reshape(-1)
    features = features.reshape(batch * steps, -1).astype(jnp.float32)
    targets = chunk.targets.reshape(-1)
    rows, bias = model.output_layer()
    if samples:
        losses = sampled_softmax_losses(features, targets, rows, bias, key, samples)
    else:
        losses = full_softmax_losses(features, targets, rows, bias)
    return jnp.stack([jnp.where(real, losses, 0.0).sum(), real.sum()])


def reset(state: LSTMState, resets: jax.Array) -> LSTMState:
    """``state`` ([L, B, H] each) with the rows where ``resets`` [B] is True set to zeros."""
    return jax.tree.map(lambda s: jnp.where(resets[None, :, None], 0.0, s), state)


# ----------------------------------------------------------------------------- steps


@functools.partial(
    jax.jit, static_argnames=("graphdef", "tx", "samples"), donate_argnames=("state", "carry")
)
def lm_train_step(state: TrainState, carry: LSTMState, chunk: Chunk, key, *, graphdef, tx, samples):
    """One optimizer step on ``chunk``'s mean per-step loss, starting from ``carry`` (reset
    where ``chunk.resets``; no gradient flows into it). Returns the new state, the carry for
    the rows' next chunk, and the loss sums [2] (NaN when the parameters became non-finite)."""
    carry = jax.lax.stop_gradient(reset(carry, chunk.resets))
    step_key = jax.random.fold_in(key, state.step)  # a resumed run draws the same samples

    def loss_fn(params):
        model = nnx.merge(graphdef, params, state.non_params, copy=True)
        features, final = model(chunk.inputs, chunk.lengths, carry)
        sums = loss_sums(model, features, chunk, step_key, samples)
        non_params = nnx.state(model, nnx.Not(nnx.Param))
        return sums[0] / jnp.maximum(sums[1], 1.0), (sums, final, non_params)

    grads, (sums, carry, non_params) = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(optax.tree.norm(params))
    sums = sums.at[0].set(jnp.where(finite, sums[0], jnp.nan))
    return TrainState(state.step + 1, params, non_params, opt_state), carry, sums


@functools.partial(jax.jit, static_argnames="graphdef", donate_argnames="carry")
def lm_eval_step(params, non_params, carry: LSTMState, chunk: Chunk, *, graphdef):
    """The full-softmax loss sums [2] of ``chunk`` from ``carry``, and the next carry
    (``graphdef`` in eval mode)."""
    model = nnx.merge(graphdef, params, non_params, copy=True)
    features, final = model(chunk.inputs, chunk.lengths, reset(carry, chunk.resets))
    return loss_sums(model, features, chunk, None, 0), final


def zero_carry(model: LanguageModel, rows: int) -> LSTMState:
    """The zero state of every layer of ``model`` for ``rows`` rows: c, h [L, B, H]."""
    lstms = model.lstm.lstms
    shape = (len(lstms), rows, lstms[0].hidden_features)
    return LSTMState(jnp.zeros(shape), jnp.zeros(shape))


def scores(loss_sum: float, tokens: float) -> dict[str, float]:
    """loss (nats per token), perplexity and bits per token of a loss sum over ``tokens``."""
    loss = loss_sum / max(tokens, 1.0)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "bits": loss / math.log(2)}


def evaluate_lm(
    model: LanguageModel,
    documents: Sequence[np.ndarray],
    *,
    batch_size: int = 64,
    bptt: int = 100,
    quiet: bool = True,
) -> dict[str, float]:
    """The exact (full-softmax) loss of ``model`` in eval mode over every next token of
    ``documents``, read as training reads them (state carried chunk to chunk): ``loss``
    (nats per token), ``perplexity``, ``bits`` (per token; per character for a character
    model) and ``tokens``."""
    graphdef, params, non_params = split_model(model, training=False)
    total = loss_totals(model, graphdef, params, non_params, documents, batch_size, bptt, quiet)
    return scores(total[0], total[1]) | {"tokens": int(total[1])}


def loss_totals(model, graphdef, params, non_params, documents, batch_size, bptt, quiet=True):
    """[2] float64: the full-softmax loss sum over every next token of ``documents`` and
    their count, with eval-mode ``graphdef`` and the state carried chunk to chunk."""
    carry, total = zero_carry(model, batch_size), np.zeros(2)
    plan_chunks = chunks(documents, batch_size, bptt)
    for chunk in tqdm(plan_chunks, desc="Evaluating", leave=False, disable=quiet, unit="chunk"):
        sums, carry = lm_eval_step(params, non_params, carry, chunk, graphdef=graphdef)
        total += np.asarray(sums, np.float64)
    return total


# ----------------------------------------------------------------------------- training


@dataclasses.dataclass(frozen=True)
class LmProgress:
    """Where a language-model run stands (each checkpoint's metadata).

    epoch: the epoch under way (from 1); chunk: its chunks already trained; window: the loss
    sum, tokens and seconds trained since the last evaluation; history: one entry per
    evaluation (``step``, ``tokens``, ``loss``, ``tokens_per_second``, ``val_loss``,
    ``val_perplexity``, ``val_bits``); tokens: all trained so far; settings: ``SETTINGS``,
    which a resumed run must share.
    """

    SETTINGS: ClassVar[str] = (
        "documents, tokens, batch_size, bptt, seed, epochs, max_steps, samples"
    )

    settings: list
    epoch: int = 1
    chunk: int = 0
    window: list = dataclasses.field(default_factory=lambda: [0.0, 0.0, 0.0])
    history: dict = dataclasses.field(default_factory=dict)
    tokens: int = 0

    def to_meta(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> LmProgress:
        return cls(**{f.name: meta[f.name] for f in dataclasses.fields(cls)})


def epoch_plan(documents: Sequence[np.ndarray], rows: int, bptt: int, seed: int, epoch: int):
    """The documents in epoch ``epoch``'s order (drawn from [seed, epoch]) and their
    ``layout``."""
    order = np.random.default_rng([seed, epoch]).permutation(len(documents))
    ordered = [documents[i] for i in order]
    return ordered, layout(steps_of(ordered), rows, bptt)


class LmRun(NamedTuple):
    """What stays fixed while ``train_lm`` trains."""

    model: LanguageModel
    documents: Sequence[np.ndarray]
    validation: Sequence[np.ndarray]
    graphdef: nnx.GraphDef  # the model in training mode
    eval_graphdef: nnx.GraphDef  # and in eval mode
    tx: optax.GradientTransformation
    key: jax.Array  # the sampled softmax's samples: fold_in(key, step)
    samples: int
    batch_size: int
    bptt: int
    seed: int
    epochs: int
    total: int  # steps in all
    eval_every: int | None
    checkpoint_every: int | None
    checkpoints: Checkpointer | None
    models: Checkpointer | None  # the parameters after every evaluation
    history_path: str | os.PathLike | None  # rewritten after every evaluation
    received: Callable[[], int | None]  # the SIGINT or SIGTERM that came, if any
    quiet: bool

    def save(self, step: int, state: TrainState, carry: LSTMState, progress: LmProgress):
        if self.checkpoints is not None:
            self.checkpoints.save(step, {"train": state, "carry": carry}, progress.to_meta())


def train_lm(
    model: LanguageModel,
    documents: Sequence[np.ndarray],
    validation: Sequence[np.ndarray],
    *,
    batch_size: int = 64,
    bptt: int = 100,
    epochs: int = 1,
    max_steps: int | None = None,
    samples: int = 0,
    recipe: Recipe | None = None,
    seed: int = 0,
    eval_every: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    model_dir: str | os.PathLike | None = None,
    history_path: str | os.PathLike | None = None,
    quiet: bool = False,
) -> dict[str, list]:
    """Train ``model`` in place to predict every next token of ``documents`` (id arrays that
    start with START), ``batch_size`` rows of ``bptt`` steps at a time, the state carried
    from chunk to chunk; score it on ``validation`` with the full softmax.

    Args:
      epochs: passes over ``documents``, each in a new order drawn from ``seed``.
      max_steps: stop after this many steps (the learning-rate schedule spans the steps run).
      samples: 0 for the full softmax, else K classes for a sampled softmax.
      recipe: Adam's learning rate, schedule and clipping (``Recipe()`` by default).
      eval_every: also evaluate (and checkpoint) every N steps; always after every epoch.
      checkpoint_dir, checkpoint_every, resume, model_dir, quiet: as ``fit``'s.
      history_path: where the history is written, after every evaluation (JSON).
    Returns:
      the history: per evaluation the step, tokens trained, mean training loss and training
      tokens per second since the last evaluation, and ``val_loss``, ``val_perplexity``,
      ``val_bits``.
    """
    _check_lm_options(
        model, documents, validation, batch_size, bptt, epochs, max_steps, samples,
        eval_every, checkpoint_every, resume, checkpoint_dir,
    )  # fmt: skip
    steps = sum(
        len(epoch_plan(documents, batch_size, bptt, seed, epoch)[1].documents)
        for epoch in range(1, epochs + 1)
    )
    total = min(steps, max_steps or steps)
    tx = (recipe or Recipe()).optimizer(total)
    graphdef, state = create_train_state(model, tx)
    carry = zero_carry(model, batch_size)
    settings = [len(documents), int(sum(map(len, documents)))]
    progress = LmProgress([*settings, batch_size, bptt, seed, epochs, max_steps, samples])
    with locked_checkpoints(checkpoint_dir) as checkpoints, deferred_signals() as received:
        run = LmRun(
            model, documents, validation, graphdef, split_model(model, training=False)[0], tx,
            jax.random.key(seed), samples, batch_size, bptt, seed, epochs, total, eval_every,
            checkpoint_every, checkpoints, None if model_dir is None else Checkpointer(model_dir),
            history_path, received, quiet,
        )  # fmt: skip
        trees, progress = restore_or_refuse(
            checkpoints, {"train": state, "carry": carry}, progress, resume
        )
        state, carry = trees["train"], trees["carry"]
        if int(state.step) >= total and not quiet:
            print(f"The run is complete ({total} steps): nothing left to train")
        while int(state.step) < total:
            state, carry, progress = train_lm_epoch(run, state, carry, progress)
    final = jax.device_get((state.params, state.non_params))
    nnx.update(model, *jax.tree.map(jnp.asarray, final))
    if history_path is not None:
        save_json(history_path, progress.history)
    return progress.history


def _check_lm_options(
    model, documents, validation, batch_size, bptt, epochs, max_steps, samples, eval_every,
    checkpoint_every, resume, checkpoint_dir,
) -> None:  # fmt: skip
    for name, value in (("batch_size", batch_size), ("bptt", bptt), ("epochs", epochs)):
        check_positive_int(name, value)
    for name, value in (
        ("max_steps", max_steps), ("eval_every", eval_every),
        ("checkpoint_every", checkpoint_every),
    ):  # fmt: skip
        check_positive_int(name, value, optional=True)
    vocabulary = model.embed.num_embeddings
    if not 0 <= samples < vocabulary:
        raise ValueError(f"samples must lie in [0, {vocabulary}) (the vocabulary), got {samples}")
    if (resume or checkpoint_every) and checkpoint_dir is None:
        raise ValueError("resume and checkpoint_every need a checkpoint_dir")
    if not len(documents) or not len(validation):
        raise ValueError("no documents to train on or to validate on")


def train_lm_epoch(run: LmRun, state: TrainState, carry: LSTMState, progress: LmProgress):
    """Train the rest of epoch ``progress.epoch`` (from chunk ``progress.chunk``), or up to
    the run's last step; evaluate and checkpoint on the way. Returns (state, carry,
    progress)."""
    ordered, plan = epoch_plan(run.documents, run.batch_size, run.bptt, run.seed, progress.epoch)
    chunks_in_epoch, step = len(plan.documents), int(state.step)
    bar = tqdm(
        total=chunks_in_epoch, initial=progress.chunk, leave=False, disable=run.quiet,
        desc=f"Epoch {progress.epoch}/{run.epochs}", unit="chunk",
    )  # fmt: skip
    window, started = np.array(progress.window), time.perf_counter()
    for c in range(progress.chunk, chunks_in_epoch):
        chunk = chunk_at(ordered, plan, c, run.bptt)
        state, carry, sums = lm_train_step(
            state, carry, chunk, run.key, graphdef=run.graphdef, tx=run.tx, samples=run.samples
        )
        step += 1
        sums = np.asarray(sums, np.float64)  # waits for the step: an honest clock
        if not np.isfinite(sums[0]):
            raise NonFiniteLossError(
                f"the loss is not finite at step {step} (epoch {progress.epoch}, chunk {c + 1});"
                " training stopped, the last good checkpoint is kept"
            )
        window += [sums[0], sums[1], time.perf_counter() - started]
        bar.update()
        bar.set_postfix(
            loss=f"{window[0] / max(window[1], 1):.3f}",
            tokens_per_s=f"{window[1] / max(window[2], 1e-9):.0f}",
        )
        last = c == chunks_in_epoch - 1
        progress = dataclasses.replace(
            progress, epoch=progress.epoch + last, chunk=0 if last else c + 1,
            window=window.tolist(), tokens=progress.tokens + int(sums[1]),
        )  # fmt: skip
        evaluate_now = last or step == run.total or (run.eval_every and step % run.eval_every == 0)
        signum = run.received()
        if evaluate_now:
            progress = _evaluate(run, state, progress, step)
            window = np.zeros(3)
            if run.models is not None:
                run.models.save(step, jax.device_get(state.params), {"step": step})
            if run.history_path is not None:  # a result outlives the process that measured it
                save_json(run.history_path, progress.history)
            if not run.quiet:
                bar.write(_history_line(progress.history))
        if evaluate_now or signum or (run.checkpoint_every and step % run.checkpoint_every == 0):
            run.save(step, state, carry, progress)
        if signum:
            bar.close()
            where = f"epoch {progress.epoch}, chunk {progress.chunk} (step {step})"
            raise interruption(signum, where, run.checkpoints)
        if step == run.total:
            break
        started = time.perf_counter()
    bar.close()
    return state, carry, progress


def _history_line(history: dict[str, list]) -> str:
    """The last evaluation of ``history`` on one line."""
    last = {k: v[-1] for k, v in history.items()}
    steps = f"step {last.pop('step'):.0f} - tokens {last.pop('tokens'):.0f}"
    speed = f"{last.pop('tokens_per_second'):.0f} tokens/s"
    return " - ".join([steps, *(f"{k} {v:.4f}" for k, v in last.items()), speed])


def _evaluate(run: LmRun, state: TrainState, progress: LmProgress, step: int) -> LmProgress:
    """``progress`` with one more history entry: the training window's loss and speed, and
    the validation scores of ``state``'s parameters."""
    total = loss_totals(
        run.model, run.eval_graphdef, state.params, state.non_params, run.validation,
        run.batch_size, run.bptt,
    )  # fmt: skip
    loss_sum, tokens, seconds = progress.window
    entry = {
        "step": step,
        "tokens": progress.tokens,
        "loss": loss_sum / max(tokens, 1.0),
        "tokens_per_second": tokens / max(seconds, 1e-9),
        **{f"val_{k}": v for k, v in scores(total[0], total[1]).items()},
    }
    history = {k: [*progress.history.get(k, []), float(v)] for k, v in entry.items()}
    return dataclasses.replace(progress, history=history, window=[0.0, 0.0, 0.0])


# ----------------------------------------------------------------------------- generation


@functools.partial(jax.jit, static_argnames=("graphdef", "tokens"))
def _sample(params, non_params, prompt, key, temperature, *, graphdef, tokens: int):
    """``tokens`` ids [N] sampled after ``prompt`` [1, T] at ``temperature`` (0: greedy)."""
    model = nnx.merge(graphdef, params, non_params)
    features, state = model(prompt)
    never = jnp.zeros(model.embed.num_embeddings).at[jnp.array([PAD, START, OOV])].set(-jnp.inf)

    def step(carry, key):
        state, logits = carry
        logits = logits + never
        drawn = jax.random.categorical(key, logits / jnp.maximum(temperature, 1e-6))
        token = jnp.where(temperature > 0, drawn, jnp.argmax(logits, axis=-1))
        features, state = model(token[:, None], None, state)
        return (state, model.logits(features[:, 0])), token[0]

    first = model.logits(features[:, -1])
    return jax.lax.scan(step, (state, first), jax.random.split(key, tokens))[1]


def generate(
    model: LanguageModel,
    prompt_ids: np.ndarray,
    *,
    tokens: int = 200,
    temperature: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """``tokens`` ids sampled one after another by ``model`` in eval mode, after reading
    ``prompt_ids`` [T] (which start with START), each drawn from softmax(logits /
    ``temperature``); ``temperature`` 0 takes the likeliest. PAD, START and OOV (the
    out-of-vocabulary id) are never drawn."""
    check_positive_int("tokens", tokens)
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    graphdef, params, non_params = split_model(model, training=False)
    prompt = jnp.asarray(np.asarray(prompt_ids, np.int32)[None])
    model.embed(prompt)  # checks the ids on the host
    key = jax.random.key(seed)
    return np.asarray(
        _sample(params, non_params, prompt, key, temperature, graphdef=graphdef, tokens=tokens)
    )
