"""Inside a trained LSTM: how saturated its gates are, which units follow a property of the
text, and what the model does when chosen units are clamped. Numbers only
(``flaxlstm.lab.plots.plot_saturation`` draws the saturation)::

    saturation(model, inputs, lengths)        {layer: {gate: Saturation(left [H], right [H])}}
    unit_values(model, inputs, lengths)       c (or h, a gate, ...) [n, H] at a layer's n real steps
    last_values(model, inputs, lengths)       h (or c, ...) [N, H] at each example's last real step
    rank_units(values, signal)                the units by |correlation| with a per-step signal
    find_units(model, ids, lengths, signal)   the same over every layer: "find the quote cell"
    ablate(model, layer, units, what="c")     a ``with`` block in which those units are clamped
    ablation_effect(model, x, y, ablation)    loss, metric and predictions without and with it
    select_cells(values, start, end, thr)     the units on over one span only (hypotheses.py)
    match_spans(values_list, cells, thr)      the spans where all of them are on (hypotheses.py)
    saliency(model, ids, lengths)             each token's share of the output (attribution.py)
    gradient_flow(model, ids, lengths)        ‖∂output/∂h_t‖ at every step (attribution.py)

Per-step signals from token ids ids [N, T], each [N, T]: ``position``, ``inside_quotes``,
``inside_parentheses``, ``to_sentence_end``, ``in_set``. Layers are named as by
``flaxlstm.lab.traces.trace_model`` ("lstm", "lstm/forward", "layers/1", ...). The saturation
picture and the search for interpretable cells follow Karpathy, Johnson & Fei-Fei (2015),
"Visualizing and understanding recurrent networks".
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import jax
import numpy as np
from flax import nnx

from flaxlstm.cell import Clamp, Trace, check_clamps
from flaxlstm.checks import check_positive_int
from flaxlstm.data.batches import Batch, check_data
from flaxlstm.lab.attribution import gradient_flow, saliency  # noqa: F401 (re-exported)
from flaxlstm.lab.hypotheses import match_spans, select_cells  # noqa: F401 (re-exported)
from flaxlstm.lab.traces import lstm_layers, traced_steps
from flaxlstm.layers import LSTM
from flaxlstm.training.fit import evaluate, predict
from flaxlstm.training.losses import Loss
from flaxlstm.variants import VariantLSTM

# ----------------------------------------------------------------------------- tracing a data set


def _traced_batches(
    model: nnx.Module, inputs, lengths, mask, batch_size: int
) -> Iterator[dict[str, tuple[Trace, np.ndarray]]]:
    """``traced_steps`` of the examples in order, ``batch_size`` at a time, as numpy arrays.
    Every batch has the same shape (the last is topped up by repeating examples, which are
    cut off again), so the model compiles once."""
    check_positive_int("batch_size", batch_size)
    data = check_data(model, Batch(inputs, None, lengths))  # one-line errors before compiling
    mask = None if mask is None else np.asarray(mask)
    n = len(data.inputs)
    order = np.resize(np.arange(n), -(-n // batch_size) * batch_size)
    for start in range(0, len(order), batch_size):
        take, kept = order[start : start + batch_size], min(batch_size, n - start)
        found = traced_steps(
            model,
            data.inputs[take],
            None if data.lengths is None else data.lengths[take],
            None if mask is None else mask[take],
        )
        yield {name: _leading(pair, kept) for name, pair in found.items()}


def _leading(tree, rows: int):
    """The first ``rows`` rows of every array of ``tree``, as numpy arrays."""
    return jax.tree.map(lambda a: np.asarray(a)[:rows], tree)


class Saturation(NamedTuple):
    """How often each unit's gate is saturated over the real steps of a data set: ``left``
    [H], the fraction of steps with the gate below ``low``, and ``right`` [H], above
    ``high``."""

    left: np.ndarray
    right: np.ndarray


SATURATION_GATES = ("i", "f", "g", "o")


def gate_in_unit_interval(trace: Trace, gate: str) -> np.ndarray:
    """The gate's values in [0, 1]: i, f, o as they are, the candidate g ∈ (−1, 1) as
    (g + 1)/2, so that one pair of thresholds fits all four."""
    values = np.asarray(getattr(trace, gate))
    return (values + 1) / 2 if gate == "g" else values


def saturation(
    model: nnx.Module,
    inputs,
    lengths=None,
    mask=None,
    *,
    batch_size: int = 64,
    low: float = 0.1,
    high: float = 0.9,
) -> dict[str, dict[str, Saturation]]:
    """For every LSTM layer and direction of ``model``, how often each unit's gates are
    saturated over all of ``inputs`` ([N, T] token ids or [N, T, F] features; padding as the
    model takes it), processed ``batch_size`` examples at a time in eval mode.

    Returns ``{layer: {gate: Saturation(left, right)}}`` for the gates i, f, o and the
    candidate g mapped to [0, 1] as (g + 1)/2 (``gate_in_unit_interval``; so g counts as
    saturated below −0.8 and above 0.8 with the default thresholds): per unit [H], the fraction
    of the layer's real steps at which the gate is below ``low`` (left-saturated) and above
    ``high`` (right-saturated). Padded steps do not count.
    """
    if not 0 <= low <= high <= 1:
        raise ValueError(f"saturation needs 0 <= low <= high <= 1, got low={low}, high={high}")
    counts: dict[str, dict[str, np.ndarray]] = {}  # layer → gate → [2, H]: below, above
    steps: dict[str, int] = {}
    for found in _traced_batches(model, inputs, lengths, mask, batch_size):
        for name, (trace, real) in found.items():
            steps[name] = steps.get(name, 0) + int(real.sum())
            layer = counts.setdefault(name, {})
            for gate in SATURATION_GATES:
                values = gate_in_unit_interval(trace, gate)[real]  # [n, H]
                below_above = np.stack([(values < low).sum(0), (values > high).sum(0)])
                layer[gate] = layer.get(gate, 0) + below_above
    if not all(steps.values()):
        raise ValueError("no real steps to count: every length is 0")
    return {
        name: {gate: Saturation(*(c / steps[name])) for gate, c in gates.items()}
        for name, gates in counts.items()
    }


# ----------------------------------------------------------------------------- interpretable cells


def _layer_values(
    model, inputs, lengths, mask, state: str, batch_size: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{layer: (``state`` [n, H] at the layer's n real steps, real [N, T'])}."""
    if state not in Trace._fields:
        raise ValueError(f"state must be one of {', '.join(Trace._fields)}, got {state!r}")
    values: dict[str, list] = {}
    real: dict[str, list] = {}
    for found in _traced_batches(model, inputs, lengths, mask, batch_size):
        for name, (trace, steps) in found.items():
            if getattr(trace, state) is None:
                raise ValueError(f"layer {name} does not record {state}")
            values.setdefault(name, []).append(np.asarray(getattr(trace, state))[steps])
            real.setdefault(name, []).append(steps)
    return {name: (np.concatenate(values[name]), np.concatenate(real[name])) for name in values}


