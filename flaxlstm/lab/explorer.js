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
