"""What each ``flaxlstm train`` task assembles: its data, its model and its run directory,
trained by ``flaxlstm.fit`` (the synthetic tasks and IMDB) or ``flaxlstm.training.lm.train_lm``
(language models), with metrics.json, history.json and config.json written beside the model.
``flaxlstm.cli`` parses the options into a config and calls one of the ``train_*`` here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Iterator

import numpy as np
from flax import nnx

from flaxlstm.config import (
    AddingConfig,
    CumsumConfig,
    ImdbConfig,
    LmConfig,
    ParityConfig,
    RunConfig,
)
from flaxlstm.data import imdb as imdb_data
from flaxlstm.data import movies, synthetic
from flaxlstm.data import text as text_data
from flaxlstm.data.batches import split_point
from flaxlstm.data.vocabulary import TOKENIZERS, Vocabulary
from flaxlstm.files import DirectoryLock, save_json
from flaxlstm.layers import set_loop
from flaxlstm.models import AddingModel, CumsumModel, ParityModel
from flaxlstm.training import lm
from flaxlstm.training.fit import EVAL_BATCH_FACTOR, evaluate, fit, predict
from flaxlstm.training.loop import History
from flaxlstm.training.processes import primary
from flaxlstm.training.runs import (
    LM_CLASSIFIER,
    LmRun,
    imdb_model,
    language_model,
    load_lm_run,
)


def output_directory(out: str) -> str:
    """The directory ``out``, created and proven writable, or an OSError."""
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise OSError(f"cannot write to --out {out!r}: {error.strerror or error}") from None
    return out


@contextlib.contextmanager
def run_directory(out: str) -> Iterator[str]:
    """``output_directory(out)``, locked for the run's whole life: a second run into it is
    refused at once (``files.DirectoryLock``). In a job of several processes, process 0 holds
    the lock and writes the run's files; the others write only their part of the checkpoints
    (across machines ``out`` is on a filesystem they share)."""
    with DirectoryLock(output_directory(out)) if primary() else contextlib.nullcontext():
        yield out


def fit_and_test(
    config: RunConfig,
    model,
    train_data,
    test_data,
    *,
    report_test=False,
    bucket_width=None,
    loss: str = "binary_crossentropy",
) -> dict:
    """Train ``model`` on ``train_data`` (x, y[, lengths]) as ``config`` says, score the final
    model on ``test_data`` (also after every epoch with ``report_test``; None: a run that
    chooses a model on its validation split, which scores no test data), and write
    metrics.json, history.json, the training checkpoints (DIR/checkpoints) and the model after
    every epoch (DIR/model) into ``config.out``."""
    out = config.out
    start = time.perf_counter()
    x, y, lengths = (*train_data, None)[:3]
    set_loop(model, config.loop)
    history = fit(
        model,
        x,
        y,
        lengths=lengths,
        epochs=config.epochs,
        batch_size=config.batch_size,
        validation_split=config.validation_split,
        report_data={"test": test_data} if report_test else None,
        seed=config.seed,
        loss=loss,
        recipe=config.recipe,
        bucket_width=bucket_width,
        restore_best=config.restore_best,
        patience=config.patience,
        checkpoint_dir=os.path.join(out, "checkpoints"),
        checkpoint_every=config.checkpoint_every,
        resume=config.resume,
        model_dir=os.path.join(out, "model"),
        quiet=config.quiet,
        history_path=os.path.join(out, "history.json"),
    )
    seconds = time.perf_counter() - start
    if test_data is None:
        return write_metrics(config, {}, 0, seconds, final_validation(config, history))
    x, y, lengths = (*test_data, None)[:3]
    test = evaluate(
        model,
        x,
        y,
        lengths=lengths,
        batch_size=EVAL_BATCH_FACTOR * config.batch_size,
        bucket_width=bucket_width,
        loss=loss,
    )
    return write_metrics(config, test, len(x), seconds)


def final_validation(config: RunConfig, history: History) -> dict:
    """The validation scores (``val_loss``, ``val_accuracy``, ...) of the model a run ends
    with: its epoch of lowest ``val_loss`` with ``restore_best``, else its last."""
    if "val_loss" not in history:
        return {}
    epoch = int(np.argmin(history["val_loss"])) if config.restore_best else -1
    return {name: values[epoch] for name, values in history.items() if name.startswith("val_")}


def write_metrics(
    config: RunConfig, test: dict, sequences: int, seconds: float, validation: dict | None = None
) -> dict:
    """DIR/metrics.json of a finished run: the test scores (or, for a model-selection run,
    the final model's ``validation`` scores), the time, the options."""
    out = config.out
    metrics = {
        "task": type(config).__name__.removesuffix("Config").lower(),
        **{f"test_{name}": value for name, value in test.items()},
        "test_sequences": sequences,
        **(validation or {}),
        "train_seconds": round(seconds, 2),
        "seconds_per_epoch": round(seconds / config.epochs, 2),
        "options": dataclasses.asdict(config),
    }
    if primary():
        save_json(os.path.join(out, "metrics.json"), metrics)
    if not config.quiet:
        scores = {f"test_{name}": value for name, value in test.items()} | (validation or {})
        print(" - ".join(f"{name} {value:.4f}" for name, value in scores.items()))
        print(f"wrote {out}/metrics.json, history.json, checkpoints/, model/")
    return metrics


def train_cumsum(config: CumsumConfig) -> None:
    with run_directory(config.out):
        seed = config.seed
        train_data = synthetic.cumsum_sequences(config.samples, config.steps, seed=[seed, 0])
        test_data = synthetic.cumsum_sequences(config.test_samples, config.steps, seed=[seed, 1])
        model = CumsumModel(config.hidden, rngs=nnx.Rngs(seed))
        fit_and_test(config, model, train_data, test_data)
        if not config.quiet:  # seed 001's listing, for the first held-out sequence
            (x, y) = test_data
            for label, p in zip(y[0], predict(model, x[:1])[0], strict=True):
                print(f"Expected: {label} Predicted {p:.4f}")


def train_parity(config: ParityConfig) -> None:
    with run_directory(config.out):
        seed = config.seed
        train_x, train_y = synthetic.parity_sequences(config.samples, seed=[seed, 0])
        lengths = None
        if config.train_lengths == "random":
            lengths, train_y = synthetic.parity_prefixes(train_x, seed=[seed, 2])
        x, y = synthetic.parity_sequences(config.test_samples, seed=[seed, 1])
        # Held out means never seen in training: drop any test sequence that is also a training one.
        seen = {row.tobytes() for row in train_x}
        fresh = np.array([row.tobytes() not in seen for row in x], dtype=bool)
        model = ParityModel(100, config.embedding, config.hidden, rngs=nnx.Rngs(seed))
        fit_and_test(config, model, (train_x, train_y, lengths), (x[fresh], y[fresh]))


def train_adding(config: AddingConfig) -> None:
    with run_directory(config.out):
        seed, steps = config.seed, config.steps
        train_data = synthetic.adding_sequences(config.samples, steps, seed=[seed, 0])
        test_data = synthetic.adding_sequences(config.test_samples, steps, seed=[seed, 1])
        model = AddingModel(config.hidden, rngs=nnx.Rngs(seed))
        fit_and_test(config, model, train_data, test_data, loss="mse")


def train_imdb(config: ImdbConfig) -> None:
    config = config.resolved()
    with run_directory(config.out):
        _train_imdb(config)


def _train_imdb(config: ImdbConfig) -> None:
    out = config.out
    source = None
    if config.init_from is not None:
        source = load_lm_run(config.init_from)
        if source.vocabulary.level != "word":
            raise ValueError(
                f"--init-from needs a word-level language model: {config.init_from}"
                f" is {source.vocabulary.level}-level"
            )
        config = dataclasses.replace(config, vocab_size=source.vocabulary.size)
    data = imdb_data.load_imdb(
        config.vocab_size,
        config.maxlen,
        data_dir=config.data_dir,
        cache_dir=config.cache_dir,
        limit=config.limit,
        vocabulary=source and source.vocabulary,
    )
    if primary():
        data.vocabulary.save(os.path.join(out, "vocabulary.json"))
    names = ("model", "vocab_size", "maxlen", "seed", "dtype", "loop")
    run_config = {name: getattr(config, name) for name in names}
    if source is None:
        run_config["layers"] = config.layers
    else:
        sizes = {name: source.config[name] for name in ("embedding", "hidden", "dropout")}
        sizes["num_layers"] = source.config["layers"]
        if config.dropout is not None:
            sizes["dropout"] = config.dropout
        if config.nbsvm:
            sizes["nbsvm"] = config.nbsvm
        run_config |= {"model": LM_CLASSIFIER, "init_from": config.init_from, **sizes}
    if primary():
        save_json(os.path.join(out, "config.json"), run_config)
    model = imdb_model(run_config)
    if source is not None:  # (a resumed run's checkpoint then replaces them)
        model.load_pretrained(source.model)
    as_xy = lambda split: (split.ids, split.labels, split.lengths)  # noqa: E731
    if config.validation_split and config.validation_slice == "movies":
        texts, labels = imdb_data.read_split("train", config.data_dir, limit=config.limit)
        order = movies.movie_slice_order(texts, labels, config.validation_split)
        data = data._replace(train=imdb_data.Split(*(a[order] for a in data.train)))
    if model.nbsvm is not None:  # fitted to the reviews the network trains on
        n = split_point(len(data.train.labels), config.validation_split)
        if not config.quiet:
            print(f"NBSVM: fitting to {n:,} reviews (about a minute for 25,000)", flush=True)
        model.nbsvm.fit(data.train.ids[:n], data.train.lengths[:n], data.train.labels[:n])
    # As seed 002's fit, the test split is scored after every epoch (never to choose a model),
    # unless --no-test: a run that chooses a model on its validation split never reads it.
    fit_and_test(
        config,
        model,
        as_xy(data.train),
        as_xy(data.test) if config.test else None,
        report_test=config.test,
        bucket_width=config.bucket_width or None,
    )


def train_language_model(config: LmConfig) -> None:
    config = config.resolved()
    with run_directory(config.out):
        _train_language_model(config)


def lm_vocabulary(config: LmConfig, texts, source: LmRun | None = None) -> tuple[Vocabulary, int]:
    """The vocabulary of the training ``texts``, or the ``source`` run's (``--init-from``),
    checked against a resumed run's, then saved in the run directory; and the
    sampled-softmax size (default by vocabulary size)."""
    if source is None:
        tokenize = TOKENIZERS[config.level]
        vocabulary = Vocabulary.fit(map(tokenize, texts), config.vocab_size, config.level)
    else:
        vocabulary = source.vocabulary
    samples = config.samples
    if samples is None:
        samples = 1024 if vocabulary.size > 4096 else 0
    if samples >= vocabulary.size:
        raise ValueError(f"--samples {samples} must be below the vocabulary's {vocabulary.size}")
    path = os.path.join(config.out, "vocabulary.json")
    if config.resume and os.path.exists(path):
        saved = Vocabulary.load(path)
        if (saved.words, saved.level) != (vocabulary.words, vocabulary.level):
            raise ValueError(f"{config.out} holds a run on another text (its vocabulary differs)")
    if primary():
        vocabulary.save(path)
    return vocabulary, samples


# What a run trains on and holds out: a run started --init-from another must share them, or
# it could train on the other's validation text.
LM_DATA_OPTIONS = ("imdb", "text", "validation_split", "limit")
LM_SIZES = ("vocab_size", "level", "embedding", "hidden", "layers", "tie")


def lm_source(config: LmConfig) -> LmRun | None:
    """The ``--init-from`` run, loaded, once its data options are checked against
    ``config``'s (None without ``--init-from``)."""
    if config.init_from is None:
        return None
    source = load_lm_run(config.init_from)
    data = source.config.get("data")
    if data is None:  # runs written before config.json held their data options
        metrics = os.path.join(config.init_from, "metrics.json")
        data = {}
        if os.path.isfile(metrics):
            with open(metrics, encoding="utf-8") as f:
                data = json.load(f).get("options", {})
    ours = {name: getattr(config, name) for name in LM_DATA_OPTIONS}
    theirs = {name: data.get(name, "unknown") for name in LM_DATA_OPTIONS}
    if ours != theirs:
        differ = ", ".join(
            f"{name} {theirs[name]!r} there, {ours[name]!r} here"
            for name in ours
            if ours[name] != theirs[name]
        )
        raise ValueError(
            f"--init-from {config.init_from} trained on other text or held out another part"
            f" ({differ})"
        )
    return source


def lm_texts(config: LmConfig) -> tuple[list[str], list[str]]:
    """The texts that a ``train lm`` run trains on and holds out: IMDB's reviews, or one text
    file's two parts."""
    if config.imdb:
        return text_data.imdb_texts(config.validation_split, config.data_dir, config.limit)
    train_text, held_text = text_data.text_file(config.text, config.validation_split)
    return [train_text], [held_text]


def lm_documents(config: LmConfig, vocabulary, texts, held) -> tuple[list, list]:
    """The id arrays to train and validate on: a document per review, or for one long text a
    contiguous piece per row."""
    documents, validation = vocabulary.encode(texts), vocabulary.encode(held)
    if config.imdb:
        return documents, validation
    rows = max(1, min(config.batch_size, len(validation[0]) // (2 * config.bptt)))
    return text_data.pieces(documents[0], config.batch_size), text_data.pieces(validation[0], rows)


def _train_language_model(config: LmConfig) -> None:
    out, start = config.out, time.perf_counter()
    texts, held = lm_texts(config)
    source = lm_source(config)
    if source is not None:
        sizes = {name: source.config[name] for name in LM_SIZES}
        sizes["layers"] += config.grow
        config = dataclasses.replace(config, **sizes)
    vocabulary, samples = lm_vocabulary(config, texts, source)
    documents, validation = lm_documents(config, vocabulary, texts, held)
    names = ("level", "embedding", "hidden", "layers", "tie", "dropout", "seed", "init_from",
             "grow", "loop")  # fmt: skip
    run_config = {"task": "lm", "vocab_size": vocabulary.size} | {
        name: getattr(config, name) for name in names
    }
    run_config["data"] = {name: getattr(config, name) for name in LM_DATA_OPTIONS}
    if primary():
        save_json(os.path.join(out, "config.json"), run_config)
    model = language_model(run_config)
    set_loop(model, config.loop)
    if source is not None:  # (a resumed run's checkpoint then replaces them)
        model.load_language_model(source.model)
    if not config.quiet:
        tokens = sum(map(len, documents))
        print(
            f"{len(documents)} documents, {tokens} tokens ({config.level}s), vocabulary"
            f" {vocabulary.size}; validation: {len(held)} documents"
        )
    history = lm.train_lm(
        model, documents, validation, batch_size=config.batch_size, bptt=config.bptt,
        epochs=config.epochs, max_steps=config.max_steps, samples=samples,
        recipe=config.recipe,
        seed=config.seed, eval_every=config.eval_every,
        checkpoint_dir=os.path.join(out, "checkpoints"), checkpoint_every=config.checkpoint_every,
        resume=config.resume, model_dir=os.path.join(out, "model"),
        history_path=os.path.join(out, "history.json"), quiet=config.quiet,
    )  # fmt: skip
    last = {name: values[-1] for name, values in history.items()}
    speeds = history["tokens_per_second"][1:] or history["tokens_per_second"]  # past compiling
    metrics = {
        "task": "lm",
        **{name: last[name] for name in ("val_loss", "val_perplexity", "val_bits")},
        "steps": int(last["step"]),
        "tokens_trained": int(last["tokens"]),
        "tokens_per_second": float(np.median(speeds)),
        "samples": samples,
        "seconds": round(time.perf_counter() - start, 1),
        "options": dataclasses.asdict(config),
    }
    if primary():
        save_json(os.path.join(out, "metrics.json"), metrics)
    if not config.quiet:
        unit = "bits per character" if config.level == "char" else "perplexity"
        value = last["val_bits"] if config.level == "char" else last["val_perplexity"]
        print(f"validation {unit} {value:.4f}; wrote {out}/metrics.json, history.json, model/")
