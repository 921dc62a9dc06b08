"""One device or many, one process or several: the batch split over a mesh of devices, and
the few places where the processes of a ``jax.distributed`` job must agree.

The same code runs everywhere: after ``jax.distributed.initialize()`` every process's devices
join the mesh, every process holds the whole data and runs the same steps, ``global_arrays``
places its part of each batch, process 0 alone writes the run's files (``primary``), and
every process stops at the same step on a signal (``agreed``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def data_parallel(devices=None) -> tuple[NamedSharding, NamedSharding]:
    """Shardings over a one-axis mesh ``data`` of ``devices`` (all that JAX sees by default):
    batches split along their first axis, parameters and optimizer state replicated."""
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
