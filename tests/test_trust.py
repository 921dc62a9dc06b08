"""Trusting a long run: kill and resume, restore-best, early stopping, several devices,
non-finite losses, and checkpoints that survive bad requests."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from test_train import params_of

from flaxlstm.data.synthetic import cumsum_sequences
from flaxlstm.models import CumsumModel
from flaxlstm.training import fit as supervised
from flaxlstm.training.checkpoint import Checkpointer
from flaxlstm.training.loop import NonFiniteLossError

X, Y = cumsum_sequences(240, 10, seed=0)
VAL = cumsum_sequences(60, 10, seed=1)


def fit(model, **kwargs):
    kwargs = {"epochs": 3, "batch_size": 24, "quiet": True, "seed": 0, **kwargs}
    return supervised.fit(model, X, Y, **kwargs)


# --- killed with SIGKILL in the middle of an epoch, then resumed ---------------------------


def cli(out, *extra):
    argv = ["train", "cumsum", "--samples", "1200", "--test-samples", "200", "--epochs", "3",
            "--batch-size", "20", "--hidden", "8", "--checkpoint-every", "5", "--quiet",
            "--out", str(out), *extra]  # fmt: skip
    return [sys.executable, "-m", "flaxlstm.cli", *argv]


def saved_params(run_dir):
    ck = Checkpointer(run_dir / "model")
    like = nnx.state(CumsumModel(8, rngs=nnx.Rngs(0)), nnx.Param)
    return [np.asarray(a) for a in jax.tree.leaves(ck.restore_latest(like)[0])]


def test_a_run_killed_mid_epoch_resumes_to_the_same_result(tmp_path):
    steps_per_epoch = 1080 // 20  # 10% of 1200 sequences are held out for validation
    subprocess.run(cli(tmp_path / "whole"), check=True)

    killed = subprocess.Popen(cli(tmp_path / "killed"))
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and killed.poll() is None:
        done = checkpoints.glob("[0-9]*") if checkpoints.exists() else []
        steps = [int(p.name) for p in done if p.name.isdigit()]  # not orbax's temporary ones
        if any(s > steps_per_epoch and s % steps_per_epoch for s in steps):  # in epoch 2
            killed.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    assert killed.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "killed" / "metrics.json").exists()

    subprocess.run(cli(tmp_path / "killed", "--resume"), check=True)
    for name in ("metrics.json", "history.json"):
        whole = json.loads((tmp_path / "whole" / name).read_text())
        resumed = json.loads((tmp_path / "killed" / name).read_text())
        if name == "metrics.json":
            whole, resumed = (
                {
                    k: v
                    for k, v in m.items()
                    if k not in ("train_seconds", "seconds_per_epoch", "options")
                }
                for m in (whole, resumed)
            )
        assert resumed == whole  # bit for bit: the same floats
    for a, b in zip(
        saved_params(tmp_path / "whole"), saved_params(tmp_path / "killed"), strict=True
    ):
        np.testing.assert_array_equal(a, b)


# --- restore-best and early stopping -----------------------------------------------------

NOISY = optax.adam(0.3)  # a learning rate so high that val_loss goes up and down


def test_the_model_kept_is_the_best_epoch_unless_asked_otherwise():
    best = CumsumModel(8, rngs=nnx.Rngs(0))
    history = fit(best, epochs=6, validation_data=VAL, optimizer=NOISY)
    val = history["val_loss"]
    assert np.argmin(val) != len(val) - 1, "this setting must overfit for the test to mean much"
    np.testing.assert_allclose(supervised.evaluate(best, *VAL)["loss"], min(val), rtol=1e-6)
    last = CumsumModel(8, rngs=nnx.Rngs(0))
    fit(last, epochs=6, validation_data=VAL, optimizer=NOISY, restore_best=False)
    np.testing.assert_allclose(supervised.evaluate(last, *VAL)["loss"], val[-1], rtol=1e-6)


def test_early_stopping_stops_after_patience_epochs_without_improvement():
    model = CumsumModel(8, rngs=nnx.Rngs(0))
    history = fit(model, epochs=20, validation_data=VAL, optimizer=NOISY, patience=2)
    val = history["val_loss"]
    assert len(val) < 20
    best = int(np.argmin(val))
    assert len(val) == best + 3  # the best epoch, then two without improvement


# --- data parallelism over devices ---------------------------------------------------------

PARALLEL = """
import jax, numpy as np
from flax import nnx
from flaxlstm.training import fit as supervised
from flaxlstm.data.synthetic import cumsum_sequences
from flaxlstm.models import CumsumModel
assert len(jax.devices()) == 2, jax.devices()
x, y = cumsum_sequences(250, 10, seed=0)  # 250 = 10 full batches of 24 and one of 10
results = []
for devices in (jax.devices()[:1], jax.devices()):
    model = CumsumModel(8, rngs=nnx.Rngs(0))
    history = supervised.fit(model, x, y, epochs=2, batch_size=24, quiet=True, devices=devices)
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    results.append((history, [np.asarray(a) for a in leaves]))
(h1, p1), (h2, p2) = results
np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-5)
for a, b in zip(p1, p2):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
try:
    supervised.fit(CumsumModel(8, rngs=nnx.Rngs(0)), x, y, batch_size=25, quiet=True)
