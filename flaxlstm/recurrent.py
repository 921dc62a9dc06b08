"""The time loop: ``jax.lax.scan`` over the steps of the cell in flaxlstm/cell.py.

``lstm_scan`` runs the standard cell and is the one place that chooses how: with the default
activations (σ, tanh) and ``hand_written_backward`` its loop has a backward pass written by
hand (``_fused_scan``, a ``jax.custom_vjp``) that saves only each step's gates and starting
state; other activations, ``return_trace``, ``clamps`` (an ablation) or
``hand_written_backward=False`` take ``scan_cell``, the plain scan differentiated by jax,
which also runs every cell variant's step (flaxlstm/variants.py). Both give the same numbers
(tests/test_speed_paths.py); docs/PERFORMANCE.md says why and how fast. On the CPU the fused
loop's steps run in C (``loop``, flaxlstm/native/; tests/test_native.py), with the same
math and the same custom_vjp around them.

Inputs are batch-major [B, T, F]. Padding is described by ``lengths`` [B] (real tokens first)
or a boolean ``mask`` [B, T] (True at real tokens, wherever they are). A padded step leaves the
state unchanged and outputs zeros (``keep_state_where_padded``), so the final state and the
outputs at real tokens are the same whether the padding comes before or after the tokens, and
a reversed scan starts at each sequence's last real token. Whatever a padded step's input holds
(NaN, infinity) reaches no output and no gradient: every loop zeroes it first (``real_steps``).

``lstm_scan``'s options:

- ``reverse``: scan from the last step to the first (outputs stay aligned with the inputs);
  ``unroll``: passed to ``jax.lax.scan``.
- ``recurrent_dropout_mask`` [B, H]: multiplies h where it enters h·U (variational dropout).
- ``return_trace``: also return every step's gates and states; the loop then runs on
  ``scan_cell`` (the same cell functions, differentiated by jax).
- ``remat``: save nothing of the time loop for the backward pass but its inputs, and run the
  forward again there: the per-step gates and states ([T, B, 6H]) are not held between the
  forward and the backward pass, for one more forward pass of time.
- ``hand_written_backward``: with the default activations and no trace, differentiate the loop
  with its hand-written backward (False: jax autodiff of the plain scan);
  ``accumulate_above_bytes``: it sums the weight gradients inside its loop when dz [T, B, 4H]
  would take more bytes than this, else forms them after it.
- ``matmul_dtype``: mixed precision: the matrix products take operands of this dtype (e.g.
  ``jnp.bfloat16``) and accumulate in float32; gates, states and outputs stay in the inputs'
  and weights' dtype (``cell.matmul``). None: everything in that dtype.
- ``clamps``: units of gates or states held at fixed values at every step (an ablation,
  ``cell.Clamp``); the loop then runs on ``scan_cell``.
- ``loop``: "auto" runs the hand-written loop's time steps in C (flaxlstm/native/) where it can
  (``native_loop_fits``: on an x86-64 CPU with AVX2 + FMA, in float32 or with bfloat16
  products on a CPU with AVX512-BF16) and was measured faster than the scan
  (``AUTO_NATIVE_BYTES``: a small enough [W; U]), else on ``jax.lax.scan``; "scan" always
  scans; "native" requires the C loop (a one-line error where it cannot run); "pallas" runs
  the whole loop, forward and backward, each in one Pallas kernel (flaxlstm/pallas.py):
  compiled for CUDA, interpreted (exact and slow) on every other platform. "auto" does not
  take it: it has not been timed on a GPU yet. Neither kernel loop can be differentiated twice,
  nor the C loop exported (``jax.export``): one-line errors say so (flaxlstm/limits.py);
  "scan" does both.
- ``return_outputs``: False when only the final state is wanted: the hand-written loop then
  neither writes the outputs nor reads their (zero) gradient, [T, B, H] each.

This module stays whole (over 450 lines): the forward loop, its hand-written backward and the
rule that picks the loop read best side by side, each against the other.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from flaxlstm import native, pallas
from flaxlstm.cell import (
    Activation,
    Clamps,
    LSTMState,
    Trace,
    activate_all,
    cell_update,
    check_clamps,
    clamp,
    is_default,
    lstm_step_backward,
    matmul,
    operand,
    zero_state,
)
from flaxlstm.checks import concrete
from flaxlstm.limits import guard

# The hand-written backward sums the weight gradients step by step inside the loop when the
# per-step gradients dz [T, B, 4H] would take more than this many bytes, and otherwise keeps dz
# and forms them after the loop as one matrix product over all steps. A large fresh buffer is
# slow to touch on this project's machines (page faults); docs/PERFORMANCE.md has the numbers.
# Only a default: pass ``accumulate_above_bytes`` to ``lstm_scan`` (or ``flaxlstm.LSTM``).
ACCUMULATE_ABOVE_BYTES = 16 * 2**20


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


def time_major(a: jax.Array) -> jax.Array:
    """[B, T, ...] → [T, B, ...] (and back): the scans run over the leading axis."""
    return jnp.swapaxes(a, 0, 1)


def _time_major_mask(mask: jax.Array | None) -> jax.Array | None:
    """[B, T] → [T, B, 1], as the scans take it (None stays None)."""
    return None if mask is None else time_major(mask)[..., None]


def real_steps(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """x [B, T, F] with zeros at padded steps (``mask`` [B, T] False; None: x as it is).

    The first of the two ``where`` calls that keep a padded step's input out of every gradient:
    the loop's ``where(m_t, new, old)`` (``keep_state_where_padded``) sends a zero gradient to
    a padded step's products, but a product's weight gradient is x_tᵀ·dz_t, and 0·NaN = NaN.
    Zeroed here, before any product, x_t is 0 there, and the gradient of the zeroed branch of
    this ``where`` is 0: dW, dU, db and dx stay finite and equal to those of zero padding.
    """
    return x if mask is None else jnp.where(mask[..., None], x, 0)


def keep_state_where_padded(
    m_t: jax.Array | None, new: LSTMState, old: LSTMState, out: jax.Array
) -> tuple[LSTMState, jax.Array]:
    """A padded step (``m_t`` [B, 1] False) keeps the ``old`` state and outputs zeros; a real
    one takes the ``new`` state and outputs ``out``. ``m_t`` None: every step is real."""
    if m_t is None:
        return new, out
    state = LSTMState(jnp.where(m_t, new.c, old.c), jnp.where(m_t, new.h, old.h))
    return state, jnp.where(m_t, out, 0)


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
    hand_written_backward: bool = True,
    accumulate_above_bytes: int = ACCUMULATE_ABOVE_BYTES,
    matmul_dtype=None,
    clamps: Clamps = (),
    loop: str = "auto",
    return_outputs: bool = True,
) -> tuple[LSTMState, jax.Array | None, Trace | None]:
    """Run the LSTM over inputs ``x`` [B, T, F] with W [F, 4H] (``kernel``), U [H, 4H]
    (``recurrent_kernel``) and b [4H]; ``mask`` [B, T] is True at real steps (None: all are),
    ``initial_state`` is (c, h) [B, H] each (zeros when None). All are cast to one dtype, the
    result type of x and the weights; the other options are the module docstring's.

    Returns the final state (c, h) [B, H] each, the outputs h_t [B, T, H] (zero at padded
    steps; None without ``return_outputs``), and a ``Trace`` (i, f, g, o, c, h, zi, zf, zg,
    zo) [B, T, H] each when ``return_trace``, else None.
    """
    _check_shapes(kernel, recurrent_kernel, bias, x, mask, initial_state, recurrent_dropout_mask)
    check_clamps(clamps, jnp.shape(recurrent_kernel)[0])
    dtype = jnp.result_type(x, kernel, recurrent_kernel, bias)
    cast = lambda a: None if a is None else jnp.asarray(a, dtype)  # noqa: E731
    W, U, b, recurrent_mask = map(cast, (kernel, recurrent_kernel, bias, recurrent_dropout_mask))
    x = real_steps(cast(x), mask)  # NaN or infinity at a padded step reaches no gradient
    (batch, time, features), hidden = x.shape, U.shape[0]
    state = zero_state(batch, hidden, dtype) if initial_state is None else initial_state
    state = LSTMState(*map(cast, state))
    fused = hand_written_backward and not (return_trace or clamps)
    fused = fused and is_default(gate_activation, activation)
    native_loop = _choose_loop(loop, fused, dtype, matmul_dtype, batch, time, features, hidden)
    if fused:
        dz_bytes = time * batch * 4 * hidden * jnp.dtype(dtype).itemsize
        accumulate = dz_bytes > accumulate_above_bytes and not native_loop
        opts = _Options(
            reverse, unroll, accumulate, remat, matmul_dtype, native_loop, return_outputs
        )
        final, outputs = _fused_scan(
            opts, W, U, b, time_major(x), _time_major_mask(mask), state, recurrent_mask
        )
        return final, None if outputs is None else time_major(outputs), None
    step = _standard_step(U, gate_activation, activation, matmul_dtype, clamps)
    options = dict(reverse=reverse, unroll=unroll, return_trace=return_trace, remat=remat)
    options["recurrent_dropout_mask"] = recurrent_mask
    xw = project_all(W, b, x, matmul_dtype)
    final, outputs, trace = scan_cell(step, xw, mask, state, **options)
    return final, outputs if return_outputs else None, trace


def _standard_step(U, gate_activation, activation, matmul_dtype, clamps=()):
    """The standard cell's ``step(state, xw_t) -> (new_state, Trace of the step)`` for
    ``scan_cell`` (the autodiff path): ``xw_t`` is this step's x_t·W + b [B, 4H]. ``clamps``
    (an ablation) hold units of the activated gates, of c or of h at fixed values."""
    U = operand(U, matmul_dtype)

    def step(state: LSTMState, xw_t):
        z = xw_t + matmul(state.h, U, matmul_dtype)  # [B, 4H]: zi, zf, zg, zo
        a = clamp(activate_all(z, gate_activation, activation), clamps, "ifgo")
        new = cell_update(a, state.c, activation, clamps)
        return new, Trace(*jnp.split(a, 4, axis=-1), new.c, new.h, *jnp.split(z, 4, axis=-1))

    return step


def _check_shapes(W, U, b, x, mask, state, recurrent_mask) -> None:
    """Raise a one-line error unless ``lstm_scan``'s arguments have shapes that agree."""
    if jnp.ndim(x) != 3:
        raise ValueError(f"lstm_scan expects x [B, T, F], got shape {jnp.shape(x)}")
    B, T, F = jnp.shape(x)
    H = jnp.shape(U)[0] if jnp.ndim(U) else 0
    expected = {
        "kernel": (W, (F, 4 * H)),
        "recurrent_kernel": (U, (H, 4 * H)),
        "bias": (b, (4 * H,)),
        "recurrent_dropout_mask": (recurrent_mask, (B, H)),
    }
    for name, (value, shape) in expected.items():
        if value is not None and jnp.shape(value) != shape:
            raise ValueError(
                f"lstm_scan expects {name} of shape {shape} (B={B}, F={F}, H={H}),"
                f" got {jnp.shape(value)}"
            )
    if state is not None and tuple(map(jnp.shape, state)) != ((B, H), (B, H)):
        got = tuple(map(jnp.shape, state))
        raise ValueError(
            f"lstm_scan expects initial_state (c, h) of shape {(B, H)} each, got {got}"
        )
    make_mask(B, T, mask=mask)  # checks the mask's shape and dtype


