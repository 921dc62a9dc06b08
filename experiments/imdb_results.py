"""Train every seed model on IMDB with the seeds' settings over several seeds; write
docs/RESULTS.md. Each run is `flaxlstm train imdb`, so every number has its command.

    python experiments/imdb_results.py [--seeds 0 1 2] [--models simple ...] [--runs runs/results]

Runs whose metrics.json exists are not repeated, so the script can be stopped and resumed; the
finished runs' metrics.json and history.json are kept in git (runs/results/), the rest of each
run directory (checkpoints, model) is not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

# The seeds' reported test accuracy (%) and this project's target for each model.
SEED_RESULTS = {
    "simple": ("seed 003", 87.37, 87.4),
    "dropout": ("seed 003", 87.37, None),
    "lstm-dropout": ("seed 003", 87.37, None),
    "bilstm": ("seed 003", 87.37, 87.4),
    "cnn-lstm": ("seed 003", 86.20, 86.2),
    "seed002": ("seed 002", 81.3, 81.3),
}
OPTIONS = ["--clip-norm", "1.0"]  # what this project adds to the seeds' settings


def command(model: str, seed: int, out: str) -> list[str]:
    return [
        "flaxlstm",
        "train",
        "imdb",
        "--model",
        model,
        "--seed",
        str(seed),
        *OPTIONS,
        "--quiet",
        "--out",
        out,
    ]


def run(model: str, seed: int, runs: str) -> dict | None:
    out = os.path.join(runs, f"{model}-seed{seed}")
    path = os.path.join(out, "metrics.json")
    if not os.path.exists(path):
        print("running:", " ".join(command(model, seed, out)), flush=True)
        result = subprocess.run(command(model, seed, out))
        if result.returncode != 0:
            print(f"failed: {model} seed {seed}", file=sys.stderr)
            return None
    with open(path) as f:
        metrics = json.load(f)
    with open(os.path.join(out, "history.json")) as f:
        history = json.load(f)
    # The test split's accuracy after each epoch (named val_accuracy by runs before 0.1.0).
    metrics["curve"] = history.get("test_accuracy") or history["val_accuracy"]
    return metrics


def write_results(results: dict[str, list[dict]], seeds: list[int], runs: str, path: str):
    lines = [
        "# IMDB results",
        "",
        "Test accuracy on the 25,000 reviews of IMDB's test split after the seed's number of",
        "epochs, for each seed model on flaxlstm's LSTM, over the random seeds listed (mean ±",
        "standard deviation, then min–max). Produced by",
        "",
        f"    python experiments/imdb_results.py --seeds {' '.join(map(str, seeds))}",
        "",
        "which runs, for each model and seed,",
        "",
        "    "
        + " ".join(command("MODEL", 0, f"{runs}/MODEL-seedN")).replace("--seed 0", "--seed N"),
        "",
        "with the seed's settings (vocabulary, maxlen, embedding, batch size, epochs: see",
        "`flaxlstm summary MODEL` and `flaxlstm/models.py`), Adam(1e-3), gradient clipping to",
        "global norm 1.0, and length-bucketed batches (width 50) instead of padding every",
        "review to maxlen. Seconds per epoch include the test-split evaluation after each epoch",
        "and the compilations; they were measured on this project's 2-core machine while other",
        "work shared it, so they are upper bounds.",
        "",
        "| model | epochs | runs | test accuracy % | min–max | seed's own | target | s/epoch"
        " | best epoch (mean acc.) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model, metrics in results.items():
        if not metrics:
            continue
        acc = np.array([m["test_accuracy"] for m in metrics]) * 100
        secs = np.median([m["seconds_per_epoch"] for m in metrics])
        epochs = len(metrics[0]["curve"])
        curves = np.array([m["curve"] for m in metrics]) * 100
        best = int(np.argmax(curves.mean(0))) + 1
        source, theirs, target = SEED_RESULTS[model]
        lines.append(
            f"| {model} | {epochs} | {len(acc)}"
            f" | {acc.mean():.2f} ± {acc.std():.2f}"
            f" | {acc.min():.2f}–{acc.max():.2f} | {theirs if theirs else '—'} ({source})"
            f" | {f'≥ {target}' if target else '—'} | {secs:.0f}"
            f" | {best} ({curves.mean(0)[best - 1]:.2f}) |"
        )
    lines += [
        "",
        "What the seeds' own numbers are: seed 003 prints 87.37 % after `dropout`,",
        "`lstm-dropout` and `bilstm` too, but each of those cells evaluates `model`, its first",
        "(`simple`) model, not the one it has just trained; and its CNN+LSTM cell trains `model`",
        "again for 3 more epochs before evaluating it (86.20 %). So only the `simple` figure is",
        "a result of the model named beside it; the other seed-003 figures, and the issue's",
        "targets taken from them, are the simple model's.",
        "",
        "Per-epoch test accuracy (%), mean over the runs:",
        "",
    ]
    for model, metrics in results.items():
        if metrics:
            curve = np.mean([m["curve"] for m in metrics], 0) * 100
            lines.append(f"- {model}: " + ", ".join(f"{a:.2f}" for a in curve))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(SEED_RESULTS))
    parser.add_argument("--runs", default="runs/results")
    parser.add_argument("--results", default="docs/RESULTS.md")
    args = parser.parse_args()
    results: dict[str, list[dict]] = {model: [] for model in args.models}
    for seed in args.seeds:  # every model once before any model twice
        for model in args.models:
            metrics = run(model, seed, args.runs)
            if metrics is not None:
                results[model].append(metrics)
                write_results(results, args.seeds, args.runs, args.results)


if __name__ == "__main__":
    main()
