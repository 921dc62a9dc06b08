"""TEMPORARY: moves into recurrent.py once the speed work there is merged."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from flaxlstm.cell import LSTMState, Trace

Step = Callable[[LSTMState, jax.Array], tuple[LSTMState, Trace]]


def scan_cell(
    step: Step,
    xw: jax.Array,
    mask: jax.Array | None,
    initial_state: LSTMState,
    *,
    reverse: bool = False,
    unroll: int = 1,
    recurrent_dropout_mask: jax.Array | None = None,
    return_trace: bool = False,
) -> tuple[LSTMState, jax.Array, Trace | None]:
    """Scan any cell ``step(state, xw_t) -> (new_state, trace_t)`` over the projected inputs
    ``xw`` [B, T, G], with ``lstm_scan``'s masking, reverse, recurrent dropout and traces.

    Returns the final state, the outputs h_t [B, T, P] (zero at padded steps) and the
    ``Trace`` [B, T, ·] of every step when ``return_trace``.
    """
    steps_mask = None if mask is None else jnp.swapaxes(mask, 0, 1)[..., None]  # [T, B, 1]

    def body(state: LSTMState, inputs):
        xw_t, m_t = inputs
        h_in = state.h if recurrent_dropout_mask is None else state.h * recurrent_dropout_mask
        new, trace = step(LSTMState(state.c, h_in), xw_t)
        out = new.h
        if m_t is not None:  # padded steps keep the state and output zeros
            new = LSTMState(jnp.where(m_t, new.c, state.c), jnp.where(m_t, new.h, state.h))
            trace = Trace(*(jnp.where(m_t, a, 0) for a in trace))
            out = jnp.where(m_t, out, 0)
        return new, (out, trace if return_trace else None)

    final, (outputs, trace) = jax.lax.scan(
        body, initial_state, (jnp.swapaxes(xw, 0, 1), steps_mask), reverse=reverse, unroll=unroll
    )
    batch_major = lambda a: jnp.swapaxes(a, 0, 1)  # noqa: E731
    if trace is not None:
        trace = Trace(*map(batch_major, trace))
    return final, batch_major(outputs), trace