def unit_values(
    model: nnx.Module,
    inputs,
    lengths=None,
    mask=None,
    *,
    layer: str | None = None,
    state: str = "c",
    batch_size: int = 64,
) -> np.ndarray:
    """``state`` [n, H] (the cell state c by default; or h, a gate, a pre-activation: any
    ``Trace`` field) of LSTM layer ``layer`` (default: the first of ``trace_model``'s) at
    each of its n real steps over all of ``inputs``, in order: example by example, step by step,
    as ``signal[real]`` orders a per-step signal [N, T]."""
    layer, _ = _lstm_layer(model, layer)
    return _layer_values(model, inputs, lengths, mask, state, batch_size)[layer][0]


def last_values(
    model: nnx.Module,
    inputs,
    lengths=None,
    mask=None,
    *,
    layer: str | None = None,
    state: str = "h",
    batch_size: int = 64,
) -> np.ndarray:
    """``state`` [N, H] (h by default: what a classifier's head reads) of LSTM layer ``layer``
    (default: the first) at each example's last real step in input order, e.g.
    ``rank_units(last_values(model, x, lengths), y == 1)``: the units that tell the labels
    apart. (For a backward direction that step is where its scan begins.)"""
    layer, _ = _lstm_layer(model, layer)
    values, real = _layer_values(model, inputs, lengths, mask, state, batch_size)[layer]
    steps = real.sum(axis=1)  # [N]
    if not steps.all():
        raise ValueError(f"example {int(np.argmin(steps))} has no real steps: no last state")
    return values[np.cumsum(steps) - 1]


