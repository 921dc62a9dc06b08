"""The ``flaxlstm`` command: parses arguments, calls the library, prints and writes results.

    flaxlstm train cumsum [--epochs N] [--samples N] [--out DIR] ...
    flaxlstm train parity [--epochs N] [--samples N] [--embedding E] [--clip-norm C] ...

Every run writes DIR/history.json and DIR/metrics.json (test_accuracy and test_loss of the
final model on held-out data). A bad option ends with one line on stderr and exit status 2;
bad data or an unwritable DIR with one line and exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import optax
from flax import nnx

from flaxlstm import bench as flaxlstm_bench
from flaxlstm import models, train
from flaxlstm.checkpoint import Checkpointer
from flaxlstm.data import imdb as imdb_data
from flaxlstm.data import synthetic
from flaxlstm.files import save_json
from flaxlstm.models import MODELS, CumsumModel, ParityModel


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def checked(parse, ok, expected: str):
    """An argparse type: ``parse`` the text, and accept the value if ``ok(value)``."""

    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return convert


positive_int = checked(int, lambda v: v >= 1, "a positive integer")
non_negative_int = checked(int, lambda v: v >= 0, "an integer >= 0")
positive_float = checked(float, lambda v: 0 < v < float("inf"), "a positive number")
fraction = checked(float, lambda v: 0 <= v < 1, "a fraction in [0, 1)")
non_negative_float = checked(float, lambda v: 0 <= v < float("inf"), "a number >= 0")


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
    """The options of the synthetic tasks, with that task's defaults."""
    add = parser.add_argument
    add("--epochs", type=positive_int, default=epochs, help="passes over the training data")
    add("--batch-size", type=positive_int, default=batch_size, help="sequences per step")
    add("--hidden", type=positive_int, default=hidden, help="LSTM units")
    add("--samples", type=positive_int, default=samples, help="training sequences")
    add("--test-samples", type=positive_int, default=test_samples, help="held-out sequences")
    add_run_options(parser, out=out, learning_rate=learning_rate, validation_split=0.1)


def add_run_options(
    parser: argparse.ArgumentParser,
    *,
    out: str | None,
    learning_rate: float,
    validation_split: float,
    lr_schedule: str = "constant",
    clip_norm: float = 0.0,
) -> None:
    """The options every ``train`` task shares: optimisation, validation, checkpoints."""
    add = parser.add_argument
    add("--learning-rate", type=positive_float, default=learning_rate, help="of Adam")
    add(
        "--lr-schedule",
        choices=("constant", "cosine"),
        default=lr_schedule,
        help="cosine: decay the learning rate to 0 over all the training steps",
    )
    add(
        "--clip-norm",
        type=non_negative_float,
        default=clip_norm,
        help="clip gradients to this global norm (0: no clipping)",
    )
    add("--validation-split", type=fraction, default=validation_split, help="held out of train")
    add("--patience", type=positive_int, help="stop after N epochs without a lower val_loss")
    add(
        "--no-restore-best",
        action="store_true",
        help="keep the last epoch's model, not the one of lowest val_loss",
    )
    add("--checkpoint-every", type=positive_int, help="also checkpoint every N steps")
    add("--resume", action="store_true", help="continue from DIR/checkpoints")
    add("--seed", type=int, default=0, help="of the data, initialisation and order")
    add("--out", default=out, help="run directory: metrics, history, checkpoints, model")
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
    add(
        "--bucket-width",
        type=non_negative_int,
        default=50,
        help="batch by length (0: pad all to maxlen)",
    )
    add("--data-dir", help="TFDS data directory (default: $TFDS_DATA_DIR)")
    add("--cache-dir", help="where encoded reviews are cached (default: ~/.cache/flaxlstm)")
    add("--limit", type=positive_int, help="use the first N reviews of each split (a quick try)")
    # No validation split by default: the seeds train on all 25,000 training reviews. Clipping
    # and the cosine schedule are what made the seeds' models reliable (docs/RESULTS.md).
    add_run_options(
        imdb,
        out=None,
        learning_rate=1e-3,
        validation_split=0.0,
        lr_schedule="cosine",
        clip_norm=1.0,
    )
    imdb.set_defaults(run=train_imdb)

    predict = commands.add_parser(
        "predict", help="sentiment of reviews with a model trained by 'train imdb'"
    )
    predict.add_argument("--model-dir", required=True, help="a 'train imdb' run directory")
    predict.add_argument("reviews", nargs="*", help="reviews; none: one per line from stdin")
    predict.add_argument("--file", help="read reviews from this file, one per line")
    predict.set_defaults(run=predict_reviews)

    bench = commands.add_parser(
        "bench", help="time the training step against PyTorch, Keras and Flax (flaxlstm.bench)"
    )
    bench.add_argument("options", nargs=argparse.REMAINDER, help="see python -m flaxlstm.bench -h")
    bench.set_defaults(run=lambda args: flaxlstm_bench.main(args.options))

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


