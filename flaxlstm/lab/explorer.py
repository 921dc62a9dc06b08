"""An explorer of a trained LSTM in one self-contained HTML page: a text with every token
coloured by a chosen unit's gate or state, what the model predicts after each token, the
saturation of every unit's gates and the units that follow a property of the text::

    page_data(model, vocabulary, text)   the page's numbers for one text: a dict JSON holds
    lab_data(model, vocabulary, texts)   those of the first text, and as ``corpus`` the lab's
                                         over all of them (``flaxlstm.lab.corpus``)
    render_page(data)                    the page: HTML with inline CSS, JS and the data
    write_page(path, data)               written atomically
    explore_run(run_dir, texts, out)     all of it for a run directory (``flaxlstm inspect html``)

The lab's part of the page (below the explorer's) selects cells over a span dragged with the
mouse at a threshold set with a slider, matches them over every text (as
``flaxlstm.lab.hypotheses``' ``select_cells`` and ``match_spans``, on the corpus's 8-bit
values), and shows rows of signals, annotations and attributions under the text, and the
measured ablations (docs/tutorial-lab.md).

The page needs no server and loads nothing (its Content-Security-Policy forbids it): open the
file in a browser. A classifier (``flaxlstm train imdb``) shows P(positive) after each prefix
of the text; a language model (``flaxlstm train lm``) the probability it gave to each token at
the step before and its likeliest next token. Values are rounded to ``DECIMALS`` decimals and
the text is cut at ``max_tokens`` tokens, which bounds the page: about 10 · H · T numbers per
LSTM layer and direction.

``page_data``'s dict:

- ``tokens`` [T] (``"<start>"`` first), ``oov`` [T] (1 where out of vocabulary), ``cut``: how
  many tokens were left out;
- ``layers``: per LSTM layer and direction (``trace_model``'s names), ``name``, ``units`` H,
  ``token_steps`` [T] (the layer's step that reads each token: the token's own, or after a
  CNN's pooling its window's, or None) and ``values``: per quantity of ``QUANTITIES`` the
  layer records, [H][steps];
- ``prediction``: ``label``, ``values`` [T] (a classifier: P(positive) if the text ended at
  the token; a language model: the probability of the token from the step before, None for
  START), for a language model also ``guesses`` [T] (the likeliest next token) and
  ``guess_probabilities`` [T];
- ``saturation``: per layer and gate i, f, g, o, ``left`` and ``right`` [H]
  (``internals.saturation`` over the text's steps);
- ``cells``: per built-in signal that applies to the text, its ``name``, ``about``,
  ``baseline`` (boolean signals: the share of the likelier answer) and its ``top`` units by
  absolute Pearson r of the cell state c over the layers that run on the input's steps, each
  ``layer`` (index into ``layers``), ``unit``, ``r``, ``accuracy`` (a boolean signal's best
  threshold probe, else None);
- ``selected``: the ``layer`` (index), ``quantity`` and ``unit`` shown first (default: the
  first layer's cell state, at the unit that follows a signal best, else unit 0).
"""

from __future__ import annotations

import html
import importlib.resources
import json
import os
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from flaxlstm.data.vocabulary import FIRST_WORD, OOV, PAD, START, TOKENIZERS, Vocabulary
from flaxlstm.files import atomic_write
from flaxlstm.lab import corpus, internals
from flaxlstm.lab.traces import trace_model
from flaxlstm.models import LanguageModel
from flaxlstm.training import runs
from flaxlstm.training.fit import predict
from flaxlstm.training.loop import mode_view

MAX_TOKENS = 200  # tokens of the text shown (after the START token); more are cut off
DECIMALS = 3
TOP_UNITS = 5  # units listed per signal in the interpretable-cells view
QUANTITIES = ("i", "f", "g", "o", "c", "h", "zi", "zf", "zg", "zo")  # cell.Trace's fields
CELL_STATE = "c"  # the state the interpretable cells are ranked by (as Karpathy et al.)
SENTENCE_ENDS = (".", "!", "?")


