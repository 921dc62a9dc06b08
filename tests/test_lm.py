"""Language models (flaxlstm.training.lm, flaxlstm.data.text, LanguageModel, ``train lm`` and
``generate``): the carried state, the chunk layout, the sampled softmax, training that
resumes bit for bit, generation, and the commands."""

import json
import math
import os
import signal
import subprocess
import sys
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxlstm.cell import LSTMState
from flaxlstm.cli import main
from flaxlstm.data import text
from flaxlstm.data.vocabulary import OOV, PAD, START, Vocabulary, tokenize_chars
from flaxlstm.models import LanguageModel
from flaxlstm.recipes import Recipe
from flaxlstm.training import lm
from flaxlstm.training.checkpoint import Checkpointer
from flaxlstm.training.interrupts import TrainingInterrupted
from flaxlstm.training.loop import create_train_state, split_model
from flaxlstm.training.runs import load_lm_run

# One small model shape for the library tests, so that JAX compiles each step once.
V, E, H, L = 10, 8, 16, 2
ROWS, BPTT = 4, 8
FAST = Recipe(learning_rate=1e-2)  # every training here: one optimizer, one compiled step


def make_model(seed: int = 0) -> LanguageModel:
    return LanguageModel(V, E, H, num_layers=L, rngs=nnx.Rngs(seed))


def random_documents(seed: int, count: int, low: int = 2, high: int = 30) -> list[np.ndarray]:
    """``count`` documents of ``low`` to ``high`` ids, each starting with START."""
    rng = np.random.default_rng(seed)
    return [
        np.concatenate([[START], rng.integers(3, V, n - 1)]).astype(np.int32)
        for n in rng.integers(low, high + 1, count)
    ]


def random_carry(seed: int, rows: int = ROWS) -> LSTMState:
    c, h = np.random.default_rng(seed).normal(size=(2, L, rows, H)).astype(np.float32)
    return LSTMState(jnp.asarray(c), jnp.asarray(h))


def params_of(tree) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


@nnx.jit
def forward(net: LanguageModel, ids, state):
    """``net(ids, None, state)``, compiled (once per shape: the eager scan is slow)."""
    return net(ids, None, state)


FWD_ROWS, FWD_STEPS = 3, 5 * BPTT  # the one unbroken shape the tests run


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def eval_split(model):
    """(graphdef, params, non_params) of ``model`` in eval mode."""
    return split_model(model, training=False)


def eval_chunk(eval_split, carry, chunk):
    graphdef, params, non_params = eval_split
    sums, final = lm.lm_eval_step(params, non_params, carry, chunk, graphdef=graphdef)
    return np.asarray(sums, np.float64), final


# ----------------------------------------------------------------------------- 1. carried state


def test_a_stream_read_chunk_by_chunk_with_the_state_carried_equals_one_scan(model):
    ids = np.random.default_rng(0).integers(0, V, (FWD_ROWS, FWD_STEPS)).astype(np.int32)
    whole, whole_state = forward(model, ids, None)
    state, parts = lm.zero_carry(model, FWD_ROWS), []
    for start in range(0, FWD_STEPS, BPTT):
        features, state = forward(model, ids[:, start : start + BPTT], state)
        parts.append(features)
    np.testing.assert_allclose(np.concatenate(parts, axis=1), whole, rtol=1e-5, atol=1e-5)
    for carried, unbroken in zip(state, whole_state, strict=True):
        assert carried.shape == (L, FWD_ROWS, H)
        np.testing.assert_allclose(carried, unbroken, rtol=1e-5, atol=1e-5)
    # Not trivially so: the second chunk started from zeros instead gives other features.
    fresh, _ = forward(model, ids[:, BPTT : 2 * BPTT], lm.zero_carry(model, FWD_ROWS))
    assert np.abs(np.asarray(fresh) - np.asarray(whole[:, BPTT : 2 * BPTT])).max() > 1e-3


