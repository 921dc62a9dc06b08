"""One device or many, one process or several: the batch split over a mesh of devices, and
the few places where the processes of a ``jax.distributed`` job must agree.

The same code runs everywhere: ``join_job`` starts a process of a job (``flaxlstm train
--coordinator ...``, or as SLURM / Open MPI launched it), every process's devices join the
mesh, every process builds the same data and runs the same steps, ``global_arrays`` places its
own rows of each batch, every process takes part in saving the checkpoints and process 0 alone
writes the run's other files (``primary``), every process stops at the same step on a signal
(``agreed``), and an error or a lost process ends the others at once (``HEARTBEAT_S``,
``one_line``).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# A process that stops answering is declared dead after HEARTBEAT_S (JAX's default: 100 s),
# and the others end then; a process that ends waits at most SHUTDOWN_S for the others.
HEARTBEAT_S = 10
SHUTDOWN_S = 10


def cluster_found() -> str | None:
    """The launcher of a job of several processes whose settings ``jax.distributed.
    initialize()`` reads by itself: "SLURM" (``srun`` with several tasks) or "Open MPI"
    (``mpirun -np N``, N > 1); None outside one."""
    if "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return "SLURM"
    if (
        "OMPI_MCA_orte_hnp_uri" in os.environ
        and int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    ):
        return "Open MPI"
    return None


def join_job(coordinator: str | None, num_processes: int | None, process_id: int | None) -> bool:
    """Join a job of several processes (``jax.distributed.initialize``) before JAX runs
    anything: at ``coordinator`` ("HOST:PORT", where process 0 listens) as process
    ``process_id`` of ``num_processes``, or, with none of the three, as SLURM or Open MPI
    launched it (``cluster_found``). On the CPU the processes' collectives go over gloo (TCP).
    Returns whether this process is in a job of several; a one-line ValueError for settings
    that do not go together."""
    given = [value is not None for value in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError(
            "--coordinator, --num-processes and --process-id go together: give all three or none"
        )
    if not any(given) and cluster_found() is None:
        return False
    if all(given):
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"--process-id must lie in [0, {num_processes}), got {process_id}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator, num_processes, process_id,
        heartbeat_timeout_seconds=HEARTBEAT_S, shutdown_timeout_seconds=SHUTDOWN_S,
    )  # fmt: skip
    return True


def one_line(error: BaseException, in_job: bool) -> str:
    """What ends a process, in one line; in a job of several processes, which process it is,
    and for a failed collective, that another process has likely ended."""
    message = " ".join(str(error).split()) or type(error).__name__
    if not in_job:
        return message
    if isinstance(error, jax.errors.JaxRuntimeError):
        message = f"the processes lost each other (has another one ended?): {message[:300]}"
    return f"process {jax.process_index()} of {jax.process_count()}: {message}"


def data_parallel(devices=None) -> tuple[NamedSharding, NamedSharding]:
    """Shardings over a one-axis mesh ``data`` of ``devices`` (all that JAX sees by default):
    batches split along their first axis, parameters and optimizer state replicated."""
    mesh = Mesh(np.array(devices if devices is not None else jax.devices()), ("data",))
    return NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())


def check_split(batch_size, devices: int) -> None:
    """A one-line ValueError unless ``batch_size`` rows split evenly over ``devices``."""
    if isinstance(batch_size, int) and batch_size % devices:
        raise ValueError(
            f"batch_size {batch_size} must be a multiple of the {devices} devices it is split over"
        )


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
