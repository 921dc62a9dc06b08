"""Package boundaries: what importing flaxlstm pulls in, and what it offers."""

import importlib
import subprocess
import sys

import pytest

import flaxlstm
from flaxlstm._moved import MOVED, MOVED_NAMES


def imported_after(statement: str, roots: tuple[str, ...]) -> list[str]:
    """The modules under ``roots`` that a fresh interpreter holds after ``statement``."""
    code = f"import sys; {statement}; print(sorted({{m.split('.')[0] for m in sys.modules}}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    loaded = eval(done.stdout.splitlines()[-1])
    return [root for root in roots if root in loaded]


def test_the_library_imports_neither_torch_nor_keras():
    everything = (
        "import flaxlstm, flaxlstm.training.fit, flaxlstm.training.lm, flaxlstm.cli,"
        " flaxlstm.lab.plots, flaxlstm.variants"
    )
    assert imported_after(everything, ("torch", "keras", "tensorflow")) == []


@pytest.mark.parametrize(
    "path",
    ["flaxlstm.training.fit", "flaxlstm.cli", "flaxlstm.training.runs", "flaxlstm.lab.traces"],
)
def test_training_and_prediction_do_not_import_matplotlib(path):
    assert imported_after(f"import {path}", ("matplotlib",)) == []


def test_the_pictures_do():  # so the check above can fail
    assert imported_after("import flaxlstm.lab.plots", ("matplotlib",)) == ["matplotlib"]


def test_all_names_the_public_api():
    assert all(not name.startswith("_") for name in flaxlstm.__all__)
    assert all(hasattr(flaxlstm, name) for name in flaxlstm.__all__)
    public = {name for name in vars(flaxlstm) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(flaxlstm, name)).__name__ == "module"}
    assert public - modules - {"annotations"} == set(flaxlstm.__all__)


def test_moved_modules_still_import_from_their_old_paths_with_a_deprecation_warning():
    for old, new in MOVED.items():
        new = (new,) if isinstance(new, str) else new  # or the modules its names went to
        sys.modules.pop(old, None)
        with pytest.warns(DeprecationWarning, match=f"^{old} has moved to {' and '.join(new)};"):
            module = importlib.import_module(old)
        for target in map(importlib.import_module, new):
            public = [name for name in vars(target) if not name.startswith("_")]
            assert public and all(getattr(module, name) is getattr(target, name) for name in public)
        with pytest.raises(AttributeError):
            module.no_such_name  # noqa: B018


def test_names_that_moved_to_another_module_still_resolve_there_with_a_warning():
    for (module, name), new in MOVED_NAMES.items():
        with pytest.warns(DeprecationWarning, match=f"^{module}.{name} has moved to {new}.{name};"):
            found = getattr(importlib.import_module(module), name)
        assert found is getattr(importlib.import_module(new), name)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        importlib.import_module("flaxlstm.data.imdb").no_such_name  # noqa: B018