def _rounded(values) -> list:
    """``values`` rounded to ``DECIMALS`` as (nested) lists of floats; None where not finite."""
    values = np.round(np.asarray(values, np.float64), DECIMALS) + 0.0  # + 0.0: no -0.0
    if np.isfinite(values).all():
        return values.tolist()
    return np.where(np.isfinite(values), values, None).tolist()


def token_name(vocabulary: Vocabulary, token_id: int) -> str:
    """The token that ``token_id`` stands for: a word (or character), or ``<pad>``,
    ``<start>``, ``<oov>``."""
    names = {PAD: "<pad>", START: "<start>", OOV: "<oov>"}
    return names.get(int(token_id)) or vocabulary.words[int(token_id) - FIRST_WORD]


def _signals(vocabulary: Vocabulary, ids: np.ndarray) -> list[dict]:
    """The built-in per-step signals (``flaxlstm.lab.internals``) that apply to ``ids`` [1, T]:
    position always; inside quotes, inside parentheses and the distance to the sentence's
    end where the vocabulary holds their tokens and the text uses them. Each: name, what it
    is, values [1, T]."""
    known = lambda token: token in vocabulary.ids  # noqa: E731  (a dict: no OOV fallback)
    found = [dict(name="position", about="the token's index", values=internals.position(ids))]
    if known('"'):
        inside = internals.inside_quotes(ids, vocabulary.ids['"'])
        found.append(
            dict(name="inside quotes", about='between a " and its closing "', values=inside)
        )
    if known("(") and known(")"):
        inside = internals.inside_parentheses(ids, vocabulary.ids["("], vocabulary.ids[")"])
        found.append(dict(name="inside parentheses", about="between ( and its )", values=inside))
    ends = [vocabulary.ids[e] for e in SENTENCE_ENDS if known(e)]
    if ends and np.isin(ids, ends).any():
        distance = internals.to_sentence_end(ids, ends)
        about = "steps to the next . ! or ? (or the text's end)"
        found.append(dict(name="to sentence end", about=about, values=distance))
    # A boolean signal that never (or always) holds says nothing about any unit.
    return [s for s in found if s["values"].dtype != bool or 0 < s["values"].mean() < 1]


def _cells(layers: list[dict], traces: dict, signals: list[dict], top: int) -> list[dict]:
    """For each signal, the ``top`` units over the layers that run on the input's steps whose
    cell state follows it most closely (``internals.rank_units``, as ``find_units``)."""
    cells = []
    for signal in signals:
        values, found = signal["values"][0], []
        for k, layer in enumerate(layers):
            state = np.asarray(getattr(traces[layer["name"]], CELL_STATE))[0]  # [T', H]
            if len(state) != len(values):
                continue  # a pooled layer's steps are not the input's
            ranking = internals.rank_units(state, values)
            for n, unit in enumerate(ranking.units[:top]):
                accuracy = None if ranking.accuracy is None else float(ranking.accuracy[n])
                r = float(ranking.correlation[n])
                found.append(dict(layer=k, unit=int(unit), r=r, accuracy=accuracy))
        if not found:
            continue
        found = sorted(found, key=lambda u: -abs(u["r"]))[:top]
        for unit in found:
            unit["r"] = _rounded(unit["r"])
            unit["accuracy"] = None if unit["accuracy"] is None else _rounded(unit["accuracy"])
        baseline = None
        if signal["values"].dtype == bool:
            share = float(signal["values"].mean())
            baseline = _rounded(max(share, 1 - share))
        cells.append(
            dict(name=signal["name"], about=signal["about"], baseline=baseline, units=found)
        )
    return cells


def _prediction(model, vocabulary, ids: np.ndarray) -> dict:
    """What the model predicts after each token of ``ids`` [T] (START first)."""
    time = len(ids)
    if isinstance(model, LanguageModel):
        features, _ = mode_view(model, training=False)(ids[None])
        probabilities = np.asarray(jax.nn.softmax(model.logits(features)[0], axis=-1))  # [T, V]
        given = probabilities[np.arange(time - 1), ids[1:]]  # P(token t) at step t - 1
        guesses = probabilities.argmax(axis=-1)
        return dict(
            label="P(this token), from the step before",
            values=[None, *_rounded(given)],
            guesses=[token_name(vocabulary, g) for g in guesses],
            guess_probabilities=_rounded(probabilities[np.arange(time), guesses]),
        )
    # A classifier: each prefix scored as a text of its own (as traces.review_prefixes).
    prefixes = np.broadcast_to(ids, (time, time))  # padding past each length is masked
    p = predict(model, prefixes, lengths=np.arange(1, time + 1, dtype=np.int32))
    return dict(label="P(positive) if the text ended here", values=_rounded(p))


