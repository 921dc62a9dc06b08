"""Data parallelism over processes: ``jax.distributed`` with 2 processes on 127.0.0.1 (CPU
collectives over gloo) trains as one process does; the checkpoints land once (every process
takes part in saving them), and a run of either layout resumes the other's checkpoints to the
same result; a SIGTERM to one process stops both after the same step.

The processes run ``TRAIN``, the script README.md quotes ("Several machines"),
with a few lines after it that write each process's model and history for the test to read.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

try:
    from jax._src.lib import _jax  # the CPU client's collectives: gloo over TCP
except ImportError:  # pragma: no cover - another jaxlib layout
    _jax = None

pytestmark = pytest.mark.skipif(
    not hasattr(_jax, "make_gloo_tcp_collectives"),
    reason="this jaxlib has no gloo CPU collectives, which processes on the CPU need",
)

TIMEOUT = 180  # seconds for a whole job: a hang fails the test instead of blocking CI

TRAIN = """\
import sys

import jax

# python train.py RUN_DIR PROCESS PROCESSES PORT [--resume], once per process (PROCESS 0, 1, ...)
run_dir, process, processes, port = sys.argv[1], *map(int, sys.argv[2:5])
if processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # collectives on the CPU
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=processes, process_id=process
    )

from flax import nnx  # noqa: E402

from flaxlstm.data.synthetic import cumsum_sequences  # noqa: E402
from flaxlstm.models import CumsumModel  # noqa: E402
from flaxlstm.training.fit import fit  # noqa: E402

x, y = cumsum_sequences(300, 10, seed=0)  # every process holds all of the data
model = CumsumModel(8, rngs=nnx.Rngs(0))
history = fit(
    model, x, y, epochs=2, batch_size=24, validation_split=0.1, quiet=True,
    checkpoint_dir=f"{run_dir}/checkpoints", checkpoint_every=5, resume="--resume" in sys.argv,
    model_dir=f"{run_dir}/model", history_path=f"{run_dir}/history.json",
)  # every process returns the same model and history; process 0 wrote the files
"""

REPORT = """
import json  # noqa: E402

import numpy as np  # noqa: E402

leaves = [np.asarray(a) for a in jax.tree.leaves(nnx.state(model, nnx.Param))]
np.savez(f"{run_dir}.process{process}.npz", *leaves, history=json.dumps(history))
"""

# 270 training sequences (30 held out) in batches of 24: 12 steps an epoch, 24 in all;
# checkpoints at steps 5, 10, 12 (epoch 1), 15, 20, 24 (epoch 2), of which the last 2 stay.
KEPT = [20, 24]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(script: Path, run_dir: Path, processes: int, *extra: str):
    """Start ``script`` in ``processes`` processes on a free port (one process runs without
    jax.distributed); returns them and their log files."""
    port = str(free_port())
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    logs = [run_dir.with_name(f"{run_dir.name}.process{i}.log") for i in range(processes)]
    procs = []
    try:
        for i in range(processes):
            argv = [sys.executable, str(script), str(run_dir), str(i), str(processes), port]
            with logs[i].open("w") as log:
                procs.append(
                    subprocess.Popen([*argv, *extra], stdout=log, stderr=subprocess.STDOUT, env=env)
                )
    except BaseException:
        stop(procs)
        raise
    return procs, logs


def wait(procs, logs: list[Path], deadline: float) -> None:
    """Wait for every process until ``deadline`` (time.monotonic); kill what is left."""
    try:
        for proc in procs:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        pytest.fail(f"{len(procs)} processes did not finish in {TIMEOUT} s:\n{tails(logs)}")
    finally:
        stop(procs)


def stop(procs) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def job(tmp_path: Path, run_dir: Path, processes: int, *extra: str) -> list[dict]:
    """Run ``TRAIN`` in ``processes`` processes and return each one's
    {"params": [...], "history": {...}}."""
    script = tmp_path / "train.py"
    script.write_text(TRAIN + REPORT)
    procs, logs = start(script, run_dir, processes, *extra)
    wait(procs, logs, time.monotonic() + TIMEOUT)
    failed = [i for i, proc in enumerate(procs) if proc.returncode != 0]
    assert not failed, f"process(es) {failed} failed:\n{tails(logs)}"
    results = []
    for i in range(processes):
        with np.load(run_dir.with_name(f"{run_dir.name}.process{i}.npz")) as saved:
            params = [saved[f"arr_{k}"] for k in range(len(saved.files) - 1)]
            results.append({"params": params, "history": json.loads(str(saved["history"]))})
    return results


def tails(logs: list[Path]) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs)


def assert_same_training(a: dict, b: dict) -> None:
    """The same history and parameters up to float rounding."""
    assert a["history"].keys() == b["history"].keys()
    for name in a["history"]:
        np.testing.assert_allclose(a["history"][name], b["history"][name], rtol=1e-5, atol=1e-6)
    for x, y in zip(a["params"], b["params"], strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def directories(root: Path) -> list[str]:
    """The directories under ``root`` (orbax names the files in them by hashes)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir())


