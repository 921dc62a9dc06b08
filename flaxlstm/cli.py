"""The ``flaxlstm`` command: parses arguments, calls the library, prints and writes results.

    flaxlstm train cumsum|parity|adding|imdb [options]   options: flaxlstm.config's task configs
    flaxlstm predict --model-dir DIR [REVIEW ...] [--file F]
    flaxlstm summary MODEL
    flaxlstm inspect curves|cumsum|review|gates|html ...
    flaxlstm bench [options]                      runs benchmarks/bench.py of a checkout

Every ``train`` run writes DIR/history.json and DIR/metrics.json (test_accuracy and test_loss
of the final model on held-out data). A bad option ends with one line on stderr and exit
status 2; bad data or an unwritable DIR with one line and exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import runpy
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from flaxlstm import lm, models, train
from flaxlstm.config import (
    AddingConfig,
    CumsumConfig,
    ImdbConfig,
    InspectCumsumConfig,
    LmConfig,
    ParityConfig,
    Recipe,
    RunConfig,
    add_options,
    from_options,
    non_negative_float,
    positive_int,
)
from flaxlstm.data import imdb as imdb_data
from flaxlstm.data import movies, synthetic
from flaxlstm.data import text as text_data
from flaxlstm.data.batches import split_point
from flaxlstm.files import DirectoryLock, save_json
from flaxlstm.interrupts import TrainingInterrupted
from flaxlstm.layers import set_loop
from flaxlstm.models import MODELS, AddingModel, CumsumModel, ParityModel
from flaxlstm.recurrent import describe_loop
from flaxlstm.runs import (
    LM_CLASSIFIER,
    LmRun,
    imdb_model,
    language_model,
    load_lm_run,
    load_run,
)

# flaxlstm.lab.plots (matplotlib) is imported where it is used: training and prediction never
# import it.


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> Parser:
    parser = Parser(prog="flaxlstm", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train_parser = commands.add_parser("train", help="train a model on a task")
    tasks = train_parser.add_subparsers(dest="task", required=True, metavar="TASK")
    for name, config, run, help_text in (
        ("cumsum", CumsumConfig, train_cumsum, "seed 001: per-step label, running sum >= T/4"),
        ("parity", ParityConfig, train_parity, "seed 000: is the sum of 10 ints in [0, 100) odd"),
        ("adding", AddingConfig, train_adding, "the adding problem: sum of 2 marked numbers (mse)"),
        ("imdb", ImdbConfig, train_imdb, "seeds 002/003: IMDB sentiment (reads TFDS)"),
        ("lm", LmConfig, train_language_model, "a language model on a text file or IMDB"),
    ):
        task = tasks.add_parser(
            name, help=help_text, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
        add_options(task, config())
        task.set_defaults(run=run, config_type=config)

    predict = commands.add_parser(
        "predict", help="sentiment of reviews with a model trained by 'train imdb'"
    )
    predict.add_argument("--model-dir", required=True, help="a 'train imdb' run directory")
    predict.add_argument("reviews", nargs="*", help="reviews; none: one per line from stdin")
    predict.add_argument("--file", help="read reviews from this file, one per line")
    predict.set_defaults(run=predict_reviews)

    generate = commands.add_parser(
        "generate", help="sample text from a 'train lm' model",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )  # fmt: skip
    generate.add_argument("--model-dir", required=True, help="a 'train lm' run directory")
    generate.add_argument("--prompt", default="", help="the text to go on from")
    generate.add_argument("--tokens", type=positive_int, default=200, help="tokens to sample")
    generate.add_argument(
        "--temperature", type=non_negative_float, default=1.0, help="0: the likeliest token"
    )
    generate.add_argument("--seed", type=int, default=0, help="of the sampling")
    generate.set_defaults(run=generate_text)

    bench = commands.add_parser(
        "bench", help="time the training step against PyTorch, Keras and Flax (a checkout's"
        " benchmarks/bench.py)",
    )  # fmt: skip
    bench.add_argument("options", nargs=argparse.REMAINDER, help="see benchmarks/bench.py -h")
    bench.set_defaults(run=run_benchmarks)

    summary = commands.add_parser("summary", help="a Keras-like table of a model's layers")
    summary.add_argument("model", choices=sorted(MODELS))
    summary.set_defaults(run=lambda args: print(models.summary(args.model)))
    add_inspect_parser(commands)
    return parser


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
    refused at once (``files.DirectoryLock``)."""
    with DirectoryLock(output_directory(out)):
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
    history = train.fit(
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
    test = train.evaluate(
        model, x, y, lengths=lengths, batch_size=train.EVAL_BATCH_FACTOR * config.batch_size,
        bucket_width=bucket_width, loss=loss,
    )  # fmt: skip
    return write_metrics(config, test, len(x), seconds)


def final_validation(config: RunConfig, history: train.History) -> dict:
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
            for label, p in zip(y[0], train.predict(model, x[:1])[0], strict=True):
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
            raise ValueError(f"--init-from needs a word-level language model: {config.init_from}"
                             f" is {source.vocabulary.level}-level")  # fmt: skip
        config = dataclasses.replace(config, vocab_size=source.vocabulary.size)
    data = imdb_data.load_imdb(
        config.vocab_size, config.maxlen, data_dir=config.data_dir, cache_dir=config.cache_dir,
        limit=config.limit, vocabulary=source and source.vocabulary,
    )  # fmt: skip
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


def lm_vocabulary(
    config: LmConfig, texts, source: LmRun | None = None
) -> tuple[imdb_data.Vocabulary, int]:
    """The vocabulary of the training ``texts``, or the ``source`` run's (``--init-from``),
    checked against a resumed run's, then saved in the run directory; and the
    sampled-softmax size (default by vocabulary size)."""
    if source is None:
        tokenize = imdb_data.TOKENIZERS[config.level]
        vocabulary = imdb_data.Vocabulary.fit(map(tokenize, texts), config.vocab_size, config.level)
    else:
        vocabulary = source.vocabulary
    samples = config.samples
    if samples is None:
        samples = 1024 if vocabulary.size > 4096 else 0
    if samples >= vocabulary.size:
        raise ValueError(f"--samples {samples} must be below the vocabulary's {vocabulary.size}")
    path = os.path.join(config.out, "vocabulary.json")
    if config.resume and os.path.exists(path):
        saved = imdb_data.Vocabulary.load(path)
        if (saved.words, saved.level) != (vocabulary.words, vocabulary.level):
            raise ValueError(f"{config.out} holds a run on another text (its vocabulary differs)")
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


def _train_language_model(config: LmConfig) -> None:
    out, start = config.out, time.perf_counter()
    if config.imdb:
        texts, held = text_data.imdb_texts(config.validation_split, config.data_dir, config.limit)
    else:
        train_text, held_text = text_data.text_file(config.text, config.validation_split)
        texts, held = [train_text], [held_text]
    source = lm_source(config)
    if source is not None:
        sizes = {name: source.config[name] for name in LM_SIZES}
        sizes["layers"] += config.grow
        config = dataclasses.replace(config, **sizes)
    vocabulary, samples = lm_vocabulary(config, texts, source)
    documents, validation = vocabulary.encode(texts), vocabulary.encode(held)
    if not config.imdb:  # one long text: a contiguous piece per row
        documents = text_data.pieces(documents[0], config.batch_size)
        rows = max(1, min(config.batch_size, len(validation[0]) // (2 * config.bptt)))
        validation = text_data.pieces(validation[0], rows)
    names = ("level", "embedding", "hidden", "layers", "tie", "dropout", "seed", "init_from",
             "grow", "loop")  # fmt: skip
    run_config = {"task": "lm", "vocab_size": vocabulary.size} | {
        name: getattr(config, name) for name in names
    }
    run_config["data"] = {name: getattr(config, name) for name in LM_DATA_OPTIONS}
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
        recipe=Recipe(config.learning_rate, config.lr_schedule, config.clip_norm),
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
    save_json(os.path.join(out, "metrics.json"), metrics)
    if not config.quiet:
        unit = "bits per character" if config.level == "char" else "perplexity"
        value = last["val_bits"] if config.level == "char" else last["val_perplexity"]
        print(f"validation {unit} {value:.4f}; wrote {out}/metrics.json, history.json, model/")


def generate_text(args: argparse.Namespace) -> None:
    run = load_lm_run(args.model_dir)
    prompt = run.vocabulary.encode([args.prompt])[0]
    ids = lm.generate(
        run.model, prompt, tokens=args.tokens, temperature=args.temperature, seed=args.seed
    )
    joiner = "" if run.vocabulary.level == "char" or not args.prompt else " "
    print(args.prompt + joiner + run.vocabulary.decode(ids))


def predict_reviews(args: argparse.Namespace) -> None:
    model, vocabulary, config = load_run(args.model_dir)
    if args.file:
        with open(args.file, encoding="utf-8") as f:
            reviews = [line.rstrip("\n") for line in f]
    else:
        reviews = args.reviews or [line.rstrip("\n") for line in sys.stdin]
    reviews = [r for r in reviews if r.strip()]
    if not reviews:
        raise ValueError("no reviews given (as arguments, --file, or lines on stdin)")
    for n, review in enumerate(reviews):
        if not imdb_data.tokenize(review):
            raise ValueError(f"review {n + 1} has no words after tokenisation: {review[:40]!r}")
    ids, lengths = imdb_data.pad_sequences(
        vocabulary.encode(reviews), config["maxlen"], padding="post"
    )
    for review, p in zip(reviews, train.predict(model, ids, lengths=lengths), strict=True):
        label = "positive" if p >= 0.5 else "negative"
        print(f"{p:.4f}\t{label}\t{review[:70]}")


def run_benchmarks(args: argparse.Namespace) -> None:
    """Run benchmarks/bench.py of the source checkout this package is installed from (the
    benchmark and its PyTorch and Keras peers are not part of the installed package)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"
    if not script.is_file():
        raise ValueError("flaxlstm bench runs benchmarks/bench.py of a source checkout; none here")
    sys.argv = [str(script), *args.options]
    runpy.run_path(str(script), run_name="__main__")


def add_inspect_parser(commands) -> None:
    """``flaxlstm inspect VIEW``: PNG pictures of what a model does inside (flaxlstm.lab.plots),
    and ``html``, a page to explore it (flaxlstm.lab.explorer)."""
    inspect = commands.add_parser("inspect", help="draw what a model does inside (PNG, HTML)")
    views = inspect.add_subparsers(dest="view", required=True, metavar="VIEW")
    defaults = argparse.ArgumentDefaultsHelpFormatter

    curves = views.add_parser(
        "curves", help="loss and accuracy per epoch of a run", formatter_class=defaults
    )
    curves.add_argument("run_dir", help="a 'flaxlstm train' run directory (its history.json)")
    curves.add_argument("--out", default="curves.png", help="the PNG to write")
    curves.set_defaults(run=inspect_curves)

    cumsum = views.add_parser(
        "cumsum",
        help="train a cumsum model (seconds), draw its cell state, predictions and gates",
        formatter_class=defaults,
    )
    add_options(cumsum, InspectCumsumConfig())
    cumsum.set_defaults(run=inspect_cumsum, config_type=InspectCumsumConfig)

    review_view(views, "review", "P(positive) after each word of a review", inspect_review)
    gates = review_view(
        views, "gates", "gates and cell state of an IMDB model over a review", inspect_gates
    )
    gates.add_argument("--layer", help="lstm, lstm/forward or lstm/backward; none: the first")
    add_explorer_view(views)


def review_view(views, name: str, help_text: str, run) -> argparse.ArgumentParser:
    """An ``inspect`` view of one review read by a ``train imdb`` run's model."""
    parser = views.add_parser(
        name, help=help_text, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--model-dir", required=True, help="a 'train imdb' run directory")
    parser.add_argument("review", help="the review's text")
    parser.add_argument("--max-words", type=positive_int, default=60, help="words drawn")
    parser.add_argument("--out", default=f"{name}.png", help="the PNG to write")
    parser.set_defaults(run=run)
    return parser


def add_explorer_view(views) -> argparse.ArgumentParser:
    """``inspect html``: one self-contained HTML page to explore a run's units over a text."""
    from flaxlstm.lab import explorer

    parser = views.add_parser(
        "html",
        help="one self-contained HTML page: a text coloured by any unit's gates and states,"
        " the prediction after each token, saturation and interpretable cells",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model-dir", required=True, help="a 'train imdb' or 'train lm' run")
    text = parser.add_mutually_exclusive_group(required=True)
    text.add_argument("--text", help="the text to read")
    text.add_argument("--file", help="read the text from this file (UTF-8)")
    parser.add_argument(
        "--max-tokens", type=positive_int, default=explorer.MAX_TOKENS, help="tokens shown"
    )
    parser.add_argument("--layer", help="the layer shown first (e.g. lstm); none: the first")
    parser.add_argument(
        "--quantity", choices=explorer.QUANTITIES, default="c", help="the quantity shown first"
    )
    parser.add_argument(
        "--unit", type=int, help="the unit shown first; none: the one that best follows a signal"
    )
    parser.add_argument("--out", default="explorer.html", help="the HTML page to write")
    parser.set_defaults(run=inspect_html)
    return parser


def inspect_curves(args: argparse.Namespace) -> None:
    from flaxlstm import runs
    from flaxlstm.lab import plots

    history = runs.read_history(args.run_dir)
    figure = plots.plot_history(history, title=f"Training curves: {args.run_dir}")
    print(f"wrote {plots.save_figure(figure, args.out)}")


def inspect_cumsum(config: InspectCumsumConfig) -> None:
    from flaxlstm import runs
    from flaxlstm.lab import plots, traces

    seed = config.seed
    x, y = synthetic.cumsum_sequences(1000, 10, seed=[seed, 1])  # train cumsum's test set
    if not 0 <= config.sequence < len(x):
        raise ValueError(f"--sequence must lie in [0, {len(x)}), got {config.sequence}")
    out = output_directory(config.out)
    model = runs.train_cumsum_model(
        config.samples, config.epochs, config.hidden, 10, config.learning_rate, seed
    )
    predicted, actual = traces.cumsum_crossings(model, x, y)
    accuracy = train.evaluate(model, x, y)["accuracy"]
    print(
        f"per-step test accuracy {accuracy:.4f}; the prediction crosses 0.5 where the running"
        f" sum crosses T/4 in {np.mean(predicted == actual):.1%} of {len(x)} held-out sequences"
    )
    written = plots.write_cumsum_pictures(model, x, y, out, config.sequence)
    print(f"wrote {' and '.join(written)}")


def inspect_review(args: argparse.Namespace) -> None:
    from flaxlstm.lab import plots

    run = load_run(args.model_dir)
    figure = plots.plot_review(run.model, run.vocabulary, args.review, args.max_words)
    print(f"wrote {plots.save_figure(figure, args.out)}")


def inspect_gates(args: argparse.Namespace) -> None:
    from flaxlstm.lab import plots

    run = load_run(args.model_dir)
    figure = plots.plot_review_gates(
        run.model, run.vocabulary, args.review, layer=args.layer, max_words=args.max_words
    )
    print(f"wrote {plots.save_figure(figure, args.out)}")


def inspect_html(args: argparse.Namespace) -> None:
    from flaxlstm.lab import explorer

    if args.file is not None:
        with open(args.file, encoding="utf-8") as f:
            text = f.read()
    else:
        text = args.text
    data = explorer.explore_run(
        args.model_dir, text, args.out, max_tokens=args.max_tokens, layer=args.layer,
        quantity=args.quantity, unit=args.unit,
    )  # fmt: skip
    size = os.path.getsize(args.out)
    print(f"wrote {args.out} ({len(data['tokens']) - 1} tokens, {size / 1e3:.0f} kB)")


def use_compilation_cache() -> str | None:
    """Keep what XLA compiles on disk between runs (JAX's persistent compilation cache), so a
    second run of the same model does not compile its steps again: in
    $JAX_COMPILATION_CACHE_DIR where that is set ("" turns the cache off), else in
    ~/.cache/flaxlstm/jax ($XDG_CACHE_HOME). Every compiled function is kept, however fast it
    compiled (a run compiles one step per bucket length, each under JAX's default 1 s floor).
    Returns the directory, or None when off."""
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:  # JAX reads it itself
        directory = os.environ["JAX_COMPILATION_CACHE_DIR"] or None
    else:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        directory = os.path.join(cache, "flaxlstm", "jax")
        jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return directory


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command == "bench":  # its options are benchmarks/bench.py's, passed on whole
        args.options = unknown + args.options  # (and it times compilations: no cache)
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    else:
        use_compilation_cache()
    try:
        config_type = getattr(args, "config_type", None)
        config = from_options(config_type, args) if config_type else None
        if hasattr(config, "loop") and not config.quiet:  # a train command's first line
            bf16 = jax.numpy.bfloat16 if getattr(config, "dtype", None) == "bfloat16" else None
            print(f"LSTM time steps: {describe_loop(config.loop, bf16)}", flush=True)
        args.run(config or args)
    except TrainingInterrupted as stop:
        parser.exit(stop.exit_status, f"flaxlstm: {stop}\n")
    except (ValueError, OSError) as error:
        message = " ".join(str(error).split())
        parser.exit(1, f"flaxlstm: error: {message}\n")


if __name__ == "__main__":
    sys.exit(main())
