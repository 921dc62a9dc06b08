"""The lab page's corpus: many texts read by one model, for LSTMVis's hypothesis view
(``flaxlstm.lab.hypotheses``) in the browser, with rows of signals, attributions and
ablations under each text::

    corpus_data(model, vocabulary, texts)   the page's ``corpus``: a dict that JSON holds
    state_values(corpus, state)             its quantised h or c, as the page reads them:
                                            [T_i, H] per text, for select_cells / match_spans
    read_annotations(path, vocabulary, texts)  a JSON-lines file of the user's own signals

The page selects cells and matches spans itself, in the browser, on 8-bit values: one layer's
h and c over every token of every text, each state quantised over the whole corpus as

    q = round(255 · (v − low) / (high − low))  ∈ {0, …, 255},   v' = low + q · ((high − low) / 255)

(low, high: the state's least and greatest value), kept as base64 bytes, [Σ T_i, H] text by
text, row-major. ``state_values`` computes v' with the same float64 operations as the page's
script, so ``select_cells(state_values(corpus)[i], ...)`` and ``match_spans`` give exactly the
cells and spans the page lists (thresholds compare the same way, v' ≥ threshold). At most
``MAX_VALUES`` values (8 MB of base64) are kept: texts past that budget are left out, and
the page says how many.

``corpus_data``'s dict:

- ``texts``: per text ``tokens`` (``"<start>"`` first) and ``oov`` [T_i], ``cut`` (tokens past
  ``max_tokens`` left out); ``left_out``: texts past the budget;
- ``layer``, ``units`` H, ``states``: per state ``low``, ``high``, ``bytes`` (base64);
  ``offsets`` [N + 1]: text i's rows are offsets[i] to offsets[i + 1]; ``layer`` is None when
  no LSTM layer runs on the tokens' own steps (after a CNN's pooling);
- ``rows``: per signal, annotation or attribution ``name``, ``kind`` ("signal", "annotation",
  "attribution"), ``about``, ``values`` (per text [T_i], rounded, None where it has none;
  attributions scaled to ``|a| ≤ 1`` per text, ``scales`` [N] the factors) and ``units``: the
  ``TOP_UNITS`` units of ``layer`` whose c follows it best (``internals.rank_units`` over
  every text's steps), each ``unit``, ``r``, ``accuracy``;
- ``ablation``: None, or for the units that follow the rows best, the held-out score
  (``score``, ``higher_is_better``) on ``texts`` texts ``before``, and per ablation
  (each unit alone, then all of them) ``units``, ``after`` and ``change``.
"""

from __future__ import annotations

import base64
import json
import os

import numpy as np
from flax import nnx

from flaxlstm.data.vocabulary import OOV, TOKENIZERS, Vocabulary
from flaxlstm.lab import attribution, internals
from flaxlstm.lab.traces import trace_model
from flaxlstm.models import LanguageModel

MAX_TEXTS = 50
MAX_VALUES = 6_000_000  # quantised values kept (one byte each, 4/3 of that in base64)
LEVELS = 255  # the greatest quantised value
STATES = ("h", "c")
TOP_UNITS = 5
ABLATED = 5  # the units whose ablation is measured (each, then all together)
IG_STEPS = 32


# ----------------------------------------------------------------------------- 8-bit values


def quantise(values) -> dict:
    """``values`` [n, H] as ``low``, ``high`` and ``bytes``: base64 of round(255 · (v − low) /
    (high − low)) as uint8, row-major (high = low + 1 where every value is the same)."""
    values = np.asarray(values, np.float64)
    low, high = float(values.min()), float(values.max())
    high = high if high > low else low + 1.0
    q = np.rint((values - low) / (high - low) * LEVELS).clip(0, LEVELS).astype(np.uint8)
    return dict(low=low, high=high, bytes=base64.b64encode(q.tobytes()).decode("ascii"))


def dequantise(entry: dict, units: int) -> np.ndarray:
    """``quantise``'s entry as v' = low + q · ((high − low) / 255), [n, units] float64: the
    page script's arithmetic, operation for operation."""
    q = np.frombuffer(base64.b64decode(entry["bytes"]), np.uint8).reshape(-1, units)
    step = (entry["high"] - entry["low"]) / LEVELS
    return entry["low"] + q.astype(np.float64) * step


