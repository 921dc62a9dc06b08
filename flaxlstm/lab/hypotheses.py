"""LSTMVis's hypothesis selection (Strobelt et al. 2016, "LSTMVis: a tool for visual analysis
of hidden state dynamics in recurrent neural networks", arXiv 1606.07461), numbers only::

    select_cells(values, start, end, threshold)        the units on over one span, off around it
    match_spans(values_list, cells, threshold, top)    where else those units are all on

A unit is *on* at a step when its value (h or c of one layer, e.g. ``unit_values`` or a
``Trace`` field of one text) is ≥ ``threshold``. One selects a span of a text that one thinks
the model treats alike (a hypothesis: "inside a quotation", "a noun phrase"), takes the units
that are on over exactly that span, and looks for the other spans where all of them are on:
if those spans share the property too, the units may follow it.
"""

from __future__ import annotations

from collections.abc import Iterable
from numbers import Real

import numpy as np

from flaxlstm.checks import check_positive_int


def _steps_by_units(values, name: str = "values") -> np.ndarray:
    """``values`` as a [T, H] float array, or a one-line ValueError."""
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"{name} must be [T, H] (one text's steps by units), got {values.shape}")
    if values.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numbers, got {values.dtype}")
    return values


def _threshold(threshold) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, Real) or not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    return float(threshold)


def select_cells(values, start: int, end: int, threshold: float) -> np.ndarray:
    """The units that are on over exactly the steps [start, end) of one text: ≥ ``threshold``
    at every step t with start ≤ t < end, and < ``threshold`` at step start − 1 (when
    start > 0) and at step end (when end < T). LSTMVis's selection of a hypothesis.

    Args:
      values: [T, H], one layer's h or c (or any per-unit value) at every step of one text.
      start, end: the span, 0 ≤ start < end ≤ T (end exclusive).
      threshold: the value at and above which a unit counts as on.
    Returns:
      the unit indices [k] (int64), ascending; empty when no unit fits.
    """
    values = _steps_by_units(values)
    threshold, time = _threshold(threshold), len(values)
    for name, step in (("start", start), ("end", end)):
        if isinstance(step, bool) or not isinstance(step, int | np.integer):
            raise ValueError(f"{name} must be an integer step, got {step!r}")
    if not 0 <= start < end <= time:
        raise ValueError(
            f"the span must satisfy 0 <= start < end <= T={time}, got [{start}, {end})"
        )
    keep = (values[start:end] >= threshold).all(axis=0)  # [H]: on at every step of the span
    if start > 0:
        keep &= values[start - 1] < threshold  # off just before it
    if end < time:
        keep &= values[end] < threshold  # and just after it
    return np.flatnonzero(keep)


def _cells(cells, hidden: int) -> np.ndarray:
    """``cells`` as a 1-D int array of units in [0, hidden), or a one-line ValueError."""
    cells = np.asarray(cells)
    if cells.ndim != 1 or cells.size == 0:
        raise ValueError(f"cells must be a non-empty list of unit indices, got shape {cells.shape}")
    if not np.issubdtype(cells.dtype, np.integer):
        raise ValueError(f"cells must be integer unit indices, got {cells.dtype}")
    if cells.min() < 0 or cells.max() >= hidden:
        raise ValueError(f"cells must lie in [0, {hidden}), got {cells.min()} to {cells.max()}")
    return cells


def runs(on: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The maximal runs of True in ``on`` [T] booleans: (starts [k], ends [k]), end exclusive.

    With on padded by False at both ends, a run starts where the padded sequence rises
    (False → True) and ends where it falls (True → False)."""
    change = np.diff(np.concatenate([[0], on.astype(np.int8), [0]]))  # [T + 1]
    return np.flatnonzero(change == 1), np.flatnonzero(change == -1)


def match_spans(
    values_list: Iterable, cells, threshold: float, top: int = 50
) -> list[tuple[int, int, int]]:
    """The spans of many texts where every unit of ``cells`` is on (≥ ``threshold``): the
    maximal runs of such steps, as ``(text_index, start, end)`` (end exclusive), longest
    first, ties by text index then start, at most ``top`` of them. LSTMVis's match view.

    Args:
      values_list: [T_i, H] arrays, one per text (the same layer and state as the cells were
        selected on), e.g. a list of ``Trace.h[i, :length_i]``.
      cells: unit indices (ints in [0, H)), e.g. ``select_cells``'s; at least one.
      threshold: the value at and above which a unit counts as on.
      top: the most spans returned.
    Returns:
      a list of at most ``top`` tuples of ints; empty when no step of any text matches.
    """
    threshold = _threshold(threshold)
    check_positive_int("top", top)
    found = []
    for text, values in enumerate(values_list):
        values = _steps_by_units(values, f"values_list[{text}]")
        on = (values[:, _cells(cells, values.shape[1])] >= threshold).all(axis=1)  # [T]
        found += [(text, int(s), int(e)) for s, e in zip(*runs(on), strict=True)]
    found.sort(key=lambda span: (span[1] - span[2], span[0], span[1]))  # −length, text, start
    return found[:top]