def _layer_entry(model: nnx.Module, name: str, trace, tokens: int) -> dict:
    """``page_data``'s entry for one layer's ``Trace`` of a text of ``tokens`` tokens:
    ``name``, ``units`` H, ``token_steps`` [T] and per recorded quantity ``values`` [H][steps]."""
    steps, units = trace.c.shape[1], trace.c.shape[2]
    values = {
        q: _rounded(np.asarray(getattr(trace, q))[0].T)  # [H][steps]
        for q in QUANTITIES
        if getattr(trace, q) is not None
    }
    token_steps = corpus.token_steps(model, tokens, steps)
    return dict(name=name, units=units, token_steps=token_steps, values=values)


def _chosen_layer(layers: list[dict], layer: str | None, quantity: str, unit: int | None) -> int:
    """The index of the ``layer`` named (None: the first) once ``quantity`` and ``unit`` are
    checked against it, or a one-line ValueError."""
    names = [entry["name"] for entry in layers]
    if layer is not None and layer not in names:
        raise ValueError(f"no LSTM layer {layer!r}; the model has {', '.join(names)}")
    chosen = names.index(layer) if layer is not None else 0
    if quantity not in layers[chosen]["values"]:
        known = ", ".join(layers[chosen]["values"])
        raise ValueError(f"quantity must be one of {known}, got {quantity!r}")
    units = layers[chosen]["units"]
    if unit is not None and not 0 <= unit < units:
        raise ValueError(f"unit must lie in [0, {units}) for layer {names[chosen]}, got {unit}")
    return chosen


def page_data(
    model: nnx.Module,
    vocabulary: Vocabulary,
    text: str,
    *,
    max_tokens: int = MAX_TOKENS,
    title: str = "LSTM explorer",
    layer: str | None = None,
    quantity: str = CELL_STATE,
    unit: int | None = None,
    top: int = TOP_UNITS,
) -> dict:
    """The explorer page's data for ``model`` (a ``SentimentClassifier``, any model that
    gives one logit per text, or a ``LanguageModel``) reading ``text``, tokenised at
    ``vocabulary.level`` and cut at ``max_tokens`` tokens after the START token: a dict of
    lists, strings and numbers rounded to ``DECIMALS``, described in the module docstring
    (``render_page`` embeds it as JSON)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive integer, got {max_tokens}")
    tokens = TOKENIZERS[vocabulary.level](text)
    if not tokens:
        raise ValueError(f"the text has no tokens after tokenisation: {text[:40]!r}")
    shown = tokens[:max_tokens]
    (ids,) = vocabulary.encode_tokens([shown])  # [T]: START, then the tokens
    lengths = np.array([len(ids)], np.int32)
    traces = trace_model(model, ids[None], lengths=lengths)
    layers = [_layer_entry(model, name, trace, len(ids)) for name, trace in traces.items()]
    chosen = _chosen_layer(layers, layer, quantity, unit)
    saturation = internals.saturation(model, ids[None], lengths, batch_size=1)
    cells = _cells(layers, traces, _signals(vocabulary, ids[None]), top)
    if unit is None:  # the unit of the chosen layer that follows a signal best
        found = [u for cell in cells for u in cell["units"] if u["layer"] == chosen]
        unit = max(found, key=lambda u: abs(u["r"]))["unit"] if found else 0
    return dict(
        title=title,
        kind="language model" if isinstance(model, LanguageModel) else "classifier",
        level=vocabulary.level,
        tokens=[token_name(vocabulary, START), *shown],
        oov=[int(i == OOV) for i in ids],
        cut=len(tokens) - len(shown),
        layers=layers,
        prediction=_prediction(model, vocabulary, ids),
        saturation={
            name: {
                g: {"left": _rounded(s.left), "right": _rounded(s.right)} for g, s in gates.items()
            }
            for name, gates in saturation.items()
        },
        cells=cells,
        selected=dict(layer=chosen, quantity=quantity, unit=int(unit)),
    )


# ----------------------------------------------------------------------------- the page


def load_any_run(run_dir: str | os.PathLike) -> tuple[nnx.Module, Vocabulary]:
    """The model and vocabulary of a ``train lm`` or a ``train imdb`` run directory (its
    config.json says which), or a one-line ValueError."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ValueError(
            f"{str(run_dir)!r} holds no 'train imdb' or 'train lm' run (no config.json)"
        )
    try:
        is_lm = json.loads(path.read_text("utf-8")).get("task") == "lm"
    except (ValueError, AttributeError):  # not UTF-8, not JSON, not an object
        raise ValueError(f"{path} is not a run's config") from None
    run = runs.load_lm_run(run_dir) if is_lm else runs.load_run(run_dir)
    return run.model, run.vocabulary


