"""flaxlstm.lab.explorer and ``flaxlstm inspect html``: the page's numbers against the library's own
(traces, predictions, saturation, ranked units), and the page itself in a real headless browser
(Debian's chromium, driven from the command line: nothing is downloaded): no script error,
every token drawn, the first token's value the one computed here, every control usable."""

import html
import json
import os
import re
import shutil
import subprocess

import jax
import numpy as np
import pytest
from flax import nnx
from test_cli import run_main

from flaxlstm.data import imdb as imdb_data
from flaxlstm.lab import explorer, internals, traces
from flaxlstm.models import SentimentClassifier
from flaxlstm.training import runs
from flaxlstm.training.checkpoint import Checkpointer
from flaxlstm.training.fit import predict
from flaxlstm.training.loop import mode_view

WORDS = imdb_data.Vocabulary(["the", "film", "was", "good", "bad", ".", "a", '"', "(", ")"])
REVIEW = 'The film was "good" (a GOOD film). Not bad.'  # "not" is out of vocabulary
REVIEW_TOKENS = ["<start>", *imdb_data.tokenize(REVIEW)]
CHARS = imdb_data.Vocabulary(list('abcdefghijklmnopqrstuvwxyz .,"()\n'), "char")
TEXT = 'a "quoted" word (here).\nNext line!'  # "N" and "!" are out of vocabulary
LM_CONFIG = dict(task="lm", vocab_size=CHARS.size, level="char", embedding=4, hidden=6)
LM_CONFIG |= dict(layers=2, tie=False, dropout=0.0, seed=0)


def save_run(run, config: dict, vocabulary, model) -> None:
    """A run directory as ``train imdb`` / ``train lm`` leave it (untrained parameters)."""
    (run / "config.json").write_text(json.dumps(config))
    vocabulary.save(run / "vocabulary.json")
    Checkpointer(run / "model").save(0, nnx.state(model, nnx.Param), {})


@pytest.fixture(scope="module")
def imdb_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("imdb")
    config = {"model": "simple", "vocab_size": WORDS.size, "maxlen": 20, "seed": 0}
    save_run(run, config, WORDS, runs.imdb_model(config))
    return run


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("lm")
    save_run(run, LM_CONFIG, CHARS, runs.language_model(LM_CONFIG))
    return run


def rounded(a):
    return np.round(np.asarray(a, np.float64), explorer.DECIMALS)


# ----------------------------------------------------------------------------- the page's numbers


def test_classifier_data_holds_the_models_own_numbers(imdb_run):
    model, vocabulary = explorer.load_any_run(imdb_run)
    data = explorer.page_data(model, vocabulary, REVIEW)
    json.dumps(data, allow_nan=False)  # plain JSON: lists, strings, numbers
    assert data["kind"] == "classifier" and data["cut"] == 0
    assert data["tokens"] == REVIEW_TOKENS
    assert [t for t, oov in zip(data["tokens"], data["oov"], strict=True) if oov] == ["not"]
    (ids,) = vocabulary.encode([REVIEW])
    lengths = np.array([len(ids)], np.int32)
    trace = traces.trace_model(model, ids[None], lengths=lengths)["lstm"]
    (layer,) = data["layers"]
    assert layer["name"] == "lstm" and layer["units"] == 100
    assert layer["token_steps"] == list(range(len(ids)))
    for q in explorer.QUANTITIES:  # [H][T], rounded
        np.testing.assert_array_equal(layer["values"][q], rounded(getattr(trace, q)[0].T))
    # P(positive) after each prefix: after the words, what review_prefixes says.
    p = np.array(data["prediction"]["values"])
    _, after_words = traces.review_prefixes(model, vocabulary, REVIEW)
    np.testing.assert_allclose(p[1:], after_words, atol=6e-4)
    whole = predict(model, ids[None], lengths=lengths)
    np.testing.assert_allclose(p[-1], whole[0], atol=6e-4)
    saturation = internals.saturation(model, ids[None], lengths)["lstm"]
    for gate, s in saturation.items():
        np.testing.assert_array_equal(data["saturation"]["lstm"][gate]["left"], rounded(s.left))
        np.testing.assert_array_equal(data["saturation"]["lstm"][gate]["right"], rounded(s.right))
    cells = {cell["name"]: cell for cell in data["cells"]}
    assert set(cells) == {"position", "inside quotes", "inside parentheses", "to sentence end"}
    quotes = internals.inside_quotes(ids[None], vocabulary.ids['"'])
    found = internals.find_units(model, ids[None], lengths, quotes, top=explorer.TOP_UNITS)
    assert [(u["layer"], u["unit"]) for u in cells["inside quotes"]["units"]] == [
        (0, f.unit) for f in found
    ]
    np.testing.assert_allclose([u["r"] for u in cells["inside quotes"]["units"]],
                               [f.correlation for f in found], atol=6e-4)  # fmt: skip
    assert cells["inside quotes"]["baseline"] == pytest.approx(
        max(quotes.mean(), 1 - quotes.mean())
    )
    best = max((u for c in data["cells"] for u in c["units"]), key=lambda u: abs(u["r"]))
    assert data["selected"] == {"layer": 0, "quantity": "c", "unit": best["unit"]}


