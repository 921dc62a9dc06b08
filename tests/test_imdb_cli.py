"""`flaxlstm train imdb`, `predict` and `summary` end to end on a small slice of IMDB."""

import json
import subprocess
import sys

import numpy as np
import pytest
from shared_data import DATA_DIR, needs_data
from test_cli import run_main

from flaxlstm.training.runs import load_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("imdb-run")
    argv = [
        "train", "imdb", "--model", "simple", "--epochs", "2", "--limit", "400",
        "--vocab-size", "300", "--maxlen", "60", "--batch-size", "32", "--bucket-width", "20",
        "--data-dir", str(DATA_DIR), "--cache-dir", str(out / "cache"), "--out", str(out / "run"),
    ]  # fmt: skip
    subprocess.run([sys.executable, "-m", "flaxlstm.cli", *argv, "--quiet"], check=True)
    return out / "run"


@needs_data
def test_train_imdb_writes_everything_a_run_needs(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())
    assert metrics["test_sequences"] == 400
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["test_loss"] > 0
    # No validation split: the final model is the last epoch's, scored after it as well.
    assert metrics["test_accuracy"] == history["test_accuracy"][-1]
    assert len(history["loss"]) == 2 and "val_loss" not in history
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.json", "vocabulary.json", "checkpoints", "model"} <= names


@needs_data
def test_predict_reads_arguments_a_file_and_stdin(run_dir, tmp_path, capsys):
    reviews = ["A wonderful, moving film.", "Dull and far too long; I left early."]
    code, out, err = run_main(["predict", "--model-dir", str(run_dir), *reviews], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 2
    for line, review in zip(lines, reviews, strict=True):
        p, label, text = line.split("\t")
        assert 0 <= float(p) <= 1 and label == ("positive" if float(p) >= 0.5 else "negative")
        assert text == review
    path = tmp_path / "reviews.txt"
    path.write_text("\n".join(reviews) + "\n")
    assert run_main(["predict", "--model-dir", str(run_dir), "--file", str(path)], capsys)[1] == out
    piped = subprocess.run(
        [sys.executable, "-m", "flaxlstm.cli", "predict", "--model-dir", str(run_dir)],
        input="\n".join(reviews),
        capture_output=True,
        text=True,
        check=True,
    )
    assert piped.stdout == out


@needs_data
def test_predict_errors_are_one_line(run_dir, tmp_path, capsys):
    for argv, message in [
        (["predict", "--model-dir", str(tmp_path), "fine"], "no 'train imdb' run"),
        (["predict", "--model-dir", str(run_dir), "<br /><br />"], "no words after tokenisation"),
    ]:
        code, _, err = run_main(argv, capsys)
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1


def test_missing_data_dir_is_one_line(tmp_path, capsys):
    argv = ["train", "imdb", "--limit", "10", "--data-dir", str(tmp_path / "nowhere")]
    code, _, err = run_main(argv + ["--out", str(tmp_path / "run")], capsys)
    assert code == 1 and "nowhere" in err and len(err.strip().splitlines()) == 1


def test_summary_prints_the_seed_parameter_count(capsys):
    code, out, _ = run_main(["summary", "bilstm"], capsys)
    assert code == 0 and "266,601" in out


@needs_data
def test_layer_options_override_the_seeds_and_no_test_scores_only_validation(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "train", "imdb", "--model", "bilstm", "--hidden", "6", "--embedding-dim", "4",
        "--pooling", "max-mean", "--word-dropout", "0.1", "--dropout", "0", "--epochs", "1",
        "--limit", "64", "--vocab-size", "100", "--maxlen", "20", "--batch-size", "16",
        "--ngrams", "1000", "--nbsvm", "1.5", "--no-test", "--validation-split", "0.25",
        "--data-dir", str(DATA_DIR), "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
        "--quiet",
    ]  # fmt: skip
    code, _, err = run_main(argv, capsys)
    assert code == 0, err
    layers = json.loads((out / "config.json").read_text())["layers"]
    assert layers == {"embedding_dim": 4, "hidden": 6, "dropout": 0.0, "word_dropout": 0.1,
                      "pooling": "max-mean", "bigrams": 0, "ngrams": 1000,
                      "nbsvm": 1.5}  # fmt: skip
    model = load_run(out).model  # rebuilt from config.json with these layers, trained n-grams
    assert model.embed.embedding.shape == (100, 4) and model.head.in_features == 2 * 2 * 6
    assert np.count_nonzero(np.asarray(model.ngrams.weight[...])) > 100
    assert np.count_nonzero(np.asarray(model.nbsvm.coef[...])) > 100  # fitted before training
    assert model.head_dropout is None and model.word_dropout.rate == 0.1
    metrics = json.loads((out / "metrics.json").read_text())
    history = json.loads((out / "history.json").read_text())
    assert not [name for name in (*metrics, *history) if name.startswith("test_accuracy")]
    assert metrics["test_sequences"] == 0  # the test split was never read
    assert metrics["val_accuracy"] == history["val_accuracy"][int(np.argmin(history["val_loss"]))]
    code, _, err = run_main([*argv[:-5], "--validation-split", "0", "--out", str(out)], capsys)
    assert code == 1 and "--no-test needs --validation-split" in err


@needs_data
def test_a_movie_slice_reorders_the_training_reviews_before_fit(tmp_path, capsys, monkeypatch):
    from flaxlstm.data import movies
    from flaxlstm.training import tasks

    seen = []
    monkeypatch.setattr(
        tasks, "fit_and_test", lambda config, model, train, *a, **k: seen.append(train)
    )
    asked = []

    def reverse(texts, labels, validation_split):
        asked.append((len(texts), validation_split))
        return np.arange(len(texts))[::-1]

    monkeypatch.setattr(movies, "movie_slice_order", reverse)
    argv = [
        "train", "imdb", "--limit", "32", "--vocab-size", "100", "--maxlen", "20", "--quiet",
        "--data-dir", str(DATA_DIR), "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    for n, extra in enumerate([[], ["--validation-split", "0.25", "--validation-slice", "movies"]]):
        code, _, err = run_main([*argv, *extra, "--out", str(tmp_path / f"run{n}")], capsys)
        assert code == 0, err
    (ids, labels, lengths), (moved_ids, moved_labels, moved_lengths) = seen
    assert asked == [(32, 0.25)]  # the reviews' own texts and labels, once
    np.testing.assert_array_equal(moved_ids, ids[::-1])
    np.testing.assert_array_equal(moved_labels, labels[::-1])
    np.testing.assert_array_equal(moved_lengths, lengths[::-1])
