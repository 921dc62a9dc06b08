"""Checkpoints with orbax-checkpoint: a train state (any pytree) plus JSON metadata.

The state is stored as its flat list of leaves; its structure comes back from the live model
and optimizer at restore time, so a checkpoint from an incompatible model is refused by
comparing leaf shapes and dtypes. Orbax writes each checkpoint into a temporary directory and
renames it when complete, so a run killed while saving leaves the previous checkpoints intact;
a SHA-256 of every leaf, kept in the metadata, detects a checkpoint damaged after the fact,
which is then reported in one line and skipped in favour of the previous good one.

In a job of several processes (``jax.distributed``) every process opens the same directory and
takes part in every save and restore, as orbax's multi-process saving asks (it waits for all
of them at each); the state is replicated, so the files land once, from process 0, and are the
same as one process writes: a run resumes another's with any number of processes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

# Orbax logs every save at INFO; a training run's own lines are enough.
logging.getLogger("absl").setLevel(logging.WARNING)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: damaged, or (the subclass) incompatible."""


class IncompatibleCheckpointError(CheckpointError):
    """A checkpoint written for a model with other parameter shapes or dtypes."""


def _host_leaves(tree: Any) -> tuple[list[np.ndarray], list[bool]]:
    """The leaves of ``tree`` as numpy arrays; typed PRNG keys as their raw key data; an
    array split over several processes (a carried state's rows) gathered whole (every process
    calls this)."""
    leaves, is_key = [], []
    for leaf in jax.tree.leaves(tree):
        key = isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
        leaf = jax.random.key_data(leaf) if key else leaf
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            leaf = multihost_utils.process_allgather(leaf, tiled=True)
        leaves.append(np.asarray(leaf))
        is_key.append(key)
    return leaves, is_key


def _digest(leaves: list[np.ndarray]) -> str:
    sha = hashlib.sha256()
    for leaf in leaves:
        sha.update(np.ascontiguousarray(leaf).tobytes())
    return sha.hexdigest()


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def _signature(leaves: list[np.ndarray]) -> list[str]:
    return [f"{leaf.dtype}{list(leaf.shape)}" for leaf in leaves]


def remove_incomplete(directory: str | os.PathLike) -> list[str]:
    """Delete what saves that never finished left in ``directory`` (orbax's temporary
    directories); call it only while no other process writes there (``files.DirectoryLock``).
    Returns their names."""
    names = [p.name for p in Path(directory).glob("*.orbax-checkpoint-tmp*")]
    for name in names:
        shutil.rmtree(Path(directory) / name, ignore_errors=True)
    return names


class Checkpointer:
    """Numbered checkpoints in ``directory``, the newest ``max_to_keep`` of them kept."""

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    def steps(self) -> list[int]:
        """The numbers of the complete checkpoints, oldest first."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Save ``state`` (a pytree of arrays) and ``meta`` (JSON) as checkpoint ``step``,
        replacing one of that number (left by a run that is now resumed from before it)."""
        leaves, is_key = _host_leaves(state)
        meta = dict(meta, checksum=_digest(leaves), signature=_signature(leaves), is_key=is_key)
        items = {f"{k:05d}": leaf for k, leaf in enumerate(leaves)}
        try:
            if step in self._manager.all_steps():  # a run resumed from before it: replace it
                self._manager.delete(step)
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(items), meta=ocp.args.JsonSave(meta)
                ),
                force=True,
            )
            self._manager.wait_until_finished()
        except Exception as e:  # no space, no permission, ...: the earlier ones stay good
            remove_incomplete(self.directory)
            raise CheckpointError(
                f"could not save checkpoint {step} in {self.directory}: {_first_line(e)}"
            ) from None

    def restore(self, like: Any, step: int, check=None) -> tuple[Any, dict[str, Any]]:
        """Checkpoint ``step`` shaped as ``like`` (the live state), and its metadata;
        ``check(meta)``, when given, may refuse it (by raising) before its arrays are read."""
        try:
            meta = self._manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
            ).meta
        except Exception as e:  # orbax raises many kinds for a damaged directory
            raise CheckpointError(
                f"checkpoint {step} in {self.directory} is unreadable: {_first_line(e)}"
            ) from None
        if check is not None:
            check(meta)
        like_leaves, _ = _host_leaves(like)
        if meta.get("signature") != _signature(like_leaves):
            raise IncompatibleCheckpointError(
                f"checkpoint {step} in {self.directory} was written for a different model"
                " (its parameter shapes or dtypes differ from this model's)"
            )
        try:
            items = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(
                        {f"{k:05d}": a for k, a in enumerate(like_leaves)}
                    )
                ),
            ).state
        except Exception as e:
            raise CheckpointError(
                f"checkpoint {step} in {self.directory} is unreadable: {_first_line(e)}"
            ) from None
        leaves = [np.asarray(items[f"{k:05d}"]) for k in range(len(like_leaves))]
        if _digest(leaves) != meta["checksum"]:
            raise CheckpointError(f"checkpoint {step} in {self.directory} is corrupt (checksum)")
        restored = [
            jax.random.wrap_key_data(leaf) if key else leaf
            for leaf, key in zip(leaves, meta["is_key"], strict=True)
        ]
        return jax.tree.unflatten(jax.tree.structure(like), restored), meta

    def restore_latest(self, like: Any, check=None) -> tuple[Any, dict[str, Any]] | None:
        """The newest good checkpoint, or None when there is none. A damaged one is reported
        in one line on stderr and the one before it is used; an incompatible one is an error
        (``check`` as in ``restore``)."""
        for step in reversed(self.steps()):
            try:
                return self.restore(like, step, check)
            except IncompatibleCheckpointError:
                raise
            except CheckpointError as e:
                print(f"warning: {e}; using the previous checkpoint", file=sys.stderr)
        return None