def project_all(W: jax.Array, b: jax.Array, x: jax.Array, matmul_dtype=None) -> jax.Array:
    """The input projection for every step at once, time-major for the scan: x [B, T, F] →
    x·W + b [T, B, 4H]. x is made time-major first (F is small), so that XLA writes the one
    [T·B, F] × [F, 4H] product in place (docs/PERFORMANCE.md)."""
    batch, time, features = x.shape
    x = time_major(x).reshape(time * batch, features)
    return (matmul(x, W, matmul_dtype) + b).reshape(time, batch, W.shape[-1])


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
        new, out = keep_state_where_padded(m_t, new, state, new.h)
        if return_trace and m_t is not None:  # (a step that records no z leaves them None)
            trace = jax.tree.map(lambda a: jnp.where(m_t, a, 0), trace)
        return new, (out, trace if return_trace else None)

    final, (outputs, trace) = jax.lax.scan(
        jax.checkpoint(body) if remat else body,
        initial_state,
        (xw, _time_major_mask(mask)),
        reverse=reverse,
        unroll=unroll,
    )
    if trace is not None:
        trace = jax.tree.map(time_major, trace)
    return final, time_major(outputs), trace


# ------------------------------------------------------------------------------------------
# The time loop with a hand-written backward (default activations σ and tanh).
#
# Forward, per step: z = [x_t, h, 1]·[W; U; b] (one matrix product), the four gates by one
# tanh (``cell.activate_all``), then ``cell.cell_update``. It saves only the activated gates
# a [B, 4H] and the state the step started from, (c, h) [B, H] each. The input projection x·W
# is done inside the loop, stacked with h·U: a [T, B, 4H] buffer for all steps costs more to
# allocate and touch than the small products cost (docs/PERFORMANCE.md).
#
# Backward, in the other direction: dz from ``cell.lstm_step_backward``, then
# dh_prev = dz·Uᵀ (through the recurrent dropout mask) and, for the weights, either a running
# sum [x_t, h_in, 1]ᵀ·dz inside the loop or one product over all steps after it.


