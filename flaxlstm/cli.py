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
import dataclasses
import functools
import os
import runpy
import sys
from pathlib import Path

import jax
import numpy as np

from flaxlstm import models
from flaxlstm.config import (
    AddingConfig,
    CumsumConfig,
    ImdbConfig,
    InspectCumsumConfig,
    JobOptions,
    LmConfig,
    ParityConfig,
)
from flaxlstm.data import imdb as imdb_data
from flaxlstm.data import synthetic
from flaxlstm.data.vocabulary import tokenize
from flaxlstm.models import MODELS
from flaxlstm.options import OptionError, non_negative_float, positive_int
from flaxlstm.recurrent import describe_loop
from flaxlstm.training import lm, processes
from flaxlstm.training.fit import evaluate, predict
from flaxlstm.training.interrupts import TrainingInterrupted
from flaxlstm.training.runs import (
    load_lm_run,
    load_run,
)
from flaxlstm.training.tasks import (
    output_directory,
    train_adding,
    train_cumsum,
    train_imdb,
    train_language_model,
    train_parity,
)

# flaxlstm.lab.plots (matplotlib) is imported where it is used: training and prediction never
# import it.


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def argument_type(parse):
    """``parse`` (a config field's parser of text) for argparse: its OptionError as argparse's
    one-line usage error."""

    @functools.wraps(parse)
    def convert(text: str):
        try:
            return parse(text)
        except OptionError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return convert


POSITIVE_INT, NON_NEGATIVE_FLOAT = map(argument_type, (positive_int, non_negative_float))


def add_options(parser: argparse.ArgumentParser, config) -> None:
    """One ``--option`` per field of the dataclass ``config`` (defaults from the instance)."""
    for f in dataclasses.fields(config):
        flag, default, meta = "--" + f.name.replace("_", "-"), getattr(config, f.name), f.metadata
        if isinstance(default, bool):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=meta["help"]
            )
        else:
            parse = None if meta["parse"] is None else argument_type(meta["parse"])
            parser.add_argument(
                flag, type=parse, choices=meta["choices"], default=default, help=meta["help"]
            )


def from_options(config_type: type, args: argparse.Namespace):
    """The ``config_type`` that the parsed ``args`` describe."""
    return config_type(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_type)})


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
        "generate",
        help="sample text from a 'train lm' model",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    generate.add_argument("--model-dir", required=True, help="a 'train lm' run directory")
    generate.add_argument("--prompt", default="", help="the text to go on from")
    generate.add_argument("--tokens", type=POSITIVE_INT, default=200, help="tokens to sample")
    generate.add_argument(
        "--temperature",
        type=NON_NEGATIVE_FLOAT,
        default=1.0,
        help="0: the likeliest token",
    )
    generate.add_argument("--seed", type=int, default=0, help="of the sampling")
    generate.set_defaults(run=generate_text)

    bench = commands.add_parser(
        "bench",
        help="time the training step against PyTorch, Keras and Flax (a checkout's"
        " benchmarks/bench.py)",
    )
    bench.add_argument("options", nargs=argparse.REMAINDER, help="see benchmarks/bench.py -h")
    bench.set_defaults(run=run_benchmarks)

    summary = commands.add_parser("summary", help="a Keras-like table of a model's layers")
    summary.add_argument("model", choices=sorted(MODELS))
    summary.set_defaults(run=lambda args: print(models.summary(args.model)))
    add_inspect_parser(commands)
    return parser


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
        if not tokenize(review):
            raise ValueError(f"review {n + 1} has no words after tokenisation: {review[:40]!r}")
    ids, lengths = imdb_data.pad_sequences(
        vocabulary.encode(reviews), config["maxlen"], padding="post"
    )
    for review, p in zip(reviews, predict(model, ids, lengths=lengths), strict=True):
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
    parser.add_argument("--max-words", type=POSITIVE_INT, default=60, help="words drawn")
    parser.add_argument("--out", default=f"{name}.png", help="the PNG to write")
    parser.set_defaults(run=run)
    return parser