def state_values(corpus: dict, state: str = "h") -> list[np.ndarray]:
    """The page's 8-bit ``state`` of its layer, dequantised: one [T_i, H] array per text."""
    if corpus.get("layer") is None or state not in corpus["states"]:
        raise ValueError(f"the corpus holds no {state!r} values")
    values = dequantise(corpus["states"][state], corpus["units"])
    offsets = corpus["offsets"]
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


# ----------------------------------------------------------------------------- the texts


def text_tokens(vocabulary: Vocabulary, text: str) -> list[str]:
    """``text``'s tokens at ``vocabulary.level``: what an annotation gives a number for."""
    return TOKENIZERS[vocabulary.level](text)


def read_annotations(path: str | os.PathLike, vocabulary: Vocabulary, texts: list[str]) -> list:
    """The user's own signals: a JSON-lines file, line i an object mapping names to one number
    (or true/false) per token of text i (``text_tokens``), as [{name: array [tokens]}], or a
    one-line ValueError."""
    if not os.path.isfile(path):
        raise ValueError(f"no annotations file {str(path)!r}")
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    if len(lines) != len(texts):
        raise ValueError(f"{path} has {len(lines)} annotation lines for {len(texts)} texts")
    found = []
    for i, (line, text) in enumerate(zip(lines, texts, strict=True)):
        where, count = f"{path} line {i + 1}", len(text_tokens(vocabulary, text))
        try:
            entry = json.loads(line)
        except ValueError:
            raise ValueError(f"{where} is not JSON") from None
        if not isinstance(entry, dict):
            raise ValueError(f"{where} is not an object of name: [one number per token]")
        for name, values in entry.items():
            ok = isinstance(values, list) and all(
                isinstance(v, int | float) and np.isfinite(v) for v in values
            )
            if not ok:
                raise ValueError(f"{where}: {name!r} must be a list of finite numbers")
            if len(values) != count:
                raise ValueError(
                    f"{where}: {name!r} has {len(values)} numbers, the text {count} tokens"
                )
        found.append(
            {n: np.array(v, bool if all(isinstance(x, bool) for x in v) else np.float64)
             for n, v in entry.items()}
        )  # fmt: skip
    if found and any(set(entry) != set(found[0]) for entry in found):
        raise ValueError(f"{path}: every line must name the same annotations")
    return found


def _encode(vocabulary: Vocabulary, texts: list[str], max_tokens: int) -> tuple:
    """ids [N, T] (START first, post-padded), lengths [N], the shown tokens and cuts."""
    tokens = [text_tokens(vocabulary, text) for text in texts]
    for i, found in enumerate(tokens):
        if not found:
            raise ValueError(f"text {i} has no tokens after tokenisation: {texts[i][:40]!r}")
    shown = [found[:max_tokens] for found in tokens]
    encoded = vocabulary.encode_tokens(shown)
    lengths = np.array([len(e) for e in encoded], np.int32)
    ids = np.zeros((len(encoded), lengths.max()), np.int32)
    for i, e in enumerate(encoded):
        ids[i, : len(e)] = e
    cuts = [len(t) - len(s) for t, s in zip(tokens, shown, strict=True)]
    return ids, lengths, shown, cuts


def budget(lengths, units: int, max_values: int = MAX_VALUES) -> tuple[tuple[str, ...], int]:
    """The states kept and how many texts: h and c of every text where they fit
    ``max_values`` quantised values, else h alone, of as many texts as fit (at least one)."""
    total = np.cumsum(lengths) * max(units, 1)  # h of the first 1, 2, … texts
    for k in range(len(STATES), 0, -1):
        if total[-1] * k <= max_values:
            return STATES[:k], len(total)
    return STATES[:1], max(1, int((total <= max_values).sum()))


