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

``train_lm`` trains in the one training loop (``flaxlstm.training.loop``), as ``fit`` does:
its checkpoints hold the carried state too, so that a resumed run ends bit for bit as an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from flaxlstm.cell import LSTMState
from flaxlstm.checks import check_positive_int
from flaxlstm.data.text import Chunk, chunk_at, chunks, layout, steps_of
from flaxlstm.data.vocabulary import OOV, PAD, START
from flaxlstm.models import LanguageModel
from flaxlstm.recipes import Recipe
from flaxlstm.recurrent import make_mask
from flaxlstm.training import loop
from flaxlstm.training.loop import TrainState, create_train_state, split_model
from flaxlstm.training.processes import check_split, data_parallel, global_arrays

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


def epoch_plan(documents: Sequence[np.ndarray], rows: int, bptt: int, seed: int, epoch: int):
    """The documents in epoch ``epoch``'s order (drawn from [seed, epoch]) and their
    ``layout``."""
    order = np.random.default_rng([seed, epoch]).permutation(len(documents))
    ordered = [documents[i] for i in order]
    return ordered, layout(steps_of(ordered), rows, bptt)


def run_steps(documents, rows: int, bptt: int, seed: int, epochs: int, max_steps) -> int:
    """The steps a run takes: its epochs' chunks (``epoch_plan``), at most ``max_steps``."""
    plans = (epoch_plan(documents, rows, bptt, seed, epoch)[1] for epoch in range(1, epochs + 1))
    steps = sum(len(plan.documents) for plan in plans)
    return min(steps, max_steps or steps)


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
    devices=None,
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
      checkpoint_dir, checkpoint_every, resume, model_dir, devices, quiet: as ``fit``'s (the
        rows of every chunk and of the carried state split over ``devices``).
      history_path: where the history is written, after every evaluation (JSON).
    Returns:
      the history: per evaluation the step, tokens trained, mean training loss and training
      tokens per second since the last evaluation, and ``val_loss``, ``val_perplexity``,
      ``val_bits``.
    """
    rows, replicated = data_parallel(devices)
    _check_lm_options(
        model, documents, validation, batch_size, bptt, epochs, max_steps, samples,
        eval_every, checkpoint_every, resume, checkpoint_dir, rows.mesh.size,
    )  # fmt: skip
    total = run_steps(documents, batch_size, bptt, seed, epochs, max_steps)
    tx = (recipe or Recipe()).optimizer(total)
    graphdef, state = create_train_state(model, tx)
    objective = NextTokens(
        model=model, documents=documents, validation=validation, graphdef=graphdef,
        eval_graphdef=split_model(model, training=False)[0], tx=tx, key=jax.random.key(seed),
        samples=samples, batch_size=batch_size, bptt=bptt, seed=seed, epochs=epochs,
        max_steps=max_steps, rows=rows,
    )  # fmt: skip
    plan = loop.Plan(
        epochs=epochs, steps=total, eval_every=eval_every, checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every, resume=resume, model_dir=model_dir,
        history_path=history_path, quiet=quiet, replicated=replicated,
        carried=NamedSharding(rows.mesh, PartitionSpec(None, "data")),  # [L, B, H]
    )  # fmt: skip
    return loop.train(model, objective, plan, state, zero_carry(model, batch_size))


def _check_lm_options(
    model, documents, validation, batch_size, bptt, epochs, max_steps, samples, eval_every,
    checkpoint_every, resume, checkpoint_dir, devices,
) -> None:  # fmt: skip
    for name, value in (("batch_size", batch_size), ("bptt", bptt), ("epochs", epochs)):
        check_positive_int(name, value)
    for name, value in (
        ("max_steps", max_steps),
        ("eval_every", eval_every),
        ("checkpoint_every", checkpoint_every),
    ):
        check_positive_int(name, value, optional=True)
    vocabulary = model.embed.num_embeddings
    if not 0 <= samples < vocabulary:
        raise ValueError(f"samples must lie in [0, {vocabulary}) (the vocabulary), got {samples}")
    if (resume or checkpoint_every) and checkpoint_dir is None:
        raise ValueError("resume and checkpoint_every need a checkpoint_dir")
    check_split(batch_size, devices)
    if not len(documents) or not len(validation):
        raise ValueError("no documents to train on or to validate on")


@dataclasses.dataclass(frozen=True, eq=False)
class NextTokens:
    """``train_lm``'s objective for the loop (``loop.Objective``): chunks of the documents in a
    new order every epoch, the LSTM state carried from chunk to chunk, scored on the
    validation documents with the full softmax."""

    model: LanguageModel  # the shape of its zero state
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
    max_steps: int | None
    rows: NamedSharding  # each chunk's rows split over the devices

    @property
    def settings(self) -> dict:
        data = {"documents": len(self.documents), "tokens": int(sum(map(len, self.documents)))}
        names = ("batch_size", "bptt", "seed", "epochs", "max_steps", "samples")
        return data | {name: getattr(self, name) for name in names}

    def batches(self, epoch: int, first: int):
        ordered, plan = epoch_plan(self.documents, self.batch_size, self.bptt, self.seed, epoch)
        count = len(plan.documents)
        return count, (chunk_at(ordered, plan, c, self.bptt) for c in range(first, count))

    def step(self, state: TrainState, carry: LSTMState, chunk: Chunk):
        chunk = global_arrays(chunk, self.rows)
        return lm_train_step(
            state, carry, chunk, self.key, graphdef=self.graphdef, tx=self.tx, samples=self.samples
        )

    def scores(self, state: TrainState) -> dict[str, float]:
        total = loss_totals(
            self.model,
            self.eval_graphdef,
            state.params,
            state.non_params,
            self.validation,
            self.batch_size,
            self.bptt,
        )
        return {f"val_{k}": v for k, v in scores(total[0], total[1]).items()}

    def entry(self, sums: np.ndarray, seconds: float, step: int, seen: float) -> dict:
        return {
            "step": step,
            "tokens": int(seen),
            "loss": sums[0] / max(sums[1], 1.0),
            "tokens_per_second": sums[1] / max(seconds, 1e-9),
        }


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
