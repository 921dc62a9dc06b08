// What the explorer and the lab below it share: the page's data, parsed once, and helpers.
var page = (function () {
  "use strict";
  var BLUE = [33, 102, 172], RED = [178, 24, 43];
  var DATA = JSON.parse(document.getElementById("data").textContent);
  function $(id) { return document.getElementById(id); }
  function el(tag, text, className) {
    var e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (className) e.className = className;
    return e;
  }
  function colour(x) {  // x in [-1, 1]: blue, white, red
    var t = Math.max(-1, Math.min(1, x)), a = Math.abs(t), end = t > 0 ? RED : BLUE;
    var rgb = end.map(function (e) { return Math.round(255 + (e - 255) * a); });
    return "rgb(" + rgb.join(",") + ")";
  }
  function shown(token, t) {
    if (t === 0 || DATA.level !== "char") return token;
    return token === "\n" ? "\u21b5" : token === "\t" ? "\u21e5" : token;
  }
  return {DATA: DATA, $: $, el: el, colour: colour, shown: shown};
})();

(function () {
  "use strict";
  var DATA = page.DATA, $ = page.$, el = page.el, colour = page.colour, shown = page.shown;
  var NAMES = {i: "input gate i", f: "forget gate f", g: "candidate g", o: "output gate o",
    c: "cell state c", h: "hidden state h", zi: "pre-activation zi", zf: "pre-activation zf",
    zg: "pre-activation zg", zo: "pre-activation zo"};
  var GATES = ["i", "f", "g", "o"];
  var BLUE = [33, 102, 172], RED = [178, 24, 43], ORANGE = "#e69500";
  var state = {layer: DATA.selected.layer, quantity: DATA.selected.quantity,
    unit: DATA.selected.unit, colour: "unit", focus: 0, pinned: 0};
  var spans = [];

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
  function rgb(c) { return "rgb(" + c.join(",") + ")"; }

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

// ----------------------------------------------------------------------------- the lab
// LSTMVis's hypotheses over the corpus (flaxlstm.lab.corpus, flaxlstm.lab.hypotheses): a span
// selected with the mouse and a threshold give the cells on over exactly that span, off just
// before and after it (select_cells); the spans of every text where all of them are on are the
// matches (match_spans). The values are the page's 8-bit ones, v' = low + q · ((high − low)/255),
// the same numbers as corpus.state_values in Python; a unit is on where v' ≥ threshold.
(function () {
  "use strict";
  var DATA = page.DATA, $ = page.$, el = page.el, colour = page.colour;
  var shownToken = page.shown;
  var C = DATA.corpus;
  if (!C || !C.texts) return;
  var TOP = 50, CONTEXT = 3, MAX_LINES = 60;
  var lab = {text: 0, state: C.layer ? "h" : null, threshold: 0, sel: null, drag: null,
    cells: [], matches: [], match: null};
  var decoded = {};  // state: {bytes: Uint8Array, table: Float64Array(256)}

  function decode(name) {
    if (decoded[name]) return decoded[name];
    var entry = C.states[name], raw = atob(entry.bytes), bytes = new Uint8Array(raw.length);
    for (var k = 0; k < raw.length; k++) bytes[k] = raw.charCodeAt(k);
    var step = (entry.high - entry.low) / 255, table = new Float64Array(256);
    for (var q = 0; q < 256; q++) table[q] = entry.low + q * step;
    decoded[name] = {bytes: bytes, table: table};
    return decoded[name];
  }
  function textLength(i) { return C.offsets[i + 1] - C.offsets[i]; }

  // select_cells: ≥ threshold at every step of [start, end), < threshold just before and after.
  function selectCells(i, start, end, threshold) {
    var d = decode(lab.state), H = C.units, T = textLength(i), base = C.offsets[i] * H;
    var b = d.bytes, v = d.table, found = [];
    for (var u = 0; u < H; u++) {
      var on = true;
      for (var t = start; t < end && on; t++) on = v[b[base + t * H + u]] >= threshold;
      if (on && start > 0) on = v[b[base + (start - 1) * H + u]] < threshold;
      if (on && end < T) on = v[b[base + end * H + u]] < threshold;
      if (on) found.push(u);
    }
    return found;
  }
  // match_spans: the maximal runs of steps where every cell is on, longest first, then by
  // text and start; at most TOP.
  function matchSpans(cells, threshold) {
    var d = decode(lab.state), H = C.units, b = d.bytes, v = d.table, found = [];
    if (!cells.length) return found;
    for (var i = 0; i + 1 < C.offsets.length; i++) {
      var T = textLength(i), base = C.offsets[i] * H, start = -1;
      for (var t = 0; t <= T; t++) {
        var on = t < T;
        for (var k = 0; k < cells.length && on; k++) on = v[b[base + t * H + cells[k]]] >= threshold;
        if (on && start < 0) start = t;
        if (!on && start >= 0) { found.push([i, start, t]); start = -1; }
      }
    }
    found.sort(function (a, z) {
      return (z[2] - z[1]) - (a[2] - a[1]) || a[0] - z[0] || a[1] - z[1];
    });
    return found.slice(0, TOP);
  }
  function update() {
    if (!lab.sel || !lab.state) return;
    var t0 = performance.now();
    lab.cells = selectCells(lab.sel[0], lab.sel[1], lab.sel[2], lab.threshold);
    lab.matches = matchSpans(lab.cells, lab.threshold);
    var t1 = performance.now();
    drawCells();
    drawChart();
    drawMatches();
    var t2 = performance.now();
    window.labTiming = {compute_ms: t1 - t0, total_ms: t2 - t0};
    writeStatus();
  }

  // --------------------------------------------------------------------------- what is shown
  function width() { return DATA.level === "char" ? 16 : 56; }
  function buildControls() {
    var layer = C.layer ? C.layer + " (" + C.units + " units)" : "no layer on the tokens' steps";
    var dropped = (C.left_out_states || []).join(" and ");
    $("lab-note").textContent = C.texts.length + " text(s)" + (C.left_out ? " (" + C.left_out +
      " more left out: the page keeps at most 6 M 8-bit values)" : "") +
      (dropped ? " (" + dropped + " left out to keep the page small)" : "") + " · layer " + layer +
      " · values in 8 bits over the texts (low to high in 255 steps) · select a span of tokens " +
      "with the mouse; the cells on (≥ the threshold) over exactly that span and off just " +
      "before and after it are listed, drawn over the text and matched in every text.";
    C.texts.forEach(function (text, i) {
      var words = text.tokens.slice(1, 9).join(DATA.level === "char" ? "" : " ");
      var o = el("option", "text " + i + ": " + words + "…");
      o.value = i;
      $("lab-text").appendChild(o);
    });
    Object.keys(C.states).forEach(function (s) {
      var o = el("option", s === "h" ? "hidden state h" : "cell state c");
      o.value = s;
      $("lab-state").appendChild(o);
    });
    $("lab-text").addEventListener("change", function () { showText(+this.value, null); });
    $("lab-state").addEventListener("change", function () {
      lab.state = this.value;
      setRange();
      update();
    });
    $("lab-threshold").addEventListener("input", function () {
      lab.threshold = parseFloat(this.value);
      $("lab-threshold-value").textContent = this.value;
      update();
    });
    if (lab.state) setRange();
    else $("lab-threshold").disabled = true;
  }
  function setRange() {  // the slider spans the state's values, in steps of 0.01
    var entry = C.states[lab.state], box = $("lab-threshold");
    box.min = Math.floor(entry.low * 100) / 100;
    box.max = Math.ceil(entry.high * 100) / 100;
    box.step = "0.01";
    // First 0.3 (LSTMVis's usual threshold for h), or half the largest value where that is less.
    box.value = Math.max(Math.min(0.3, Math.round(entry.high * 50) / 100), +box.min);
    lab.threshold = parseFloat(box.value);
    $("lab-threshold-value").textContent = box.value;
  }

  // The text as a table: its tokens, the chosen cells' values (parallel coordinates), then a
  // row per signal, annotation and attribution, one column per token.
  function showText(i, match) {
    lab.text = i;
    lab.match = match;
    $("lab-text").value = i;
    var tokens = C.texts[i].tokens, w = width(), table = $("lab-table");
    table.textContent = "";
    table.style.width = (230 + w * tokens.length) + "px";
    var head = el("tr");
    head.appendChild(el("th", "token"));
    tokens.forEach(function (token, t) {
      var td = el("td", shownToken(token, t), "ltok");
      td.dataset.t = t;
      td.style.width = w + "px";
      td.title = "token " + t + ": " + JSON.stringify(token);
      head.appendChild(td);
    });
    table.appendChild(head);
    var chart = el("tr"), label = el("th", "cells"), cell = el("td", undefined, "chart");
    chart.id = "lab-chart-row";
    cell.colSpan = tokens.length;
    cell.id = "lab-chart";
    chart.appendChild(label);
    chart.appendChild(cell);
    table.appendChild(chart);
    C.rows.forEach(function (row) { table.appendChild(rowOf(row, i)); });
    markTokens();
    drawChart();
    if (match) {
      var first = table.querySelector('td.ltok[data-t="' + match[1] + '"]');
      if (first && first.scrollIntoView) first.scrollIntoView({block: "nearest", inline: "center"});
    }
  }
  function rowOf(row, i) {
    var tr = el("tr"), values = row.values[i], m = 1e-9, th = el("th");
    th.appendChild(el("span", row.name + " "));
    var units = row.units.map(function (u) { return u.unit + " (r " + u.r.toFixed(2) + ")"; });
    if (units.length) th.appendChild(el("span", "units " + units.join(", "), "units"));
    th.title = row.name + ": " + row.about + (units.length ? "; the units of " + C.layer +
      " whose c follows it most closely over all the texts: " + units.join(", ") : "");
    tr.dataset.kind = row.kind;
    values.forEach(function (v) { if (v !== null && Math.abs(v) > m) m = Math.abs(v); });
    tr.appendChild(th);
    values.forEach(function (v, t) {
      var td = el("td");
      if (v !== null) td.style.background = colour(v / m);
      var shown = v === null ? "–" : row.scales ? (v * row.scales[i]).toPrecision(3) : v;
      td.title = row.name + " at token " + t + ": " + shown;
      tr.appendChild(td);
    });
    return tr;
  }
  function markTokens() {
    var sel = lab.drag || lab.sel, match = lab.match;
    var here = sel && sel[0] === lab.text, found = match && match[0] === lab.text;
    document.querySelectorAll("#lab-table td.ltok").forEach(function (td) {
      var t = +td.dataset.t;
      td.classList.toggle("sel", !!here && t >= sel[1] && t < sel[2]);
      td.classList.toggle("match", !!found && t >= match[1] && t < match[2]);
    });
    $("lab-span").textContent = sel ? "span: tokens " + sel[1] + " to " + (sel[2] - 1) +
      " of text " + sel[0] : "drag over tokens to select a span";
  }

  // A span by mouse: press on a token, move over others, release (anywhere).
  function listenForSpans() {
    var table = $("lab-table");
    function token(e) {
      var td = e.target.closest ? e.target.closest("td.ltok") : null;
      return td ? +td.dataset.t : null;
    }
    table.addEventListener("mousedown", function (e) {
      var t = token(e);
      if (t === null || !lab.state) return;
      e.preventDefault();
      lab.anchor = t;
      lab.drag = [lab.text, t, t + 1];
      markTokens();
    });
    table.addEventListener("mouseover", function (e) {
      var t = token(e);
      if (t === null || !lab.drag) return;
      lab.drag = [lab.text, Math.min(lab.anchor, t), Math.max(lab.anchor, t) + 1];
      markTokens();
    });
    document.addEventListener("mouseup", function () {
      if (!lab.drag) return;
      lab.sel = lab.drag;
      lab.drag = null;
      lab.match = null;
      markTokens();
      update();
    });
  }

  // Parallel coordinates: each chosen cell's value at every token of the text shown, the
  // threshold dashed, the selected span shaded.
  function drawChart() {
    var box = $("lab-chart");
    if (!box) return;
    var T = textLength(lab.text), w = width(), h = 110, W = T * w;
    if (!lab.state || !lab.cells.length) {
      box.textContent = "";
      box.appendChild(el("div", lab.sel ? "no cell fits this span at this threshold" :
        "select a span", "note"));
      return;
    }
    var entry = C.states[lab.state], d = decode(lab.state), H = C.units;
    var base = C.offsets[lab.text] * H, span = entry.high - entry.low;
    var y = function (v) { return (4 + (1 - (v - entry.low) / span) * (h - 8)).toFixed(1); };
    var parts = [];
    if (lab.sel && lab.sel[0] === lab.text) {
      parts.push('<rect x="' + lab.sel[1] * w + '" y="0" width="' + (lab.sel[2] - lab.sel[1]) * w +
        '" height="' + h + '" fill="#ffd27a" fill-opacity="0.35"/>');
    }
    var ty = y(lab.threshold);
    parts.push('<line x1="0" x2="' + W + '" y1="' + ty + '" y2="' + ty +
      '" stroke="#999" stroke-dasharray="4,3"/>');
    lab.cells.slice(0, MAX_LINES).forEach(function (u) {
      var points = [];
      for (var t = 0; t < T; t++) {
        points.push((t * w + w / 2).toFixed(1) + "," + y(d.table[d.bytes[base + t * H + u]]));
      }
      parts.push('<polyline fill="none" stroke="rgb(33,102,172)" stroke-opacity="0.7" ' +
        'stroke-width="1.3" points="' + points.join(" ") + '"><title>unit ' + u +
        '</title></polyline>');
    });
    box.innerHTML = '<svg width="' + W + '" height="' + h + '" viewBox="0 0 ' + W + " " + h +
      '">' + parts.join("") + "</svg>";
  }
  function drawCells() {
    var box = $("lab-cells");
    box.textContent = "";
    if (!lab.cells.length) box.appendChild(el("span", "none", "note"));
    lab.cells.forEach(function (u) {
      var c = el("span", String(u), "cell");
      c.dataset.unit = u;
      box.appendChild(c);
    });
  }
  function drawMatches() {
    var box = $("lab-matches");
    box.textContent = "";
    lab.matches.forEach(function (m) {
      var tokens = C.texts[m[0]].tokens, li = el("li");
      li.dataset.text = m[0];
      li.dataset.start = m[1];
      li.dataset.end = m[2];
      var join = DATA.level === "char" ? "" : " ";
      var words = function (a, z) {
        return tokens.slice(Math.max(0, a), z).map(function (token) {
          return token === "<start>" ? token : shownToken(token, 1);
        }).join(join);
      };
      li.appendChild(el("span", "text " + m[0] + " [" + m[1] + ", " + m[2] + "): " +
        words(m[1] - CONTEXT, m[1]) + join));
      li.appendChild(el("mark", words(m[1], m[2])));
      li.appendChild(el("span", join + words(m[2], m[2] + CONTEXT)));
      li.addEventListener("click", function () { showText(m[0], m); markTokens(); });
      box.appendChild(li);
    });
  }
  function drawAblation() {
    var box = $("lab-ablation"), A = C.ablation;
    if (!A) {
      box.appendChild(el("p", "Not measured: ablations need held-out texts (flaxlstm inspect " +
        "html --imdb-test N or --lm-valid N; in Python, held_out=True).", "note"));
      return;
    }
    var keys = Object.keys(A.before), table = el("table"), head = el("tr");
    box.appendChild(el("p", "The held-out score on these " + A.texts + " texts with the cell " +
      "state c of " + C.layer + " held at 0 in the units that follow the rows best, each alone " +
      "and all together (" + (A.higher_is_better ? "higher" : "lower") + " is better).", "note"));
    ["units held at 0"].concat(keys.map(function (k) { return k; }), keys.map(function (k) {
      return "change in " + k;
    })).forEach(function (name) { head.appendChild(el("th", name)); });
    table.appendChild(head);
    var before = el("tr");
    before.appendChild(el("td", "none"));
    keys.forEach(function (k) { before.appendChild(el("td", A.before[k].toFixed(4))); });
    keys.forEach(function () { before.appendChild(el("td", "")); });
    table.appendChild(before);
    A.ablations.forEach(function (a) {
      var tr = el("tr");
      tr.appendChild(el("td", a.units.join(", ")));
      keys.forEach(function (k) { tr.appendChild(el("td", a.after[k].toFixed(4))); });
      keys.forEach(function (k) {
        tr.appendChild(el("td", (a.change[k] >= 0 ? "+" : "") + a.change[k].toFixed(4)));
      });
      table.appendChild(tr);
    });
    box.appendChild(table);
  }
  // For a test (or a person) to read: "lab ok texts=N cells=k matches=m ms=…".
  function writeStatus() {
    var status = $("lab-status"), timing = window.labTiming;
    status.dataset.state = "ok";
    status.textContent = "lab ok texts=" + C.texts.length + " state=" + lab.state +
      " threshold=" + $("lab-threshold").value + " cells=" + lab.cells.length + " matches=" +
      lab.matches.length + (timing ? " ms=" + timing.compute_ms.toFixed(1) : "");
  }

  $("lab").hidden = false;
  var loading = performance.now();
  Object.keys(C.states).forEach(decode);  // once, up front: base64 to bytes
  window.labLoadMs = performance.now() - loading;
  buildControls();
  listenForSpans();
  showText(0, null);
  drawAblation();
  writeStatus();
})();
