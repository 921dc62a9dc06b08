"""Pictures of what a model does inside, as matplotlib Figures made without pyplot (no global
state, no GUI): ``figure.savefig("x.png")`` draws them with Agg::

    plot_gates(trace)                     heatmaps of i, f, g, o and c over one sequence
    plot_cumsum(model, x, y)              cumsum task: cell state and prediction at every step
    plot_review(model, vocabulary, text)  P(positive) after each word of a review
    plot_saturation(saturation(...))      how often each unit's gates saturate (Karpathy 2015)
    plot_text_values(characters, values)  a text, each character on its unit's value's colour
    plot_history(history)                 training curves of a run (its history.json)
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from flaxlstm.cell import Trace
from flaxlstm.data.vocabulary import OOV, Vocabulary, tokenize
from flaxlstm.lab.internals import Saturation
from flaxlstm.lab.traces import first_step, review_prefixes, trace_model
from flaxlstm.models import CumsumModel, SentimentClassifier
from flaxlstm.training.fit import predict
from flaxlstm.training.loop import History

GATE_NAMES = {
    "i": "input gate i",
    "f": "forget gate f",
    "g": "candidate g",
    "o": "output gate o",
    "c": "cell state c",
}


def plot_gates(
    trace: Trace,
    index: int = 0,
    *,
    length: int | None = None,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Heatmaps of the gates i, f, g, o and the cell state c of sequence ``index`` of ``trace``
    ([B, T, H] each): one row per quantity, units on the vertical axis, steps across, each
    row on its own colour scale (its colour bar).

    ``length`` (default: ``len(labels)``, else T) cuts off padded steps; ``labels`` name the
    steps (e.g. the words), shown when there are at most 80 of them.
    """
    length = length or (len(labels) if labels is not None else trace.i.shape[1])
    fields = {name: np.asarray(getattr(trace, name)[index, :length]).T for name in GATE_NAMES}
    units = fields["i"].shape[0]
    width = min(16.0, max(7.0, 0.22 * length + 2))
    fig = Figure(figsize=(width, 1.6 + 1.5 * len(fields)), layout="constrained")
    axes = fig.subplots(len(fields), 1, sharex=True)
    for ax, (name, values) in zip(axes, fields.items(), strict=True):
        # Each row spans its own values (a half-trained gate may sit near 0.5 throughout); g and
        # c are signed, so they get a diverging map centred on 0.
        if name in "gc":
            limit = max(float(np.abs(values).max()), 1e-6)
            cmap, vmin, vmax = "RdBu_r", -limit, limit
        else:
            cmap, vmin, vmax = "viridis", float(values.min()), float(values.max())
        image = ax.imshow(
            values,
            aspect="auto",
            interpolation="nearest",
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            extent=(0.5, length + 0.5, units - 0.5, -0.5),  # steps counted from 1
        )
        ax.set_ylabel(f"{GATE_NAMES[name]}\nunit")
        fig.colorbar(image, ax=ax, pad=0.01, fraction=0.03)
    if labels is not None and len(labels) == length and length <= 80:
        axes[-1].set_xticks(range(1, length + 1), labels, rotation=70, ha="right", fontsize=8)
    else:
        axes[-1].xaxis.get_major_locator().set_params(integer=True)
        axes[-1].set_xlabel("step t")
    fig.suptitle(title or f"Gates and cell state over time ({units} units)")
    return fig