def cut_after(source: Path, target: Path, step: int) -> None:
    """``target``: a copy of run ``source`` as if it had been killed after checkpoint ``step``
    (the later checkpoints and models removed, and the history, written at the end)."""
    shutil.copytree(source, target)
    for name in ("checkpoints", "model"):
        for later in (target / name).iterdir():
            if later.name.isdigit() and int(later.name) > step:
                shutil.rmtree(later)
    (target / "history.json").unlink()


def test_two_processes_train_as_one_and_resume_each_others_checkpoints(tmp_path):
    from flaxlstm.training.checkpoint import Checkpointer

    two = job(tmp_path, tmp_path / "two", 2)
    # Both processes hold the same replicated model and the same history, bit for bit.
    assert two[0]["history"] == two[1]["history"]
    for a, b in zip(two[0]["params"], two[1]["params"], strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(two[0]["history"]["loss"]) == 2 and "val_loss" in two[0]["history"]

    # One process, without jax.distributed, trains the same; and it resumes the 2-process
    # run's checkpoints from the middle of epoch 2 (step 20 of 24) to the same end.
    cut_after(tmp_path / "two", tmp_path / "two-then-one", KEPT[0])
    one = job(tmp_path, tmp_path / "one", 1)[0]
    assert_same_training(two[0], one)
    resumed_by_one = job(tmp_path, tmp_path / "two-then-one", 1, "--resume")[0]
    assert_same_training(resumed_by_one, one)

    # One set of checkpoints, the same files as one process writes.
    for run in ("two", "one"):
        assert Checkpointer(tmp_path / run / "checkpoints").steps() == KEPT
        assert Checkpointer(tmp_path / run / "model").steps() == [12, 24]  # every epoch
    for name in ("checkpoints", "model"):
        assert directories(tmp_path / "two" / name) == directories(tmp_path / "one" / name)
    assert not list((tmp_path / "two").rglob("*tmp*")), "an unfinished save was left"
    written = json.loads((tmp_path / "two" / "history.json").read_text())
    assert written == two[0]["history"]

    # Two processes resume the 1-process run's checkpoints to the same end.
    cut_after(tmp_path / "one", tmp_path / "one-then-two", KEPT[0])
    resumed_by_two = job(tmp_path, tmp_path / "one-then-two", 2, "--resume")
    assert resumed_by_two[0]["history"] == resumed_by_two[1]["history"]
    assert_same_training(resumed_by_two[0], one)
    assert Checkpointer(tmp_path / "one-then-two" / "checkpoints").steps() == KEPT


def test_a_signal_to_one_process_stops_every_process_at_the_same_step(tmp_path):
    from flaxlstm.training.checkpoint import Checkpointer

    script = tmp_path / "long.py"  # long enough to be stopped in the middle
    script.write_text(TRAIN.replace("epochs=2,", "epochs=100,"))
    run_dir = tmp_path / "stopped"
    checkpoints = run_dir / "checkpoints"
    deadline = time.monotonic() + TIMEOUT
    procs, logs = start(script, run_dir, 2)
    try:
        while time.monotonic() < deadline and all(proc.poll() is None for proc in procs):
            if checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir()):
                procs[1].send_signal(signal.SIGTERM)  # to the process that writes nothing
                break
            time.sleep(0.05)
    finally:
        wait(procs, logs, deadline)
    # Both processes stop after the same step, which process 0 saved.
    found = [
        re.search(r"TrainingInterrupted: (interrupted by SIGTERM .*)", log.read_text())
        for log in logs
    ]
    assert all(found), tails(logs)
    assert found[0].group(1) == found[1].group(1)
    step = int(re.search(r"\(step (\d+)\)", found[0].group(1)).group(1))
    assert Checkpointer(checkpoints).steps()[-1] == step
    assert not (run_dir / "history.json").exists()
