"""``flaxlstm train`` on several processes, as README's "Several machines" starts them: the plain
form (examples/several-machines/by-hand.sh, one command per host) run on 127.0.0.1 as
background processes. Two processes train as one does (``train parity``, ``train lm``), write
one run directory, and one process resumes a two-process language model's checkpoints (its
carried state included) to the same end; a process killed with SIGKILL ends the others at
once, each with one line."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_multiprocess import cut_after, free_port, pytestmark, stop, tails  # noqa: F401

from flaxlstm.training.checkpoint import Checkpointer

ROOT = Path(__file__).resolve().parents[1]
BY_HAND = ROOT / "examples" / "several-machines" / "by-hand.sh"
TIMEOUT = 120  # seconds for a job: a hang fails the test instead of blocking CI
BOUND = 30  # seconds within which the others end after one process dies
PARITY = ["parity", "--samples", "480", "--test-samples", "100", "--epochs", "2"]
PARITY += ["--hidden", "8", "--embedding", "4", "--checkpoint-every", "4"]
LM = ["lm", "--level", "char", "--max-steps", "12", "--batch-size", "8", "--bptt", "16"]
LM += ["--hidden", "8", "--embedding", "4", "--eval-every", "4", "--checkpoint-every", "4"]


def environment() -> dict:
    """The tests' environment, with this Python's ``flaxlstm`` first on the PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return dict(os.environ, PATH=path, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR="")


def launch(out: Path, processes: int, task: list[str]) -> tuple[list, list[Path]]:
    """``flaxlstm train TASK --out OUT`` alone (``processes`` 1), or as ``processes`` processes
    of one job through by-hand.sh; returns the processes and their logs."""
    port, env = free_port(), environment()
    logs = [out.with_name(f"{out.name}.{i}.log") for i in range(processes)]
    procs = []
    for i, log in enumerate(logs):
        job = [str(BY_HAND), f"127.0.0.1:{port}", str(processes), str(i)] if processes > 1 else []
        argv = job + task + ["--out", str(out)] if job else ["flaxlstm", "train", *task]
        argv += [] if job else ["--out", str(out)]
        with log.open("w") as file:
            procs.append(subprocess.Popen(argv, stdout=file, stderr=subprocess.STDOUT, env=env))
    return procs, logs


def run(out: Path, processes: int, task: list[str]) -> dict:
    """``launch`` to the end; the run's history and metrics."""
    procs, logs = launch(out, processes, task)
    try:
        for proc in procs:
            proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{processes} process(es) did not finish in {TIMEOUT} s:\n{tails(logs)}")
    finally:
        stop(procs)
    assert all(proc.returncode == 0 for proc in procs), tails(logs)
    return {name: json.loads((out / f"{name}.json").read_text()) for name in ("history", "metrics")}


def assert_same(a: dict, b: dict) -> None:
    """The same history and scores, to float rounding (timings aside)."""
    assert a["history"].keys() == b["history"].keys()
    for name, values in a["history"].items():
        if "second" not in name:
            np.testing.assert_allclose(values, b["history"][name], rtol=1e-5, atol=1e-6)
    scores = [name for name in a["metrics"] if name.startswith(("test_", "val_"))]
    assert scores
    for name in scores:
        np.testing.assert_allclose(a["metrics"][name], b["metrics"][name], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "text.txt"
    words = np.random.default_rng(0).choice(["a cat", "the dog", "sat", "on", "mats."], 900)
    path.write_text("\n".join(" ".join(line) for line in np.array_split(words, 60)))
    return path


def test_train_parity_on_two_processes_trains_as_one(tmp_path):
    one, two = run(tmp_path / "one", 1, PARITY), run(tmp_path / "two", 2, PARITY)
    assert_same(one, two)
    # one run directory, written once: the files of one process's run
    names = {p.name for p in (tmp_path / "two").iterdir()}
    assert names == {p.name for p in (tmp_path / "one").iterdir()}
    steps = Checkpointer(tmp_path / "one" / "checkpoints").steps()
    assert Checkpointer(tmp_path / "two" / "checkpoints").steps() == steps
    logs = [(tmp_path / f"two.{i}.log").read_text() for i in (0, 1)]
    assert "test_accuracy" in logs[0] and "test_accuracy" not in logs[1]  # process 0 reports


def test_train_lm_on_two_processes_trains_as_one_and_one_process_resumes_it(tmp_path, text):
    task = [*LM, "--text", str(text)]
    one, two = run(tmp_path / "one", 1, task), run(tmp_path / "two", 2, task)
    assert_same(one, two)
    # killed after checkpoint 8 of 12 (the carried state's rows split over the 2 processes)
    cut_after(tmp_path / "two", tmp_path / "resumed", 8)
    resumed = run(tmp_path / "resumed", 1, [*task, "--resume"])
    assert_same(one, resumed)


def test_a_killed_process_ends_the_others_at_once_with_one_line_each(tmp_path):
    out = tmp_path / "killed"
    procs, logs = launch(out, 2, [*PARITY, "--epochs", "200"])
    checkpoints, deadline = out / "checkpoints", time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline and all(proc.poll() is None for proc in procs):
            if checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir()):
                break  # both are training
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        procs[0].wait(timeout=BOUND)
        ended = time.monotonic() - killed
    except subprocess.TimeoutExpired:
        pytest.fail(f"process 0 still ran {BOUND} s after process 1 was killed:\n{tails(logs)}")
    finally:
        stop(procs)
    assert procs[0].returncode == 1 and ended < BOUND
    lines = re.findall(r"flaxlstm: error: .*", logs[0].read_text())
    assert len(lines) == 1 and lines[0].startswith("flaxlstm: error: process 0 of 2: "), tails(logs)
    assert "Traceback" not in logs[0].read_text()
    assert Checkpointer(checkpoints).steps()  # what was saved stays good


def test_readme_quotes_the_scripts_it_names():
    readme = (ROOT / "README.md").read_text()
    for name in ("by-hand.sh", "slurm.sbatch"):
        body = (ROOT / "examples" / "several-machines" / name).read_text()
        assert body.strip() in readme, f"README.md does not quote examples/several-machines/{name}"