class _Options(NamedTuple):
    reverse: bool
    unroll: int
    accumulate: bool  # sum the weight gradients inside the loop (see ACCUMULATE_ABOVE_BYTES)
    remat: bool  # save only the inputs; the backward runs the forward again first
    matmul_dtype: object = None  # the matrix products' operand dtype (mixed precision)
    native: str = ""  # where the steps run: an instruction set (in C, flaxlstm.native), "pallas"
    # (one kernel, flaxlstm.pallas) or "" (jax.lax.scan)
    outputs: bool = True  # return the outputs [T, B, H] (False: the final state only)


def native_loop_fits(fused: bool, dtype, matmul_dtype, steps: int) -> str | None:
    """Why the C loop (flaxlstm/native/) cannot run this ``lstm_scan``; None when it can."""
    products = jnp.dtype(matmul_dtype or jnp.float32)
    reasons = [
        (not native.available(), native.why_not()),
        (jax.default_backend() != "cpu", f"the backend is {jax.default_backend()}, not the CPU"),
        (not fused, "it runs only the standard cell with its hand-written backward"),
        (dtype != jnp.float32, "it computes in float32 only"),
        (
            products != jnp.float32 and not (products == jnp.bfloat16 and native.has_bfloat16()),
            "its products are float32, or bfloat16 on a CPU with AVX512-BF16",
        ),
        (steps == 0, "there is no step to run"),
    ]
    return next((why for bad, why in reasons if bad), None)


