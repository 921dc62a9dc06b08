"""Checkpoints: round trip, damaged and partial checkpoints, incompatible models."""

import glob
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from flaxlstm import LSTM
from flaxlstm.training.checkpoint import Checkpointer, CheckpointError


def train_state(hidden=4, seed=0):
    layer = LSTM(3, hidden, dropout=0.1, rngs=nnx.Rngs(seed))  # has typed PRNG keys
    _, params, rest = nnx.split(layer, nnx.Param, ...)
    return {
        "step": jnp.int32(seed),
        "params": params,
        "rng": rest,
        "opt": optax.adam(1e-3).init(params),
    }


def leaves_equal(a, b):
    a_leaves, b_leaves = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(a_leaves, b_leaves, strict=True):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_keeps_every_leaf_and_the_metadata(tmp_path):
    ck = Checkpointer(tmp_path, max_to_keep=2)
    first, second = train_state(seed=1), train_state(seed=2)
    ck.save(1, first, {"epoch": 1})
    ck.save(2, second, {"epoch": 2})
    ck.save(3, second, {"epoch": 3})
    assert ck.steps() == [2, 3]  # max_to_keep
    restored, meta = ck.restore(train_state(seed=9), 2)
    leaves_equal(restored, second)
    assert meta["epoch"] == 2


def damage_data(directory):
    for path in glob.glob(os.path.join(directory, "state", "**", "d", "*"), recursive=True):
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) // 2)
            f.write(b"\xffdamaged\xff")


def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    ck = Checkpointer(tmp_path)
    ck.save(1, train_state(seed=1), {"epoch": 1})
    ck.save(2, train_state(seed=2), {"epoch": 2})
    damage_data(tmp_path / "2")
    restored, meta = ck.restore_latest(train_state(seed=9))
    assert meta["epoch"] == 1
    leaves_equal(restored, train_state(seed=1))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint 2" in err[0] and "previous" in err[0]
    with pytest.raises(CheckpointError, match="checkpoint 2"):
        ck.restore(train_state(seed=9), 2)


def test_missing_metadata_is_reported_and_skipped(tmp_path, capsys):
    ck = Checkpointer(tmp_path)
    ck.save(1, train_state(seed=1), {"epoch": 1})
    ck.save(2, train_state(seed=2), {"epoch": 2})
    shutil.rmtree(tmp_path / "2" / "meta")
    _, meta = ck.restore_latest(train_state())
    assert meta["epoch"] == 1
    assert "unreadable" in capsys.readouterr().err


def test_an_unfinished_save_is_ignored(tmp_path):
    ck = Checkpointer(tmp_path)
    ck.save(1, train_state(seed=1), {"epoch": 1})
    # What a run killed while saving leaves behind: orbax's temporary directory.
    shutil.copytree(tmp_path / "1", tmp_path / "2.orbax-checkpoint-tmp-123")
    assert Checkpointer(tmp_path).steps() == [1]
    _, meta = Checkpointer(tmp_path).restore_latest(train_state())
    assert meta["epoch"] == 1


def test_incompatible_model_is_refused_in_one_line(tmp_path):
    ck = Checkpointer(tmp_path)
    ck.save(1, train_state(hidden=4), {"epoch": 1})
    with pytest.raises(CheckpointError, match="different model") as info:
        ck.restore_latest(train_state(hidden=5))
    assert "\n" not in str(info.value)


def test_no_checkpoint_gives_none(tmp_path):
    assert Checkpointer(tmp_path).restore_latest(train_state()) is None