def test_language_model_data_holds_each_tokens_probability_and_the_next_guess(lm_run):
    model, vocabulary = explorer.load_any_run(lm_run)
    data = explorer.page_data(model, vocabulary, TEXT, max_tokens=20, quantity="h", unit=5)
    assert data["kind"] == "language model" and data["level"] == "char"
    assert data["tokens"] == ["<start>", *TEXT[:20]] and data["cut"] == len(TEXT) - 20
    assert [layer["name"] for layer in data["layers"]] == ["lstm/layers/0", "lstm/layers/1"]
    assert data["selected"] == {"layer": 0, "quantity": "h", "unit": 5}
    (ids,) = vocabulary.encode_tokens([list(TEXT[:20])])
    features, _ = mode_view(model, training=False)(ids[None])
    probabilities = np.asarray(jax.nn.softmax(model.logits(features)[0]))  # [T, V]
    prediction = data["prediction"]
    assert prediction["values"][0] is None  # nothing predicts the START token
    given = probabilities[np.arange(len(ids) - 1), ids[1:]]
    np.testing.assert_array_equal(prediction["values"][1:], rounded(given))
    guesses = probabilities.argmax(-1)
    assert prediction["guesses"] == [explorer.token_name(vocabulary, g) for g in guesses]
    np.testing.assert_array_equal(prediction["guess_probabilities"], rounded(probabilities.max(-1)))
    names = {cell["name"] for cell in data["cells"]}  # 'a "quoted" word (her': no sentence end
    assert names == {"position", "inside quotes", "inside parentheses"}


def test_a_pooled_layer_reads_each_token_in_its_window():
    model = SentimentClassifier(WORDS.size, 3, 4, conv_filters=2, rngs=nnx.Rngs(0))
    data = explorer.page_data(model, WORDS, "the film was good")  # 5 tokens: windows of 2
    assert data["layers"][0]["token_steps"] == [0, 0, 1, 1, None]  # the ragged one is dropped
    assert data["cells"] == []  # no layer runs on the input's steps: no signal to rank by


def test_the_page_is_self_contained_and_its_data_cannot_end_the_script():
    data = {"title": "<b>run</b>", "tokens": ["</script><b>x</b>", "<!--"], "layers": []}
    page = explorer.render_page(data)
    assert page.count("</script>") == 3 and "<!--" not in page  # the page's own three scripts
    assert "<title>&lt;b&gt;run&lt;/b&gt;</title>" in page
    assert not re.search(r"https?:|\bsrc=|<link|@import|url\(", page, re.IGNORECASE)
    assert "default-src 'none'" in page  # the browser itself refuses to load anything
    embedded = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S)
    assert json.loads(embedded.group(1)) == data


# ----------------------------------------------------------------------------- in a browser


