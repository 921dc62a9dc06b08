"""An explorer of a trained LSTM in one self-contained HTML page: a text with every token
coloured by a chosen unit's gate or state, what the model predicts after each token, the
saturation of every unit's gates and the units that follow a property of the text::

    page_data(model, vocabulary, text)   the page's numbers: a dict that JSON holds
    render_page(data)                    the page: HTML with inline CSS, JS and the data
    write_page(path, data)               written atomically
    explore_run(run_dir, text, out)      all three for a run directory (``flaxlstm inspect html``)

The page needs no server and loads nothing (its Content-Security-Policy forbids it): open the
file in a browser. A classifier (``flaxlstm train imdb``) shows P(positive) after each prefix
of the text; a language model (``flaxlstm train lm``) the probability it gave to each token at
the step before and its likeliest next token. Values are rounded to ``DECIMALS`` decimals and
the text is cut at ``max_tokens`` tokens, which bounds the page: about 10 · H · T numbers per
LSTM layer and direction.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from flaxlstm import internals, runs, train
from flaxlstm.data import imdb as imdb_data
from flaxlstm.files import atomic_write
from flaxlstm.models import LanguageModel, MaxPool1D
from flaxlstm.traces import trace_model

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


def token_name(vocabulary: imdb_data.Vocabulary, token_id: int) -> str:
    """The token that ``token_id`` stands for: a word (or character), or ``<pad>``,
    ``<start>``, ``<oov>``."""
    names = {imdb_data.PAD: "<pad>", imdb_data.START: "<start>", imdb_data.OOV: "<oov>"}
    return names.get(int(token_id)) or vocabulary.words[int(token_id) - imdb_data.FIRST_WORD]


def _token_steps(model: nnx.Module, tokens: int, steps: int) -> list[int | None]:
    """For each of ``tokens`` input steps, the step of a layer that runs on ``steps`` steps
    which reads it: itself, or after a ``MaxPool1D`` its window (None: a dropped ragged
    last window)."""
    if steps == tokens:
        return list(range(tokens))
    pools = [m.pool_size for _, m in nnx.iter_modules(model) if isinstance(m, MaxPool1D)]
    size = pools[0] if pools else max(1, tokens // max(steps, 1))
    return [t // size if t // size < steps else None for t in range(tokens)]


def _signals(vocabulary: imdb_data.Vocabulary, ids: np.ndarray) -> list[dict]:
    """The built-in per-step signals (``flaxlstm.internals``) that apply to ``ids`` [1, T]:
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
        features, _ = train.mode_view(model, training=False)(ids[None])
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
    p = train.predict(model, prefixes, lengths=np.arange(1, time + 1, dtype=np.int32))
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
    token_steps = _token_steps(model, tokens, steps)
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
    vocabulary: imdb_data.Vocabulary,
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
    ``vocabulary.level`` and cut at ``max_tokens`` tokens after the START token.

    Returns a dict of lists, strings and numbers rounded to ``DECIMALS`` (``render_page``
    embeds it as JSON):

    - ``tokens`` [T] (``"<start>"`` first), ``oov`` [T] (1 where out of vocabulary),
      ``cut``: how many tokens were left out;
    - ``layers``: per LSTM layer and direction (``trace_model``'s names), ``name``,
      ``units`` H, ``token_steps`` [T] (the layer's step that reads each token: the token's
      own, or after a CNN's pooling its window's, or None) and ``values``: per quantity of
      ``QUANTITIES`` the layer records, [H][steps];
    - ``prediction``: ``label``, ``values`` [T] (a classifier: P(positive) if the text ended
      at the token; a language model: the probability of the token from the step before,
      None for START), for a language model also ``guesses`` [T] (the likeliest next token)
      and ``guess_probabilities`` [T];
    - ``saturation``: per layer and gate i, f, g, o, ``left`` and ``right`` [H]
      (``internals.saturation`` over the text's steps);
    - ``cells``: per built-in signal that applies to the text, its ``name``, ``about``,
      ``baseline`` (boolean signals: the share of the likelier answer) and its ``top`` units
      by absolute Pearson r of the cell state c over the layers that run on the input's
      steps, each ``layer`` (index into ``layers``), ``unit``, ``r``, ``accuracy`` (a boolean
      signal's best threshold probe, else None);
    - ``selected``: the ``layer`` (index), ``quantity`` and ``unit`` shown first (default:
      the first layer's cell state, at the unit that follows a signal best, else unit 0).
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive integer, got {max_tokens}")
    tokens = imdb_data.TOKENIZERS[vocabulary.level](text)
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
        tokens=[token_name(vocabulary, imdb_data.START), *shown],
        oov=[int(i == imdb_data.OOV) for i in ids],
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


def load_any_run(run_dir: str | os.PathLike) -> tuple[nnx.Module, imdb_data.Vocabulary]:
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


def render_page(data: dict) -> str:
    """The explorer page of ``page_data``'s ``data``: one HTML document, its CSS, script and
    data inline, loading nothing (a Content-Security-Policy forbids it)."""
    return PAGE.replace("__TITLE__", html.escape(str(data.get("title", "LSTM explorer")))).replace(
        "__DATA__", _json_for_script(data)
    )


def write_page(path: str | os.PathLike, data: dict) -> str:
    """Write ``render_page(data)`` to ``path`` atomically; returns the path."""
    page = render_page(data).encode("utf-8")
    atomic_write(path, lambda f: f.write(page))
    return str(path)


def explore_run(run_dir: str | os.PathLike, text: str, out: str | os.PathLike, **options) -> dict:
    """Write the explorer page of a ``train imdb`` or ``train lm`` run directory's model
    reading ``text`` to ``out``; ``options`` go to ``page_data``. Returns the page's data."""
    model, vocabulary = load_any_run(run_dir)
    options.setdefault("title", f"LSTM explorer: {os.path.basename(os.path.normpath(run_dir))}")
    data = page_data(model, vocabulary, text, **options)
    write_page(out, data)
    return data


PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
  content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<script>
// Any error, or anything the page tries to load, is written into the page (#error, #status).
function reportError(text) {
  var box = document.getElementById("error"), status = document.getElementById("status");
  if (box) { box.hidden = false; box.textContent += text + "\n"; }
  if (status) { status.dataset.state = "error"; status.textContent = "error " + text; }
  window.pageErrors = (window.pageErrors || []).concat([text]);
}
window.onerror = function (message, source, line, column) {
  reportError(message + " (line " + line + ":" + column + ")");
};
document.addEventListener("securitypolicyviolation", function (e) {
  reportError("blocked loading " + e.blockedURI);
});
</script>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
  max-width: 1180px; padding: 12px 20px 40px; color: #222; background: #fff; }
h1 { font-size: 20px; margin: 6px 0 2px; }
h2 { font-size: 16px; margin: 22px 0 6px; border-bottom: 1px solid #ddd; padding-bottom: 3px; }
.note { color: #666; font-size: 12.5px; margin: 2px 0 8px; }
#error { color: #a00; background: #fee; padding: 6px; white-space: pre-wrap; }
#controls { display: flex; flex-wrap: wrap; gap: 10px 18px; align-items: center;
  background: #f6f6f6; border: 1px solid #e2e2e2; border-radius: 6px; padding: 8px 10px;
  position: sticky; top: 0; z-index: 2; }
#controls label { white-space: nowrap; }
#unit { width: 5em; }
select, input, button { font: inherit; }
#legend { display: flex; align-items: center; gap: 8px; margin: 8px 0 4px; font-size: 12.5px; }
#legend .bar { width: 220px; height: 12px; border: 1px solid #bbb;
  background: linear-gradient(to right, rgb(33,102,172), #fff, rgb(178,24,43)); }
#main { display: grid; grid-template-columns: minmax(0, 1fr) 300px; gap: 16px; }
#text { border: 1px solid #e2e2e2; border-radius: 6px; padding: 10px; line-height: 2;
  max-height: 460px; overflow-y: auto; align-self: start; }
#text.chars { font-family: ui-monospace, Menlo, Consolas, monospace; white-space: pre-wrap;
  line-height: 1.75; }
.tok { padding: 1px 2px; border-radius: 3px; cursor: pointer; }
#text.chars .tok { padding: 1px 0; border-radius: 0; }
.tok.start { color: #777; font-size: 11px; font-family: ui-monospace, monospace; }
.tok.oov { text-decoration: underline dotted #888; }
.tok.dark { color: #fff; }
.tok.focus { outline: 2px solid #111; }
.tok.pinned { outline: 2px solid #e69500; }
#details { border: 1px solid #e2e2e2; border-radius: 6px; padding: 8px 10px; font-size: 13px;
  align-self: start; position: sticky; top: 58px; }
#details table { border-collapse: collapse; width: 100%; margin-top: 4px; }
#details td { padding: 1px 4px; border-bottom: 1px solid #f0f0f0; }
#details td.num { text-align: right; font-family: ui-monospace, monospace; }
#details tr.current { background: #fff3d6; font-weight: 600; }
#details .token { font-family: ui-monospace, monospace; background: #f2f2f2; padding: 0 3px; }
svg text { font: 10.5px system-ui, sans-serif; fill: #444; }
#chart svg { width: 100%; height: auto; display: block; }
#saturation { display: flex; flex-wrap: wrap; gap: 6px; }
circle.unit { fill: rgb(33,102,172); fill-opacity: 0.55; cursor: pointer; }
circle.unit.sel { fill: rgb(214,96,0); fill-opacity: 1; stroke: #000; }
#cells { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 10px; }
.signal { border: 1px solid #e2e2e2; border-radius: 6px; padding: 6px 8px; }
.signal b { display: block; }
.signal button { display: block; width: 100%; text-align: left; margin: 3px 0; cursor: pointer;
  background: #fafafa; border: 1px solid #ddd; border-radius: 4px; padding: 2px 6px;
  font-family: ui-monospace, monospace; font-size: 12px; }
.signal button.sel { background: #fff3d6; border-color: #e69500; }
#status { color: #888; font-size: 11px; margin-top: 24px; }
</style>
</head>
<body>
<h1 id="heading"></h1>
<p class="note" id="subtitle"></p>
<pre id="error" hidden></pre>
<div id="controls">
  <label>layer <select id="layer"></select></label>
  <label>quantity <select id="quantity"></select></label>
  <label>unit <button id="prev" title="previous unit">&lsaquo;</button><input id="unit"
    type="number" min="0" step="1"><button id="next" title="next unit">&rsaquo;</button>
    <span id="units-of" class="note"></span></label>
  <label>colour by <select id="colour">
    <option value="unit">the unit's value</option>
    <option value="prediction">the prediction</option></select></label>
</div>
<div id="legend"><span id="legend-low"></span><span class="bar"></span><span id="legend-high">
  </span><span id="legend-what" class="note"></span></div>
<div id="main">
  <div id="text"></div>
  <div id="details"></div>
</div>
<h2>Over the text</h2>
<p class="note">The chosen unit's value at each token (top, on the scale of the colours) and the
prediction (bottom). Hover a token to see all its gates and states; click it to keep it.</p>
<div id="chart"></div>
<h2>Saturation</h2>
<p class="note" id="saturation-note"></p>
<div id="saturation"></div>
<h2>Interpretable cells</h2>
<p class="note">For each property of this text, the units whose cell state c follows it most
closely (|Pearson r| over the text's steps; for a true/false property also the accuracy of the
unit's best threshold, against always guessing the likelier answer). Click one to show it.</p>
<div id="cells"></div>
<div id="status" data-state="loading">loading</div>
<script type="application/json" id="data">__DATA__</script>
<script>
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("data").textContent);
  var NAMES = {i: "input gate i", f: "forget gate f", g: "candidate g", o: "output gate o",
    c: "cell state c", h: "hidden state h", zi: "pre-activation zi", zf: "pre-activation zf",
    zg: "pre-activation zg", zo: "pre-activation zo"};
  var GATES = ["i", "f", "g", "o"];
  var BLUE = [33, 102, 172], RED = [178, 24, 43], ORANGE = "#e69500";
  var state = {layer: DATA.selected.layer, quantity: DATA.selected.quantity,
    unit: DATA.selected.unit, colour: "unit", focus: 0, pinned: 0};
  var spans = [];

  function $(id) { return document.getElementById(id); }
  function el(tag, text, className) {
    var e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (className) e.className = className;
    return e;
  }
  // SVG markup from numbers and fixed names only (text from the data goes in by textContent).
  function tag(name, attrs, inner) {
    var s = "<" + name;
    Object.keys(attrs).forEach(function (k) { s += " " + k + '="' + attrs[k] + '"'; });
    return s + (inner === undefined ? "/>" : ">" + inner + "</" + name + ">");
  }
  function fmt(v) { return v === null || v === undefined ? "–" : v.toFixed(3); }
  function layer() { return DATA.layers[state.layer]; }
  function units() { return layer().units; }
  function valueAt(L, q, u, t) {
    var step = L.token_steps[t], s = L.values[q] && L.values[q][u];
    if (step === null || !s || s[step] === undefined) return null;
    return s[step];
  }
  function unitValues(q) {
    return DATA.tokens.map(function (_, t) { return valueAt(layer(), q, state.unit, t); });
  }
  // A quantity's colour scale: i, f, o (and probabilities) over [0, 1], g and h over [-1, 1],
  // the cell state and the pre-activations symmetric about 0 up to the unit's largest |value|.
  function range(q, values) {
    if (q === "i" || q === "f" || q === "o" || q === "prediction") return [0, 1];
    if (q === "g" || q === "h") return [-1, 1];
    var m = 1e-6;
    values.forEach(function (v) { if (v !== null && Math.abs(v) > m) m = Math.abs(v); });
    return [-m, m];
  }
  function scaled(v, r) { return 2 * (v - r[0]) / (r[1] - r[0]) - 1; }
  function colour(x) {  // x in [-1, 1]: blue, white, red
    var t = Math.max(-1, Math.min(1, x)), a = Math.abs(t), end = t > 0 ? RED : BLUE;
    var rgb = end.map(function (e) { return Math.round(255 + (e - 255) * a); });
    return "rgb(" + rgb.join(",") + ")";
  }
  function rgb(c) { return "rgb(" + c.join(",") + ")"; }
  function shown(token, t) {
    if (t === 0 || DATA.level !== "char") return token;
    return token === "\n" ? "\u21b5" : token === "\t" ? "\u21e5" : token;
  }

  // ------------------------------------------------------------------------- the controls
  function buildControls() {
    $("heading").textContent = DATA.title;
    $("subtitle").textContent = DATA.kind + " · " + DATA.level + " tokens · " +
      (DATA.tokens.length - 1) + " tokens shown" +
      (DATA.cut ? " (" + DATA.cut + " more cut off)" : "") + " · " +
      DATA.layers.length + " LSTM layer(s) and direction(s)";
    DATA.layers.forEach(function (L, k) {
      var o = el("option", L.name + " (" + L.units + " units)");
      o.value = k;
      $("layer").appendChild(o);
    });
    $("layer").addEventListener("change", function () {
      state.layer = +this.value;
      fillQuantities();
      state.unit = Math.min(state.unit, units() - 1);
      render();
    });
    $("quantity").addEventListener("change", function () {
      state.quantity = this.value;
      render();
    });
    $("unit").addEventListener("input", function () {
      var u = parseInt(this.value, 10);
      if (u >= 0 && u < units()) selectUnit(u);
    });
    $("prev").addEventListener("click", function () {
      selectUnit((state.unit + units() - 1) % units());
    });
    $("next").addEventListener("click", function () { selectUnit((state.unit + 1) % units()); });
    $("colour").addEventListener("change", function () {
      state.colour = this.value;
      render();
    });
    fillQuantities();
  }
  function fillQuantities() {
    var box = $("quantity");
    box.textContent = "";
    Object.keys(layer().values).forEach(function (q) {
      var o = el("option", NAMES[q] || q);
      o.value = q;
      box.appendChild(o);
    });
    if (!layer().values[state.quantity]) state.quantity = "c";
  }
  function selectUnit(u, k) {
    if (k !== undefined && k !== state.layer) {
      state.layer = k;
      fillQuantities();
    }
    state.unit = u;
    render();
  }

  // ------------------------------------------------------------------------- the text
  function buildText() {
    var box = $("text"), chars = DATA.level === "char";
    box.className = chars ? "chars" : "words";
    DATA.tokens.forEach(function (token, t) {
      var kind = "tok" + (t === 0 ? " start" : "") + (DATA.oov[t] ? " oov" : "");
      var span = el("span", shown(token, t), kind);
      span.dataset.t = t;
      box.appendChild(span);
      if (chars && token === "\n" && t > 0) box.appendChild(el("br"));
      else if (!chars || t === 0) box.appendChild(document.createTextNode(" "));
      spans.push(span);
    });
    function token(e) { return e.target.dataset ? e.target.dataset.t : undefined; }
    box.addEventListener("mouseover", function (e) {
      if (token(e) !== undefined) focus(+token(e));
    });
    box.addEventListener("mouseleave", function () { focus(state.pinned); });
    box.addEventListener("click", function (e) {
      if (token(e) === undefined) return;
      state.pinned = +token(e);
      focus(state.pinned);
    });
  }
  function focus(t) {
    state.focus = t;
    showFocus();
  }
  function colourText() {
    var q = state.colour === "prediction" ? "prediction" : state.quantity;
    var values = q === "prediction" ? DATA.prediction.values : unitValues(q);
    var r = range(q, values);
    spans.forEach(function (span, t) {
      var v = values[t], x = v === null ? 0 : scaled(v, r);
      span.style.background = v === null ? "" : colour(x);
      span.classList.toggle("dark", Math.abs(x) > 0.65);
      span.title = "token " + t + ": " + q + " = " + fmt(v);
    });
    $("legend-low").textContent = fmt(r[0]);
    $("legend-high").textContent = fmt(r[1]);
    var scale = q === "c" || q[0] === "z" ? " (scale: its largest |value| on this text)" : "";
    $("legend-what").textContent = q === "prediction" ? DATA.prediction.label :
      layer().name + ", unit " + state.unit + ": " + (NAMES[q] || q) + scale;
  }

  // ------------------------------------------------------------------------- one token
  function showFocus() {
    var t = state.focus, L = layer(), box = $("details"), step = L.token_steps[t];
    spans.forEach(function (span, k) {
      span.classList.toggle("focus", k === t);
      span.classList.toggle("pinned", k === state.pinned);
    });
    box.textContent = "";
    var head = el("div");
    head.appendChild(el("span", "token " + t + " "));
    head.appendChild(el("span", JSON.stringify(DATA.tokens[t]), "token"));
    box.appendChild(head);
    var pooled = step === t ? "" : " (step " + (step === null ? "none" : step) + ", pooled)";
    box.appendChild(el("div", L.name + ", unit " + state.unit + pooled, "note"));
    var table = el("table");
    Object.keys(L.values).forEach(function (q) {
      var row = el("tr", undefined, q === state.quantity ? "current" : "");
      row.appendChild(el("td", NAMES[q] || q));
      row.appendChild(el("td", fmt(valueAt(L, q, state.unit, t)), "num"));
      table.appendChild(row);
    });
    box.appendChild(table);
    var p = DATA.prediction;
    box.appendChild(el("div", p.label + ": " + fmt(p.values[t]), "prediction"));
    if (p.guesses) {
      var guess = JSON.stringify(p.guesses[t]) + " (" + fmt(p.guess_probabilities[t]) + ")";
      box.appendChild(el("div", "likeliest next token: " + guess, "prediction"));
    }
    drawChart();
  }

  // ------------------------------------------------------------------------- over the text
  function polylines(values, r, x, top, h, stroke) {
    var parts = [[]];  // a line per run of values, broken where there is none
    values.forEach(function (v, t) {
      if (v === null) return parts.push([]);
      var f = Math.max(0, Math.min(1, (v - r[0]) / (r[1] - r[0])));
      parts[parts.length - 1].push(x(t).toFixed(1) + "," + (top + h - f * h).toFixed(1));
    });
    return parts.filter(function (p) { return p.length; }).map(function (p) {
      var attrs = {fill: "none", stroke: stroke, "stroke-width": 1.5, points: p.join(" ")};
      return tag("polyline", attrs);
    }).join("");
  }
  function drawChart() {
    var T = DATA.tokens.length, W = 1000, left = 48, right = 8, h = 80, gap = 22;
    var x = function (t) { return left + (T > 1 ? t / (T - 1) : 0.5) * (W - left - right); };
    var q = state.quantity, values = unitValues(q), H = 2 * h + gap + 26, svg = [];
    var rows = [[6, range(q, values), values, rgb(BLUE), q + ", unit " + state.unit],
      [h + gap + 6, [0, 1], DATA.prediction.values, rgb(RED), "prediction"]];
    rows.forEach(function (row) {
      var top = row[0], r = row[1], mid = top + h / 2, end = {"text-anchor": "end"};
      svg.push(tag("rect", {x: left, y: top, width: W - left - right, height: h,
        fill: "#fafafa", stroke: "#ddd"}));
      svg.push(tag("line", {x1: left, x2: W - right, y1: mid, y2: mid, stroke: "#ccc",
        "stroke-dasharray": "3,3"}));
      svg.push(tag("text", Object.assign({x: left - 4, y: top + 9}, end), fmt(r[1])));
      svg.push(tag("text", Object.assign({x: left - 4, y: top + h}, end), fmt(r[0])));
      svg.push(polylines(row[2], r, x, top, h, row[3]));
      svg.push(tag("text", {x: left + 4, y: top + 12}, row[4]));
    });
    var fx = x(state.focus).toFixed(1);
    svg.push(tag("line", {x1: fx, x2: fx, y1: 4, y2: 2 * h + gap + 8, stroke: ORANGE,
      "stroke-width": 2}));
    svg.push(tag("text", {x: left, y: H - 4}, "token 0"));
    svg.push(tag("text", {x: W - right, y: H - 4, "text-anchor": "end"}, "token " + (T - 1)));
    $("chart").innerHTML = tag("svg", {viewBox: "0 0 " + W + " " + H}, svg.join(""));
  }

  // ------------------------------------------------------------------------- saturation
  function drawSaturation() {
    var L = layer(), gates = DATA.saturation[L.name] || {}, size = 190, m = 30, w = size - m - 6;
    $("saturation-note").textContent = "Each point is a unit of " + L.name + ": the fraction " +
      "of this text's steps at which the gate is below 0.1 (left-saturated, across) and above " +
      "0.9 (right-saturated, up); g as (g + 1)/2. On the dashed diagonal a unit is always " +
      "saturated. The chosen unit is orange; click a point to choose its unit.";
    var px = function (v) { return (m + v * w).toFixed(1); };
    var py = function (v) { return (6 + (1 - v) * w).toFixed(1); };
    var plots = GATES.filter(function (g) { return gates[g]; }).map(function (g) {
      var s = gates[g], middle = {"text-anchor": "middle"}, end = {"text-anchor": "end"};
      var svg = [tag("rect", {x: m, y: 6, width: w, height: w, fill: "#fafafa", stroke: "#bbb"}),
        tag("line", {x1: px(0), y1: py(1), x2: px(1), y2: py(0), stroke: "#aaa",
          "stroke-dasharray": "4,3"}),
        tag("text", Object.assign({x: m + w / 2, y: size - 10}, middle), "left-saturated"),
        tag("text", Object.assign({x: m + w / 2, y: size + 5}, middle), NAMES[g]),
        tag("text", Object.assign({transform: "translate(11," + (6 + w / 2) + ") rotate(-90)"},
          middle), "right-saturated"),
        tag("text", Object.assign({x: m - 3, y: w + 8}, end), "0"),
        tag("text", Object.assign({x: m - 3, y: 14}, end), "1")];
      var chosen = "";
      s.left.forEach(function (left, u) {
        var sel = u === state.unit, right = s.right[u];
        var title = tag("title", {}, "unit " + u + ": left " + fmt(left) + ", right " + fmt(right));
        var point = tag("circle", {"class": "unit" + (sel ? " sel" : ""), "data-unit": u,
          cx: px(left), cy: py(right), r: sel ? 5 : 3.2}, title);
        if (sel) chosen = point;
        else svg.push(point);
      });
      svg.push(chosen);  // drawn last, on top
      return tag("svg", {width: size, height: size + 14, viewBox: "0 0 " + size + " " +
        (size + 14)}, svg.join(""));
    });
    $("saturation").innerHTML = plots.join("");
  }

  // ------------------------------------------------------------------------- interpretable cells
  function buildCells() {
    var box = $("cells");
    if (!DATA.cells.length) box.appendChild(el("p", "No built-in property applies.", "note"));
    DATA.cells.forEach(function (cell) {
      var div = el("div", undefined, "signal"), baseline = cell.baseline;
      div.appendChild(el("b", cell.name));
      div.appendChild(el("span", cell.about + (baseline === null ? "" :
        "; always guessing: " + (100 * baseline).toFixed(0) + "%"), "note"));
      cell.units.forEach(function (u) {
        var text = DATA.layers[u.layer].name + " unit " + u.unit + "  r = " + u.r.toFixed(2) +
          (u.accuracy === null ? "" : "  probe " + (100 * u.accuracy).toFixed(0) + "%");
        var b = el("button", text);
        b.dataset.layer = u.layer;
        b.dataset.unit = u.unit;
        b.addEventListener("click", function () {
          state.quantity = "c";
          selectUnit(u.unit, u.layer);
        });
        div.appendChild(b);
      });
      box.appendChild(div);
    });
  }
  function markCells() {
    document.querySelectorAll("#cells button").forEach(function (b) {
      var same = +b.dataset.layer === state.layer && +b.dataset.unit === state.unit;
      b.classList.toggle("sel", same && state.quantity === "c");
    });
  }

  // ------------------------------------------------------------------------- drawing it all
  function render() {
    $("layer").value = state.layer;
    $("quantity").value = state.quantity;
    $("unit").value = state.unit;
    $("unit").max = units() - 1;
    $("colour").value = state.colour;
    $("units-of").textContent = "of 0–" + (units() - 1);
    colourText();
    showFocus();
    drawSaturation();
    markCells();
    writeStatus();
  }
  // What the page shows, for a test (or a person) to read: "ok tokens=N ... first=V".
  function writeStatus() {
    if (window.pageErrors) return;
    var status = $("status");
    status.dataset.state = "ok";
    status.textContent = "ok tokens=" + $("text").querySelectorAll(".tok").length +
      " layer=" + layer().name + " quantity=" + state.quantity + " unit=" + state.unit +
      " first=" + fmt(valueAt(layer(), state.quantity, state.unit, 0));
  }

  // The address's hash may choose what is shown first: #layer=1&quantity=h&unit=3&token=5.
  // With "check" in it, every control is used once (a self-test), then the choice restored.
  function fromHash() {
    var options = {};
    location.hash.replace(/^#/, "").split("&").forEach(function (pair) {
      var kv = pair.split("=");
      if (kv[0]) options[decodeURIComponent(kv[0])] = decodeURIComponent(kv[1] || "");
    });
    var k = parseInt(options.layer, 10), u = parseInt(options.unit, 10);
    if (k >= 0 && k < DATA.layers.length) {
      state.layer = k;
      fillQuantities();
      state.unit = Math.min(state.unit, units() - 1);
    }
    if (layer().values[options.quantity]) state.quantity = options.quantity;
    if (u >= 0 && u < units()) state.unit = u;
    if (options.colour === "unit" || options.colour === "prediction") {
      state.colour = options.colour;
    }
    var t = parseInt(options.token, 10);
    if (t >= 0 && t < DATA.tokens.length) state.focus = state.pinned = t;
    return options;
  }
  function change(id, value) {
    $(id).value = value;
    $(id).dispatchEvent(new Event("change"));
  }
  function selfCheck() {
    var used = 0, start = {layer: state.layer, quantity: state.quantity, unit: state.unit};
    DATA.layers.forEach(function (L, k) {
      change("layer", k);
      Object.keys(L.values).forEach(function (q) { change("quantity", q); used++; });
      $("next").click();
      $("prev").click();
      var point = document.querySelector("#saturation circle.unit:not(.sel)");
      if (point) point.dispatchEvent(new MouseEvent("click", {bubbles: true}));
    });
    change("colour", "prediction");
    change("colour", "unit");
    spans.forEach(function (s) { s.dispatchEvent(new MouseEvent("mouseover", {bubbles: true})); });
    spans[spans.length - 1].click();
    document.querySelectorAll("#cells button").forEach(function (b) { b.click(); used++; });
    state.layer = start.layer;
    fillQuantities();
    state.quantity = start.quantity;
    state.unit = start.unit;
    state.pinned = 0;
    state.focus = 0;
    render();
    if (!window.pageErrors) $("status").textContent += " checked=" + used;
  }

  buildControls();
  buildText();
  buildCells();
  $("saturation").addEventListener("click", function (e) {
    var point = e.target.closest && e.target.closest("circle.unit");
    if (point) selectUnit(+point.dataset.unit);
  });
  var options = fromHash();
  render();
  if (options.check !== undefined) selfCheck();
})();
</script>
</body>
</html>
"""
