"""The time loop: ``jax.lax.scan`` over the steps of the cell in flaxlstm/cell.py.

With the default activations (σ, tanh) the loop has a backward pass written by hand
(``_fused_scan``, a ``jax.custom_vjp``) that saves only each step's gates and starting state;
other activations and ``return_trace`` take the plain scan, differentiated by jax. Both give
the same numbers (tests/test_speed_paths.py); docs/PERFORMANCE.md says why and how fast.

Inputs are batch-major [B, T, F]. Padding is described by ``lengths`` [B] (real tokens first)
or a boolean ``mask`` [B, T] (True at real tokens, wherever they are). A padded step leaves the
state unchanged and outputs zeros, so the final state and the outputs at real tokens are the
same whether the padding comes before or after the tokens, and a reversed scan starts at each
sequence's last real token.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flaxlstm.cell import (
    Activation,
    LSTMState,
    Trace,
    activate_fused,
    is_default,
    lstm_step,
    lstm_step_backward,
)

# With the default activations the time loop has a backward written by hand (``_fused_scan``).
# Set this to False to differentiate the plain scan with jax autodiff instead, to check or to
# measure it (tests/test_speed_paths.py, ``python -m flaxlstm.bench``); read while tracing.
HAND_WRITTEN_BACKWARD = True
# The hand-written backward sums the weight gradients step by step inside the loop when the
# per-step gradients dz [T, B, 4H] would take more than this many bytes, and otherwise keeps dz
# and forms them after the loop as one matrix product over all steps. A large fresh buffer is
# slow to touch on this project's machines (page faults); docs/PERFORMANCE.md has the numbers.
ACCUMULATE_ABOVE_BYTES = 16 * 2**20


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


def _time_major_mask(mask: jax.Array | None) -> jax.Array | None:
    """[B, T] → [T, B, 1], as the scans take it (None stays None)."""
    return None if mask is None else jnp.swapaxes(mask, 0, 1)[..., None]


def _batch_major(a: jax.Array) -> jax.Array:
    """[T, B, ...] → [B, T, ...] (and back)."""
    return jnp.swapaxes(a, 0, 1)


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
    remat: bool = False,
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
      remat: save nothing of the time loop for the backward pass but its inputs, and run the
        forward again there: the per-step gates and states ([T, B, 6H]) are not held between
        the forward and the backward pass, for one more forward pass of time.
    Returns:
      the final state (c, h) [B, H] each, the outputs h_t [B, T, H] (zero at padded steps), and
      a ``Trace`` (i, f, g, o, c, h) [B, T, H] each when ``return_trace``, else None.

    With the default activations and no trace, the loop runs with a hand-written backward
    (``_fused_scan``); other activations are differentiated by jax autodiff of the same scan.
    """
    batch, time, _ = x.shape
    hidden = recurrent_kernel.shape[0]
    if initial_state is None:
        zeros = jnp.zeros((batch, hidden), x.dtype)
        initial_state = LSTMState(zeros, zeros)
    if HAND_WRITTEN_BACKWARD and not return_trace and is_default(gate_activation, activation):
        dtype = jnp.result_type(x, kernel, recurrent_kernel, bias)
        dz_bytes = time * batch * 4 * hidden * jnp.dtype(dtype).itemsize
        options = _Options(reverse, unroll, dz_bytes > ACCUMULATE_ABOVE_BYTES, remat)
        cast = lambda a: None if a is None else jnp.asarray(a, dtype)  # noqa: E731
        final, outputs = _fused_scan(
            options,
            *map(cast, (kernel, recurrent_kernel, bias, _batch_major(x))),
            _time_major_mask(mask),
            LSTMState(*map(cast, initial_state)),
            cast(recurrent_dropout_mask),
        )
        return final, _batch_major(outputs), None

    def step(state: LSTMState, xw_t):
        new, gates = lstm_step(recurrent_kernel, state, xw_t, gate_activation, activation)
        return new, Trace(*gates, new.c, new.h)

    return scan_cell(
        step,
        _project_all(kernel, bias, x),
        mask,
        LSTMState(*initial_state),
        reverse=reverse,
        unroll=unroll,
        recurrent_dropout_mask=recurrent_dropout_mask,
        return_trace=return_trace,
        remat=remat,
    )