def _json_for_script(data: dict) -> str:
    """``data`` as JSON that can sit inside a <script> element: every "<" (only ever inside a
    string) written as \\u003c, so no "</script>" or "<!--" can end it early."""
    return json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def page_template() -> str:
    """The page with its style and script in place (explorer.html, .css and .js, package data
    beside this module) and ``__TITLE__``, ``__DATA__`` still to fill."""
    files = importlib.resources.files("flaxlstm.lab")
    read = lambda name: files.joinpath(name).read_text(encoding="utf-8")  # noqa: E731
    page = read("explorer.html").replace("__STYLE__", read("explorer.css"))
    return page.replace("__SCRIPT__", read("explorer.js"))


def render_page(data: dict) -> str:
    """The explorer page of ``page_data``'s ``data``: one HTML document, its CSS, script and
    data inline, loading nothing (a Content-Security-Policy forbids it)."""
    title = html.escape(str(data.get("title", "LSTM explorer")))
    return page_template().replace("__TITLE__", title).replace("__DATA__", _json_for_script(data))


def write_page(path: str | os.PathLike, data: dict) -> str:
    """Write ``render_page(data)`` to ``path`` atomically; returns the path."""
    page = render_page(data).encode("utf-8")
    atomic_write(path, lambda f: f.write(page))
    return str(path)


def lab_data(
    model: nnx.Module,
    vocabulary: Vocabulary,
    texts: str | list[str],
    *,
    annotations: list[dict] | None = None,
    labels=None,
    held_out: bool = False,
    hypothesis_layer: str | None = None,
    ig_steps: int = corpus.IG_STEPS,
    max_values: int = corpus.MAX_VALUES,
    **options,
) -> dict:
    """The whole page's data: ``page_data`` of the first text (``options`` go to it) and, as
    ``corpus``, ``corpus.corpus_data`` of all of them (``hypothesis_layer``: its ``layer``)."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("the page needs at least one text")
    data = page_data(model, vocabulary, texts[0], **options)
    data["corpus"] = corpus.corpus_data(
        model,
        vocabulary,
        texts,
        max_tokens=options.get("max_tokens", MAX_TOKENS),
        layer=hypothesis_layer,
        annotations=annotations,
        labels=labels,
        held_out=held_out,
        ig_steps=ig_steps,
        max_values=max_values,
    )
    return data


def explore_run(
    run_dir: str | os.PathLike, texts: str | list[str], out: str | os.PathLike, **options
) -> dict:
    """Write the lab page of a ``train imdb`` or ``train lm`` run directory's model reading
    ``texts`` (one, or up to ``corpus.MAX_TEXTS``) to ``out``; ``options`` go to ``lab_data``,
    and ``annotations`` may be a JSON-lines file's path (``corpus.read_annotations``).
    Returns the page's data."""
    model, vocabulary = load_any_run(run_dir)
    texts = [texts] if isinstance(texts, str) else list(texts)
    if isinstance(options.get("annotations"), str | os.PathLike):
        options["annotations"] = corpus.read_annotations(options["annotations"], vocabulary, texts)
    options.setdefault("title", f"LSTM explorer: {os.path.basename(os.path.normpath(run_dir))}")
    data = lab_data(model, vocabulary, texts, **options)
    write_page(out, data)
    return data