except ValueError as e:
    print("refused:", e)
"""


def test_two_devices_train_as_one():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    out = subprocess.run(
        [sys.executable, "-c", PARALLEL], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "refused: batch_size 25 must be a multiple of the 2 devices" in out


# --- non-finite loss -------------------------------------------------------------------------


def BREAKS_AT_8(count):
    """A learning rate that turns NaN at the 8th update."""
    return jnp.where(count >= 7, jnp.nan, 1e-3)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    model = CumsumModel(8, rngs=nnx.Rngs(0))
    before = params_of(model)
    with pytest.raises(NonFiniteLossError, match=r"step \d+ \(epoch 1, batch \d+\)") as info:
        fit(model, optimizer=optax.sgd(BREAKS_AT_8), checkpoint_dir=tmp_path, checkpoint_every=1)
    step = int(str(info.value).split("step ")[1].split()[0])
    assert step == 8 and "batch 8" in str(info.value) and "\n" not in str(info.value)
    assert max(Checkpointer(tmp_path).steps()) < step  # nothing saved after the bad step
    for a, b in zip(before, params_of(model), strict=True):
        np.testing.assert_array_equal(a, b)  # the model is left as it was
    # The last good checkpoint goes on (the same optimizer, a sane learning rate).
    sane = optax.sgd(lambda count: 1e-3)  # the same optimizer state as BREAKS_AT_8's
    history = fit(model, optimizer=sane, checkpoint_dir=tmp_path, resume=True)
    assert np.isfinite(history["loss"]).all()


# --- bad requests leave what was saved intact --------------------------------------------------


def test_resuming_with_another_model_or_settings_is_refused_and_harms_nothing(tmp_path):
    fit(CumsumModel(8, rngs=nnx.Rngs(0)), epochs=1, checkpoint_dir=tmp_path)
    steps = Checkpointer(tmp_path).steps()
    with pytest.raises(ValueError, match="different model"):
        fit(CumsumModel(9, rngs=nnx.Rngs(0)), epochs=1, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="other data or settings"):
        fit(CumsumModel(8, rngs=nnx.Rngs(0)), batch_size=12, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="already holds checkpoints of a run: resume it"):
        fit(CumsumModel(8, rngs=nnx.Rngs(0)), epochs=1, checkpoint_dir=tmp_path)  # a new run
    with pytest.raises(ValueError, match="other data or settings"):  # a 1-epoch run
        fit(CumsumModel(8, rngs=nnx.Rngs(0)), epochs=2, checkpoint_dir=tmp_path, resume=True)
    assert Checkpointer(tmp_path).steps() == steps
    model = CumsumModel(8, rngs=nnx.Rngs(0))
    history = fit(model, epochs=1, checkpoint_dir=tmp_path, resume=True)
    assert len(history["loss"]) == 1  # the run is complete: its history, nothing trained
