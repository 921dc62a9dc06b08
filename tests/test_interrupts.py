"""Runs that survive people and machines: Ctrl-C and SIGTERM mid-epoch, two runs into one
directory, saves that fail part-way, and what a run leaves on disk."""

import errno
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from test_trust import BREAKS_AT_8, X, Y, cli, fit, saved_params

from flaxlstm.cli import main
from flaxlstm.files import DirectoryInUseError, DirectoryLock, atomic_write
from flaxlstm.models import CumsumModel
from flaxlstm.training import fit as supervised
from flaxlstm.training.checkpoint import Checkpointer, CheckpointError
from flaxlstm.training.loop import NonFiniteLossError

STEPS_PER_EPOCH = 1080 // 20  # test_trust.cli: 1,200 sequences less 10 % held out, batch 20


def results(run_dir) -> dict:
    """What must be the same after an interrupted and resumed run: history and test scores."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())
    return {"test_loss": metrics["test_loss"], "test_accuracy": metrics["test_accuracy"], **history}


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """An uninterrupted run of test_trust.cli's task."""
    out = tmp_path_factory.mktemp("whole")
    subprocess.run(cli(out), check=True)
    return out


def start_and_signal(out, signum) -> subprocess.CompletedProcess:
    """Start a run, send ``signum`` once it has checkpointed inside an epoch, wait for it."""
    child = subprocess.Popen(cli(out), stderr=subprocess.PIPE, text=True)
    checkpoints = out / "checkpoints"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        names = [p.name for p in checkpoints.glob("[0-9]*")] if checkpoints.exists() else []
        steps = [int(name) for name in names if name.isdigit()]  # not orbax's temporary ones
        if any(step % STEPS_PER_EPOCH for step in steps):
            child.send_signal(signum)
            break
        time.sleep(0.01)
    _, stderr = child.communicate(timeout=120)
    return subprocess.CompletedProcess(child.args, child.returncode, "", stderr)


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_the_exact_step_and_resume_ends_bit_identical(
    whole, tmp_path, signum, status
):
    stopped = start_and_signal(tmp_path, signum)
    assert stopped.returncode == status, stopped.stderr
    line = stopped.stderr.strip()
    assert "\n" not in line and line.startswith("flaxlstm: interrupted by " + signum.name), line
    assert "continue with --resume" in line
    step = int(re.search(r"\(step (\d+)\)", line).group(1))
    assert Checkpointer(tmp_path / "checkpoints").steps()[-1] == step  # that exact step
    assert not (tmp_path / "metrics.json").exists()

    subprocess.run(cli(tmp_path, "--resume"), check=True)
    assert results(tmp_path) == results(whole)  # bit for bit
    for a, b in zip(saved_params(whole), saved_params(tmp_path), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_second_signal_while_saving_changes_nothing(tmp_path, monkeypatch):
    """Signals during a save are only recorded: the save completes, then training stops
    after the next step, saved too."""
    real_save = Checkpointer.save
    handler = signal.getsignal(signal.SIGINT)  # Python's own, or SIG_IGN in a background job

    def save_with_signals(self, *args):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, twice, in the middle of the save
        os.kill(os.getpid(), signal.SIGINT)
        real_save(self, *args)

    monkeypatch.setattr(Checkpointer, "save", save_with_signals)
    with pytest.raises(Exception, match="interrupted by SIGINT") as stop:
        fit(CumsumModel(8, rngs=nnx.Rngs(0)), checkpoint_dir=tmp_path, checkpoint_every=3)
    assert stop.value.exit_status == 130
    monkeypatch.undo()
    # The save at step 3 completed; the signals then stopped training after step 4, saved.
    assert Checkpointer(tmp_path).steps() == [3, 4]
    assert fit(CumsumModel(8, rngs=nnx.Rngs(0)), checkpoint_dir=tmp_path, resume=True)
    assert signal.getsignal(signal.SIGINT) is handler  # handlers restored


# --- one run per directory ----------------------------------------------------------------

HOLD = "import sys, time; from flaxlstm.files import DirectoryLock; DirectoryLock(sys.argv[1]).__enter__(); print('held', flush=True); time.sleep(60)"  # noqa: E501


def test_a_second_run_into_a_directory_in_use_is_refused_at_once(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"held"
        with pytest.raises(SystemExit) as exit:
            main(["train", "cumsum", "--samples", "50", "--out", str(tmp_path)])
        err = capsys.readouterr().err
        assert exit.value.code == 1 and err.count("\n") == 1
        assert f"{tmp_path} is in use by another run (process {holder.pid})" in err
        assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.json").exists()
    finally:
        holder.kill()  # SIGKILL: the OS releases the lock; the stale file must not block
        holder.wait()
    with DirectoryLock(tmp_path), pytest.raises(DirectoryInUseError, match="in use"):
        DirectoryLock(tmp_path).__enter__()  # a second lock in this very process, too


def test_fit_locks_its_checkpoint_directory(tmp_path):
    with DirectoryLock(tmp_path), pytest.raises(DirectoryInUseError):
        fit(CumsumModel(8, rngs=nnx.Rngs(0)), checkpoint_dir=tmp_path)


def test_the_model_of_every_finished_epoch_is_readable_while_training_goes_on(tmp_path):
    fit(CumsumModel(8, rngs=nnx.Rngs(0)), epochs=2, model_dir=tmp_path / "model")
    model_steps = Checkpointer(tmp_path / "model").steps()
    assert model_steps == [10, 20]  # after epochs 1 and 2 (240 sequences, batch 24)


# --- saves that fail part-way ------------------------------------------------------------


def test_a_save_that_fails_leaves_the_earlier_checkpoints_and_resumes(tmp_path, monkeypatch):
    model = CumsumModel(8, rngs=nnx.Rngs(0))
    reference = fit(model, epochs=3)
    real_save = ocp.CheckpointManager.save

    def no_space_at_step_20(self, step, *args, **kwargs):
        if step == 20:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", no_space_at_step_20)
    with pytest.raises(CheckpointError, match="could not save checkpoint 20 in .*No space") as e:
        fit(CumsumModel(8, rngs=nnx.Rngs(0)), checkpoint_dir=tmp_path)
    assert "\n" not in str(e.value)
    assert Checkpointer(tmp_path).steps() == [10]
    assert not list(tmp_path.glob("*tmp*"))
    monkeypatch.undo()  # the disk has room again
    resumed = fit(CumsumModel(8, rngs=nnx.Rngs(0)), checkpoint_dir=tmp_path, resume=True)
    assert resumed == reference


def test_what_an_interrupted_save_left_is_removed_by_the_next_run(tmp_path):
    fit(CumsumModel(8, rngs=nnx.Rngs(0)), epochs=1, checkpoint_dir=tmp_path)
    left = tmp_path / "20.orbax-checkpoint-tmp-1234"
    left.mkdir()
    (left / "half").write_text("")
    fit(CumsumModel(8, rngs=nnx.Rngs(0)), epochs=1, checkpoint_dir=tmp_path, resume=True)
    assert not left.exists() and Checkpointer(tmp_path).steps() == [10]


# --- what a run leaves on disk ------------------------------------------------------------


def test_run_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        main(["train", "cumsum", "--samples", "60", "--epochs", "1", "--test-samples", "10",
              "--hidden", "4", "--quiet", "--out", str(tmp_path)])  # fmt: skip
    finally:
        os.umask(old)
    for name in ("metrics.json", "history.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_resuming_a_finished_run_says_it_is_complete(tmp_path, capsys):
    argv = ["train", "cumsum", "--samples", "60", "--epochs", "1", "--test-samples", "10",
            "--hidden", "4", "--out", str(tmp_path)]  # fmt: skip
    main([*argv, "--quiet"])
    first = json.loads((tmp_path / "metrics.json").read_text())
    main([*argv, "--resume"])
    assert "The run is complete (2 steps): nothing left to train" in capsys.readouterr().out
    assert json.loads((tmp_path / "metrics.json").read_text())["test_loss"] == first["test_loss"]


def test_an_unwritable_file_is_one_line_naming_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OSError, match=r"^cannot write .*a-file/x.json: Not a directory$"):
        atomic_write(blocker / "x.json", lambda f: f.write(b"{}"))


def test_a_non_finite_loss_without_checkpoints_does_not_promise_one():
    # (non-finite data is refused before training: tests/test_bad_input.py)
    model, breaks = CumsumModel(8, rngs=nnx.Rngs(0)), optax.sgd(BREAKS_AT_8)
    with pytest.raises(NonFiniteLossError, match="no checkpoint directory was given"):
        supervised.fit(model, X, Y, epochs=1, optimizer=breaks, quiet=True)


def test_resuming_from_an_earlier_checkpoint_replaces_the_later_saves(tmp_path, capsys):
    """The newest checkpoint damaged: the run resumes from the one before and saves the same
    steps again (the model directory, too) instead of failing on "already exists"."""
    fit(CumsumModel(8, rngs=nnx.Rngs(0)), epochs=2, checkpoint_dir=tmp_path / "c",
        model_dir=tmp_path / "m")  # fmt: skip
    assert Checkpointer(tmp_path / "c").steps() == [10, 20]
    for leaf in (tmp_path / "c" / "20").rglob("*"):
        if leaf.is_file() and leaf.stat().st_size > 100:
            leaf.write_bytes(b"\0" * leaf.stat().st_size)  # damage the newest
    history = fit(CumsumModel(8, rngs=nnx.Rngs(0)), epochs=2, checkpoint_dir=tmp_path / "c",
                  model_dir=tmp_path / "m", resume=True)  # fmt: skip
    assert "using the previous checkpoint" in capsys.readouterr().err  # resumed from step 10
    assert len(history["loss"]) == 2 and Checkpointer(tmp_path / "m").steps() == [10, 20]
    assert Checkpointer(tmp_path / "c").steps() == [10, 20]