def pallas_loop_fits(fused: bool, dtype, matmul_dtype) -> str | None:
    """Why the Pallas kernel (flaxlstm/pallas.py) cannot run this ``lstm_scan``; None when
    it can."""
    products = jnp.dtype(matmul_dtype or jnp.float32)
    if not fused:
        return "it runs only the standard cell with its hand-written backward"
    if dtype != jnp.float32:
        return "it computes in float32 only"
    if products not in (jnp.float32, jnp.bfloat16):
        return "its products are float32 or bfloat16"
    return None


def _bf16(matmul_dtype) -> bool:
    """Whether the loop's products (``matmul_dtype``) are bfloat16."""
    return matmul_dtype is not None and jnp.dtype(matmul_dtype) == jnp.bfloat16


# The values of ``loop``.
LOOPS = ("auto", "scan", "native", "pallas")

# loop="auto" takes the C loop where its path was measured faster than the scan: where the
# stacked weights [W; U] (float32) take at most this many bytes, by instruction set for float32
# products, and for bfloat16 products. Measured on an AVX-512 CPU at seed 003 (0.15 MiB), seed
# 002 (0.5 MiB), [W; U] of 1.5, 3, 6 and 20 MiB with B 8 to 128: AVX-512 faster up to 3 MiB at
# every batch, not at 6 MiB with B 16 nor 20 MiB; AVX2 faster at 0.5 MiB, slower from 1.5
# MiB; bfloat16 products faster than the bfloat16 scan at 0.5 MiB, slower from 1.5 MiB
# (docs/PERFORMANCE.md, "The C loop on every x86-64 CPU").
AUTO_NATIVE_BYTES = {"avx2": 2**20, "avx512": 3 * 2**20, "avx512bf16": 3 * 2**20}
AUTO_NATIVE_BF16_BYTES = 2**19
# ... and where each CPU's part of the batch (the C loop splits the rows between the CPUs) has
# at least AUTO_NATIVE_ROWS rows, or [W; U] take at most AUTO_NATIVE_SMALL_BYTES: with fewer
# rows each CPU streams all of [W; U] every step for one or two rows, where XLA splits the
# product's columns. Measured on 2 CPUs: B 2 and 4 at 0.5 MiB, B 4 at 1.5 MiB, B 2 at 3 MiB
# slower than the scan; B 8 at 0.5 and 1.5 MiB, B 1 and 2 at 0.2 MiB (seed 003's) faster.
AUTO_NATIVE_ROWS = 4
AUTO_NATIVE_SMALL_BYTES = 2**18