def plot_cumsum(
    model: CumsumModel, x: np.ndarray, y: np.ndarray, index: int = 0, units: int = 4
) -> Figure:
    """The cumsum task seen from inside, for sequence ``index`` of x [N, T, 1], y [N, T]:
    the inputs and their running sum against T/4; the cell state of the ``units`` units whose
    c follows the running sum most closely (over all N sequences, compared at equal steps);
    and the prediction per step. A vertical band marks the step where the running sum reaches
    T/4 (where the label turns 1).
    """
    x, y = np.asarray(x), np.asarray(y)
    time = x.shape[1]
    running = np.cumsum(x[..., 0], axis=1)  # [N, T]
    cell = np.asarray(trace_model(model, x)["lstm"].c)  # [N, T, H]
    # Which units hold the sum? Both c and the sum grow with t, so compare sequences at the
    # same step: correlate c with the running sum, each centred on its mean at every step.
    cell_c, running_c = cell - cell.mean(axis=0), (running - running.mean(axis=0)).ravel()
    r = np.nan_to_num(
        [np.corrcoef(cell_c[..., u].ravel(), running_c)[0, 1] for u in range(cell.shape[-1])]
    )
    chosen = np.argsort(-np.abs(r))[:units]
    p = predict(model, x[index : index + 1])[0]
    crossing = int(first_step(y[index : index + 1] == 1)[0])
    predicted = int(first_step(p[None] > 0.5)[0])
    steps = np.arange(1, time + 1)  # step numbers as a reader counts them
    counted = lambda step: str(step + 1) if step < time else "no step"  # noqa: E731

    fig = Figure(figsize=(7.5, 7.5), layout="constrained")
    ax_in, ax_c, ax_p = fig.subplots(3, 1, sharex=True)
    ax_in.bar(steps, x[index, :, 0], color="0.75", label="input $x_t$")
    ax_in.plot(steps, running[index], "o-", color="tab:blue", label="running sum")
    ax_in.axhline(time / 4, color="tab:red", ls="--", label=f"threshold T/4 = {time / 4:g}")
    ax_in.set_ylabel("value")
    ax_in.legend(loc="upper left", fontsize=8)
    for u in chosen:
        ax_c.plot(steps, cell[index, :, u], "o-", ms=3, label=f"unit {u} (r = {r[u]:+.2f})")
    ax_c.axhline(0, color="0.6", lw=0.8)
    ax_c.set_ylabel("cell state $c_t$")
    ax_c.legend(
        loc="upper left",
        fontsize=8,
        ncols=2,
        title="r: correlation with the running sum at equal steps",
    )
    ax_p.plot(steps, p, "o-", color="tab:green", label="prediction $\\sigma(\\mathrm{logit}_t)$")
    ax_p.step(steps, y[index], where="mid", color="0.4", ls=":", label="label")
    ax_p.axhline(0.5, color="tab:red", ls="--", lw=1)
    ax_p.set_ylim(-0.05, 1.05)
    ax_p.set_ylabel("P(running sum ≥ T/4)")
    ax_p.set_xlabel("step t")
    ax_p.set_xticks(steps)
    ax_p.legend(loc="center right", fontsize=8)
    if crossing < time:
        for ax in (ax_in, ax_c, ax_p):
            ax.axvline(steps[crossing], color="tab:red", alpha=0.35, lw=6)
    fig.suptitle(
        f"Cumsum, sequence {index}: the running sum reaches T/4 at step {counted(crossing)},\n"
        f"the prediction crosses 0.5 at step {counted(predicted)}"
    )
    return fig


def plot_review(
    model: SentimentClassifier,
    vocabulary: Vocabulary,
    text: str,
    max_words: int = 60,
) -> Figure:
    """P(positive) after each word of ``text`` (``review_prefixes``), the words across; words
    outside the vocabulary are grey."""
    words, p = review_prefixes(model, vocabulary, text, max_words)
    steps = np.arange(len(words))
    fig = Figure(figsize=(min(16.0, max(6.0, 0.28 * len(words) + 1.5)), 4.2), layout="constrained")
    ax = fig.subplots()
    for above, colour in ((p >= 0.5, "tab:green"), (p <= 0.5, "tab:red")):
        ax.fill_between(steps, 0.5, p, where=above, interpolate=True, color=colour, alpha=0.3)
    ax.plot(steps, p, "o-", color="k", ms=3, lw=1)
    ax.axhline(0.5, color="0.5", ls="--", lw=1)
    ax.set_ylim(0, 1)
    ax.set_xlim(-0.5, len(words) - 0.5)
    ax.set_ylabel("P(positive) so far")
    ax.set_xticks(steps, words, rotation=70, ha="right", fontsize=9)
    for tick, word in zip(ax.get_xticklabels(), words, strict=True):
        if vocabulary.ids[word] == OOV:
            tick.set_color("0.6")
    ax.set_title(
        f"Prediction after each word (final: {p[-1]:.2f}; grey words are out of vocabulary)"
    )
    return fig


def plot_review_gates(
    model: SentimentClassifier,
    vocabulary: Vocabulary,
    text: str,
    *,
    layer: str | None = None,
    max_words: int = 60,
) -> Figure:
    """``plot_gates`` for one review: the LSTM layer ``layer`` (default: the first of
    ``trace_model``'s) over START and the first ``max_words`` words."""
    words = ["<start>", *tokenize(text)[:max_words]]
    (ids,) = vocabulary.encode_tokens([words[1:]])
    traces = trace_model(model, ids[None], lengths=np.array([len(ids)], np.int32))
    layer = layer or next(iter(traces))
    if layer not in traces:
        raise ValueError(f"no LSTM layer {layer!r}; the model has {', '.join(traces)}")
    trace = traces[layer]  # no padding: every step is real
    # After the CNN's pooling a step covers two words: then the steps go unnamed.
    labels = words if trace.i.shape[1] == len(words) else None
    return plot_gates(trace, labels=labels, title=f"{layer}: gates over a review")