def corpus_from_values(
    tokens: list[list[str]],
    values: dict[str, list],
    *,
    layer: str | None,
    rows: list[dict] = (),
    max_values: int = MAX_VALUES,
    **more,
) -> dict:
    """The corpus dict of texts' ``tokens`` (START first) and ``values``: per state ("h",
    "c") one [T_i, H] array per text; ``rows`` and ``more`` (``oov``, ``cut``s, ``ablation``)
    as ``corpus_data`` makes them. ``budget`` chooses the states and texts kept; the values
    are quantised (``quantise``) over all the kept texts."""
    lengths = [len(t) for t in tokens]
    units = int(np.shape(next(iter(values.values()))[0])[1]) if values else 0
    kept_states, kept = budget(lengths, units, max_values) if values else ((), len(tokens))
    oov, cuts = more.get("oov"), more.get("cuts")
    return dict(
        texts=[
            dict(
                tokens=list(tokens[i]),
                oov=[0] * lengths[i] if oov is None else oov[i],
                cut=0 if cuts is None else cuts[i],
            )
            for i in range(kept)
        ],
        left_out=len(tokens) - kept,
        left_out_states=[s for s in values if s not in kept_states],
        layer=layer if values else None,
        units=units,
        states={s: quantise(np.concatenate(values[s][:kept])) for s in kept_states if s in values},
        offsets=[0, *np.cumsum(lengths[:kept]).tolist()],
        rows=[row | dict(values=row["values"][:kept]) for row in rows],
        ablation=more.get("ablation"),
    )


# ----------------------------------------------------------------------------- the rows


def _per_text(values: np.ndarray, lengths: np.ndarray, decimals: int = 3) -> list[list]:
    """[N, T] values as per-text lists of their real steps, rounded; None where not finite."""
    out = []
    for row, length in zip(np.asarray(values, np.float64), lengths, strict=True):
        row = np.round(row[:length], decimals) + 0.0  # + 0.0: no -0.0
        out.append(np.where(np.isfinite(row), row, None).tolist())
    return out


def _followers(cells: np.ndarray | None, signal: np.ndarray, real: np.ndarray) -> list[dict]:
    """The ``TOP_UNITS`` units whose c [N, T, H] follows ``signal`` [N, T] over the ``real``
    steps most closely (``internals.rank_units``); none where it never changes."""
    picked = signal[real]
    if cells is None or len(picked) < 2 or np.all(picked == picked[0]):
        return []
    ranking = internals.rank_units(cells, signal, real)
    found = []
    for n, unit in enumerate(ranking.units[:TOP_UNITS]):
        accuracy = None if ranking.accuracy is None else round(float(ranking.accuracy[n]), 3)
        found.append(
            dict(unit=int(unit), r=round(float(ranking.correlation[n]), 3), accuracy=accuracy)
        )
    return found


def _signal_rows(vocabulary, ids, lengths, annotations, cells) -> list[dict]:
    """The built-in signals (as the explorer's: position, quotes, parentheses, sentence end)
    over every text, then the user's annotations (None at START), each with its units."""
    real = np.arange(ids.shape[1]) < lengths[:, None]  # [N, T]
    ids = np.where(real, ids, 0)
    rows = []
    known = lambda token: token in vocabulary.ids  # noqa: E731
    found = [("position", "the token's index", internals.position(ids))]
    if known('"'):
        found.append(("inside quotes", 'between a " and its closing "',
                      internals.inside_quotes(ids, vocabulary.ids['"'])))  # fmt: skip
    if known("(") and known(")"):
        inside = internals.inside_parentheses(ids, vocabulary.ids["("], vocabulary.ids[")"])
        found.append(("inside parentheses", "between ( and its )", inside))
    ends = [vocabulary.ids[e] for e in (".", "!", "?") if known(e)]
    if ends and np.isin(ids[real], ends).any():
        distance = internals.to_sentence_end(ids, ends, lengths)
        found.append(
            ("to sentence end", "steps to the next . ! or ? (or the text's end)", distance)
        )
    for name, about, values in found:
        values = np.asarray(values)
        row = dict(name=name, kind="signal", about=about, values=_per_text(values, lengths))
        rows.append(row | dict(units=_followers(cells, values, real)))
    for name in annotations[0] if annotations else ():
        given = [np.asarray(entry[name]) for entry in annotations]
        values = np.zeros(ids.shape, bool if all(g.dtype == bool for g in given) else np.float64)
        for i, entry in enumerate(given):
            shown = entry[: lengths[i] - 1]
            values[i, 1 : 1 + len(shown)] = shown
        mine = real & (np.arange(ids.shape[1]) > 0)  # not the START token
        listed = [[None, *row[1:]] for row in _per_text(values, lengths)]
        row = dict(name=name, kind="annotation", about="your annotation", values=listed)
        rows.append(row | dict(units=_followers(cells, values, mine)))
    return rows