def _auto_limit(isa: str, matmul_dtype) -> int:
    """The most bytes of [W; U] that ``loop="auto"`` takes the C loop for on ``isa`` with
    these products."""
    return AUTO_NATIVE_BF16_BYTES if _bf16(matmul_dtype) else AUTO_NATIVE_BYTES[isa]


def _auto_takes_native(isa: str, matmul_dtype, batch: int, weights: int) -> bool:
    """Whether ``loop="auto"`` takes the C loop on ``isa`` for these products, ``batch`` rows
    and [W; U] of ``weights`` bytes (the limits above)."""
    rows = batch / min(batch, len(os.sched_getaffinity(0)))  # per part, as the C loop cuts them
    return weights <= _auto_limit(isa, matmul_dtype) and (
        rows >= AUTO_NATIVE_ROWS or weights <= AUTO_NATIVE_SMALL_BYTES
    )


def _choose_loop(loop: str, fused, dtype, matmul_dtype, batch, time, features, hidden) -> str:
    """The instruction set the time steps run on in C (``native.instruction_set()``), or ""
    where they run on ``jax.lax.scan``: ``loop`` "scan", "native" or "auto" (in C where it
    can and was measured faster for ``batch`` rows and [W; U] of ``features`` + ``hidden``
    rows, 4 ``hidden`` columns: ``AUTO_NATIVE_BYTES``)."""
    weights = (features + hidden) * 4 * hidden * 4  # [W; U] in float32
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {', '.join(map(repr, LOOPS))}, got {loop!r}")
    if loop == "scan":
        return ""
    if loop == "pallas":
        why_not = pallas_loop_fits(fused, dtype, matmul_dtype)
        if why_not:
            raise ValueError(f"loop='pallas' cannot run here: {why_not}")
        return "pallas"
    why_not = native_loop_fits(fused, dtype, matmul_dtype, batch * time)
    if loop == "native" and why_not:
        raise ValueError(f"loop='native' cannot run here: {why_not}")
    isa = native.instruction_set()
    if why_not or (loop == "auto" and not _auto_takes_native(isa, matmul_dtype, batch, weights)):
        return ""
    return isa


