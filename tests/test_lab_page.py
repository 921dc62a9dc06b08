"""The lab page (``flaxlstm inspect html`` over many texts, flaxlstm.lab.corpus) in a real
browser: Playwright for Python driving Debian's chromium (nothing is downloaded). A span
selected with the real mouse and a threshold moved with the real keyboard must list exactly
the cells and spans that ``select_cells`` and ``match_spans`` give on the page's own 8-bit
values (``corpus.state_values``); the rows, the ablations and the bad input are checked
against the library too; and the browser's time for a selection and its matches over 50
texts × 200 tokens × 512 units is measured (printed, stated in docs/tutorial-lab.md)."""

import json
import os
import re
import shutil

import numpy as np
import pytest
from test_cli import run_main
from test_explorer import CHARS, WORDS, save_run

from flaxlstm.data import text as text_data
from flaxlstm.lab import attribution, corpus, explorer, internals
from flaxlstm.lab.hypotheses import match_spans, select_cells
from flaxlstm.lab.traces import trace_model
from flaxlstm.models import SentimentClassifier
from flaxlstm.training import runs

LINES = [
    'the cat (a small one) sat. "hello," said the dog.',
    'a "quoted word" and (more words) here.',
    "the dog ran (fast) and the cat sat.",
    'she said "no" (twice). then "yes".',
    "plain words without any marks at all",
    'more "quotes" in (this) line, and more.',
]
LM_CONFIG = dict(task="lm", vocab_size=CHARS.size, level="char", embedding=8, hidden=24)
LM_CONFIG |= dict(layers=1, tie=False, dropout=0.0, seed=0, validation_split=0.5)


def chromium() -> str:
    """Debian's chromium and the Playwright package: required under CI, else skipped."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    missing = None if found else "Debian's chromium (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "Playwright for Python (pip install '.[test]')"
    if missing is None:
        return found
    message = f"the lab page's browser tests need {missing}"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    executable = chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """An untrained character LM whose run's validation text is the second half of LINES."""
    run = tmp_path_factory.mktemp("lm")
    (run / "text.txt").write_text("\n".join(LINES) + "\n", encoding="utf-8")
    config = LM_CONFIG | {"text": str(run / "text.txt")}
    save_run(run, config, CHARS, runs.language_model(config))
    return run