class UnitRanking(NamedTuple):
    """Units ranked by how closely they follow a signal, each array [H] in rank order.

    ``units``: unit indices, best first by absolute Pearson correlation; ``correlation``:
    their r (0 for a unit that never changes). For a boolean signal, ``accuracy``: each unit's
    best one-unit threshold probe (the fraction of steps right when the probe says True above,
    or below, one threshold), and ``baseline``: the fraction of the more common answer, which a
    probe always reaches. For other signals both are None.
    """

    units: np.ndarray
    correlation: np.ndarray
    accuracy: np.ndarray | None
    baseline: float | None


def correlations(values: np.ndarray, signal: np.ndarray) -> np.ndarray:
    """The Pearson correlation [H] of each column of ``values`` [n, H] with ``signal`` [n]:
    r = Σ(v − v̄)(s − s̄) / √(Σ(v − v̄)² Σ(s − s̄)²); 0 where either is constant."""
    v = values - values.mean(axis=0)
    s = signal - signal.mean()
    denominator = np.sqrt((v * v).sum(axis=0) * (s * s).sum())
    return np.divide(s @ v, denominator, out=np.zeros(v.shape[1]), where=denominator > 0)


def threshold_accuracy(values: np.ndarray, labels: np.ndarray) -> float:
    """The best accuracy of a threshold on ``values`` [n] as a classifier of ``labels`` [n]
    (booleans), either way round: exact, over every cut between two distinct values."""
    order = np.argsort(values, kind="stable")
    v, y = values[order], labels[order]
    false_below = np.concatenate([[0], np.cumsum(~y)])  # [n + 1]: cut after k values
    true_below = np.concatenate([[0], np.cumsum(y)])
    right = false_below + (y.sum() - true_below)  # the probe says True above the cut
    cuts = np.concatenate([[True], v[1:] > v[:-1], [True]])  # never between equal values
    n = len(v)
    return float(max(right[cuts].max(), n - right[cuts].min()) / n)  # or True below it


def rank_units(values, signal, real=None) -> UnitRanking:
    """Rank the units of ``values`` [..., H] (a unit's c or h at every step, e.g.
    ``unit_values``) by absolute Pearson correlation with ``signal`` [...] (one number or
    boolean per step; ``real`` [...] booleans keep only those steps). See ``UnitRanking``."""
    values, signal = np.asarray(values, np.float64), np.asarray(signal)
    if values.shape[:-1] != signal.shape:
        raise ValueError(
            f"values [..., H] {values.shape} and signal {signal.shape} must have one value per step"
        )
    if real is not None:
        values, signal = values[np.asarray(real, bool)], signal[np.asarray(real, bool)]
    values, signal = values.reshape(-1, values.shape[-1]), signal.reshape(-1)
    if len(signal) < 2:
        raise ValueError(f"rank_units needs at least 2 steps, got {len(signal)}")
    r = correlations(values, signal.astype(np.float64))
    units = np.argsort(-np.abs(r), kind="stable")
    if signal.dtype != bool:
        return UnitRanking(units, r[units], None, None)
    accuracy = np.array([threshold_accuracy(values[:, u], signal) for u in units])
    return UnitRanking(units, r[units], accuracy, float(max(signal.mean(), 1 - signal.mean())))


class FoundUnit(NamedTuple):
    """One unit that follows a signal: its ``layer`` and ``unit``, ``correlation`` (Pearson r)
    and, for a boolean signal, the ``accuracy`` of its best threshold probe (else None)."""

    layer: str
    unit: int
    correlation: float
    accuracy: float | None


