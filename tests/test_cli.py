"""The ``flaxlstm`` command: runs write their results, bad options end in one line."""

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxlstm import LSTM, Bidirectional, native
from flaxlstm.cli import build_parser, from_options, main
from flaxlstm.config import CumsumConfig, ImdbConfig, ParityConfig
from flaxlstm.data.synthetic import cumsum_sequences
from flaxlstm.layers import set_loop
from flaxlstm.models import CumsumModel
from flaxlstm.recipes import IMDB_RECIPE, Recipe
from flaxlstm.training.fit import fit


def run_main(argv, capsys) -> tuple[int, str, str]:
    """main(argv)'s exit status (0 when it returns), stdout and stderr."""
    try:
        main(argv)
        code = 0
    except SystemExit as exit:
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_cumsum_writes_metrics_and_history_and_prints_listing(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "cumsum", "--samples", "300", "--epochs", "2", "--test-samples", "50"]
    code, stdout, stderr = run_main([*argv, "--out", str(out)], capsys)
    assert code == 0, stderr
    where = f"in C on {native.instruction_set()}" if native.available() else "on jax.lax.scan"
    assert stdout.startswith(f"LSTM time steps: {where}")  # the first line: --loop auto's choice
    metrics = json.loads((out / "metrics.json").read_text())
    history = json.loads((out / "history.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["test_loss"] > 0
    assert metrics["test_sequences"] == 50 and metrics["options"]["samples"] == 300
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(history["loss"]) == 2
    assert re.search(r"^Epoch 2/2 - loss \d\.\d{4} - accuracy ", stdout, re.M)
    listing = re.findall(
        r"^Expected: [01] Predicted 0?\.\d{4}$|^Expected: [01] Predicted 1\.0000$", stdout, re.M
    )
    assert len(listing) == 10, stdout
    assert not list(out.glob(".tmp-*"))  # atomic writes leave no temporary files


def test_train_parity_quiet_prints_nothing(tmp_path, capsys):
    out = tmp_path / "parity"
    argv = [
        "train",
        "parity",
        "--samples",
        "200",
        "--epochs",
        "1",
        "--test-samples",
        "40",
        "--embedding",
        "4",
        "--hidden",
        "8",
        "--quiet",
        "--out",
        str(out),
    ]
    code, stdout, stderr = run_main(argv, capsys)
    assert (code, stdout, stderr) == (0, "", "")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "parity" and metrics["test_sequences"] == 40
    assert {"test_accuracy", "test_loss"} <= set(metrics)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "cumsum", "--epochs", "0"], "--epochs: expected a positive integer"),
        (["train", "cumsum", "--batch-size", "-4"], "--batch-size: expected a positive integer"),
        (["train", "parity", "--samples", "0"], "--samples: expected a positive integer"),
        (["train", "parity", "--hidden", "x"], "--hidden: expected a positive integer"),
        (["train", "cumsum", "--learning-rate", "-0.001"], "--learning-rate: expected a positive"),
        (["train", "cumsum", "--learning-rate", "nan"], "--learning-rate: expected a positive"),
        (["train", "cumsum", "--validation-split", "1"], "--validation-split: expected a fract"),
        (["train", "cumsum", "--clip-norm", "-1"], "--clip-norm: expected a number >= 0"),
        (["train", "cumsum", "--lr-schedule", "step"], "invalid choice: 'step'"),
        (["train", "lm", "--loop", "fast"], "argument --loop: invalid choice: 'fast'"),
        (["train", "imdb", "--bucket-width", "-50"], "--bucket-width: expected an integer >= 0"),
        (["train", "sudoku"], "invalid choice: 'sudoku'"),
        (["train"], "required: TASK"),
        ([], "required: COMMAND"),
        (["train", "cumsum", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_options_end_in_one_line(argv, message, capsys):
    code, stdout, stderr = run_main(argv, capsys)
    assert code == 2
    assert stderr.count("\n") == 1 and message in stderr, stderr
    assert "Traceback" not in stderr and stdout == ""


def test_unwritable_out_directory_ends_in_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    argv = ["train", "cumsum", "--samples", "10", "--out", str(blocker / "run")]
    code, stdout, stderr = run_main(argv, capsys)
    assert code == 1
    assert stderr.count("\n") == 1 and "cannot write to --out" in stderr, stderr


def test_console_script_reports_bad_task_in_one_line():
    result = subprocess.run(
        [sys.executable, "-c", "from flaxlstm.cli import main; main()", "train", "nope"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "invalid choice: 'nope'" in result.stderr


def test_imdb_trains_with_clipping_and_cosine_decay_by_default_and_both_can_be_turned_off():
    parse = build_parser().parse_args
    imdb = from_options(ImdbConfig, parse(["train", "imdb"]))
    cumsum = from_options(CumsumConfig, parse(["train", "cumsum"]))
    assert imdb.recipe == IMDB_RECIPE == Recipe(1e-3, "cosine", 1.0)
    assert (cumsum.recipe.clip_norm, cumsum.recipe.lr_schedule) == (0.0, "constant")
    off = parse(["train", "imdb", "--clip-norm", "0", "--lr-schedule", "constant"])
    assert from_options(ImdbConfig, off).recipe == Recipe(1e-3, "constant", 0.0)


def test_options_come_from_the_config_defaults():
    """The command's defaults are the dataclasses' (one place for settings)."""
    parse = build_parser().parse_args
    assert from_options(ParityConfig, parse(["train", "parity"])) == ParityConfig()
    assert from_options(ImdbConfig, parse(["train", "imdb"])) == ImdbConfig()
    args = parse(["train", "cumsum", "--no-restore-best", "--resume", "--epochs", "3"])
    assert from_options(CumsumConfig, args) == CumsumConfig(
        restore_best=False, resume=True, epochs=3
    )


def test_cosine_schedule_spans_every_training_step():
    """fit asks the recipe for an optimizer over all of its steps (the validation split held
    out), and the cosine then reaches 0 exactly at the last one."""
    seen = []

    @dataclasses.dataclass(frozen=True)
    class Spy(Recipe):
        def optimizer(self, total_steps):
            seen.append(total_steps)
            return super().optimizer(total_steps)

    x, y = cumsum_sequences(100, 3, seed=0)
    model = CumsumModel(2, rngs=nnx.Rngs(0))
    recipe = Spy(lr_schedule="cosine")
    fit(model, x, y, epochs=3, batch_size=32, validation_split=0.2, recipe=recipe, quiet=True)
    assert seen == [3 * 3]  # 80 trained examples: 3 batches an epoch
    tx, params = Recipe(lr_schedule="cosine").optimizer(75), jnp.ones(2)
    state, grads = tx.init(params), jnp.ones(2)
    for step in range(76):
        updates, state = tx.update(grads, state, params)
        assert (np.abs(updates).max() == 0) == (step == 75), step


def test_bench_passes_its_options_to_the_checkouts_benchmark(capsys):
    code, _, stderr = run_main(["bench", "--shapes", "nope"], capsys)
    assert code == 2 and "unknown shape or peer 'nope'" in stderr, stderr


CACHED_COMPILE = """
import jax, jax.numpy as jnp
from flaxlstm import cli
events = []
jax.monitoring.register_event_listener(lambda name, **kwargs: events.append(name))
directory = cli.use_compilation_cache()
jax.jit(lambda x: jnp.tanh(x) * 3.0)(jnp.ones(4))  # compiles in well under JAX's 1 s floor
hits, misses = (events.count(f"/jax/compilation_cache/cache_{k}") for k in ("hits", "misses"))
print(directory, hits, misses)
"""


def test_the_command_keeps_compiled_functions_on_disk_for_the_next_run(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path)

    def run(**extra):
        command = [sys.executable, "-c", CACHED_COMPILE]
        done = subprocess.run(command, env=env | extra, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    directory = str(tmp_path / "flaxlstm" / "jax")
    where, hits, compiled = run()
    assert where == directory and hits == "0" and int(compiled) >= 1  # compiled, and written
    assert len(os.listdir(directory)) == int(compiled)
    assert run() == [directory, compiled, "0"]  # all read back: nothing compiled
    assert run(JAX_COMPILATION_CACHE_DIR="") == ["None", "0", "0"]  # turned off


def test_loop_scan_is_said_first_recorded_and_set_on_every_lstm_layer(tmp_path, capsys):
    argv = ["train", "adding", "--samples", "64", "--test-samples", "16", "--steps", "5"]
    argv += ["--epochs", "1", "--hidden", "4", "--loop", "scan", "--out", str(tmp_path)]
    code, stdout, stderr = run_main(argv, capsys)
    assert code == 0, stderr
    assert stdout.splitlines()[0] == "LSTM time steps: on jax.lax.scan (as asked)"
    assert json.loads((tmp_path / "metrics.json").read_text())["options"]["loop"] == "scan"
    rngs = nnx.Rngs(0)  # an LSTM inside a Bidirectional, its reversed twin too
    model = Bidirectional(LSTM(3, 4, return_sequences=True, rngs=rngs), rngs=rngs)
    set_loop(model, "scan")
    layers = [m for _, m in nnx.iter_graph(model) if isinstance(m, LSTM)]
    assert len(layers) == 2 and {layer.loop for layer in layers} == {"scan"}
    x = jax.ShapeDtypeStruct((2, 7, 3), jnp.float32)
    traced = lambda: str(jax.make_jaxpr(lambda x: model(x))(x))  # noqa: E731 (a new trace)
    assert "flaxlstm_LstmForward" not in traced()
    set_loop(model, "auto")
    assert traced().count("flaxlstm_LstmForward") == 2 * native.available()


def test_nbsvm_without_scikit_learn_is_refused_in_one_line_naming_the_extra(
    tmp_path, monkeypatch, capsys
):
    real = importlib.util.find_spec
    absent = lambda name, *args: None if name == "sklearn" else real(name, *args)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", absent)
    for options in (["--model", "best"], ["--model", "bilstm-ngrams", "--nbsvm", "4"]):
        argv = ["train", "imdb", *options, "--out", str(tmp_path / "run")]
        code, stdout, stderr = run_main(argv, capsys)
        assert code == 1 and stderr == (
            "flaxlstm: error: NBSVM (--model best, --nbsvm) needs sklearn:"
            " pip install 'flaxlstm[ngrams]'\n"
        )
        assert not (tmp_path / "run").exists()  # refused before anything is read or written