def open_page(browser, path):
    """The page at ``path`` loaded, and the list of every address it requested."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(path.as_uri())
    return page, requested


def embedded(path) -> dict:
    """The data a page holds (as its script reads it)."""
    found = re.search(r'<script type="application/json" id="data">(.*?)</script>',
                      path.read_text("utf-8"), re.S)  # fmt: skip
    return json.loads(found.group(1).replace("\\u003c", "<"))


def drag(page, text: int, start: int, end: int) -> None:
    """Select tokens [start, end) of the text shown with the real mouse: press, move, release."""
    tokens = page.locator("#lab-table td.ltok")
    tokens.nth(start).scroll_into_view_if_needed()
    first, last = tokens.nth(start).bounding_box(), tokens.nth(end - 1).bounding_box()
    page.mouse.move(first["x"] + first["width"] / 2, first["y"] + first["height"] / 2)
    page.mouse.down()
    page.mouse.move(last["x"] + last["width"] / 2, last["y"] + last["height"] / 2, steps=4)
    page.mouse.up()
    assert page.inner_text("#lab-span") == f"span: tokens {start} to {end - 1} of text {text}"


def shown(page) -> tuple[float, list[int], list[tuple[int, int, int]]]:
    """The threshold, the cells and the matches the page lists."""
    threshold = float(page.input_value("#lab-threshold"))
    cells = [int(c) for c in page.locator("#lab-cells .cell").all_inner_texts()]
    matches = page.eval_on_selector_all(
        "#lab-matches li",
        "items => items.map(li => [+li.dataset.text, +li.dataset.start, +li.dataset.end])",
    )
    return threshold, cells, [tuple(m) for m in matches]


def a_hypothesis(values, threshold: float):
    """A span of text 0 and a slider threshold (within 15 steps of ``threshold``) whose cells
    match in at least two places: what the browser is then asked to select."""
    for shift in range(16):
        for sign in (1, -1):
            t = round(threshold + sign * shift * 0.01, 2)
            for length in (3, 2, 4, 1, 5):
                for start in range(1, len(values[0]) - length):
                    cells = select_cells(values[0], start, start + length, t)
                    if len(cells) and len(match_spans(values, cells, t)) >= 2:
                        return start, start + length, t
    pytest.fail("no span of text 0 has cells that match twice")


# ----------------------------------------------------------------------------- in the browser


def test_selection_and_matches_are_the_libraries(browser, lm_run, tmp_path, capsys):
    held = text_data.text_file(lm_run / "text.txt", LM_CONFIG["validation_split"])[1]
    texts = held.splitlines()[:3]  # the run's validation text, a text a line
    assert len(texts) == 3
    annotations = tmp_path / "annotations.jsonl"
    with open(annotations, "w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"vowel": [c in "aeiou" for c in text]}) + "\n")
    out = tmp_path / "lab.html"
    argv = ["inspect", "html", "--model-dir", str(lm_run), "--lm-valid", "3"]
    argv += ["--annotations", str(annotations), "--ig-steps", "8", "--out", str(out)]
    code, printed, err = run_main(argv, capsys)
    assert code == 0, err
    assert printed.startswith(f"wrote {out} (3 texts, ") and printed.endswith(" kB)\n")
    data = embedded(out)["corpus"]
    assert [t["tokens"][1:] for t in data["texts"]] == [list(t) for t in texts]
    values = corpus.state_values(data, "h")
    assert [len(v) for v in values] == [len(t) + 1 for t in texts]

    page, requested = open_page(browser, out)
    assert page.inner_text("#error") == "" and page.get_attribute("#status", "data-state") == "ok"
    start, end, target = a_hypothesis(values, float(page.input_value("#lab-threshold")))
    drag(page, 0, start, end)
    threshold, cells, matches = shown(page)
    assert cells == select_cells(values[0], start, end, threshold).tolist()
    if cells:
        assert matches == match_spans(values, cells, threshold, top=50)
    # The slider, by the real keyboard, one 0.01 step a key press; the lists follow it.
    page.focus("#lab-threshold")
    steps = round((target - threshold) / 0.01)
    for _ in range(abs(steps)):
        page.keyboard.press("ArrowRight" if steps > 0 else "ArrowLeft")
    threshold, cells, matches = shown(page)
    assert threshold == target
    expected = select_cells(values[0], start, end, threshold)
    assert cells == expected.tolist() and len(cells) > 0
    assert matches == match_spans(values, expected, threshold, top=50) and len(matches) >= 2
    status = page.inner_text("#lab-status")
    assert f"cells={len(cells)} matches={len(matches)}" in status
    assert len(page.locator("#lab-chart polyline").all()) == len(cells)  # parallel coordinates

    # A click on a match shows its text, the matched tokens marked.
    text, first, last = matches[-1]
    page.locator("#lab-matches li").nth(len(matches) - 1).click()
    assert page.input_value("#lab-text") == str(text)
    marked = page.eval_on_selector_all("#lab-table td.ltok.match", "t => t.map(x => +x.dataset.t)")
    assert marked == list(range(first, last))

    # The rows: built-in signals, the annotation, both attributions and the gradient flow.
    names = page.eval_on_selector_all("#lab-table tr[data-kind] th > span:first-child",
                                      "s => s.map(x => x.textContent.trim())")  # fmt: skip
    assert names == ["position", "inside quotes", "inside parentheses", "to sentence end",
                     "vowel", "grad × input", "integrated gradients", "gradient flow"]  # fmt: skip
    assert "on these 3 texts" in page.inner_text("#lab-ablation")
    assert len(page.locator("#lab-ablation tr").all()) == 1 + 1 + corpus.ABLATED + 1
    assert requested == [out.as_uri()]  # nothing else loaded
    page.close()


def test_the_rows_are_the_libraries(lm_run):
    model, vocabulary = explorer.load_any_run(lm_run)
    texts = LINES[:4]
    marks = [
        {"vowel": [c in "aeiou" for c in t], "code": [float(ord(c)) for c in t]} for t in texts
    ]
    data = corpus.corpus_data(model, vocabulary, texts, annotations=marks, ig_steps=8)
    rows = {row["name"]: row for row in data["rows"]}
    ids, lengths, _, _ = corpus._encode(vocabulary, texts, 200)
    c = np.asarray(trace_model(model, ids, lengths=lengths)[data["layer"]].c)
    real = np.arange(ids.shape[1]) < lengths[:, None]
    vowel = np.zeros(ids.shape, bool)
    for i, t in enumerate(texts):
        vowel[i, 1 : 1 + len(t)] = marks[i]["vowel"]
    ranking = internals.rank_units(c, vowel, real & (np.arange(ids.shape[1]) > 0))
    assert [u["unit"] for u in rows["vowel"]["units"]] == ranking.units[:5].tolist()
    assert rows["vowel"]["values"][0] == [None, *map(float, marks[0]["vowel"])]
    ig = attribution.saliency(model, ids, lengths, "integrated_gradients", steps=8)
    row = rows["integrated gradients"]
    for i, n in enumerate(lengths):
        scaled = np.array(row["values"][i]) * row["scales"][i]
        np.testing.assert_allclose(scaled, ig[i, :n], atol=2e-3 * np.abs(ig[i]).max())
    assert data["ablation"] is None  # not held out


def test_a_classifiers_ablations_are_ablation_effects():
    model = runs.imdb_model({"model": "simple", "vocab_size": WORDS.size, "maxlen": 20, "seed": 0})
    texts = ['the film was "good" (a good film).', "bad film. bad.", "a good film", "the bad"]
    labels = np.array([1, 0, 1, 0])
    data = corpus.corpus_data(model, WORDS, texts, labels=labels, held_out=True, ig_steps=4)
    ablation = data["ablation"]
    assert ablation["texts"] == 4 and ablation["higher_is_better"]
    ids, lengths, _, _ = corpus._encode(WORDS, texts, 200)
    for measured in (ablation["ablations"][0], ablation["ablations"][-1]):
        effect = internals.ablation_effect(
            model, ids, labels, internals.Ablation("lstm", measured["units"]), lengths=lengths
        )
        assert measured["after"] == pytest.approx(effect.after, abs=1e-4)
    assert len(ablation["ablations"][-1]["units"]) == corpus.ABLATED


def test_a_pooled_classifier_has_no_hypothesis_layer_and_the_page_still_works(browser, tmp_path):
    model = SentimentClassifier(
        WORDS.size, 3, 4, conv_filters=2, rngs=__import__("flax").nnx.Rngs(0)
    )
    data = explorer.lab_data(model, WORDS, ["the film was good", "bad film"], ig_steps=4)
    assert data["corpus"]["layer"] is None and data["corpus"]["states"] == {}
    path = tmp_path / "pooled.html"
    explorer.write_page(path, data)
    page, requested = open_page(browser, path)
    assert (
        page.inner_text("#error") == "" and page.get_attribute("#lab-status", "data-state") == "ok"
    )
    assert requested == [path.as_uri()]
    page.close()


def test_quantised_values_are_the_pages(tmp_path):
    values = np.random.default_rng(0).normal(size=(7, 5))
    entry = corpus.quantise(values)
    back = corpus.dequantise(entry, 5)
    step = (entry["high"] - entry["low"]) / 255
    assert np.abs(back - values).max() <= step / 2 + 1e-12  # rounding to the nearest level
    assert back.min() == entry["low"] and back.max() == pytest.approx(entry["high"])


# ----------------------------------------------------------------------------- at full size


def test_a_selection_stays_interactive_at_50_texts_200_tokens_512_units(browser, tmp_path):
    """Synthetic values through the page's own builder: prints the page's size and the
    browser's milliseconds for a selection and its matches (docs/tutorial-lab.md)."""
    rng = np.random.default_rng(0)
    texts, time, units = 50, 201, 512  # 200 tokens after START
    words = [w for w in WORDS.words if w.isalpha()]
    tokens = [["<start>", *rng.choice(words, time - 1).tolist()] for _ in range(texts)]
    h = [np.tanh(rng.normal(0, 0.8, (time, units))) for _ in range(texts)]
    c = [rng.normal(0, 2, (time, units)) for _ in range(texts)]
    model = runs.imdb_model({"model": "simple", "vocab_size": WORDS.size, "maxlen": 20, "seed": 0})
    data = explorer.page_data(model, WORDS, "the film was good")
    data["corpus"] = corpus.corpus_from_values(tokens, {"h": h, "c": c}, layer="synthetic")
    assert len(data["corpus"]["texts"]) == texts and data["corpus"]["left_out_states"] == ["c"]
    path = tmp_path / "big.html"
    explorer.write_page(path, data)
    size = path.stat().st_size
    assert size < 10e6
    page, _ = open_page(browser, path)
    assert page.get_attribute("#lab-status", "data-state") == "ok"
    timings = []
    for start in (5, 40, 90):
        drag(page, 0, start, start + 2)
        timings.append(page.evaluate("window.labTiming"))
    values = corpus.state_values(data["corpus"], "h")
    threshold, cells, matches = shown(page)
    assert cells == select_cells(values[0], 90, 92, threshold).tolist()
    compute = [t["compute_ms"] for t in timings]
    total = [t["total_ms"] for t in timings]
    print(
        f"\nlab page at {texts} texts x {time - 1} tokens x {units} units (h, 8 bits):"
        f" {size / 1e6:.1f} MB; a selection and its matches: {min(compute):.1f}-"
        f"{max(compute):.1f} ms to compute, {min(total):.1f}-{max(total):.1f} ms with drawing"
        f" ({len(cells)} cells, {len(matches)} matches last); decoding the values on"
        f" loading: {page.evaluate('window.labLoadMs'):.0f} ms"
    )
    page.close()