def test_the_summed_chunk_losses_equal_the_unbroken_loss_of_every_document(model, eval_split):
    # Lengths 2 (one step), 9 and 17 (documents that end exactly at a chunk's end) and others.
    documents = random_documents(1, 9) + [
        np.array([START, 5], np.int32),
        *random_documents(2, 1, 9, 9),
        *random_documents(3, 1, 17, 17),
    ]
    carry, total, count = lm.zero_carry(model, ROWS), np.zeros(2), 0
    for chunk in text.chunks(documents, ROWS, BPTT):
        sums, carry = eval_chunk(eval_split, carry, chunk)
        total += sums
        count += 1
    assert count > 3  # several chunks per row: the state was carried

    # One forward pass over each whole document (padded after its end: the steps before the
    # padding do not depend on it), scored with the full softmax directly.
    assert max(map(len, documents)) <= FWD_STEPS + 1
    rows = -(-len(documents) // FWD_ROWS) * FWD_ROWS
    padded = np.full((rows, FWD_STEPS + 1), PAD, np.int32)
    for i, document in enumerate(documents):
        padded[i, : len(document)] = document
    features = np.concatenate(
        [forward(model, padded[r : r + FWD_ROWS, :-1], None)[0] for r in range(0, rows, FWD_ROWS)]
    )
    kernel, bias = model.output_layer()
    losses = lm.full_softmax_losses(
        jnp.asarray(features.reshape(-1, features.shape[-1])),
        jnp.asarray(padded[:, 1:].reshape(-1)),
        kernel,
        bias,
    )
    real = np.zeros_like(padded[:, 1:], bool)
    for i, document in enumerate(documents):
        real[i, : len(document) - 1] = True
    expected = float(np.sum(np.asarray(losses, np.float64)[real.reshape(-1)]))
    assert total[1] == sum(len(d) - 1 for d in documents)
    np.testing.assert_allclose(total[0], expected, rtol=1e-5)
    # evaluate_lm reads them the same way.
    scores = lm.evaluate_lm(model, documents, batch_size=ROWS, bptt=BPTT)
    assert scores["tokens"] == total[1]
    np.testing.assert_allclose(scores["loss"], expected / total[1], rtol=1e-5)
    np.testing.assert_allclose(scores["bits"], scores["loss"] / math.log(2), rtol=1e-12)
    np.testing.assert_allclose(scores["perplexity"], math.exp(scores["loss"]), rtol=1e-12)


# ----------------------------------------------------------------------------- 2. resets


def test_a_reset_at_a_document_start_equals_starting_from_zeros(model, eval_split):
    documents = random_documents(4, ROWS, BPTT + 1, BPTT + 1)  # one chunk per row
    plan = text.layout(text.steps_of(documents), ROWS, BPTT)
    chunk = text.chunk_at(documents, plan, 0, BPTT)
    assert chunk.resets.all() and (chunk.lengths == BPTT).all()

    from_zeros, zeros_final = eval_chunk(eval_split, lm.zero_carry(model, ROWS), chunk)
    from_carry, carry_final = eval_chunk(eval_split, random_carry(0), chunk)
    np.testing.assert_array_equal(from_carry, from_zeros)
    for a, b in zip(carry_final, zeros_final, strict=True):
        np.testing.assert_array_equal(a, b)

    # Without the resets the carried state changes the loss: the test above can fail.
    kept = chunk._replace(resets=np.zeros(ROWS, bool))
    carried, _ = eval_chunk(eval_split, random_carry(0), kept)
    assert abs(carried[0] - from_zeros[0]) > 1e-3 * abs(from_zeros[0])

    # Row by row: rows 0 and 2 reset, rows 1 and 3 keep their carry.
    mixed = chunk._replace(resets=np.array([True, False, True, False]))
    _, mixed_final = eval_chunk(eval_split, random_carry(0), mixed)
    for a, b in zip(mixed_final, zeros_final, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_array_equal(a[:, [0, 2]], b[:, [0, 2]])
        assert np.abs(a[:, [1, 3]] - b[:, [1, 3]]).max() > 1e-4

    # The training step resets the same way.
    tx = FAST.optimizer(1)
    graphdef, state = create_train_state(model, tx)
    key = jax.random.key(0)
    results = []
    for carry in (lm.zero_carry(model, ROWS), random_carry(1)):
        fresh = jax.tree.map(jnp.copy, state)  # the step donates its state
        new, _, sums = lm.lm_train_step(
            fresh, carry, chunk, key, graphdef=graphdef, tx=tx, samples=0
        )
        results.append((np.asarray(sums), params_of(new.params)))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_allclose(results[0][0][0], from_zeros[0], rtol=1e-5)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- 3. layout


def test_layout_reads_every_step_once_balanced_and_chunk_at_gives_the_next_tokens():
    rng = np.random.default_rng(5)
    bptt, rows = 4, 3
    documents = random_documents(6, 11, 2, 23)
    documents.append(np.concatenate([[START], rng.integers(3, V, 2 * bptt)]).astype(np.int32))
    steps = text.steps_of(documents)
    np.testing.assert_array_equal(steps, [len(d) - 1 for d in documents])
    plan = text.layout(steps, rows, bptt)
    assert plan.documents.shape == plan.parts.shape and plan.documents.shape[1] == rows

    parts_of = [-(-int(n) // bptt) for n in steps]
    for d, n in enumerate(parts_of):
        where = np.argwhere(plan.documents == d)  # (chunk, row) pairs, by chunk
        assert len(where) == n  # every part exactly once
        assert len(set(where[:, 1])) == 1  # in one row
        np.testing.assert_array_equal(np.diff(where[:, 0]), 1)  # in consecutive chunks
        np.testing.assert_array_equal(plan.parts[where[:, 0], where[:, 1]], np.arange(n))
    for row in range(rows):  # each row reads its documents in their order, then runs out
        read = plan.documents[:, row]
        real = read[read >= 0]
        assert (np.diff(real) >= 0).all()
        assert (read[len(real) :] == -1).all()
    loads = (plan.documents >= 0).sum(axis=0)
    assert loads.sum() == sum(parts_of)
    assert loads.max() - loads.min() <= max(parts_of)
    assert len(plan.documents) == loads.max()  # no chunk where every row has run out

    rebuilt_inputs = {d: [] for d in range(len(documents))}
    rebuilt_targets = {d: [] for d in range(len(documents))}
    for c in range(len(plan.documents)):
        chunk = text.chunk_at(documents, plan, c, bptt)
        assert chunk.inputs.shape == chunk.targets.shape == (rows, bptt)
        assert chunk.inputs.dtype == chunk.targets.dtype == np.int32
        for row in range(rows):
            d, k, n = plan.documents[c, row], plan.parts[c, row], chunk.lengths[row]
            if d < 0:
                assert n == 0 and (chunk.inputs[row] == PAD).all()
                continue
            assert chunk.resets[row] == (k == 0)  # a document starts at a chunk's first step
            assert n == min(bptt, steps[d] - k * bptt) >= 1
            assert (chunk.inputs[row, n:] == PAD).all() and (chunk.targets[row, n:] == PAD).all()
            np.testing.assert_array_equal(chunk.targets[row, : n - 1], chunk.inputs[row, 1:n])
            rebuilt_inputs[d].append(chunk.inputs[row, :n])
            rebuilt_targets[d].append(chunk.targets[row, :n])
    for d, document in enumerate(documents):
        np.testing.assert_array_equal(np.concatenate(rebuilt_inputs[d]), document[:-1])
        np.testing.assert_array_equal(np.concatenate(rebuilt_targets[d]), document[1:])

    # chunks() in a given order is chunk_at over the reordered documents.
    order = rng.permutation(len(documents))
    reordered = [documents[i] for i in order]
    plan = text.layout(text.steps_of(reordered), rows, bptt)
    listed = list(text.chunks(documents, rows, bptt, order))
    assert len(listed) == len(plan.documents)
    for c, chunk in enumerate(listed):
        for a, b in zip(chunk, text.chunk_at(reordered, plan, c, bptt), strict=True):
            np.testing.assert_array_equal(a, b)


def test_layout_refuses_documents_without_a_step_and_bad_sizes():
    with pytest.raises(ValueError, match="at least 2 tokens"):
        text.layout(np.array([3, 0, 2]), 2, 4)
    for rows, bptt in ((0, 4), (2, 0)):
        with pytest.raises(ValueError):
            text.layout(np.array([3]), rows, bptt)


def test_pieces_cut_a_stream_contiguously_each_from_start_and_refuse_too_short_ones():
    ids = np.concatenate([[START], np.arange(3, 106)])  # as encode gives it: START, 103 ids
    cut = text.pieces(ids, 4)
    assert len(cut) == 4 and all(p.dtype == np.int32 and p[0] == START for p in cut)
    np.testing.assert_array_equal(np.concatenate([p[1:] for p in cut]), ids[1:])  # in order
    lengths = [len(p) for p in cut]
    assert max(lengths) - min(lengths) <= 1 and min(lengths) >= 2
    assert [len(p) for p in text.pieces(ids[:5], 4)] == [2, 2, 2, 2]  # just enough
    with pytest.raises(ValueError, match="too few for 4 rows"):
        text.pieces(ids[:4], 4)
    with pytest.raises(ValueError):
        text.pieces(ids, 0)


# ----------------------------------------------------------------------------- 4. sampled softmax

SV, SD = 50, 8


@pytest.fixture(scope="module")
def softmax_case():
    rng = np.random.default_rng(7)
    features = jnp.asarray(rng.normal(size=(32, SD)), jnp.float32)
    rows = jnp.asarray(rng.normal(size=(SV, SD)) * 0.7, jnp.float32)  # logits = f · rowsᵀ + b
    bias = jnp.asarray(rng.normal(size=SV) * 0.5, jnp.float32)
    targets = jnp.asarray(rng.integers(0, SV, 32), jnp.int32)
    return features, targets, rows, bias


def test_full_softmax_losses_are_minus_log_softmax(softmax_case):
    features, targets, rows, bias = softmax_case
    logits = np.asarray(features, np.float64) @ np.asarray(rows, np.float64).T + np.asarray(bias)
    log_z = np.log(np.exp(logits).sum(axis=1))
    expected = log_z - logits[np.arange(len(targets)), np.asarray(targets)]
    np.testing.assert_allclose(lm.full_softmax_losses(*softmax_case), expected, rtol=1e-5)


# sampled_softmax_losses over a batch of keys [S], compiled once per S and sample count.
sampled_over_keys = jax.jit(
    jax.vmap(lm.sampled_softmax_losses, in_axes=(None, None, None, None, 0, None)),
    static_argnums=5,
)
MANY_KEYS = jax.random.split(jax.random.key(1), 4000)


def test_the_sampled_softmax_approaches_the_full_one_with_many_samples(softmax_case):
    full = np.asarray(lm.full_softmax_losses(*softmax_case), np.float64)
    keys = jax.random.split(jax.random.key(0), 4)
    many = np.asarray(sampled_over_keys(*softmax_case, keys, 20000)).mean(axis=0)
    assert np.abs(many - full).max() / full.mean() < 0.02
    np.testing.assert_allclose(many.mean(), full.mean(), rtol=0.01)
    few = np.asarray(sampled_over_keys(*softmax_case, MANY_KEYS, 4))[0]  # one draw of 4
    assert np.abs(few - full).mean() / full.mean() > 0.1  # a rough estimate


def test_the_sampled_partition_function_is_unbiased_and_counts_the_target_once(softmax_case):
    features, _, rows, bias = softmax_case
    logits = np.asarray(features, np.float64) @ np.asarray(rows, np.float64).T + np.asarray(bias)
    # The likeliest classes as targets: counting exp(z_y) twice would overshoot by far.
    targets = jnp.asarray(logits.argmax(axis=1), jnp.int32)
    z_y = logits[np.arange(len(targets)), np.asarray(targets)]
    z = np.exp(logits).sum(axis=1)
    assert (np.exp(z_y) / z).mean() > 0.2
    losses = sampled_over_keys(features, targets, rows, bias, MANY_KEYS, 4)
    z_hat = np.exp(np.asarray(losses, np.float64) + z_y)  # [keys, N]: exp(loss + z_y) = Ẑ
    np.testing.assert_allclose(z_hat.mean(axis=0), z, rtol=0.05)
    assert (z_hat >= np.exp(z_y) * (1 - 1e-5)).all()  # the target's own term is always in


def test_log_uniform_draws_with_its_stated_probabilities():
    n = 100_000
    ids, log_q = lm.log_uniform(jax.random.key(3), SV, n)
    ids, log_q = np.asarray(ids), np.asarray(log_q)
    assert ids.dtype == np.int32 and ids.shape == log_q.shape == (n,)
    assert ids.min() >= 0 and ids.max() < SV
    k = np.arange(SV)
    q = np.log((k + 2) / (k + 1)) / np.log(SV + 1)
    np.testing.assert_allclose(q.sum(), 1.0, rtol=1e-12)
    frequencies = np.bincount(ids, minlength=SV) / n
    assert np.abs(frequencies - q).max() < 0.005
    chi2 = n * np.sum((frequencies - q) ** 2 / q)
    assert chi2 < 100, chi2  # 49 degrees of freedom: about 49 ± 10
    np.testing.assert_allclose(log_q, np.log(q[ids]), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- 5. training


def pattern_documents(seed: int, count: int) -> list[np.ndarray]:
    """Documents that repeat 3, 4, ..., 9 from a random place: easy to learn."""
    rng = np.random.default_rng(seed)
    cycle = np.arange(3, V)
    return [
        np.concatenate([[START], np.roll(cycle, -rng.integers(7))[np.arange(n) % 7]]).astype(
            np.int32
        )
        for n in rng.integers(12, 40, count)
    ]


TRAIN_DOCS = pattern_documents(0, 16)  # 16 chunks in epoch 1, 17 in epoch 2
VAL_DOCS = pattern_documents(1, 4)


def train(tmp=None, *, resume=False, **kwargs):
    """``train_lm`` of a fresh model: (model, history)."""
    net = make_model()
    options = dict(batch_size=ROWS, bptt=BPTT, epochs=2, recipe=FAST, seed=0, eval_every=8)
    options |= dict(quiet=True, checkpoint_dir=tmp, resume=resume) | kwargs
    return net, lm.train_lm(net, TRAIN_DOCS, VAL_DOCS, **options)


def interrupt_at(monkeypatch, call: int):
    """Make the ``call``-th ``lm_train_step`` send SIGINT to this process (as Ctrl-C)."""
    original, calls = lm.lm_train_step, [0]

    def step(*args, **kwargs):
        out = original(*args, **kwargs)
        calls[0] += 1
        if calls[0] == call:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(lm, "lm_train_step", step)


def without_timing(history: dict) -> dict:
    return {k: v for k, v in history.items() if k != "tokens_per_second"}


@pytest.fixture(scope="module")
def whole_run():
    before = lm.evaluate_lm(make_model(), VAL_DOCS, batch_size=ROWS, bptt=BPTT)["loss"]
    net, history = train()
    return before, params_of(nnx.state(net, nnx.Param)), history


def test_training_lowers_the_validation_loss(whole_run):
    before, _, history = whole_run
    per_epoch = len(lm.epoch_plan(TRAIN_DOCS, ROWS, BPTT, 0, 1)[1].documents)
    steps = per_epoch + len(lm.epoch_plan(TRAIN_DOCS, ROWS, BPTT, 0, 2)[1].documents)
    assert history["step"][-1] == steps
    assert history["tokens"][-1] == 2 * sum(len(d) - 1 for d in TRAIN_DOCS)
    expected = {"step", "tokens", "loss", "tokens_per_second"}
    assert set(history) == expected | {"val_loss", "val_perplexity", "val_bits"}
    assert np.isclose(before, math.log(V), rtol=0.3)  # about uniform at first
    assert history["val_loss"][-1] < 0.6 * before
    assert history["loss"][-1] < history["loss"][0]
    np.testing.assert_allclose(
        history["val_bits"], np.array(history["val_loss"]) / math.log(2), rtol=1e-12
    )


def test_an_interrupted_run_resumes_bit_for_bit(whole_run, tmp_path, monkeypatch):
    _, whole_params, whole_history = whole_run
    call = 20  # epoch 2, chunk 4: after three evaluations and the end of epoch 1
    interrupt_at(monkeypatch, call)
    with pytest.raises(TrainingInterrupted, match=rf"SIGINT .*\(step {call}\)") as info:
        train(tmp_path)
    assert info.value.signum == signal.SIGINT and info.value.exit_status == 130
    assert Checkpointer(tmp_path).steps()[-1] == call  # the very step under way
    monkeypatch.undo()

    net, history = train(tmp_path, resume=True)
    assert without_timing(history) == without_timing(whole_history)
    for a, b in zip(params_of(nnx.state(net, nnx.Param)), whole_params, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_sampled_softmax_run_resumes_bit_for_bit(tmp_path, monkeypatch):
    options = dict(samples=4, epochs=1, eval_every=None)
    whole, whole_history = train(**options)
    interrupt_at(monkeypatch, 3)
    with pytest.raises(TrainingInterrupted):
        train(tmp_path, **options)
    monkeypatch.undo()
    net, history = train(tmp_path, resume=True, **options)
    assert without_timing(history) == without_timing(whole_history)
    whole_params = params_of(nnx.state(whole, nnx.Param))
    for a, b in zip(params_of(nnx.state(net, nnx.Param)), whole_params, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_second_run_or_other_settings_in_a_checkpoint_directory_are_refused(tmp_path):
    train(tmp_path, epochs=1, max_steps=3)
    steps = Checkpointer(tmp_path).steps()
    assert steps == [3]
    with pytest.raises(ValueError, match="already holds checkpoints of a run: resume it"):
        train(tmp_path, epochs=1, max_steps=3)
    for other in (dict(bptt=BPTT // 2), dict(seed=1), dict(samples=4), dict(max_steps=4)):
        with pytest.raises(ValueError, match="other data or settings"):
            train(tmp_path, resume=True, **{"epochs": 1, "max_steps": 3, **other})
    with pytest.raises(ValueError):  # another carried state's shape: refused as well
        train(tmp_path, resume=True, epochs=1, max_steps=3, batch_size=ROWS // 2)
    assert Checkpointer(tmp_path).steps() == steps
    net = make_model()
    before = params_of(nnx.state(net, nnx.Param))
    history = lm.train_lm(
        net, TRAIN_DOCS, VAL_DOCS, batch_size=ROWS, bptt=BPTT, max_steps=3, recipe=FAST,
        checkpoint_dir=tmp_path, resume=True, quiet=True, eval_every=8,
    )  # fmt: skip
    assert history["step"] == [3]  # complete: nothing more trained, its model restored
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(before, params_of(nnx.state(net, nnx.Param)), strict=True)
    )


def test_train_lm_refuses_bad_options():
    for kwargs, pattern in (
        (dict(samples=V), r"samples must lie in \[0, 10\)"),
        (dict(samples=-1), "samples must lie"),
        (dict(bptt=0), "bptt"),
        (dict(batch_size=0), "batch_size"),
        (dict(checkpoint_every=2), "need a checkpoint_dir"),
    ):
        with pytest.raises(ValueError, match=pattern):
            lm.train_lm(make_model(), TRAIN_DOCS, VAL_DOCS, quiet=True, **kwargs)
    with pytest.raises(ValueError, match="no documents"):
        lm.train_lm(make_model(), TRAIN_DOCS, [], quiet=True)


# ----------------------------------------------------------------------------- 6. generate


@pytest.fixture(scope="module")
def generator():
    """A model whose likeliest tokens would always be PAD, START or OOV, were they allowed."""
    net = make_model(3)
    bias = net.output_bias  # logits = features · rowsᵀ + bias
    bias[...] = bias[...].at[PAD].set(30.0).at[START].set(20.0).at[OOV].set(25.0)
    assert np.asarray(net.output_layer()[1])[PAD] == 30.0
    return net


def greedy_by_hand(net, prompt, tokens):
    """Each time the likeliest next token but PAD, START, OOV, by one unbroken forward pass
    over what there is so far (padded after it: the steps before do not depend on it)."""
    ids, unmasked = list(prompt), []
    for _ in range(tokens):
        padded = np.full((FWD_ROWS, FWD_STEPS), PAD, np.int32)
        padded[0, : len(ids)] = ids
        features, _ = forward(net, padded, None)
        logits = np.array(net.logits(features[0, len(ids) - 1]))
        unmasked.append(int(np.argmax(logits)))
        logits[[PAD, START, OOV]] = -np.inf
        ids.append(int(np.argmax(logits)))
    return np.array(ids[len(prompt) :]), unmasked


PROMPT = np.array([START, 4, 5, 6], np.int32)


def test_greedy_generation_is_the_argmax_step_by_step(generator):
    ids = lm.generate(generator, PROMPT, tokens=12, temperature=0.0)
    again = lm.generate(generator, PROMPT, tokens=12, temperature=0.0, seed=7)
    expected, unmasked = greedy_by_hand(generator, PROMPT, 12)
    assert set(unmasked) <= {PAD, START, OOV}  # without the mask they would win
    assert ids.shape == (12,)
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_array_equal(again, expected)


def test_sampling_never_draws_pad_start_or_oov_and_follows_its_seed(generator):
    ids = lm.generate(generator, PROMPT, tokens=12, temperature=1.0, seed=1)
    assert ids.shape == (12,) and ids.min() > OOV and ids.max() < V
    np.testing.assert_array_equal(ids, lm.generate(generator, PROMPT, tokens=12, seed=1))
    hot = lm.generate(generator, PROMPT, tokens=12, temperature=50.0, seed=2)
    assert hot.min() > OOV


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(temperature=-0.5), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(tokens=0), "tokens"),
        (dict(tokens=-3), "tokens"),
    ],
)
def test_generate_refuses_bad_options(generator, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        lm.generate(generator, PROMPT, **kwargs)


# ----------------------------------------------------------------------------- 7. the commands

WORDS = "the a cat dog sat ran on under mat log and then quickly slowly".split()


def sample_text(chars: int = 3000) -> str:
    rng = np.random.default_rng(11)
    lines, size = [], 0
    while size < chars:
        line = " ".join(rng.choice(WORDS, rng.integers(4, 10))) + "."
        lines.append(line[0].upper() + line[1:])
        size += len(line) + 1
    return "\n".join(lines) + "\n"


def run_main(argv, capsys) -> tuple[int, str, str]:
    """main(argv)'s exit status (0 when it returns), stdout and stderr."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exit:
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# Both levels at one vocabulary size (18: the 15 words, the 15 likeliest characters) and
# learning rate (a constant schedule): the runs share their compiled steps.
TINY = ["--hidden", "16", "--embedding", "8", "--vocab-size", "18", "--quiet"]


def lm_args(text_file, out, *extra):
    return ["train", "lm", "--text", text_file, "--level", "char", *TINY, "--bptt", "16",
            "--batch-size", "4", "--max-steps", "10", "--eval-every", "5", "--lr-schedule",
            "constant", "--out", out, *extra]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "story.txt"
    path.write_text(sample_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def char_run(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("char")
    main([str(a) for a in lm_args(corpus, out)])
    return out


def model_params(run_dir) -> list[np.ndarray]:
    return params_of(nnx.state(load_lm_run(run_dir).model, nnx.Param))


def test_train_lm_char_writes_its_run(char_run, corpus):
    metrics = json.loads((char_run / "metrics.json").read_text())
    history = json.loads((char_run / "history.json").read_text())
    config = json.loads((char_run / "config.json").read_text())
    vocabulary = json.loads((char_run / "vocabulary.json").read_text())
    assert metrics["task"] == "lm" and metrics["steps"] == 10
    assert metrics["val_loss"] > 0 and metrics["tokens_per_second"] > 0
    np.testing.assert_allclose(metrics["val_bits"], metrics["val_loss"] / math.log(2))
    np.testing.assert_allclose(metrics["val_perplexity"], math.exp(metrics["val_loss"]))
    assert metrics["tokens_trained"] == history["tokens"][-1] <= 10 * 4 * 16
    assert history["step"] == [5, 10] and history["val_loss"][-1] == metrics["val_loss"]
    assert vocabulary["level"] == "char"
    counts = Counter(text.text_file(corpus, 0.02)[0])  # the training text's characters
    likeliest = sorted(counts, key=lambda c: (-counts[c], c))[:15]
    assert vocabulary["words"] == likeliest and len(counts) > 15
    assert config["task"] == "lm" and config["level"] == "char"
    assert config["vocab_size"] == 18 and config["hidden"] == 16
    run = load_lm_run(char_run)  # model/ holds the trained model
    assert run.vocabulary.level == "char" and run.model.embed.num_embeddings == config["vocab_size"]
    assert (char_run / "model").is_dir()


def test_generate_prints_the_prompt_and_the_sampled_characters(char_run, capsys):
    argv = ["generate", "--model-dir", char_run, "--prompt", "The cat", "--tokens", "20"]
    code, stdout, stderr = run_main([*argv, "--temperature", "0"], capsys)
    assert code == 0, stderr
    run = load_lm_run(char_run)
    prompt = run.vocabulary.encode(["The cat"])[0]
    ids = lm.generate(run.model, prompt, tokens=20, temperature=0.0)
    assert stdout == "The cat" + run.vocabulary.decode(ids) + "\n"
    assert len(ids) == 20 and ids.min() > OOV
    assert len(stdout) == len("The cat") + 20 + 1  # one character per token
    code, again, _ = run_main([*argv, "--temperature", "0", "--seed", "5"], capsys)
    assert code == 0 and again == stdout


def test_train_lm_word_level_and_generate(tmp_path, corpus, capsys):
    out = tmp_path / "word"
    code, _, stderr = run_main(lm_args(corpus, out, "--level", "word"), capsys)
    assert code == 0, stderr
    vocabulary = Vocabulary.load(out / "vocabulary.json")
    assert vocabulary.level == "word" and set(vocabulary.words) == set(WORDS) | {"."}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 10 and metrics["val_loss"] > 0
    assert json.loads((out / "config.json").read_text())["level"] == "word"
    code, stdout, stderr = run_main(
        ["generate", "--model-dir", out, "--prompt", "the cat", "--tokens", "20"], capsys
    )
    assert code == 0, stderr
    words = stdout.split()  # words joined by spaces, "." a token of its own
    assert words[:2] == ["the", "cat"] and len(words) == 22
    assert set(words) <= set(WORDS) | {"."}


def test_train_lm_init_from_starts_from_the_source_runs_model(char_run, corpus, tmp_path, capsys):
    out = tmp_path / "again"
    # A learning rate of 1e-12: Adam's one step moves no weight by more than ~1e-12.
    argv = lm_args(corpus, out, "--init-from", char_run, "--max-steps", "1",
                   "--learning-rate", "1e-12", "--hidden", "32", "--seed", "3")  # fmt: skip
    code, _, stderr = run_main(argv, capsys)
    assert code == 0, stderr
    config = json.loads((out / "config.json").read_text())
    assert config["hidden"] == 16 and config["init_from"] == str(char_run)  # the source's size
    assert config["data"] == {"imdb": False, "text": str(corpus), "validation_split": 0.02,
                              "limit": None}  # fmt: skip
    assert (out / "vocabulary.json").read_text() == (char_run / "vocabulary.json").read_text()
    for started, source in zip(model_params(out), model_params(char_run), strict=True):
        np.testing.assert_allclose(started, source, atol=1e-8)
    # So it scores the held-out text as the source's final model did.
    source_loss = json.loads((char_run / "metrics.json").read_text())["val_loss"]
    loss = json.loads((out / "metrics.json").read_text())["val_loss"]
    np.testing.assert_allclose(loss, source_loss, rtol=1e-5)
    fresh = lm_args(
        corpus, tmp_path / "other", "--init-from", char_run, "--validation-split", "0.1"
    )
    code, _, stderr = run_main(fresh, capsys)
    assert code == 1 and stderr.count("\n") == 1
    assert "held out another part (validation_split 0.02 there, 0.1 here)" in stderr


def test_train_lm_init_from_grow_stacks_new_layers_on_the_sources(
    char_run, corpus, tmp_path, capsys
):
    out = tmp_path / "grown"
    argv = lm_args(corpus, out, "--init-from", char_run, "--grow", "1", "--max-steps", "1",
                   "--learning-rate", "1e-12")  # fmt: skip
    code, _, stderr = run_main(argv, capsys)
    assert code == 0, stderr
    config = json.loads((out / "config.json").read_text())
    assert config["layers"] == 2 and config["grow"] == 1 and config["hidden"] == 16
    grown, source = load_lm_run(out).model, load_lm_run(char_run).model
    assert len(grown.lstm.layers) == 2 and len(source.lstm.layers) == 1

    def loaded(model):  # what the grown model takes from the source
        return params_of(nnx.state((model.embed, model.lstm.layers[0]), nnx.Param))

    for a, b in zip(loaded(grown), loaded(source), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-8)
    # The output layer read the old top layer: it starts afresh, as the new layer does.
    assert not np.allclose(grown.output_rows[...], source.output_rows[...], atol=1e-3)
    with pytest.raises(ValueError, match="fewer layers than the source"):
        source.load_language_model(grown)


def test_bad_lm_commands_end_in_one_line(tmp_path, corpus, capsys):
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"caf\xe9 \xff\xfe not utf-8\n" * 50)
    not_lm = tmp_path / "imdb-run"
    not_lm.mkdir()
    (not_lm / "config.json").write_text(json.dumps({"model": "simple", "vocab_size": 10}))
    Vocabulary(["a", "b"]).save(not_lm / "vocabulary.json")
    tiny = [*TINY, "--out", tmp_path / "out"]
    cases = [
        (["train", "lm", *tiny], 1, "give one of --text FILE or --imdb"),
        (["train", "lm", "--text", corpus, "--imdb", *tiny], 1, "give one of --text"),
        (["train", "lm", "--text", tmp_path / "missing.txt", *tiny], 1, "missing.txt"),
        (["train", "lm", "--text", binary, *tiny], 1, "is not UTF-8 text"),
        (["train", "lm", "--text", corpus, "--limit", "5", *tiny], 1, "--limit applies to --imdb"),
        (["train", "lm", "--text", corpus, "--samples", "18", *tiny], 1, "below the vocabulary"),
        (["train", "lm", "--text", corpus, "--level", "byte", *tiny], 2, "--level"),
        (["train", "lm", "--text", corpus, "--bptt", "0", *tiny], 2, "--bptt"),
        (["generate", "--model-dir", not_lm], 1, "holds no 'train lm' run"),
        (["train", "lm", "--text", corpus, "--init-from", not_lm, *tiny], 1, "no 'train lm' run"),
        (["train", "lm", "--text", corpus, "--grow", "1", *tiny], 1, "--grow N stacks"),
        (["generate", "--model-dir", tmp_path / "nothing"], 1, "no config.json"),
        (["generate", "--model-dir", not_lm, "--temperature", "-1"], 2, "--temperature"),
        (["generate", "--model-dir", not_lm, "--tokens", "0"], 2, "--tokens"),
    ]
    for argv, status, message in cases:
        code, _, stderr = run_main(argv, capsys)
        assert code == status, (argv, stderr)
        assert stderr.count("\n") == 1 and message in stderr, (argv, stderr)


KILL_AT_STEP_8 = """
import os, signal, sys
from flaxlstm import cli
from flaxlstm.training import lm
original, calls = lm.lm_train_step, [0]
def step(*args, **kwargs):
    out = original(*args, **kwargs)
    calls[0] += 1
    if calls[0] == 8:
        os.kill(os.getpid(), signal.SIGKILL)
    return out
lm.lm_train_step = step
cli.main(sys.argv[1:])
"""


def test_a_train_lm_run_killed_with_sigkill_resumes_to_the_same_result(
    char_run, corpus, tmp_path, capsys
):
    out = tmp_path / "killed"
    argv = [str(a) for a in lm_args(corpus, out)]
    env = dict(os.environ, JAX_DEFAULT_MATMUL_PRECISION="highest")  # as conftest.py here
    killed = subprocess.run([sys.executable, "-c", KILL_AT_STEP_8, *argv], env=env, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "metrics.json").exists()
    assert max(Checkpointer(out / "checkpoints").steps()) == 5  # (evaluated), then killed at 8
    assert json.loads((out / "history.json").read_text())["step"] == [5]  # saved as evaluated

    code, _, stderr = run_main([*argv, "--resume"], capsys)
    assert code == 0, stderr
    whole = json.loads((char_run / "metrics.json").read_text())
    resumed = json.loads((out / "metrics.json").read_text())
    for name in ("val_loss", "val_bits", "val_perplexity", "steps", "tokens_trained"):
        assert resumed[name] == whole[name], name
    history = json.loads((out / "history.json").read_text())
    assert without_timing(history) == without_timing(
        json.loads((char_run / "history.json").read_text())
    )
    for a, b in zip(model_params(out), model_params(char_run), strict=True):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- 8. vocabulary


def test_a_character_vocabulary_round_trips_and_keeps_its_level(tmp_path):
    review = "Great film!<br />Loved it, 10/10 \u00e9"
    vocabulary = Vocabulary.fit([tokenize_chars(review)], 100, "char")
    assert vocabulary.level == "char" and "\n" in vocabulary.words and "<" not in vocabulary.words
    ids = vocabulary.encode([review])[0]
    assert ids[0] == START and len(ids) == 1 + len(review.replace("<br />", "\n"))
    assert vocabulary.decode(ids[1:]) == "Great film!\nLoved it, 10/10 \u00e9"
    assert vocabulary.decode([START, *ids[1:3], PAD]) == "<start>Gr"
    small = Vocabulary.fit([tokenize_chars(review)], 6, "char")  # 3 characters kept
    assert small.decode(small.encode(["xyz"])[0][1:]) == "<oov>" * 3

    path = tmp_path / "vocabulary.json"
    vocabulary.save(path)
    loaded = Vocabulary.load(path)
    assert loaded.level == "char" and loaded.words == vocabulary.words
    np.testing.assert_array_equal(loaded.encode([review])[0], ids)

    data = json.loads(path.read_text())
    del data["level"]  # a file written before character vocabularies
    path.write_text(json.dumps(data))
    old = Vocabulary.load(path)
    assert old.level == "word" and old.words == vocabulary.words
    data["level"] = "byte"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unknown level"):
        Vocabulary.load(path)
    with pytest.raises(ValueError, match="level"):
        Vocabulary(["a"], "byte")
