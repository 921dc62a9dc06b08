"""Sphinx configuration of the API reference, built from the docstrings of ``flaxlstm``.

Build it from the repository root (nothing is downloaded at build time):

    python -m sphinx -W --keep-going -b html docs/api /tmp/flaxlstm-api
"""

import re
import sys
from pathlib import Path

from sphinx.ext.autodoc.preserve_defaults import update_defvalue
from sphinx.util.inspect import signature, stringify_signature

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the package of this checkout, installed or not

project = "flaxlstm"
author = "flaxlstm authors"
copyright = "flaxlstm authors"

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax"]
root_doc = "index"
exclude_patterns = ["_build"]
html_theme = "alabaster"  # ships with Sphinx

autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True  # defaults as written (jnp.float32), not their repr
# Google-style "Args:" and "Returns:"; a "Returns:" whose first line reads "x: ..." shows x
# beside the description, not as a "Return type" (the type is in the signature).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
nitpicky = False

# Napoleon reads the first line of a property's (or attribute's) docstring as "type: text";
# here such a line is prose ("The width of h (...): H, or P ..."), so it is kept as written.
# A NamedTuple field's generated "Alias for field number 0" is dropped.
_PLAIN = ("property", "attribute", "data")
_written: dict[str, list[str]] = {}


def _keep(app, what, name, obj, options, lines):
    if what in _PLAIN:
        _written[name] = list(lines)


def _restore(app, what, name, obj, options, lines):
    if what in _PLAIN and name in _written:
        written = _written.pop(name)
        text = "\n".join(written).strip()
        lines[:] = [] if re.fullmatch(r"Alias for field number \d+", text) else written


def _constructor_signature(app, what, name, obj, options, sig, return_annotation):
    """An NNX module's class signature is its metaclass's ``(*args, **kwargs)``: show the
    ``__init__`` parameters instead."""
    if what == "class" and sig == "(*args: Any, **kwargs: Any)":
        update_defvalue(app, obj.__init__, True)
        init = signature(obj.__init__, bound_method=True)
        return stringify_signature(init, unqualified_typehints=True), return_annotation
    return None


def setup(app):
    app.connect("autodoc-process-docstring", _keep, priority=100)  # before napoleon (500)
    app.connect("autodoc-process-docstring", _restore, priority=900)  # after it
    app.connect("autodoc-process-signature", _constructor_signature)
