"""The API reference (docs/api, Sphinx autodoc) builds from the docstrings with every warning an
error, and holds the package's main names."""

import subprocess
import sys
from pathlib import Path

import flaxlstm

ROOT = Path(__file__).resolve().parents[1]


def test_api_reference_builds_without_warnings(tmp_path):
    out = tmp_path / "html"
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-j", "1"]
    command += ["-b", "html", "-d", str(tmp_path / "doctrees"), "docs/api", str(out)]
    built = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, f"sphinx failed:\n{built.stderr}\n{built.stdout}"

    page = lambda name: (out / f"{name}.html").read_text()  # noqa: E731
    anchors = {
        "layers": ["flaxlstm.layers.LSTM", "flaxlstm.layers.capture_intermediates"],
        "recurrent": ["flaxlstm.recurrent.lstm_scan"],
        "training.fit": ["flaxlstm.training.fit.fit"],
        "training.loop": ["flaxlstm.training.loop.train", "flaxlstm.training.loop.Objective"],
        "training.lm": ["flaxlstm.training.lm.train_lm"],
        "recipes": ["flaxlstm.recipes.Recipe"],
        "data.imdb": ["flaxlstm.data.imdb.load_imdb"],
        "variants": ["flaxlstm.variants.PeepholeLSTM"],
    }
    for name, ids in anchors.items():
        for anchor in ids:
            assert f'id="{anchor}"' in page(name), f"{anchor} is not documented in {name}.html"
    # An NNX module's signature is its constructor's, not the metaclass's (*args, **kwargs).
    assert "hidden_features" in page("layers")
    assert 'class="math' in page("cell")  # the cell's equations
    # The package page links every name of flaxlstm.__all__ to where it is documented.
    top = page("flaxlstm")
    for name in flaxlstm.__all__:
        module = getattr(flaxlstm, name).__module__  # flaxlstm.layers
        link = f'href="{module.removeprefix("flaxlstm.")}.html#{module}.{name}"'
        assert link in top, f"flaxlstm.{name} is not linked from flaxlstm.html"