def find_units(
    model: nnx.Module,
    inputs,
    lengths,
    signal,
    *,
    mask=None,
    layer: str | None = None,
    state: str = "c",
    top: int = 5,
    batch_size: int = 64,
) -> list[FoundUnit]:
    """The ``top`` units whose ``state`` (c by default) follows ``signal`` [N, T] most closely
    over the real steps of ``inputs`` (by absolute Pearson correlation), over every LSTM layer
    and direction of ``model`` or only ``layer``'s: e.g. ``find_units(model, ids, lengths,
    inside_quotes(ids, quote))``, the quote cell. Layers that run on other steps than the
    inputs' (after a CNN's pooling) are left out unless named, which is an error."""
    check_positive_int("top", top)
    if layer is not None:
        _lstm_layer(model, layer)  # a one-line error for an unknown name, before any work
    signal = np.asarray(signal)
    if signal.shape != np.shape(inputs)[:2]:
        raise ValueError(
            f"signal must be [N, T] = {np.shape(inputs)[:2]} (one per input step),"
            f" got {signal.shape}"
        )
    found = []
    layers = _layer_values(model, inputs, lengths, mask, state, batch_size)
    for name, (values, real) in layers.items() if layer is None else [(layer, layers[layer])]:
        if real.shape != signal.shape:
            if layer is None:
                continue
            raise ValueError(f"layer {name} runs on {real.shape[1]} steps, not the inputs' T")
        ranking = rank_units(values, signal[real])
        for k, unit in enumerate(ranking.units[:top]):
            accuracy = None if ranking.accuracy is None else float(ranking.accuracy[k])
            found.append(FoundUnit(name, int(unit), float(ranking.correlation[k]), accuracy))
    if not found:
        raise ValueError("no LSTM layer of the model runs on the inputs' steps")
    return sorted(found, key=lambda u: -abs(u.correlation))[:top]


def _ids(ids) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"signals take token ids [N, T] (integers), got {ids.dtype} {ids.shape}")
    return ids


def position(ids) -> np.ndarray:
    """[N, T] ints: each step's position in its sequence, 0, 1, 2, ..."""
    ids = _ids(ids)
    return np.broadcast_to(np.arange(ids.shape[1]), ids.shape).copy()


def in_set(ids, tokens) -> np.ndarray:
    """[N, T] booleans: whether each token is one of ``tokens`` (ids, e.g. the negations)."""
    return np.isin(_ids(ids), np.asarray(tokens))


def inside_quotes(ids, quote: int) -> np.ndarray:
    """[N, T] booleans: True from an opening quote (token id ``quote``) up to, not including,
    its closing one. Quotes pair up in order within a sequence (first with second, third
    with fourth, ...); a last quote without a partner opens nothing."""
    is_quote = _ids(ids) == quote
    seen = np.cumsum(is_quote, axis=1)  # quotes so far, this step's included
    return (seen % 2 == 1) & (seen < is_quote.sum(axis=1, keepdims=True))


def inside_parentheses(ids, opening: int, closing: int) -> np.ndarray:
    """[N, T] booleans: True from an ``opening`` token up to, not including, the ``closing``
    one that matches it, nested pairs included; a closing token with none open is ignored and
    an opening one never closed counts to the end."""
    ids = _ids(ids)
    depth, inside = np.zeros(len(ids), int), np.zeros(ids.shape, bool)
    for t in range(ids.shape[1]):
        depth = np.maximum(depth + (ids[:, t] == opening) - (ids[:, t] == closing), 0)
        inside[:, t] = depth > 0
    return inside


def to_sentence_end(ids, ends, lengths=None) -> np.ndarray:
    """[N, T] ints: how many steps ahead the sentence ends, at the next token of ``ends`` (ids
    of ".", "!", "?", ...; 0 on it) or at the sequence's last real step (``lengths``; default
    the last step), whichever comes first."""
    ids = _ids(ids)
    time = ids.shape[1]
    ending = np.isin(ids, np.asarray(ends))
    last = np.full(len(ids), time) if lengths is None else np.asarray(lengths)
    ending[np.arange(len(ids))[last > 0], last[last > 0] - 1] = True
    distance, end = np.zeros(ids.shape, int), np.full(len(ids), time - 1)
    for t in range(time - 1, -1, -1):
        end = np.where(ending[:, t], t, end)
        distance[:, t] = end - t
    return distance


