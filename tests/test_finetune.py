"""A classifier fine-tuned from a language model: ``models.LmClassifier``, ``LayerRates`` and
``flaxlstm train imdb --init-from LM_RUN`` (the semi-supervised path)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from shared_data import DATA_DIR, needs_data
from test_cli import run_main

from flaxlstm.data.vocabulary import Vocabulary
from flaxlstm.models import LanguageModel, LmClassifier
from flaxlstm.recipes import LayerRates, Recipe
from flaxlstm.training.runs import load_lm_run, load_run

V, E, H = 40, 8, 12


def params_of(module) -> list[np.ndarray]:
    return [np.asarray(a) for a in jax.tree.leaves(nnx.state(module, nnx.Param))]


def assert_same_layers(model, lm, atol=0.0):
    """``model``'s embedding and LSTM parameters equal ``lm``'s (within ``atol``)."""
    for name in ("embed", "lstm"):
        ours, theirs = params_of(getattr(model, name)), params_of(getattr(lm, name))
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=atol)


def test_concat_pooling_reads_the_last_real_step_the_max_and_the_mean():
    model = LmClassifier(V, E, H, rngs=nnx.Rngs(0))
    ids = np.array([[5, 9, 7, 3, 0, 0], [4, 8, 0, 0, 0, 0]], np.int32)  # post-padded
    lengths = np.array([4, 2])
    outputs, _ = model.lstm(model.embed(jnp.asarray(ids[:, :4])), jnp.asarray(lengths))
    expected = []
    for row, n in enumerate(lengths):
        real = np.asarray(outputs[row, :n])
        expected.append(np.concatenate([real[-1], real.max(0), real.mean(0)]))
    head = model.head
    want = np.asarray(head(jnp.asarray(np.stack(expected))))[:, 0]
    np.testing.assert_allclose(model(jnp.asarray(ids)), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model(jnp.asarray(ids), jnp.asarray(lengths)), want, rtol=1e-5)
    pre = np.array([[0, 0, 5, 9, 7, 3], [0, 0, 0, 0, 4, 8]], np.int32)  # pre-padded: the same
    np.testing.assert_allclose(model(jnp.asarray(pre)), want, rtol=1e-5, atol=1e-6)


def test_load_pretrained_gives_the_language_models_embedding_and_lstm():
    lm = LanguageModel(V, E, H, num_layers=2, rngs=nnx.Rngs(1))
    model = LmClassifier(V, E, H, num_layers=2, rngs=nnx.Rngs(2))
    before = params_of(model.head)
    model.load_pretrained(lm)
    assert_same_layers(model, lm)
    for ours, was in zip(params_of(model.head), before, strict=True):  # the head stays new
        np.testing.assert_array_equal(ours, was)
    ids = jnp.asarray(np.random.default_rng(0).integers(3, V, (2, 7)), jnp.int32)
    features, _ = lm(ids)
    outputs, _ = model.lstm(model.embed(ids))
    np.testing.assert_allclose(outputs, features, rtol=1e-6)  # the same features


def test_layer_rates_scale_the_named_layers_updates_only():
    model = LmClassifier(V, E, H, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
    recipe = Recipe(learning_rate=1e-2, lr_schedule="cosine", clip_norm=1.0)
    scaled = LayerRates(1e-2, "cosine", 1.0, scales=(("embed", 0.25), ("lstm", 0.5)))
    plain = recipe.optimizer(10).update(grads, recipe.optimizer(10).init(params), params)[0]
    tx = scaled.optimizer(10)
    assert tx is scaled.optimizer(10)  # one object per recipe: compiled steps are reused
    updates = tx.update(grads, tx.init(params), params)[0]
    factor = {"embed": 0.25, "lstm": 0.5, "head": 1.0}
    for (path, ours), theirs in zip(
        jax.tree_util.tree_leaves_with_path(updates), jax.tree.leaves(plain), strict=True
    ):
        layer = path[0].key
        np.testing.assert_allclose(ours, factor[layer] * np.asarray(theirs), rtol=1e-6)
        assert np.abs(np.asarray(theirs)).max() > 0


@pytest.fixture(scope="module")
def word_lm(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm") / "word"
    argv = [
        "train", "lm", "--imdb", "--level", "word", "--limit", "300", "--vocab-size", "400",
        "--hidden", "16", "--embedding", "8", "--samples", "0", "--bptt", "20",
        "--batch-size", "8", "--max-steps", "4", "--data-dir", DATA_DIR, "--out", out, "--quiet",
    ]  # fmt: skip
    from flaxlstm.cli import main

    main([str(a) for a in argv])
    return out


@needs_data
def test_train_imdb_init_from_fine_tunes_the_language_models_layers(word_lm, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "train", "imdb", "--init-from", word_lm, "--limit", "200", "--maxlen", "40",
        "--epochs", "1", "--batch-size", "32", "--bucket-width", "20",
        "--pretrained-lr-scale", "1e-9", "--data-dir", DATA_DIR, "--cache-dir", tmp_path / "cache",
        "--nbsvm", "2", "--out", out, "--quiet",
    ]  # fmt: skip
    code, _, err = run_main([str(a) for a in argv], capsys)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "lm-classifier" and config["init_from"] == str(word_lm)
    assert (config["vocab_size"], config["hidden"], config["embedding"]) == (400, 16, 8)
    assert config["nbsvm"] == 2.0  # an ensemble with NBSVM, as --model best's
    assert (
        Vocabulary.load(out / "vocabulary.json").words
        == Vocabulary.load(word_lm / "vocabulary.json").words
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_sequences"] == 200 and 0 <= metrics["test_accuracy"] <= 1
    run, lm = load_run(out), load_lm_run(word_lm)
    # The pretrained layers learned at 1e-9 of the rate: still the language model's ...
    assert_same_layers(run.model, lm.model, atol=1e-8)
    # ... while the new head learned at the full rate.
    fresh = LmClassifier(400, 8, 16, rngs=nnx.Rngs(0))
    assert np.abs(params_of(run.model.head)[1] - params_of(fresh.head)[1]).max() > 1e-4
    assert run.model.nbsvm.weight == 2.0 and np.asarray(run.model.nbsvm.coef[...]).any()
    code, printed, err = run_main(["predict", "--model-dir", str(out), "A fine film."], capsys)
    assert code == 0 and printed.count("\t") == 2, err


@needs_data
def test_bad_init_from_runs_end_in_one_line(word_lm, tmp_path, capsys):
    char = tmp_path / "char"
    char.mkdir()
    config = json.loads((word_lm / "config.json").read_text()) | {"level": "char"}
    (char / "config.json").write_text(json.dumps(config))
    Vocabulary(["a", "b"], "char").save(char / "vocabulary.json")
    base = ["train", "imdb", "--limit", "20", "--data-dir", str(DATA_DIR), "--out", str(tmp_path)]
    for extra, message in [
        (["--init-from", str(tmp_path / "none")], "no 'train lm' run"),
        (["--init-from", str(word_lm), "--dtype", "bfloat16"], "leave out --dtype"),
        (["--init-from", str(word_lm), "--hidden", "8", "--dropout", "0.1"], "leave out --hidden"),
        (["--init-from", str(word_lm), "--pretrained-lr-scale", "0"], "--pretrained-lr-scale"),
    ]:
        code, _, err = run_main([*base, *extra], capsys)
        assert code in (1, 2) and message in err and len(err.strip().splitlines()) == 1, err