def plot_saturation(result: dict[str, dict[str, Saturation]], layer: str | None = None) -> Figure:
    """Karpathy, Johnson & Fei-Fei (2015)'s saturation plot of LSTM layer ``layer`` (default:
    the first) of ``flaxlstm.lab.internals.saturation``'s ``result``: one panel per gate, one point
    per unit at (the fraction of real steps at which the gate is left-saturated, the fraction
    at which it is right-saturated). A unit on the diagonal x + y = 1 is always saturated, one
    at the origin never; g is drawn as (g + 1)/2."""
    layer = layer or next(iter(result))
    if layer not in result:
        raise ValueError(f"no LSTM layer {layer!r}; the result has {', '.join(result)}")
    gates = result[layer]
    fig = Figure(figsize=(2.8 * len(gates) + 0.5, 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(gates), sharex=True, sharey=True))
    for ax, (gate, fractions) in zip(axes, gates.items(), strict=True):
        ax.plot([0, 1], [1, 0], color="0.7", ls="--", lw=1)  # always saturated
        ax.scatter(fractions.left, fractions.right, s=14, alpha=0.6, color="tab:blue")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        ax.set_title(GATE_NAMES[gate] + (", (g + 1)/2" if gate == "g" else ""), fontsize=10)
        ax.set_xlabel("fraction left-saturated")
    axes[0].set_ylabel("fraction right-saturated")
    units = len(next(iter(gates.values())).left)
    fig.suptitle(f"{layer}: gate saturation of its {units} units")
    return fig


def plot_text_values(tokens: Sequence[str], values, *, title: str = "", width: int = 80) -> Figure:
    """A text as Karpathy, Johnson & Fei-Fei (2015) show an interpretable cell: its ``tokens``
    (characters, or short tokens) in rows of ``width``, each on a background coloured by its
    value ``values`` [T] (e.g. one unit's c at that step: red above 0, blue below). A line
    break ("\\n", drawn ↵) starts a new row."""
    values = np.asarray(values, float)
    if values.shape != (len(tokens),):
        raise ValueError(
            f"values must be [T] = [{len(tokens)}] (one per token), got {values.shape}"
        )
    places, row, column = [], 0, 0  # (row, column) of each token
    for token in tokens:
        if column == width:
            row, column = row + 1, 0
        places.append((row, column))
        row, column = (row + 1, 0) if token == "\n" else (row, column + 1)
    grid = np.full((places[-1][0] + 1 if places else 1, width), np.nan)  # NaN: no token, blank
    for (r, c), value in zip(places, values, strict=True):
        grid[r, c] = value
    limit = max(float(np.abs(values).max(initial=0)), 1e-6)
    fig = Figure(figsize=(0.12 * width + 1.2, 0.24 * len(grid) + 0.8), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(grid, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    for (r, c), token in zip(places, tokens, strict=True):
        shown = "↵" if token == "\n" else token
        ax.text(c, r, shown, ha="center", va="center", fontsize=7, family="monospace")
    ax.set_axis_off()
    fig.colorbar(image, ax=ax, pad=0.01, fraction=0.02)
    ax.set_title(title, fontsize=10)
    return fig


def plot_history(history: History, title: str = "Training curves") -> Figure:
    """Loss and accuracy per epoch: training (``loss``, ``accuracy``) and every data set scored
    after each epoch (``val_loss``, ``test_accuracy``, ...), one line each."""
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for key, values in history.items():
            if key == metric or key.endswith(f"_{metric}"):
                style = "o-" if key == metric else "s--"
                ax.plot(range(1, len(values) + 1), values, style, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return fig


def save_figure(figure: Figure, path: str | os.PathLike) -> str:
    """Write ``figure`` as a PNG at 100 dpi (tens of kB), creating its directory; returns the
    path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100)
    return str(path)


def write_cumsum_pictures(
    model: CumsumModel, x: np.ndarray, y: np.ndarray, out: str | os.PathLike, index: int = 0
) -> list[str]:
    """``plot_cumsum`` and the gates of sequence ``index`` as out/cumsum.png and
    out/cumsum-gates.png; returns their paths."""
    gates = plot_gates(
        trace_model(model, x[index : index + 1])["lstm"],
        title=f"Cumsum, sequence {index}: gates and cell state at every step",
    )
    return [
        save_figure(plot_cumsum(model, x, y, index), os.path.join(out, "cumsum.png")),
        save_figure(gates, os.path.join(out, "cumsum-gates.png")),
    ]