# ----------------------------------------------------------------------------- bad input


TWO = ["--file", "{tmp}/two.txt"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--lm-valid", "51"], "--lm-valid must lie in [1, 50], got 51"),
        (["--imdb-test", "0"], "--imdb-test"),
        (["--file", "{tmp}/missing.txt"], "No such file"),
        ([*TWO, "--annotations", "{tmp}/missing.jsonl"], "no annotations file"),
        ([*TWO, "--annotations", "{tmp}/short.jsonl"], "1 annotation lines for 2"),
        ([*TWO, "--annotations", "{tmp}/count.jsonl"], "has 2 numbers, the text 3"),
        ([*TWO, "--annotations", "{tmp}/junk.jsonl"], "line 1 is not JSON"),
        (["--model-dir", "{imdb}", "--lm-valid", "2"], "--lm-valid needs a 'train lm' run"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(argv, message, lm_run, tmp_path, capsys):
    (tmp_path / "two.txt").write_text("abc\nde\n", encoding="utf-8")
    (tmp_path / "short.jsonl").write_text('{"x": [1, 2, 3]}\n', encoding="utf-8")
    (tmp_path / "count.jsonl").write_text('{"x": [1, 2]}\n{"x": [1, 2]}\n', encoding="utf-8")
    (tmp_path / "junk.jsonl").write_text("nope\n{}\n", encoding="utf-8")
    argv = [a.format(tmp=tmp_path, imdb=tmp_path) for a in argv]
    if "--model-dir" not in argv:
        argv = ["--model-dir", str(lm_run), *argv]
    out = tmp_path / "page.html"
    command = ["inspect", "html", *argv, "--out", str(out)]
    status, printed, err = run_main(command, capsys)
    assert status in (1, 2) and message in err, err
    assert err.count("\n") == 1 and not printed and not out.exists()
