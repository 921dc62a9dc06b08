"""The ``flaxlstm`` command: parses arguments, calls the library, prints and writes results.

    flaxlstm train cumsum [--epochs N] [--samples N] [--out DIR] ...
    flaxlstm train parity [--epochs N] [--samples N] [--embedding E] [--clip-norm C] ...

Every run writes DIR/history.json and DIR/metrics.json (test_accuracy and test_loss of the
final model on held-out data). A bad option ends with one line on stderr and exit status 2;
bad data or an unwritable DIR with one line and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import optax
from flax import nnx

from flaxlstm import models, train
from flaxlstm.checkpoint import Checkpointer
from flaxlstm.data import imdb as imdb_data
from flaxlstm.data import synthetic
from flaxlstm.models import MODELS, CumsumModel, ParityModel


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


def add_training_options(
    parser: argparse.ArgumentParser,
    *,
    out: str,
    epochs: int,
    hidden: int,
    samples: int,
    test_samples: int,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
) -> None:
    """The options every ``train`` task shares, with that task's defaults."""
    add = parser.add_argument
    add("--epochs", type=positive_int, default=epochs, help="passes over the training data")
    add("--batch-size", type=positive_int, default=batch_size, help="sequences per step")
    add("--learning-rate", type=positive_float, default=learning_rate, help="of Adam")
    add("--clip-norm", type=positive_float, help="clip gradients to this global norm")
    add("--hidden", type=positive_int, default=hidden, help="LSTM units")
    add("--samples", type=positive_int, default=samples, help="training sequences")
    add("--test-samples", type=positive_int, default=test_samples, help="held-out sequences")
    add("--validation-split", type=fraction, default=0.1, help="of the training sequences")
    add("--seed", type=int, default=0, help="of the data, initialisation and order")
    add("--out", default=out, help="directory for metrics.json and history.json")
    add("--quiet", action="store_true", help="print nothing")