def chosen_loop(loop: str, matmul_dtype, batch: int, features: int, hidden: int) -> str:
    """The instruction set ``lstm_scan`` runs the standard cell's float32 steps on in C, for
    ``batch`` rows, ``features`` inputs and ``hidden`` units, or "" where they run on
    ``jax.lax.scan``."""
    return _choose_loop(loop, True, jnp.float32, matmul_dtype, batch, 1, features, hidden)


def describe_loop(loop: str, matmul_dtype=None) -> str:
    """Where ``lstm_scan(..., loop=loop, matmul_dtype=matmul_dtype)`` runs the standard cell's
    float32 steps here, in words ("in C on avx2 ...", "on jax.lax.scan (why)"); a one-line
    error for "native" where the C loop cannot run."""
    isa = chosen_loop(loop, matmul_dtype, 1, 0, 0)  # whether it can run at all
    if not isa:
        why = "as asked" if loop == "scan" else native_loop_fits(True, jnp.float32, matmul_dtype, 1)
        return f"on jax.lax.scan ({why})"
    if loop == "pallas":
        return "in one Pallas kernel (flaxlstm.pallas; interpreted except on CUDA)"
    if loop == "native":
        return f"in C on {isa} (flaxlstm.native)"
    limit = _auto_limit(isa, matmul_dtype) / 2**20
    return (
        f"in C on {isa} (flaxlstm.native) where [W; U] take <= {limit:g} MiB and the batch is"
        " not too small for it, else on jax.lax.scan"
    )


def _stack(opt: _Options, W, U, b):
    """[W; U; b] [F + H + 1, 4H], so that [x_t, h, 1]·[W; U; b] = x_t·W + h·U + b; in the
    matrix products' dtype."""
    return operand(jnp.concatenate([W, U, b[None]], axis=0), opt.matmul_dtype)


def _with_one(x_t, h):
    """[x_t, h, 1] [B, F + H + 1]."""
    return jnp.concatenate([x_t, h, jnp.ones((h.shape[0], 1), h.dtype)], axis=-1)


def _fused_forward(
    opt: _Options, W, U, b, x, mask, state: LSTMState, recurrent_mask, *, save: bool
):
    """The loop over time-major x [T, B, F]. Returns the final state, the outputs [T, B, H]
    (zero at padded steps; None without ``opt.outputs``) and, when ``save``, the per-step a
    [T, B, 4H] and the states each step started from, c_prev and h_prev [T, B, H]."""
    if opt.native:  # a kernel loop: no second derivative, the C loop no export (limits.py)
        W, U, b, x, state, recurrent_mask = guard(opt.native, (W, U, b, x, state, recurrent_mask))
    if opt.native == "pallas":
        b = b if opt.matmul_dtype is None else operand(b, opt.matmul_dtype).astype(b.dtype)
        xw = project_all(W, b, time_major(x), opt.matmul_dtype)  # b rounded as the scan rounds it
        final, outputs, saved = pallas.forward(
            xw, U, state, mask, recurrent_mask,
            reverse=opt.reverse, save=save, matmul_dtype=opt.matmul_dtype,
        )  # fmt: skip
        return final, outputs if opt.outputs else None, saved
    if opt.native:
        args = (x, W, U, b, *state, mask, recurrent_mask, opt.reverse, save)
        a, c_prev, h_prev, outputs, final = native.forward(
            *args, bf16=_bf16(opt.matmul_dtype), outputs=opt.outputs, isa=opt.native
        )
        return LSTMState(*final), outputs, (a, c_prev, h_prev) if save else None
    WUb = _stack(opt, W, U, b)

    def step(state: LSTMState, inputs):
        x_t, m_t = inputs
        h_in = state.h if recurrent_mask is None else state.h * recurrent_mask
        z = matmul(_with_one(x_t, h_in), WUb, opt.matmul_dtype)  # [x_t, h, 1]·[W; U; b]
        a = activate_all(z)  # [B, 4H]: σ(i), σ(f), tanh(g), σ(o)
        new = cell_update(a, state.c)
        new, out = keep_state_where_padded(m_t, new, state, new.h)
        return new, (out if opt.outputs else None, (a, state.c, state.h) if save else None)

    final, (outputs, saved) = jax.lax.scan(
        step, state, (x, mask), reverse=opt.reverse, unroll=opt.unroll
    )
    return final, outputs, saved


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused_scan(opt: _Options, W, U, b, x, mask, state: LSTMState, recurrent_mask):
    """``lstm_scan``'s loop on time-major x [T, B, F] and mask [T, B, 1] (or None); returns
    the final state and the outputs [T, B, H]."""
    final, outputs, _ = _fused_forward(opt, W, U, b, x, mask, state, recurrent_mask, save=False)
    return final, outputs


