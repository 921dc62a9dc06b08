"""The modules that moved, at their old import paths for one release: importing one warns
with a DeprecationWarning and gives a module that forwards every name to the new one.
``MOVED`` is the one list of them (old path → new path)."""

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
}


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``MOVED``'s old paths (no file is left at them) and loads each as a module whose
    attributes are the new module's."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} has moved to {new}; the old path goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        module = types.ModuleType(spec.name, f"Deprecated: moved to {new}.")
        target = importlib.import_module(new)
        module.__getattr__ = lambda attribute: getattr(target, attribute)
        return module

    def exec_module(self, module):
        pass


def install() -> None:
    """Make the old paths importable (flaxlstm/__init__.py calls it once)."""
    if not any(isinstance(finder, _OldPaths) for finder in sys.meta_path):
        sys.meta_path.append(_OldPaths())
