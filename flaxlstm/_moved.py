"""What moved, at its old import path for one release, with a DeprecationWarning: modules
(``MOVED``, old path → new path, or the paths its names are now split over: importing one
gives a module that forwards every name to them) and names that moved to another module
(``MOVED_NAMES``, (module, name) → the module that holds it now: the old module's
``__getattr__`` calls ``moved_attribute``). These two are the one list of them."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

MOVED = {
    "flaxlstm.traces": "flaxlstm.lab.traces",
    "flaxlstm.internals": "flaxlstm.lab.internals",
    "flaxlstm.plots": "flaxlstm.lab.plots",
    "flaxlstm.explorer": "flaxlstm.lab.explorer",
    "flaxlstm.keras_models": "flaxlstm.interop.keras",
    "flaxlstm.nbsvm": "flaxlstm.models.nbsvm",
    "flaxlstm.train": (
        "flaxlstm.training.fit",
        "flaxlstm.training.loop",
        "flaxlstm.training.processes",
    ),
    "flaxlstm.lm": "flaxlstm.training.lm",
    "flaxlstm.runs": "flaxlstm.training.runs",
    "flaxlstm.checkpoint": "flaxlstm.training.checkpoint",
    "flaxlstm.interrupts": "flaxlstm.training.interrupts",
    "flaxlstm.losses": "flaxlstm.training.losses",
}
MOVED_NAMES = {
    ("flaxlstm.config", "Recipe"): "flaxlstm.recipes",
    ("flaxlstm.config", "LayerRates"): "flaxlstm.recipes",
    ("flaxlstm.config", "IMDB_RECIPE"): "flaxlstm.recipes",
    ("flaxlstm.config", "LM_PRETRAINED_LAYERS"): "flaxlstm.recipes",
    ("flaxlstm.data.imdb", "name_groups"): "flaxlstm.data.movies",
    ("flaxlstm.data.imdb", "movie_slice_order"): "flaxlstm.data.movies",
    ("flaxlstm.data.imdb", "NAME"): "flaxlstm.data.movies",
    ("flaxlstm.layers", "load_torch_weights"): "flaxlstm.interop.torch",
    ("flaxlstm.layers", "torch_array"): "flaxlstm.interop.torch",
    ("flaxlstm.layers", "torch_directions"): "flaxlstm.interop.torch",
}


def moved_attribute(module: str, name: str):
    """``name`` of the module that now holds what ``module`` held (``MOVED_NAMES``), with a
    DeprecationWarning; an AttributeError for any other name."""
    new = MOVED_NAMES.get((module, name))
    if new is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    warnings.warn(
        f"{module}.{name} has moved to {new}.{name}; the old path goes in the next release",
        DeprecationWarning,
        stacklevel=3,
    )
    return getattr(importlib.import_module(new), name)


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``MOVED``'s old paths (no file is left at them) and loads each as a module whose
    attributes are the new module's."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        new = MOVED[spec.name]
        new = (new,) if isinstance(new, str) else new
        warnings.warn(
            f"{spec.name} has moved to {' and '.join(new)}; the old path goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        module = types.ModuleType(spec.name, f"Deprecated: moved to {' and '.join(new)}.")
        targets = [importlib.import_module(name) for name in new]

        def forward(attribute: str):
            for target in targets:
                if hasattr(target, attribute):
                    return getattr(target, attribute)
            raise AttributeError(f"module {spec.name!r} has no attribute {attribute!r}")

        module.__getattr__ = forward
        return module

    def exec_module(self, module):
        pass


def install() -> None:
    """Make the old paths importable (flaxlstm/__init__.py calls it once)."""
    if not any(isinstance(finder, _OldPaths) for finder in sys.meta_path):
        sys.meta_path.append(_OldPaths())