def _fused_scan_fwd(opt: _Options, W, U, b, x, mask, state: LSTMState, recurrent_mask):
    final, outputs, saved = _fused_forward(
        opt, W, U, b, x, mask, state, recurrent_mask, save=not opt.remat
    )
    return (final, outputs), (W, U, b, x, mask, state, recurrent_mask, saved)


def _fused_scan_bwd(opt: _Options, residuals, cotangents):
    """The gradients of ``_fused_scan``'s arguments, each typed as its argument (inside
    ``shard_map``, summed over the devices where it differs and its argument does not:
    ``native.summed_like``)."""
    grads = _fused_gradients(opt, residuals, cotangents)
    return native.summed_like(residuals[:7], grads)


def _fused_gradients(opt: _Options, residuals, cotangents):
    if opt.native:  # a kernel loop: its backward is not differentiable (limits.py)
        residuals, cotangents = guard(opt.native, (residuals, cotangents))
    W, U, b, x, mask, state, recurrent_mask, saved = residuals
    if opt.remat:
        saved = _forward_again(opt, W, U, b, x, mask, state, recurrent_mask, cotangents)
    a, c_prev, h_prev = saved
    d_final, d_outputs = cotangents
    if opt.native == "pallas":
        dz, dh0, dc0 = pallas.backward(
            saved, U, mask, recurrent_mask, d_final, d_outputs,
            reverse=opt.reverse, matmul_dtype=opt.matmul_dtype,
        )  # fmt: skip
        dW, dU, db, dx, d_mask = _weight_gradients_after(
            opt, W, U, x, h_prev, recurrent_mask, dz=dz
        )
        return dW, dU, db, dx, None, LSTMState(dc0, dh0), d_mask
    if opt.native:
        args = (saved, x, W, U, mask, recurrent_mask, *d_final[::-1], d_outputs, opt.reverse)
        dx, dW, dU, db, dh0, dc0, d_recurrent_mask = native.backward(
            *args, bf16=_bf16(opt.matmul_dtype), isa=opt.native
        )
        return dW, dU, db, dx, None, LSTMState(dc0, dh0), d_recurrent_mask
    carry, ys = _backward_loop(
        opt, W, U, b, x, mask, recurrent_mask, a, c_prev, h_prev, d_final, d_outputs
    )
    dh0, dc0 = carry[:2]
    if opt.accumulate:
        dW, dU, db, d_recurrent_mask = _split_stacked(carry[2], W.shape[0], U.shape[0]) + (
            carry[3],
        )
        dx = ys
    else:
        dW, dU, db, dx, d_recurrent_mask = _weight_gradients_after(
            opt, W, U, x, h_prev, recurrent_mask, dz=ys
        )
    return dW, dU, db, dx, None, LSTMState(dc0, dh0), d_recurrent_mask


def _forward_again(opt: _Options, W, U, b, x, mask, state, recurrent_mask, cotangents):
    """The saved per-step values of a rematerialised loop, computed now, in the backward."""
    # Make the forward's start state depend on the incoming gradient (by adding 0 times one of
    # its elements), so that XLA cannot run this forward before the backward pass gets here,
    # e.g. all layers' at once, which would undo the saving. XLA on the CPU drops optimization
    # barriers before it schedules, so they do not do this.
    first = lambda v: 0 if v is None else jnp.ravel(v)[:1].sum()  # noqa: E731  (0 if T = 0)
    zero = 0 * (first(cotangents[1]) + first(cotangents[0].h) + first(cotangents[0].c))
    state = LSTMState(state.c + zero.astype(state.c.dtype), state.h)
    return _fused_forward(opt, W, U, b, x, mask, state, recurrent_mask, save=True)[2]