def scan_cell(
    step: Callable[[LSTMState, jax.Array], tuple[LSTMState, Trace]],
    xw: jax.Array,
    mask: jax.Array | None,
    initial_state: LSTMState,
    *,
    reverse: bool = False,
    unroll: int = 1,
    recurrent_dropout_mask: jax.Array | None = None,
    return_trace: bool = False,
    remat: bool = False,
) -> tuple[LSTMState, jax.Array, Trace | None]:
    """Scan any cell ``step(state, xw_t) -> (new_state, trace_t)`` over the projected inputs
    ``xw`` [T, B, G] (time-major), differentiated by jax: the standard cell's autodiff path,
    and every variant's (flaxlstm.variants).

    ``mask`` [B, T] (None: every step real): a padded step keeps the state and outputs zeros.
    ``recurrent_dropout_mask`` multiplies h where it enters the step. Returns the final state,
    the outputs h_t [B, T, P], and the ``Trace`` [B, T, ·] of every step when ``return_trace``.
    """

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
        jax.checkpoint(body) if remat else body,
        initial_state,
        (xw, _time_major_mask(mask)),
        reverse=reverse,
        unroll=unroll,
    )
    if trace is not None:
        trace = Trace(*map(_batch_major, trace))
    return final, _batch_major(outputs), trace


# ------------------------------------------------------------------------------------------
# The time loop with a hand-written backward (default activations σ and tanh).
#
# Forward, per step: z = [x_t, h, 1]·[W; U; b] (one matrix product), the four gates by one
# tanh (``cell.activate_fused``), then c and h. It saves only the activated gates a [B, 4H]
# and the state the step started from, (c, h) [B, H] each. The input projection x·W is done
# inside the loop: a [T, B, 4H] buffer for all steps costs more to allocate and touch than the
# small products cost (docs/PERFORMANCE.md).
#
# Backward, in the other direction: dz from ``cell.lstm_step_backward``, then
# dh_prev = dz·Uᵀ (through the recurrent dropout mask) and, for the weights, either a running
# sum [x_t, h_in, 1]ᵀ·dz inside the loop or one product over all steps after it.


def _project_all(W, b, x):
    """The input projection for every step at once, time-major for the scan: x [B, T, F] →
    x·W + b [T, B, 4H]. x is made time-major first (F is small), so that XLA writes the one
    [T·B, F] × [F, 4H] product in place; for ``einsum("btf,fg->tbg")`` it wrote [4H, B·T] and
    transposed that (docs/PERFORMANCE.md)."""
    batch, time, features = x.shape
    x = jnp.swapaxes(x, 0, 1).reshape(time * batch, features)
    return (x @ W + b).reshape(time, batch, -1)


class _Options(NamedTuple):
    reverse: bool
    unroll: int
    accumulate: bool  # sum the weight gradients inside the loop (see ACCUMULATE_ABOVE_BYTES)
    remat: bool  # save only the inputs; the backward runs the forward again first


def _stack(W, U, b):
    """[W; U; b] [F + H + 1, 4H], so that [x_t, h, 1]·[W; U; b] = x_t·W + h·U + b."""
    return jnp.concatenate([W, U, b[None]], axis=0)


def _with_one(x_t, h):
    """[x_t, h, 1] [B, F + H + 1]."""
    return jnp.concatenate([x_t, h, jnp.ones((h.shape[0], 1), h.dtype)], axis=-1)


def _forward(opt: _Options, W, U, b, x, mask, state: LSTMState, rec, *, save: bool):
    """The loop over time-major x [T, B, F]. Returns the final state, the outputs [T, B, H]
    (zero at padded steps) and, when ``save``, the per-step a [T, B, 4H] and the states each
    step started from, c_prev and h_prev [T, B, H]."""
    WUb = _stack(W, U, b)

    def step(state: LSTMState, inputs):
        x_t, m_t = inputs
        h_in = state.h if rec is None else state.h * rec
        a = activate_fused(_with_one(x_t, h_in) @ WUb)  # [B, 4H]: σ(i), σ(f), tanh(g), σ(o)
        i, f, g, o = jnp.split(a, 4, axis=-1)
        c = f * state.c + i * g
        h = o * jnp.tanh(c)
        out = h
        if m_t is not None:  # padded steps keep the state and output zeros
            c, h, out = jnp.where(m_t, c, state.c), jnp.where(m_t, h, state.h), jnp.where(m_t, h, 0)
        return LSTMState(c, h), (out, (a, state.c, state.h) if save else None)

    final, (outputs, saved) = jax.lax.scan(
        step, state, (x, mask), reverse=opt.reverse, unroll=opt.unroll
    )
    return final, outputs, saved


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused_scan(opt: _Options, W, U, b, x, mask, state: LSTMState, rec):
    """``lstm_scan``'s loop on time-major x [T, B, F] and mask [T, B, 1] (or None); returns
    the final state and the outputs [T, B, H]."""
    final, outputs, _ = _forward(opt, W, U, b, x, mask, state, rec, save=False)
    return final, outputs