def chromium() -> str:
    """Debian's chromium (apt-get install chromium): required under CI, else skipped."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    message = "the explorer's browser tests need Debian's chromium: apt-get install chromium"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{message} (.ci/run installs it)")
    pytest.skip(message)


def browse(page, tmp_path, fragment: str = "") -> dict:
    """Load ``page`` in headless chromium; the DOM after its scripts ran: its status line,
    its error box and the tokens drawn."""
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
    command += ["--disable-extensions", "--disable-dev-shm-usage"]
    command += [f"--user-data-dir={tmp_path / 'chromium'}", "--dump-dom", page.as_uri() + fragment]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    status = re.search(r'<div id="status" data-state="(\w+)">([^<]*)</div>', dom)
    error = re.search(r'<pre id="error"[^>]*>([^<]*)</pre>', dom)
    tokens = re.findall(r'<span class="tok[^"]*" data-t="\d+"[^>]*>([^<]*)</span>', dom)
    assert status and error, dom[:2000]
    fields = dict(re.findall(r"(\w+)=(\S+)", status.group(2)))
    tokens = [html.unescape(t) for t in tokens]
    return dict(state=status.group(1), status=fields, error=error.group(1), tokens=tokens)


def first_value(model, vocabulary, text, layer: str, quantity: str, unit: int) -> float:
    """The first token's value of the unit, from the model's own trace."""
    (ids,) = vocabulary.encode([text])
    trace = traces.trace_model(model, ids[None], lengths=np.array([len(ids)], np.int32))[layer]
    return float(np.asarray(getattr(trace, quantity))[0, 0, unit])


def shows(status: dict, value: float) -> bool:
    """Whether the page's status shows ``value`` rounded to the page's 3 decimals."""
    return (
        re.fullmatch(r"-?\d+\.\d{3}", status["first"])
        and abs(float(status["first"]) - value) <= 0.5e-3 + 1e-9
    )


@pytest.mark.parametrize("kind", ["imdb", "lm"])
def test_the_page_works_in_a_headless_browser(kind, imdb_run, lm_run, tmp_path, capsys):
    run, text = (imdb_run, REVIEW) if kind == "imdb" else (lm_run, TEXT)
    layer, quantity, unit = ("lstm", "c", 7) if kind == "imdb" else ("lstm/layers/1", "h", 2)
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    page = tmp_path / "page.html"
    # --file holds one text a line (the review: one line); --text keeps the LM's newline.
    given = ["--file", str(tmp_path / "text.txt")] if kind == "imdb" else ["--text", text]
    argv = ["inspect", "html", "--model-dir", str(run), *given]
    argv += ["--layer", layer, "--quantity", quantity, "--unit", str(unit), "--out", str(page)]
    code, out, err = run_main(argv, capsys)
    assert code == 0, err
    assert out.startswith(f"wrote {page} (") and out.endswith(" kB)\n")
    model, vocabulary = explorer.load_any_run(run)
    shown = REVIEW_TOKENS if kind == "imdb" else ["<start>", *TEXT.replace("\n", "\u21b5")]

    loaded = browse(page, tmp_path)
    assert loaded["error"] == "" and loaded["state"] == "ok", loaded
    assert loaded["tokens"] == shown
    assert loaded["status"]["tokens"] == str(len(shown))
    assert loaded["status"]["layer"] == layer and loaded["status"]["unit"] == str(unit)
    assert shows(loaded["status"], first_value(model, vocabulary, text, layer, quantity, unit))

    # The address chooses what is shown; "check" uses every control once (no error may follow).
    first = next(iter(traces.lstm_layers(model)))
    chosen = browse(page, tmp_path, "#layer=0&quantity=f&unit=1&check")
    assert chosen["error"] == "" and chosen["state"] == "ok", chosen
    assert chosen["status"]["layer"] == first and chosen["status"]["quantity"] == "f"
    assert shows(chosen["status"], first_value(model, vocabulary, text, first, "f", 1))
    assert int(chosen["status"]["checked"]) >= 10  # quantities and signals' units clicked


def test_a_script_error_shows_in_the_page(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text(explorer.render_page({"title": "broken", "layers": []}), encoding="utf-8")
    loaded = browse(page, tmp_path)
    assert loaded["state"] == "error" and "TypeError" in loaded["error"]


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "argv,code,message",
    [
        (["--model-dir", "{missing}", "--text", "good"], 1, "holds no 'train imdb' or 'train lm'"),
        (["--model-dir", "{run}", "--text", " \n "], 1, "the text has no tokens"),
        (["--model-dir", "{run}", "--text", "good", "--file", "{run}/x"], 2, "not allowed with"),
        (["--model-dir", "{run}"], 2, "one of the arguments --text --file --imdb-test"),
        (["--model-dir", "{run}", "--file", "{missing}"], 1, "No such file"),
        (["--model-dir", "{run}", "--text", "good", "--unit", "100"], 1, "unit must lie in [0,"),
        (["--model-dir", "{run}", "--text", "good", "--layer", "x"], 1, "no LSTM layer 'x'"),
        (["--model-dir", "{run}", "--text", "good", "--max-tokens", "0"], 2, "--max-tokens"),
    ],
)
def test_bad_input_is_one_line(argv, code, message, imdb_run, tmp_path, capsys):
    argv = [a.format(missing=tmp_path / "nothing", run=imdb_run) for a in argv]
    out_path = tmp_path / "page.html"
    status, out, err = run_main(["inspect", "html", *argv, "--out", str(out_path)], capsys)
    assert status == code and message in err, err
    assert err.count("\n") == 1 and not out and not out_path.exists()
