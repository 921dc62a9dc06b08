"""Runs on disk and the tasks' small trained models: load a ``flaxlstm train imdb`` run
directory (its model, vocabulary and config), read a run's history, train a cumsum model in
seconds. Nothing here draws (flaxlstm.lab.plots does)."""

from __future__ import annotations

import json
import os
from typing import NamedTuple

from flax import nnx

from flaxlstm.config import InspectCumsumConfig
from flaxlstm.data import synthetic
from flaxlstm.data.vocabulary import Vocabulary
from flaxlstm.models import (
    MODELS,
    CumsumModel,
    LanguageModel,
    LmClassifier,
    SentimentClassifier,
)
from flaxlstm.recipes import Recipe
from flaxlstm.training.checkpoint import Checkpointer
from flaxlstm.training.fit import fit
from flaxlstm.training.loop import History


class Run(NamedTuple):
    """A ``flaxlstm train imdb`` run directory, loaded: the trained model, the vocabulary it
    encodes reviews with, and its config (model, vocab_size, maxlen, ...)."""

    model: SentimentClassifier | LmClassifier
    vocabulary: Vocabulary
    config: dict


def imdb_model(config: dict) -> SentimentClassifier | LmClassifier:
    """A seed's model at a run's vocabulary size and seed (its parameters initialised), or
    the ``LmClassifier`` of a run started ``--init-from`` a language model."""
    if config["model"] == LM_CLASSIFIER:
        sizes = (config["vocab_size"], config["embedding"], config["hidden"])
        options = {name: config[name] for name in ("num_layers", "dropout")}
        options["nbsvm"] = config.get("nbsvm", 0.0)  # (runs before NBSVM: none)
        return LmClassifier(*sizes, **options, rngs=nnx.Rngs(config["seed"]))
    dtype = config.get("dtype", "float32")  # runs written before mixed precision: float32
    return MODELS[config["model"]](
        vocab_size=config["vocab_size"],
        dtype=None if dtype == "float32" else dtype,
        rngs=nnx.Rngs(config["seed"]),
        **config.get("layers", {}),  # runs written before the layer options: the seed's
    )


LM_CLASSIFIER = "lm-classifier"  # the model of a 'train imdb --init-from' run
RUN_FILES = ("config.json", "vocabulary.json")  # and the model checkpoints in model/


def load_run(run_dir: str | os.PathLike) -> Run:
    """The model, vocabulary and config of a ``train imdb`` run directory (config.json,
    vocabulary.json, model/), or a one-line ValueError saying what is missing."""
    config, vocabulary = _read_run_files(run_dir, "train imdb")
    if config.get("model") not in (*MODELS, LM_CLASSIFIER):
        raise ValueError(f"{run_dir}/config.json names no model of {sorted(MODELS)}")
    for key in ("vocab_size", "seed"):
        if not isinstance(config.get(key), int):
            raise ValueError(f"{run_dir}/config.json gives no integer {key}")
    model = imdb_model(config)
    _restore_model(model, run_dir)
    return Run(model, vocabulary, config)


class LmRun(NamedTuple):
    """A ``flaxlstm train lm`` run directory, loaded: the model, its vocabulary, its config."""

    model: LanguageModel
    vocabulary: Vocabulary
    config: dict


def language_model(config: dict) -> LanguageModel:
    """The ``LanguageModel`` that a ``train lm`` run's config describes (initialised)."""
    return LanguageModel(
        config["vocab_size"],
        config["embedding"],
        config["hidden"],
        num_layers=config["layers"],
        dropout=config["dropout"],
        tie=config["tie"],
        rngs=nnx.Rngs(config["seed"]),
    )


def load_lm_run(run_dir: str | os.PathLike) -> LmRun:
    """The model, vocabulary and config of a ``train lm`` run directory, or a one-line
    ValueError saying what is missing."""
    config, vocabulary = _read_run_files(run_dir, "train lm")
    if config.get("task") != "lm":
        raise ValueError(f"{str(run_dir)!r} holds no 'train lm' run (its config is not an LM's)")
    try:
        model = language_model(config)
    except (KeyError, TypeError) as error:
        raise ValueError(f"{run_dir}/config.json is not an LM's config: {error}") from None
    _restore_model(model, run_dir)
    return LmRun(model, vocabulary, config)


def _read_run_files(run_dir, command: str) -> tuple[dict, Vocabulary]:
    """A run directory's config.json (a JSON object) and vocabulary.json."""
    config_path, vocabulary_path = (os.path.join(run_dir, f) for f in RUN_FILES)
    for path in config_path, vocabulary_path:
        if not os.path.isfile(path):
            name = os.path.basename(path)
            raise ValueError(f"{str(run_dir)!r} holds no '{command}' run (no {name})")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except ValueError as error:  # not UTF-8, or not JSON
        raise ValueError(f"{config_path} is not a run's config: {error}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path} is not a run's config (a JSON object naming its model)")
    return config, Vocabulary.load(vocabulary_path)


def _restore_model(model: nnx.Module, run_dir) -> None:
    """``model``'s parameters from the newest usable checkpoint in ``run_dir``/model."""
    params = nnx.state(model, nnx.Param)
    restored = Checkpointer(os.path.join(run_dir, "model")).restore_latest(params)
    if restored is None:
        raise ValueError(f"no usable model in {str(run_dir)!r}/model")
    nnx.update(model, restored[0])


def read_history(run_dir: str | os.PathLike) -> History:
    """A run directory's history.json (written by ``fit``): metric name → one value per epoch."""
    path = os.path.join(run_dir, "history.json")
    if not os.path.isfile(path):
        raise ValueError(f"{str(run_dir)!r} holds no history.json (not a training run)")
    with open(path) as f:
        return json.load(f)


_QUICK = InspectCumsumConfig()


def train_cumsum_model(
    samples: int = _QUICK.samples,
    epochs: int = _QUICK.epochs,
    hidden: int = _QUICK.hidden,
    steps: int = 10,
    learning_rate: float = _QUICK.learning_rate,
    seed: int = _QUICK.seed,
) -> CumsumModel:
    """A ``CumsumModel`` trained on ``flaxlstm train cumsum``'s task and data stream, in
    seconds: fewer sequences than the seed's, at a larger learning rate (about 99.5% of the
    steps right on held-out sequences); defaults from ``config.InspectCumsumConfig``."""
    x, y = synthetic.cumsum_sequences(samples, steps, seed=[seed, 0])
    model = CumsumModel(hidden, rngs=nnx.Rngs(seed))
    recipe = Recipe(learning_rate=learning_rate)
    fit(model, x, y, epochs=epochs, seed=seed, recipe=recipe, quiet=True)
    return model