def add_explorer_view(views) -> argparse.ArgumentParser:
    """``inspect html``: one self-contained HTML page to explore a run's units over texts."""
    from flaxlstm.lab import corpus, explorer

    parser = views.add_parser(
        "html",
        help="one self-contained HTML page: texts coloured by any unit's gates and states, the"
        " prediction after each token, saturation, interpretable cells, and the lab: cells"
        " selected over a span and matched over the texts, signals, attributions, ablations",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model-dir", required=True, help="a 'train imdb' or 'train lm' run")
    text = parser.add_mutually_exclusive_group(required=True)
    text.add_argument("--text", help="the text to read")
    text.add_argument("--file", help="read the texts from this file (UTF-8, one text a line)")
    text.add_argument(
        "--imdb-test",
        type=POSITIVE_INT,
        metavar="N",
        help=f"read the first N (≤ {corpus.MAX_TEXTS}) IMDB test reviews (held out: ablations)",
    )
    text.add_argument(
        "--lm-valid",
        type=POSITIVE_INT,
        metavar="N",
        help=f"read N (≤ {corpus.MAX_TEXTS}) of a 'train lm' run's validation texts (held out)",
    )
    parser.add_argument("--data-dir", help="TFDS data directory (default: $TFDS_DATA_DIR)")
    parser.add_argument(
        "--annotations",
        help="your own signals: JSON lines, one a text, {name: [one number a token]}",
    )
    parser.add_argument(
        "--max-tokens",
        type=POSITIVE_INT,
        default=explorer.MAX_TOKENS,
        help="tokens shown",
    )
    parser.add_argument("--layer", help="the layer shown first (e.g. lstm); none: the first")
    parser.add_argument(
        "--hypothesis-layer", help="the layer whose h and c the lab selects on; none: the last"
    )
    parser.add_argument(
        "--quantity", choices=explorer.QUANTITIES, default="c", help="the quantity shown first"
    )
    parser.add_argument(
        "--unit", type=int, help="the unit shown first; none: the one that best follows a signal"
    )
    parser.add_argument(
        "--ig-steps", type=POSITIVE_INT, default=corpus.IG_STEPS, help="integrated gradients' steps"
    )
    parser.add_argument("--out", default="explorer.html", help="the HTML page to write")
    parser.set_defaults(run=inspect_html)
    return parser


def inspect_curves(args: argparse.Namespace) -> None:
    from flaxlstm.lab import plots
    from flaxlstm.training import runs

    history = runs.read_history(args.run_dir)
    figure = plots.plot_history(history, title=f"Training curves: {args.run_dir}")
    print(f"wrote {plots.save_figure(figure, args.out)}")


def inspect_cumsum(config: InspectCumsumConfig) -> None:
    from flaxlstm.lab import plots, traces
    from flaxlstm.training import runs

    seed = config.seed
    x, y = synthetic.cumsum_sequences(1000, 10, seed=[seed, 1])  # train cumsum's test set
    if not 0 <= config.sequence < len(x):
        raise ValueError(f"--sequence must lie in [0, {len(x)}), got {config.sequence}")
    out = output_directory(config.out)
    model = runs.train_cumsum_model(
        config.samples, config.epochs, config.hidden, 10, config.learning_rate, seed
    )
    predicted, actual = traces.cumsum_crossings(model, x, y)
    accuracy = evaluate(model, x, y)["accuracy"]
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


def _page_texts(args: argparse.Namespace) -> tuple[list[str], np.ndarray | None, bool]:
    """``inspect html``'s texts, a classifier's labels of them, and whether they are held out."""
    from flaxlstm.lab import corpus

    count = args.imdb_test or args.lm_valid
    if count is not None and count > corpus.MAX_TEXTS:
        option = "--imdb-test" if args.imdb_test else "--lm-valid"
        raise ValueError(f"{option} must lie in [1, {corpus.MAX_TEXTS}], got {count}")
    if args.text is not None:
        return [args.text], None, False
    if args.file is not None:
        with open(args.file, encoding="utf-8") as f:
            texts = [line for line in f.read().splitlines() if line.strip()]
        if not texts:
            raise ValueError(f"{args.file} holds no text")
        return texts, None, False
    if args.imdb_test:
        from flaxlstm.data import imdb

        texts, labels = imdb.read_split("test", args.data_dir, limit=args.imdb_test)
        return [t.decode("utf-8") for t in texts], labels, True
    return _lm_valid_texts(args.model_dir, args.lm_valid, args.data_dir), None, True


def _lm_valid_texts(run_dir: str, count: int, data_dir: str | None) -> list[str]:
    """The first ``count`` validation texts of a ``train lm`` run: lines of its text file's
    held-out end, or its held-out reviews (the same draw as training's)."""
    import json

    from flaxlstm.data import text as text_data

    path = os.path.join(run_dir, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        config = {}
    if not isinstance(config, dict) or config.get("task") != "lm":
        raise ValueError(f"--lm-valid needs a 'train lm' run; {run_dir!r} holds none")
    split = config.get("validation_split") or 0.02
    if config.get("text"):
        held = text_data.text_file(config["text"], split)[1]
        texts = [line for line in held.splitlines() if line.strip()]
    else:
        data_dir = data_dir or config.get("data_dir")
        held = text_data.imdb_texts(split, data_dir, config.get("limit"))[1]
        texts = [t.decode("utf-8") for t in held]
    return texts[:count]


def inspect_html(args: argparse.Namespace) -> None:
    from flaxlstm.lab import explorer

    texts, labels, held_out = _page_texts(args)
    data = explorer.explore_run(
        args.model_dir,
        texts,
        args.out,
        max_tokens=args.max_tokens,
        layer=args.layer,
        quantity=args.quantity,
        unit=args.unit,
        annotations=args.annotations,
        labels=labels,
        held_out=held_out,
        hypothesis_layer=args.hypothesis_layer,
        ig_steps=args.ig_steps,
    )
    size = os.path.getsize(args.out)
    shown = len(data["corpus"]["texts"])
    print(
        f"wrote {args.out} ({shown} text{'s' if shown > 1 else ''},"
        f" {len(data['tokens']) - 1} tokens in the first, {size / 1e3:.0f} kB)"
    )


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
    in_job = False
    try:
        config_type = getattr(args, "config_type", None)
        config = from_options(config_type, args) if config_type else None
        if isinstance(config, JobOptions):  # before JAX runs anything
            in_job = processes.join_job(config.coordinator, config.num_processes, config.process_id)
            config = dataclasses.replace(config, quiet=config.quiet or not processes.primary())
        if hasattr(config, "loop") and not config.quiet:  # a train command's first line
            bf16 = jax.numpy.bfloat16 if getattr(config, "dtype", None) == "bfloat16" else None
            print(f"LSTM time steps: {describe_loop(config.loop, bf16)}", flush=True)
        args.run(config or args)
    except TrainingInterrupted as stop:
        parser.exit(stop.exit_status, f"flaxlstm: {stop}\n")
    except Exception as error:
        if not (in_job or isinstance(error, ValueError | OSError)):
            raise
        message = f"flaxlstm: error: {processes.one_line(error, in_job)}\n"
        if not in_job:
            parser.exit(1, message)
        sys.stderr.write(message)  # and out at once: the others see this process end
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(1)


if __name__ == "__main__":
    sys.exit(main())