def _fused_scan_fwd(opt: _Options, W, U, b, x, mask, state: LSTMState, rec):
    final, outputs, saved = _forward(opt, W, U, b, x, mask, state, rec, save=not opt.remat)
    return (final, outputs), (W, U, b, x, mask, state, rec, saved)


def _fused_scan_bwd(opt: _Options, residuals, cotangents):
    W, U, b, x, mask, state, rec, saved = residuals
    if opt.remat:
        # Make the forward's start state depend on the incoming gradient (by adding 0 times
        # one of its elements), so that XLA cannot run this forward before the backward pass
        # gets here, e.g. all layers' at once, which would undo the saving. XLA on the CPU
        # drops optimization barriers before it schedules, so they do not do this.
        first = lambda v: jnp.ravel(v)[0]  # noqa: E731
        zero = 0 * (first(cotangents[1]) + first(cotangents[0].h) + first(cotangents[0].c))
        state = LSTMState(state.c + zero.astype(state.c.dtype), state.h)
        saved = _forward(opt, W, U, b, x, mask, state, rec, save=True)[2]
    a, c_prev, h_prev = saved
    d_final, d_outputs = cotangents
    features = W.shape[0]
    WUb = _stack(W, U, b)
    # The loop carries dh and dc [B, H], and when accumulating d[W; U; b] and d(rec).
    carry = (d_final.h, d_final.c)
    if opt.accumulate:
        carry += (jnp.zeros_like(WUb), None if rec is None else jnp.zeros_like(rec))

    def step(carry, inputs):
        dh, dc = carry[:2]
        a_t, c_t, h_t, x_t, dout_t, m_t = inputs
        if m_t is not None:  # padded steps output a constant zero
            dout_t = jnp.where(m_t, dout_t, 0)
        dh = dh + dout_t
        dz, dc_prev = lstm_step_backward(a_t, c_t, dh, dc)
        if m_t is not None:  # and pass the state on unchanged
            dz = jnp.where(m_t, dz, 0)
        if not opt.accumulate:
            dh_in = dz @ U.T
        else:
            dxh = dz @ WUb.T  # [dx_t, dh_in, d1]
            dh_in = dxh[:, features:-1]
        dh_prev = dh_in if rec is None else dh_in * rec
        if m_t is not None:
            dh_prev, dc_prev = jnp.where(m_t, dh_prev, dh), jnp.where(m_t, dc_prev, dc)
        if not opt.accumulate:
            return (dh_prev, dc_prev), dz
        dWUb, drec = carry[2:]
        h_in = h_t if rec is None else h_t * rec
        dWUb = dWUb + _with_one(x_t, h_in).T @ dz
        drec = None if rec is None else drec + h_t * dh_in
        return (dh_prev, dc_prev, dWUb, drec), dxh[:, :features]

    carry, ys = jax.lax.scan(
        step,
        carry,
        (a, c_prev, h_prev, x if opt.accumulate else None, d_outputs, mask),
        reverse=not opt.reverse,
        unroll=opt.unroll,
    )
    dh0, dc0 = carry[:2]
    if opt.accumulate:
        dWUb, drec = carry[2:]
        hidden = U.shape[0]
        dW, dU, db = dWUb[:features], dWUb[features : features + hidden], dWUb[-1]
        dx = ys
    else:  # ys is dz [T, B, 4H]: the weight gradients as one product over all steps
        time, batch, _ = x.shape
        dz = ys.reshape(time * batch, -1)
        h_in = h_prev if rec is None else h_prev * rec
        dU = h_in.reshape(time * batch, -1).T @ dz
        dW = x.reshape(time * batch, -1).T @ dz
        db = dz.sum(0)
        dx = (dz @ W.T).reshape(x.shape)
        drec = None if rec is None else (h_prev * (dz @ U.T).reshape(h_prev.shape)).sum(0)
    return dW, dU, db, dx, None, LSTMState(dc0, dh0), drec


_fused_scan.defvjp(_fused_scan_fwd, _fused_scan_bwd)