# ----------------------------------------------------------------------------- ablation


class Ablation(NamedTuple):
    """``units`` of LSTM layer ``layer`` holding ``what`` ("c", "h", or a gate "i", "f",
    "g", "o") at ``value``: the arguments of ``ablate``."""

    layer: str
    units: Sequence[int]
    what: str = "c"
    value: float = 0.0


def _lstm_layer(model: nnx.Module, name: str | None) -> tuple[str, LSTM]:
    """The name and the LSTM layer ``name`` of ``model`` (None: the first, in
    ``trace_model``'s order), or a one-line error."""
    layers = lstm_layers(model)
    name = next(iter(layers), None) if name is None else name
    if name not in layers:
        raise ValueError(f"no LSTM layer {name!r}; the model has {', '.join(layers) or 'none'}")
    return name, layers[name]


@contextlib.contextmanager
def ablate(
    model: nnx.Module, layer: str, units, what: str = "c", value: float = 0.0
) -> Iterator[nnx.Module]:
    """A ``with`` block in which ``units`` (an int or ints) of LSTM layer ``layer`` hold
    ``what`` at ``value`` at every step: the cell state "c" (h is then computed from the held
    c, and the next step starts from it), the hidden state "h", or a gate "i", "f", "g", "o"
    (e.g. f = 1 and i = 0 freeze a unit's cell). Yields ``model``.

    It sets the layer's ``clamps`` (a static field: part of the graphdef, like
    ``hand_written_backward``) and restores it on leaving, so every use of the same model
    object inside the block is ablated (its calls, ``evaluate``, ``predict``,
    traces) and the parameters are never touched. Blocks nest: the clamps add up. The standard
    cell only (not ``flaxlstm.variants``).
    """
    _, target = _lstm_layer(model, layer)
    if isinstance(target, VariantLSTM):
        raise ValueError(f"layer {layer} is a {type(target).__name__}: only LSTM can be ablated")
    clamp = Clamp(what, tuple(int(u) for u in np.atleast_1d(units)), float(value))
    check_clamps([clamp], target.hidden_features)
    before = target.clamps
    target.clamps = (*before, clamp)
    try:
        yield model
    finally:
        target.clamps = before


class AblationEffect(NamedTuple):
    """What an ablation changes over a data set: ``before`` and ``after`` are
    ``evaluate``'s {"loss", metric}, ``change`` is after − before, and ``shift`` is
    ``predict``'s output after − before, per example ([N], [N, T] or [N(, T), C])."""

    before: dict[str, float]
    after: dict[str, float]
    change: dict[str, float]
    shift: np.ndarray


def ablation_effect(
    model: nnx.Module,
    x,
    y,
    ablation: Ablation | Sequence[Ablation],
    *,
    lengths=None,
    batch_size: int = 32,
    loss: str | Callable | Loss = "binary_crossentropy",
) -> AblationEffect:
    """The loss, metric and predictions of ``model`` on (x, y) without and with ``ablation``
    (one ``Ablation`` or several at once), through ``evaluate`` and ``predict``
    on the model itself: the training code's own path."""
    ablations = [ablation] if isinstance(ablation, Ablation) else list(ablation)
    if not all(isinstance(a, Ablation) for a in ablations):
        raise TypeError("ablation must be an Ablation or a sequence of them")

    def scores() -> tuple[dict[str, float], np.ndarray]:
        options = dict(lengths=lengths, batch_size=batch_size, loss=loss)
        return evaluate(model, x, y, **options), predict(model, x, **options)

    before, predicted = scores()
    with contextlib.ExitStack() as stack:
        for a in ablations:
            stack.enter_context(ablate(model, *a))
        after, ablated = scores()
    before, after = ({key: float(v) for key, v in d.items()} for d in (before, after))
    change = {key: after[key] - before[key] for key in before}
    return AblationEffect(before, after, change, ablated - predicted)
