"""The time loop: one input projection for all steps, then ``jax.lax.scan`` over h·U.

Inputs are batch-major [B, T, F]. Padding is described by ``lengths`` [B] (real tokens first)
or a boolean ``mask`` [B, T] (True at real tokens, wherever they are). A padded step leaves the
state unchanged and outputs zeros, so the final state and the outputs at real tokens are the
same whether the padding comes before or after the tokens, and a reversed scan starts at each
sequence's last real token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from flaxlstm.cell import Activation, LSTMState, Trace, lstm_step


def concrete(x) -> np.ndarray | None:
    """``x`` as a numpy array when its values are known now (outside jit), else None."""
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def make_mask(
    batch: int, time: int, lengths: jax.Array | None = None, mask: jax.Array | None = None
) -> jax.Array | None:
    """The [B, T] boolean mask of real steps from ``lengths`` [B] or ``mask`` [B, T].

    Returns None when neither is given (every step is real). Values are checked whenever they
    are concrete; inside jit they are checked where data enters (fit, evaluate, predict).
    """
    if lengths is not None and mask is not None:
        raise ValueError("give either lengths or mask, not both")
    if mask is not None:
        if jnp.shape(mask) != (batch, time):
            raise ValueError(
                f"mask must have shape [B, T] = {(batch, time)}, got {jnp.shape(mask)}"
            )
        if jnp.asarray(mask).dtype != jnp.bool_:
            raise TypeError(
                f"mask must be boolean (True at real tokens), got {jnp.asarray(mask).dtype}"
            )
        return jnp.asarray(mask)
    if lengths is None:
        return None
    lengths = jnp.asarray(lengths)
    if lengths.shape != (batch,):
        raise ValueError(f"lengths must have shape [B] = ({batch},), got {lengths.shape}")
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"lengths must be integers, got {lengths.dtype}")
    values = concrete(lengths)
    if values is not None and values.size and (values.min() < 0 or values.max() > time):
        raise ValueError(
            f"lengths must lie in [0, T={time}], got values from {values.min()} to {values.max()}"
        )
    return jnp.arange(time)[None, :] < lengths[:, None]


def lstm_scan(
    kernel: jax.Array,
    recurrent_kernel: jax.Array,
    bias: jax.Array,
    x: jax.Array,
    mask: jax.Array | None = None,
    initial_state: LSTMState | None = None,
    *,
    reverse: bool = False,
    unroll: int = 1,
    recurrent_dropout_mask: jax.Array | None = None,
    gate_activation: Activation = jax.nn.sigmoid,
    activation: Activation = jnp.tanh,
    return_trace: bool = False,
) -> tuple[LSTMState, jax.Array, Trace | None]:
    """Run the LSTM over a batch of sequences.

    Args:
      kernel: W [F, 4H]; recurrent_kernel: U [H, 4H]; bias: b [4H].
      x: inputs [B, T, F].
      mask: [B, T] booleans, True at real steps; None means every step is real.
      initial_state: (c, h), each [B, H]; zeros when None.
      reverse: scan from the last step to the first (outputs stay aligned with the inputs).
      unroll: passed to ``jax.lax.scan``.
      recurrent_dropout_mask: [B, H], multiplies h where it enters h·U (variational dropout).
      return_trace: also return every step's gates and states, computed by this same step.
    Returns:
      the final state (c, h) [B, H] each, the outputs h_t [B, T, H] (zero at padded steps), and
      a ``Trace`` (i, f, g, o, c, h) [B, T, H] each when ``return_trace``, else None.
    """
    batch, time, _ = x.shape
    hidden = recurrent_kernel.shape[0]
    if initial_state is None:
        zeros = jnp.zeros((batch, hidden), x.dtype)
        initial_state = LSTMState(zeros, zeros)
    # The input projection for every step at once, time-major for the scan: [T, B, 4H].
    xw = jnp.einsum("btf,fg->tbg", x, kernel) + bias
    steps_mask = None if mask is None else jnp.swapaxes(mask, 0, 1)[..., None]  # [T, B, 1]

    def step(state: LSTMState, inputs):
        xw_t, m_t = inputs
        h_in = state.h if recurrent_dropout_mask is None else state.h * recurrent_dropout_mask
        new, gates = lstm_step(
            recurrent_kernel, LSTMState(state.c, h_in), xw_t, gate_activation, activation
        )
        trace = Trace(*gates, new.c, new.h) if return_trace else None
        if m_t is not None:  # padded steps keep the state and output zeros
            new = LSTMState(jnp.where(m_t, new.c, state.c), jnp.where(m_t, new.h, state.h))
            trace = None if trace is None else Trace(*(jnp.where(m_t, a, 0) for a in trace))
            out = jnp.where(m_t, new.h, 0)
        else:
            out = new.h
        return new, (out, trace)

    final, (outputs, trace) = jax.lax.scan(
        step, initial_state, (xw, steps_mask), reverse=reverse, unroll=unroll
    )
    batch_major = lambda a: jnp.swapaxes(a, 0, 1)  # noqa: E731
    if trace is not None:
        trace = Trace(*map(batch_major, trace))
    return final, batch_major(outputs), trace