def learning_rate(args: argparse.Namespace, examples: int) -> float | optax.Schedule:
    """``--learning-rate``, or the cosine schedule that takes it to 0 over every step of the
    run (``examples`` training examples, less the validation split, in batches)."""
    if args.lr_schedule == "constant":
        return args.learning_rate
    steps_per_epoch = -(-train.split_point(examples, args.validation_split) // args.batch_size)
    return optax.cosine_decay_schedule(args.learning_rate, args.epochs * steps_per_epoch)


def fit_and_test(
    args, model, train_data, test_data, out: str, *, report_test=False, bucket_width=None
) -> dict:
    """Train ``model`` on ``train_data`` (x, y[, lengths]), score the final model on
    ``test_data`` (also after every epoch with ``report_test``), and write metrics.json,
    history.json, the training checkpoints (DIR/checkpoints) and the model (DIR/model)."""
    start = time.perf_counter()
    x, y, *lengths = train_data
    train.fit(
        model,
        x,
        y,
        lengths=lengths[0] if lengths else None,
        epochs=args.epochs,
        batch_size=args.batch_size,
        validation_split=args.validation_split,
        report_data={"test": test_data} if report_test else None,
        seed=args.seed,
        optimizer=optax.adam(learning_rate(args, len(x))),
        clip_norm=args.clip_norm or None,
        bucket_width=bucket_width,
        restore_best=not args.no_restore_best,
        patience=args.patience,
        checkpoint_dir=os.path.join(out, "checkpoints"),
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        quiet=args.quiet,
        history_path=os.path.join(out, "history.json"),
    )
    seconds = time.perf_counter() - start
    x, y, *lengths = test_data
    test = train.evaluate(
        model,
        x,
        y,
        lengths=lengths[0] if lengths else None,
        batch_size=args.batch_size,
        bucket_width=bucket_width,
    )
    Checkpointer(os.path.join(out, "model")).save(0, nnx.state(model, nnx.Param), {})
    metrics = {
        "task": args.task,
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "test_sequences": len(x),
        "train_seconds": round(seconds, 2),
        "seconds_per_epoch": round(seconds / args.epochs, 2),
        "options": {k: v for k, v in vars(args).items() if k not in ("run", "command")},
    }
    save_json(os.path.join(out, "metrics.json"), metrics)
    if not args.quiet:
        print(f"test_loss {test['loss']:.4f} - test_accuracy {test['accuracy']:.4f}")
        print(f"wrote {out}/metrics.json, history.json, checkpoints/, model/")
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
    fit_and_test(args, model, (train_x, train_y, lengths), (x[fresh], y[fresh]), out)


def train_imdb(args: argparse.Namespace) -> None:
    seed_settings = models.SETTINGS[args.model]
    args.epochs = args.epochs or seed_settings.epochs
    args.batch_size = args.batch_size or seed_settings.batch_size
    config = {
        "model": args.model,
        "vocab_size": args.vocab_size or seed_settings.vocab_size,
        "maxlen": args.maxlen or seed_settings.maxlen,
        "seed": args.seed,
    }
    out = output_directory(args.out or f"runs/imdb-{args.model}")
    data = imdb_data.load_imdb(
        config["vocab_size"],
        config["maxlen"],
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        limit=args.limit,
    )
    data.vocabulary.save(os.path.join(out, "vocabulary.json"))
    save_json(os.path.join(out, "config.json"), config)
    from flaxlstm.inspect import imdb_model

    model = imdb_model(config)
    as_xy = lambda split: (split.ids, split.labels, split.lengths)  # noqa: E731
    # As seed 002's fit, the test split is scored after every epoch (never to choose a model).
    fit_and_test(
        args,
        model,
        as_xy(data.train),
        as_xy(data.test),
        out,
        report_test=True,
        bucket_width=args.bucket_width or None,
    )


def predict_reviews(args: argparse.Namespace) -> None:
    from flaxlstm.inspect import load_run

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


def add_inspect_parser(commands) -> None:
    """``flaxlstm inspect VIEW``: PNG pictures of what a model does inside (flaxlstm.inspect)."""
    inspect = commands.add_parser("inspect", help="draw what a model does inside (PNG)")
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
    add = cumsum.add_argument
    add("--samples", type=positive_int, default=4000, help="training sequences")
    add("--epochs", type=positive_int, default=10, help="passes over them")
    add("--hidden", type=positive_int, default=20, help="LSTM units")
    add("--seed", type=int, default=0, help="of the data, initialisation and order")
    add("--sequence", type=int, default=0, help="which held-out sequence to draw")
    add("--out", default="runs/inspect-cumsum", help="directory for the PNGs")
    cumsum.set_defaults(run=inspect_cumsum)

    review_view(views, "review", "P(positive) after each word of a review", inspect_review)
    gates = review_view(
        views, "gates", "gates and cell state of an IMDB model over a review", inspect_gates
    )
    gates.add_argument("--layer", help="lstm, lstm/forward or lstm/backward; none: the first")


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


# flaxlstm.inspect is imported where it is used: matplotlib need not slow the other commands.


def inspect_curves(args: argparse.Namespace) -> None:
    from flaxlstm import inspect

    history = inspect.read_history(args.run_dir)
    figure = inspect.plot_history(history, title=f"Training curves: {args.run_dir}")
    print(f"wrote {inspect.save_figure(figure, args.out)}")


def inspect_cumsum(args: argparse.Namespace) -> None:
    from flaxlstm import inspect

    x, y = synthetic.cumsum_sequences(1000, 10, seed=[args.seed, 1])  # train cumsum's test set
    if not 0 <= args.sequence < len(x):
        raise ValueError(f"--sequence must lie in [0, {len(x)}), got {args.sequence}")
    out = output_directory(args.out)
    model = inspect.train_cumsum_model(
        args.samples, args.epochs, args.hidden, steps=10, seed=args.seed
    )
    predicted, actual = inspect.cumsum_crossings(model, x, y)
    accuracy = train.evaluate(model, x, y)["accuracy"]
    print(
        f"per-step test accuracy {accuracy:.4f}; the prediction crosses 0.5 where the running"
        f" sum crosses T/4 in {np.mean(predicted == actual):.1%} of {len(x)} held-out sequences"
    )
    written = inspect.write_cumsum_pictures(model, x, y, out, args.sequence)
    print(f"wrote {' and '.join(written)}")


def inspect_review(args: argparse.Namespace) -> None:
    from flaxlstm import inspect

    run = inspect.load_run(args.model_dir)
    figure = inspect.plot_review(run.model, run.vocabulary, args.review, args.max_words)
    print(f"wrote {inspect.save_figure(figure, args.out)}")


def inspect_gates(args: argparse.Namespace) -> None:
    from flaxlstm import inspect

    run = inspect.load_run(args.model_dir)
    figure = inspect.plot_review_gates(
        run.model, run.vocabulary, args.review, layer=args.layer, max_words=args.max_words
    )
    print(f"wrote {inspect.save_figure(figure, args.out)}")


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
