"""The ``flaxlstm`` command: runs write their results, bad options end in one line."""

import json
import re
import subprocess
import sys

import pytest

from flaxlstm.cli import build_parser, learning_rate, main


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
    imdb, cumsum = parse(["train", "imdb"]), parse(["train", "cumsum"])
    assert (imdb.clip_norm, imdb.lr_schedule) == (1.0, "cosine")
    assert (cumsum.clip_norm, cumsum.lr_schedule) == (0.0, "constant")
    off = parse(["train", "imdb", "--clip-norm", "0", "--lr-schedule", "constant"])
    assert (off.clip_norm, learning_rate(off, 1000)) == (0.0, off.learning_rate)


def test_cosine_schedule_spans_every_training_step():
    args = build_parser().parse_args(
        ["train", "cumsum", "--epochs", "3", "--batch-size", "32", "--validation-split", "0.2"]
        + ["--lr-schedule", "cosine"]
    )
    schedule = learning_rate(args, 1000)  # 800 trained examples: 25 batches a epoch, 75 in all
    assert schedule(0) == args.learning_rate
    assert 0 < schedule(74) < 1e-3 * args.learning_rate and schedule(75) == 0