def _backward_loop(
    opt: _Options, W, U, b, x, mask, recurrent_mask, a, c_prev, h_prev, d_final, d_outputs
):
    """The reverse loop. Carries dh, dc [B, H] (and, when accumulating, d[W; U; b] and the
    recurrent mask's gradient); returns the carry and, per step, dz [T, B, 4H] or, when
    accumulating, dx [T, B, F]."""
    features = W.shape[0]
    WUb = _stack(opt, W, U, b)
    mm = partial(matmul, dtype=opt.matmul_dtype)
    U_mm = operand(U, opt.matmul_dtype)
    carry = (d_final.h, d_final.c)
    if opt.accumulate:
        zeros_mask = None if recurrent_mask is None else jnp.zeros_like(recurrent_mask)
        carry += (jnp.zeros(WUb.shape, W.dtype), zeros_mask)

    def step(carry, inputs):
        dh, dc = carry[:2]
        a_t, c_t, h_t, x_t, dout_t, m_t = inputs
        if dout_t is not None:
            if m_t is not None:  # padded steps output a constant zero
                dout_t = jnp.where(m_t, dout_t, 0)
            dh = dh + dout_t
        dz, dc_prev = lstm_step_backward(a_t, c_t, dh, dc)
        if m_t is not None:  # and pass the state on unchanged
            dz = jnp.where(m_t, dz, 0)
        dxh = mm(dz, (WUb if opt.accumulate else U_mm).T)  # [dx_t, dh_in, d1], or dh_in
        dh_in = dxh[:, features:-1] if opt.accumulate else dxh
        dh_prev = dh_in if recurrent_mask is None else dh_in * recurrent_mask
        if m_t is not None:
            dh_prev, dc_prev = jnp.where(m_t, dh_prev, dh), jnp.where(m_t, dc_prev, dc)
        if not opt.accumulate:
            return (dh_prev, dc_prev), dz
        dWUb, d_mask = carry[2:]
        h_in = h_t if recurrent_mask is None else h_t * recurrent_mask
        dWUb = dWUb + mm(_with_one(x_t, h_in).T, dz)
        d_mask = None if recurrent_mask is None else d_mask + h_t * dh_in
        return (dh_prev, dc_prev, dWUb, d_mask), dxh[:, :features]

    return jax.lax.scan(
        step,
        carry,
        (a, c_prev, h_prev, x if opt.accumulate else None, d_outputs, mask),
        reverse=not opt.reverse,
        unroll=opt.unroll,
    )


def _split_stacked(dWUb, features: int, hidden: int):
    """d[W; U; b] [F + H + 1, 4H] → (dW, dU, db)."""
    return dWUb[:features], dWUb[features : features + hidden], dWUb[-1]


def _weight_gradients_after(opt: _Options, W, U, x, h_prev, recurrent_mask, *, dz):
    """dW, dU, db, dx and the recurrent mask's gradient as products over all steps, from the
    per-step dz [T, B, 4H]."""
    # Every reshape names its last axis: with T = 0 (or B = 0), -1 would divide by zero.
    rows = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731  [T, B, n] → [T·B, n]
    dz_all = rows(dz)
    h_in = h_prev if recurrent_mask is None else h_prev * recurrent_mask
    mm = partial(matmul, dtype=opt.matmul_dtype)
    dU = mm(rows(h_in).T, dz_all)
    dW = mm(rows(x).T, dz_all)
    dx = mm(dz_all, W.T).reshape(x.shape)
    d_mask = None
    if recurrent_mask is not None:
        d_mask = (h_prev * mm(dz_all, U.T).reshape(h_prev.shape)).sum(0)
    return dW, dU, dz_all.sum(0), dx, d_mask


_fused_scan.defvjp(_fused_scan_fwd, _fused_scan_bwd)
