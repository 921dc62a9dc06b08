"""Checks of options that end in a one-line ValueError naming the option."""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np


def require_ngrams() -> None:
    """Raise a one-line ValueError unless scikit-learn and scipy, which NBSVM fits with
    (``flaxlstm.models.nbsvm``), are installed: the extra ``flaxlstm[ngrams]``."""
    missing = [name for name in ("sklearn", "scipy") if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(
            f"NBSVM (--model best, --nbsvm) needs {' and '.join(missing)}:"
            " pip install 'flaxlstm[ngrams]'"
        )


def check_rate(name: str, rate: float) -> None:
    """Raise a one-line ValueError unless ``rate`` lies in [0, 1)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {rate}")


def check_positive_int(name: str, value, *, optional: bool = False) -> None:
    """Raise a one-line ValueError unless ``value`` is a positive integer (or None, when
    ``optional``). The one checker of sizes, counts and steps in flaxlstm."""
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def concrete(x) -> np.ndarray | None:
    """``x`` as a numpy array when its values are known now (outside jit), else None."""
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def check_token_ids(ids, vocab_size: int) -> None:
    """Raise a one-line error unless ``ids`` are integers in [0, vocab_size); the error names
    the first id outside, where it is, and the vocabulary's size. (Ids that are not concrete,
    inside jit, are not checked: ``flaxlstm.Embedding`` gives them a NaN row.)"""
    dtype = jnp.asarray(ids).dtype if not isinstance(ids, jax.core.Tracer) else ids.dtype
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"token ids must be integers, got {dtype}")
    values = concrete(ids)
    if values is None or not values.size or (values.min() >= 0 and values.max() < vocab_size):
        return
    where = np.argwhere((values < 0) | (values >= vocab_size))
    at = tuple(int(i) for i in where[0])
    raise ValueError(
        f"token ids must lie in [0, {vocab_size}) (a vocabulary of {vocab_size}), got"
        f" {values[at]} at index {list(at)} ({len(where)} outside it)"
    )
