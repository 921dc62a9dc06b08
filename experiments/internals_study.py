"""The internals study at full size (docs/tutorial-study.md runs the same calls on small models):
interpretable cells of a character-level IMDB language model, and the sentiment units of an
IMDB classifier with what ablating them does to its accuracy.

    python experiments/internals_study.py --lm-run runs/results/cpu/lm/imdb-char \\
        --classifier-run runs/study/simple --out docs/study

(``--data-dir`` or $TFDS_DATA_DIR: where TFDS's imdb_reviews is.) Writes ``study.json`` and
the pictures into ``--out``; with only one of ``--lm-run`` and ``--classifier-run``, only that
part of ``study.json`` is computed again.

Language model: the held-out reviews of ``flaxlstm train lm --imdb`` (``imdb_texts(0.02)``'s
validation draw, never trained on), their first ``--chars`` characters. Each signal's best
unit (``find_units``, by |Pearson r| of its cell state c with the signal) is chosen on the
first half of them, and its r and one-unit threshold-probe accuracy are reported on the other
half. Classifier: the sentiment units are ranked by how well their last h tells positive from
negative (``last_values``, ``rank_units``) on a draw of training reviews; the ablation (their h
held at every step at its mean last value over those reviews, so that the head's bias still
fits) is scored on a draw of test reviews, against as many units drawn at random.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time

import numpy as np

from flaxlstm.data import imdb as imdb_data
from flaxlstm.data.text import imdb_texts
from flaxlstm.lab import internals, plots
from flaxlstm.lab.traces import lstm_layers
from flaxlstm.training.fit import evaluate
from flaxlstm.training.runs import load_lm_run, load_run

CHAR_SIGNALS = ("inside quotes", "inside parentheses", "to sentence end", "position")


def char_signals(ids: np.ndarray, lengths: np.ndarray, vocabulary) -> dict[str, np.ndarray]:
    """The built-in per-step signals [N, T] over character ids."""
    char = vocabulary.ids
    return {
        "inside quotes": internals.inside_quotes(ids, char['"']),
        "inside parentheses": internals.inside_parentheses(ids, char["("], char[")"]),
        "to sentence end": internals.to_sentence_end(ids, [char[c] for c in ".!?"], lengths),
        "position": internals.position(ids),
    }


def unit_statistics(values: np.ndarray, signal: np.ndarray, unit: int) -> dict:
    """One unit's r and probe accuracy (boolean signals) over the real steps."""
    ranking = internals.rank_units(values[:, [unit]], signal)
    found = {"correlation": float(ranking.correlation[0])}
    if ranking.accuracy is not None:
        found |= {"accuracy": float(ranking.accuracy[0]), "baseline": ranking.baseline}
    return found


def lm_study(run_dir: str, data_dir, reviews: int, chars: int, out: str) -> dict:
    """Interpretable cells and gate saturation of a character-level ``train lm --imdb`` run."""
    run = load_lm_run(run_dir)
    if run.vocabulary.level != "char":
        raise SystemExit(f"{run_dir} is a {run.vocabulary.level}-level run, not char")
    held = imdb_texts(0.02, data_dir)[1][: 2 * reviews]
    ids, lengths = imdb_data.pad_sequences(run.vocabulary.encode(held), chars, "post", "post")
    halves = {"choose": slice(0, reviews), "report": slice(reviews, 2 * reviews)}
    values, signals = {}, {}
    for half, rows in halves.items():
        values[half] = internals.unit_values(run.model, ids[rows], lengths[rows])  # c [n, H]
        real = np.arange(chars) < lengths[rows, None]
        signals[half] = {
            k: s[real] for k, s in char_signals(ids[rows], lengths[rows], run.vocabulary).items()
        }
    cells = {}
    for name in CHAR_SIGNALS:
        unit = int(internals.rank_units(values["choose"], signals["choose"][name]).units[0])
        cells[name] = {"unit": unit} | unit_statistics(
            values["report"], signals["report"][name], unit
        )
    saturation = internals.saturation(run.model, ids[halves["report"]], lengths[halves["report"]])
    plots.save_figure(plots.plot_saturation(saturation), f"{out}/lm-saturation.png")
    draw_cells(run, ids[halves["report"]], lengths[halves["report"]], cells, out)
    return {"run_dir": run_dir, "reviews": [reviews, reviews], "chars": chars, "cells": cells,
            "saturation": summary(saturation)}  # fmt: skip