def _attribution_rows(model, ids, lengths, token_steps, steps: int) -> list[dict]:
    """Saliency by both methods and the gradient flow over every text, each scaled per text
    to |a| ≤ 1 (``scales``: the factors)."""
    what = "log P(its last token)" if isinstance(model, LanguageModel) else "the logit"
    found = [
        ("grad × input", f"Σ_k e_tk ∂F/∂e_tk, F = {what}",
         attribution.saliency(model, ids, lengths, "grad_x_input")),
        ("integrated gradients", f"from the zero embedding, {steps} steps, F = {what}",
         attribution.saliency(model, ids, lengths, "integrated_gradients", steps=steps)),
    ]  # fmt: skip
    flow = attribution.gradient_flow(model, ids, lengths)  # [N, T'] of the last LSTM layer
    at = [s if s is not None else -1 for s in token_steps(flow.shape[1])]
    flow = np.where(np.array(at) >= 0, flow[:, at], np.nan)
    found.append(("gradient flow", f"‖∂F/∂h_t‖ of the last LSTM layer, F = {what}", flow))
    rows = []
    for name, about, values in found:
        scales = np.nanmax(np.abs(np.where(np.isfinite(values), values, np.nan)), axis=1)
        scales = np.where(np.isfinite(scales) & (scales > 0), scales, 1.0)
        values = _per_text(values / scales[:, None], lengths)
        scales = [float(f"{s:.4g}") for s in scales]
        rows.append(dict(name=name, kind="attribution", about=about, values=values,
                         scales=scales, units=[]))  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- ablation


def _lm_bits(model: LanguageModel, ids: np.ndarray, lengths: np.ndarray) -> float:
    """Bits per token of ``ids`` [N, T]: −Σ log₂ P(x_t | x_<t) over the real steps t ≥ 1."""
    import jax

    from flaxlstm.training.loop import mode_view

    features, _ = mode_view(model, training=False)(ids)
    log_p = np.asarray(jax.nn.log_softmax(model.logits(features), axis=-1))  # [N, T, V]
    given = np.take_along_axis(log_p[:, :-1], ids[:, 1:, None], axis=-1)[..., 0]  # [N, T - 1]
    real = np.arange(1, ids.shape[1]) < lengths[:, None]
    return float(-given[real].mean() / np.log(2))


def _scores(model, ids, lengths, labels, ablations) -> dict[str, float]:
    """The held-out scores with ``ablations`` (``internals.Ablation``s) in force: a
    classifier's accuracy and loss on ``labels`` (``ablation_effect``), a language model's
    bits per token."""
    if isinstance(model, LanguageModel):
        import contextlib

        with contextlib.ExitStack() as stack:
            for a in ablations:
                stack.enter_context(internals.ablate(model, *a))
            return {"bits per token": _lm_bits(model, ids, lengths)}
    effect = internals.ablation_effect(model, ids, labels, ablations, lengths=lengths)
    return effect.after


def _ablation(model, layer: str, rows: list[dict], ids, lengths, labels) -> dict:
    """The held-out score before and after holding c at 0 in each of the units that follow the
    rows best (each row's first, then its second, …; ``ABLATED`` of them), alone and together."""
    ranked = [row["units"] for row in rows if row["units"]]
    units = []
    for n in range(TOP_UNITS):
        for found in ranked:
            if n < len(found) and found[n]["unit"] not in units and len(units) < ABLATED:
                units.append(found[n]["unit"])
    if not units:
        return None
    rounded = lambda scores: {k: round(v, 4) for k, v in scores.items()}  # noqa: E731
    before = rounded(_scores(model, ids, lengths, labels, []))
    sets = [[u] for u in units] + ([units] if len(units) > 1 else [])
    measured = []
    for chosen in sets:
        after = rounded(_scores(model, ids, lengths, labels, [internals.Ablation(layer, chosen)]))
        change = {k: round(after[k] - before[k], 4) for k in before}
        measured.append(dict(units=chosen, after=after, change=change))
    higher = not isinstance(model, LanguageModel)
    return dict(texts=len(ids), before=before, higher_is_better=higher, ablations=measured)