def build_parser() -> Parser:
    parser = Parser(prog="flaxlstm", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train_parser = commands.add_parser("train", help="train a model on a task")
    tasks = train_parser.add_subparsers(dest="task", required=True, metavar="TASK")
    defaults = argparse.ArgumentDefaultsHelpFormatter

    cumsum = tasks.add_parser(
        "cumsum", help="seed 001: per-step label, running sum >= T/4", formatter_class=defaults
    )
    add_training_options(
        cumsum, out="runs/cumsum", epochs=20, hidden=20, samples=10_000, test_samples=1000
    )
    cumsum.add_argument("--steps", type=positive_int, default=10, help="sequence length")
    cumsum.set_defaults(run=train_cumsum)

    parity = tasks.add_parser(
        "parity", help="seed 000: is the sum of 10 ints in [0, 100) odd", formatter_class=defaults
    )
    add_training_options(
        parity,
        out="runs/parity",
        epochs=5,
        hidden=64,
        samples=20_000,
        test_samples=10_000,
        learning_rate=1e-2,
    )
    parity.add_argument("--embedding", type=positive_int, default=16, help="embedding size")
    parity.add_argument(
        "--train-lengths",
        choices=("random", "full"),
        default="random",
        help="random: train on prefixes of random length 1..10, each labelled by its own"
        " parity; full: on the whole 10-number sequences only",
    )
    parity.set_defaults(run=train_parity)

    imdb = tasks.add_parser(
        "imdb", help="seeds 002/003: IMDB sentiment (reads TFDS)", formatter_class=defaults
    )
    add = imdb.add_argument
    add("--model", choices=sorted(MODELS), default="simple", help="one of the seeds' models")
    add("--epochs", type=positive_int, help="default: the model's seed's")
    add("--batch-size", type=positive_int, help="default: the model's seed's")
    add("--maxlen", type=positive_int, help="tokens kept per review; default: the seed's")
    add("--vocab-size", type=positive_int, help="most frequent words kept; default: the seed's")
    add("--learning-rate", type=positive_float, default=1e-3, help="of Adam")
    add("--clip-norm", type=positive_float, help="clip gradients to this global norm")
    add("--bucket-width", type=int, default=50, help="batch by length (0: pad all to maxlen)")
    add("--seed", type=int, default=0, help="of the initialisation, dropout and order")
    add("--data-dir", help="TFDS data directory (default: $TFDS_DATA_DIR)")
    add("--cache-dir", help="where encoded reviews are cached (default: ~/.cache/flaxlstm)")
    add("--limit", type=positive_int, help="use the first N reviews of each split (a quick try)")
    add("--out", help="run directory (default: runs/imdb-MODEL)")
    add("--quiet", action="store_true", help="print nothing")
    imdb.set_defaults(run=train_imdb)

    predict = commands.add_parser(
        "predict", help="sentiment of reviews with a model trained by 'train imdb'"
    )
    predict.add_argument("--model-dir", required=True, help="a 'train imdb' run directory")
    predict.add_argument("reviews", nargs="*", help="reviews; none: one per line from stdin")
    predict.add_argument("--file", help="read reviews from this file, one per line")
    predict.set_defaults(run=predict_reviews)

    summary = commands.add_parser("summary", help="a Keras-like table of a model's layers")
    summary.add_argument("model", choices=sorted(MODELS))
    summary.set_defaults(run=lambda args: print(models.summary(args.model)))
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


def fit_and_test(args, model, train_data, test_data, out: str, lengths=None) -> dict:
    """Train ``model`` on ``train_data`` (x, y) and score it on ``test_data``; write both."""
    start = time.perf_counter()
    train.fit(
        model,
        *train_data,
        lengths=lengths,
        epochs=args.epochs,
        batch_size=args.batch_size,
        validation_split=args.validation_split,
        seed=args.seed,
        optimizer=optax.adam(args.learning_rate),
        clip_norm=args.clip_norm,
        quiet=args.quiet,
        history_path=os.path.join(out, "history.json"),
    )
    seconds = time.perf_counter() - start
    test = train.evaluate(model, *test_data, batch_size=args.batch_size)
    metrics = {
        "task": args.task,
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "test_sequences": len(test_data[0]),
        "train_seconds": round(seconds, 2),
        "options": {k: v for k, v in vars(args).items() if k not in ("run", "command")},
    }
    train.save_json(os.path.join(out, "metrics.json"), metrics)
    if not args.quiet:
        print(f"test_loss {test['loss']:.4f} - test_accuracy {test['accuracy']:.4f}")
        print(f"wrote {os.path.join(out, 'metrics.json')} and history.json")
    return metrics


def train_cumsum(args: argparse.Namespace) -> None:
    out = output_directory(args.out)
    train_data = synthetic.cumsum_sequences(args.samples, args.steps, seed=[args.seed, 0])
    test_data = synthetic.cumsum_sequences(args.test_samples, args.steps, seed=[args.seed, 1])
    model = CumsumModel(args.hidden, rngs=nnx.Rngs(args.seed))
    fit_and_test(args, model, train_data, test_data, out)
    if not args.quiet:  # seed 001's listing, for the first held-out sequence
        (x, y) = test_data
        for label, p in zip(y[0], train.predict(model, x[:1])[0], strict=True):
            print(f"Expected: {label} Predicted {p:.4f}")


def train_parity(args: argparse.Namespace) -> None:
    out = output_directory(args.out)
    train_x, train_y = synthetic.parity_sequences(args.samples, seed=[args.seed, 0])
    lengths = None
    if args.train_lengths == "random":
        lengths, train_y = synthetic.parity_prefixes(train_x, seed=[args.seed, 2])
    x, y = synthetic.parity_sequences(args.test_samples, seed=[args.seed, 1])
    # Held out means never seen in training: drop any test sequence that is also a training one.
    seen = {row.tobytes() for row in train_x}
    fresh = np.array([row.tobytes() not in seen for row in x], dtype=bool)
    model = ParityModel(100, args.embedding, args.hidden, rngs=nnx.Rngs(args.seed))
    fit_and_test(args, model, (train_x, train_y), (x[fresh], y[fresh]), out, lengths)


def _imdb_model(config: dict) -> models.SentimentClassifier:
    """A seed's model at a run's vocabulary size and seed (its parameters initialised)."""
    return MODELS[config["model"]](vocab_size=config["vocab_size"], rngs=nnx.Rngs(config["seed"]))


def train_imdb(args: argparse.Namespace) -> None:
    seed_settings = models.SETTINGS[args.model]
    config = {
        "model": args.model,
        "vocab_size": args.vocab_size or seed_settings.vocab_size,
        "maxlen": args.maxlen or seed_settings.maxlen,
        "epochs": args.epochs or seed_settings.epochs,
        "batch_size": args.batch_size or seed_settings.batch_size,
        "learning_rate": args.learning_rate,
        "clip_norm": args.clip_norm,
        "bucket_width": args.bucket_width or None,
        "seed": args.seed,
    }
    if args.bucket_width < 0:
        raise ValueError(f"--bucket-width must be 0 or positive, got {args.bucket_width}")
    out = output_directory(args.out or f"runs/imdb-{args.model}")
    data = imdb_data.load_imdb(
        config["vocab_size"],
        config["maxlen"],
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        limit=args.limit,
    )
    model = _imdb_model(config)
    start = time.perf_counter()
    history = train.fit(
        model,
        data.train.ids,
        data.train.labels,
        lengths=data.train.lengths,
        # As seed 002's fit: the test split is scored after every epoch.
        validation_data=(data.test.ids, data.test.labels, data.test.lengths),
        epochs=config["epochs"],
        batch_size=config["batch_size"],
        seed=args.seed,
        optimizer=optax.adam(args.learning_rate),
        clip_norm=args.clip_norm,
        bucket_width=config["bucket_width"],
        quiet=args.quiet,
        history_path=os.path.join(out, "history.json"),
    )
    seconds = time.perf_counter() - start
    data.vocabulary.save(os.path.join(out, "vocabulary.json"))
    train.save_json(os.path.join(out, "config.json"), config)
    Checkpointer(os.path.join(out, "checkpoint")).save(
        config["epochs"], nnx.state(model, nnx.Param), {"config": config}
    )
    metrics = {
        "task": "imdb",
        "model": args.model,
        "test_accuracy": history["val_accuracy"][-1],
        "test_loss": history["val_loss"][-1],
        "test_reviews": len(data.test.labels),
        "train_seconds": round(seconds, 2),
        "seconds_per_epoch": round(seconds / config["epochs"], 2),
        "config": config,
    }
    train.save_json(os.path.join(out, "metrics.json"), metrics)
    if not args.quiet:
        print(
            f"test_loss {metrics['test_loss']:.4f} - test_accuracy {metrics['test_accuracy']:.4f}"
        )
        print(f"wrote {out}/metrics.json, history.json, config.json, vocabulary.json, checkpoint/")


def predict_reviews(args: argparse.Namespace) -> None:
    config_path = os.path.join(args.model_dir, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"{args.model_dir!r} holds no 'train imdb' run (no config.json)")
    with open(config_path) as f:
        config = json.load(f)
    vocabulary = imdb_data.Vocabulary.load(os.path.join(args.model_dir, "vocabulary.json"))
    model = _imdb_model(config)
    params = nnx.state(model, nnx.Param)
    restored = Checkpointer(os.path.join(args.model_dir, "checkpoint")).restore_latest(params)
    if restored is None:
        raise ValueError(f"no usable checkpoint in {args.model_dir!r}/checkpoint")
    nnx.update(model, restored[0])
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


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError) as error:
        message = " ".join(str(error).split())
        parser.exit(1, f"flaxlstm: error: {message}\n")


if __name__ == "__main__":
    sys.exit(main())