def draw_cells(run, ids, lengths, cells: dict, out: str, shown: int = 600) -> None:
    """The quote and parenthesis cells' c over the first report review that has both."""
    char = run.vocabulary.ids
    quotes = (ids[:, :shown] == char['"']).sum(axis=1)
    row = int(np.argmax((quotes >= 2) & (ids[:, :shown] == char["("]).any(axis=1)))
    n = min(shown, int(lengths[row]))
    c = internals.unit_values(run.model, ids[row : row + 1, :n], np.array([n]))  # [n, H]
    text = [run.vocabulary.decode([i]) for i in ids[row, 1:n]]  # after START
    for name, file in (("inside quotes", "lm-quote-cell"), ("inside parentheses", "lm-paren-cell")):
        unit = cells[name]["unit"]
        title = f"cell {unit}'s c, {name} (held-out review; r = {cells[name]['correlation']:.2f})"
        figure = plots.plot_text_values(text, c[1:, unit], title=title, width=100)
        plots.save_figure(figure, f"{out}/{file}.png")


def summary(saturation: dict) -> dict:
    """Per layer and gate: the mean fractions left/right-saturated, and how many units are
    right-saturated more than half the time."""
    return {
        layer: {
            gate: {
                "left": float(s.left.mean()),
                "right": float(s.right.mean()),
                "units_right_over_half": int((s.right > 0.5).sum()),
                "units_left_over_half": int((s.left > 0.5).sum()),
            }  # fmt: skip
            for gate, s in gates.items()
        }
        for layer, gates in saturation.items()
    }


def classifier_study(run_dir: str, data_dir, reviews: int, ks, draws: int, out: str) -> dict:
    """Sentiment units of a ``train imdb`` run, and accuracy with them ablated."""
    run = load_run(run_dir)
    data = imdb_data.load_imdb(run.config["vocab_size"], run.config["maxlen"], data_dir=data_dir)
    rng = np.random.default_rng(0)
    choose, report = (
        rng.choice(len(s.ids), reviews, replace=False) for s in (data.train, data.test)
    )
    ((layer, lstm),) = lstm_layers(run.model).items()
    last_h = internals.last_values(run.model, data.train.ids[choose], data.train.lengths[choose])
    ranking = internals.rank_units(last_h, data.train.labels[choose] == 1)
    x, y, lengths = data.test.ids[report], data.test.labels[report], data.test.lengths[report]

    mean_h = last_h.mean(axis=0)  # [H]: what the head reads, on average

    def accuracy(units=()) -> float:
        """Test accuracy with ``units``' h held at their means at every step."""
        with contextlib.ExitStack() as stack:
            for u in units:
                stack.enter_context(internals.ablate(run.model, layer, u, "h", float(mean_h[u])))
            scores = evaluate(run.model, x, y, lengths=lengths, batch_size=250)
        return float(scores["accuracy"])

    ablations = {}
    for k in ks:
        top = [int(u) for u in ranking.units[:k]]
        drawn = [accuracy(rng.choice(lstm.hidden_features, k, replace=False)) for _ in range(draws)]
        ablations[k] = {"units": top, "accuracy": accuracy(top), "random_accuracy": drawn}
    saturation = internals.saturation(run.model, x, lengths)
    plots.save_figure(plots.plot_saturation(saturation), f"{out}/classifier-saturation.png")
    top = {"units": ranking.units[:10].tolist(), "correlation": ranking.correlation[:10].tolist(),
           "accuracy": ranking.accuracy[:10].tolist(), "baseline": ranking.baseline}  # fmt: skip
    return {"run_dir": run_dir, "reviews": [reviews, reviews], "layer": layer,
            "sentiment_units": top, "test_accuracy": accuracy(), "ablations": ablations,
            "saturation": summary(saturation)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lm-run", help="a `train lm --imdb --level char` run")
    parser.add_argument("--classifier-run", help="a `train imdb` run")
    parser.add_argument("--lm-reviews", type=int, default=200, help="per half (choose, report)")
    parser.add_argument("--chars", type=int, default=1000, help="the first N of each review")
    parser.add_argument("--reviews", type=int, default=5000, help="training and test draws")
    parser.add_argument("--draws", type=int, default=5, help="random ablations per size")
    parser.add_argument("--data-dir", default=None, help="TFDS data directory")
    parser.add_argument("--out", required=True, help="directory for study.json and pictures")
    args = parser.parse_args()
    if not (args.lm_run or args.classifier_run):
        parser.error("give --lm-run, --classifier-run or both")
    os.makedirs(args.out, exist_ok=True)
    path = f"{args.out}/study.json"
    result = {}  # a part not run this time keeps its earlier result
    if os.path.isfile(path):
        with open(path) as f:
            result = json.load(f)
    if args.lm_run:
        start = time.perf_counter()
        result["lm"] = lm_study(args.lm_run, args.data_dir, args.lm_reviews, args.chars, args.out)
        result["lm"]["seconds"] = round(time.perf_counter() - start, 1)
    if args.classifier_run:
        start = time.perf_counter()
        result["classifier"] = classifier_study(
            args.classifier_run, args.data_dir, args.reviews, (1, 3, 10, 30), args.draws, args.out
        )
        result["classifier"]["seconds"] = round(time.perf_counter() - start, 1)
    result.pop("seconds", None)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