# ----------------------------------------------------------------------------- the corpus


def token_steps(model: nnx.Module, tokens: int, steps: int) -> list[int | None]:
    """For each of ``tokens`` input steps, the step of a layer that runs on ``steps`` steps
    which reads it: itself, or after a ``MaxPool1D`` its window (None: a dropped ragged
    last window)."""
    from flaxlstm.models import MaxPool1D

    if steps == tokens:
        return list(range(tokens))
    pools = [m.pool_size for _, m in nnx.iter_modules(model) if isinstance(m, MaxPool1D)]
    size = pools[0] if pools else max(1, tokens // max(steps, 1))
    return [t // size if t // size < steps else None for t in range(tokens)]


def _hypothesis_layer(traces: dict, time: int, layer: str | None) -> str | None:
    """The layer whose states the page selects on: ``layer``, or the last one that runs on the
    tokens' own steps (None: none does)."""
    own = [name for name, trace in traces.items() if trace.c.shape[1] == time]
    if layer is None:
        return own[-1] if own else None
    if layer not in own:
        raise ValueError(
            f"no LSTM layer {layer!r} on the tokens' steps; there are {', '.join(own) or 'none'}"
        )
    return layer


def corpus_data(
    model: nnx.Module,
    vocabulary: Vocabulary,
    texts: list[str],
    *,
    max_tokens: int = 200,
    layer: str | None = None,
    annotations: list[dict] | None = None,
    labels=None,
    held_out: bool = False,
    ig_steps: int = IG_STEPS,
    max_values: int = MAX_VALUES,
) -> dict:
    """The page's corpus (the module docstring's dict) of ``model`` reading ``texts`` (at most
    ``MAX_TEXTS``, each cut at ``max_tokens`` tokens): ``layer``'s h and c in 8 bits, the
    signal, annotation (``read_annotations``) and attribution rows, and, where the texts are
    ``held_out`` (with a classifier's ``labels``), the effect of ablating the top units."""
    if not 1 <= len(texts) <= MAX_TEXTS:
        raise ValueError(f"the page takes 1 to {MAX_TEXTS} texts, got {len(texts)}")
    if annotations is not None and len(annotations) != len(texts):
        raise ValueError(f"{len(annotations)} annotations for {len(texts)} texts")
    is_lm = isinstance(model, LanguageModel)
    if held_out and not is_lm and labels is None:
        raise ValueError("a classifier's ablation needs the held-out texts' labels")
    ids, lengths, shown, cuts = _encode(vocabulary, texts, max_tokens)
    traces = trace_model(model, ids, lengths=lengths)
    chosen = _hypothesis_layer(traces, ids.shape[1], layer)
    units = 0 if chosen is None else int(traces[chosen].c.shape[2])
    _, kept = budget(lengths, units, max_values)
    ids, lengths = ids[:kept, : lengths[:kept].max()], lengths[:kept]
    annotations = None if annotations is None else annotations[:kept]
    values, cells = {}, None
    if chosen is not None:
        trace = traces[chosen]
        cells = np.asarray(trace.c)[:kept, : ids.shape[1]]  # [N, T, H]
        for state in STATES:
            found = np.asarray(getattr(trace, state))[:kept]
            values[state] = [found[i, :n] for i, n in enumerate(lengths)]  # [T_i, H]
    rows = _signal_rows(vocabulary, ids, lengths, annotations, cells)
    follows = list(rows)
    steps = lambda n: token_steps(model, ids.shape[1], n)  # noqa: E731
    rows += _attribution_rows(model, ids, lengths, steps, ig_steps)
    ablation = None
    if held_out and chosen is not None:
        y = None if labels is None else np.asarray(labels)[:kept]
        ablation = _ablation(model, chosen, follows, ids, lengths, y)
    data = corpus_from_values(
        [["<start>", *s] for s in shown[:kept]],
        values,
        layer=chosen,
        rows=rows,
        max_values=max_values,
        oov=[[int(i == OOV) for i in row[:n]] for row, n in zip(ids, lengths, strict=True)],
        cuts=cuts[:kept],
        ablation=ablation,
    )
    return data | dict(left_out=len(texts) - kept)
