r"""The LSTM cell: its parameters, their initialisers, and the gate math of one time step.

For one time step with input :math:`x_t` and previous state :math:`(c_{t-1}, h_{t-1})`:

.. math::

    z_t &= x_t W + h_{t-1} U + b                       && z_t \in \mathbb{R}^{B \times 4H} \\
    z^i_t, z^f_t, z^g_t, z^o_t &= \mathrm{split}(z_t, 4) && \text{pre-activations} \\
    i_t = \sigma(z^i_t), \; f_t &= \sigma(z^f_t), \; g_t = \tanh(z^g_t), \; o_t = \sigma(z^o_t)
        && \text{activated gates} \\
    c_t &= f_t \odot c_{t-1} + i_t \odot g_t \\
    h_t &= o_t \odot \tanh(c_t)

:math:`W` is ``kernel`` [F, 4H], :math:`U` is ``recurrent_kernel`` [H, 4H] and :math:`b` is
``bias`` [4H]. In code, ``z`` is the pre-activation [B, 4H], ``a`` the activated gates
[B, 4H] (``activate_all``), ``i, f, g, o`` (``Gates``, ``Trace``) the activated gates and
``zi, zf, zg, zo`` (``Trace``) their pre-activations. Every path of the time loop on
``jax.lax.scan`` runs ``activate_all`` then ``cell_update``; the C loop for the CPU
(flaxlstm/native/) writes the same math again in C, held equal to it by tests/test_native.py;
where
:math:`x_t W + b` is computed (for all steps before the loop, or inside it stacked with
:math:`h_{t-1} U`) is the loop's choice (flaxlstm/recurrent.py). The gate order and layout are
Keras's and PyTorch's, so their trained weights load unchanged (PyTorch's ``weight_ih_l0`` is
``kernel.T``; its two biases add up to ``bias``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Activation = Callable[[jax.Array], jax.Array]
Initializer = Callable[..., jax.Array]


class LSTMState(NamedTuple):
    """The recurrent state: cell ``c`` [B, H] and hidden ``h`` [B, H]."""

    c: jax.Array
    h: jax.Array


class Gates(NamedTuple):
    """The activated gates of one step, each [B, H]: input, forget, candidate, output."""

    i: jax.Array
    f: jax.Array
    g: jax.Array
    o: jax.Array


class Trace(NamedTuple):
    """Every step's activated gates i, f, g, o, states c, h and the gates' pre-activations
    zi, zf, zg, zo, each [B, T, H] (h: [B, T, P] when projected), zero at padded steps.

    The pre-activations are what the activations are given: i = σ(zi), f = σ(zf), g = tanh(zg),
    o = σ(zo) (but at clamped units, ``Clamp``). A cell step that does not record them (a
    variant of one's own) leaves them None.
    """

    i: jax.Array
    f: jax.Array
    g: jax.Array
    o: jax.Array
    c: jax.Array
    h: jax.Array
    zi: jax.Array | None = None
    zf: jax.Array | None = None
    zg: jax.Array | None = None
    zo: jax.Array | None = None


class Clamp(NamedTuple):
    """Hold ``units`` of one quantity at ``value`` at every step (an ablation): ``what`` is a
    gate ("i", "f", "g", "o", replacing its activated value) or a state ("c", "h"). A clamped
    c is the one h is computed from and the next step starts from. Immutable and hashable: a
    layer holds its clamps as a static field (``flaxlstm.LSTM.clamps``)."""

    what: str
    units: tuple[int, ...]
    value: float = 0.0


Clamps = tuple[Clamp, ...]
CLAMPED = "ifgoch"  # what a Clamp may hold: the four gates and the two states


def check_clamps(clamps: Sequence[Clamp], hidden: int) -> None:
    """Raise a one-line ValueError unless every clamp names a gate or state and units in
    [0, hidden)."""
    for what, units, value in clamps:
        if what not in tuple(CLAMPED):
            raise ValueError(f"a clamp holds one of {', '.join(CLAMPED)}, got {what!r}")
        if any(not 0 <= unit < hidden for unit in units):
            raise ValueError(f"clamped units must lie in [0, {hidden}), got {list(units)}")
        if not np.isfinite(value):
            raise ValueError(f"a clamp's value must be finite, got {value}")


def clamp(values: jax.Array, clamps: Clamps, blocks: str) -> jax.Array:
    """``values`` [B, k·H], the H-wide blocks named by ``blocks`` ("ifgo" for the activated
    gates a, "c" or "h" for a state), with every clamp's units of those blocks set to its
    value. Without clamps it is ``values`` itself."""
    hidden = values.shape[-1] // len(blocks)
    for what, units, value in clamps:
        if what in blocks and units:
            columns = blocks.index(what) * hidden + np.asarray(units)
            values = values.at[..., columns].set(value)
    return values


# Keras's LSTM defaults: glorot-uniform kernel, orthogonal recurrent kernel, unit forget bias.
glorot_uniform: Initializer = jax.nn.initializers.glorot_uniform()
orthogonal: Initializer = jax.nn.initializers.orthogonal()


def unit_forget_bias(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Zero bias [4H] with 1.0 on the forget gate (Keras's ``unit_forget_bias=True``)."""
    del key
    (four_h,) = shape
    hidden = four_h // 4
    return jnp.zeros(shape, dtype).at[hidden : 2 * hidden].set(1.0)


def gate_scale(hidden: int, dtype) -> jax.Array:
    """s [4H]: ½ on the sigmoid gates i, f, o and 1 on the candidate g.

    With it one tanh activates all four gates: s·tanh(s·z) + (1 − s) is σ(z) = ½·tanh(z/2) + ½
    on i, f, o and tanh(z) on g.
    """
    return jnp.repeat(jnp.array([0.5, 0.5, 1.0, 0.5], dtype), hidden)


def zero_state(batch: int, hidden: int, dtype, width: int | None = None) -> LSTMState:
    """The initial state: zeros c [B, H] and h [B, width] (width = H but for projected h)."""
    return LSTMState(jnp.zeros((batch, hidden), dtype), jnp.zeros((batch, width or hidden), dtype))


def is_default(gate_activation: Activation, activation: Activation) -> bool:
    """Whether the activations are σ and tanh, for which the fused code paths exist."""
    return gate_activation is jax.nn.sigmoid and activation is jnp.tanh


def activate_fused(z: jax.Array) -> jax.Array:
    """The activated gates a = [σ(i), σ(f), tanh(g), σ(o)] [B, 4H] of z [B, 4H], one tanh."""
    s = gate_scale(z.shape[-1] // 4, z.dtype)
    return s * jnp.tanh(s * z) + (1 - s)


def activate_all(
    z: jax.Array, gate_activation: Activation = jax.nn.sigmoid, activation: Activation = jnp.tanh
) -> jax.Array:
    """The activated gates a = [σ(i), σ(f), tanh(g), σ(o)] [B, 4H] of the pre-activations z.

    With the default activations all four gates are one tanh over [B, 4H] (``gate_scale``):
    XLA on the CPU runs one wide element-wise loop about twice as fast as four narrow ones
    (docs/PERFORMANCE.md).
    """
    if is_default(gate_activation, activation):
        return activate_fused(z)
    i, f, g, o = jnp.split(z, 4, axis=-1)
    return jnp.concatenate(
        [gate_activation(i), gate_activation(f), activation(g), gate_activation(o)], axis=-1
    )


def activate(
    z: jax.Array, gate_activation: Activation = jax.nn.sigmoid, activation: Activation = jnp.tanh
) -> Gates:
    """The pre-activations ``z`` [B, 4H] as the four activated gates (i, f, g, o) [B, H]."""
    return Gates(*jnp.split(activate_all(z, gate_activation, activation), 4, axis=-1))


def cell_update(
    a: jax.Array, c_prev: jax.Array, activation: Activation = jnp.tanh, clamps: Clamps = ()
) -> LSTMState:
    """The new state from the activated gates a = [i, f, g, o] [B, 4H] and c_prev [B, H]:
    c = f ⊙ c_prev + i ⊙ g and h = o ⊙ tanh(c). Every path of the standard cell runs this.
    ``clamps`` hold chosen units of c and h at fixed values (an ablation, ``Clamp``)."""
    i, f, g, o = jnp.split(a, 4, axis=-1)
    c = clamp(f * c_prev + i * g, clamps, "c")
    return LSTMState(c, clamp(o * activation(c), clamps, "h"))


def operand(a: jax.Array, dtype=None) -> jax.Array:
    """``a`` cast to the matrix products' dtype (``matmul``'s ``dtype``; None: as it is),
    once, outside a loop that multiplies by it at every step."""
    return a if dtype is None else a.astype(dtype)


def matmul(a: jax.Array, b: jax.Array, dtype=None) -> jax.Array:
    """a @ b; with ``dtype`` (e.g. ``jnp.bfloat16``) the operands are cast to it and the
    products accumulate in a's dtype (float32): the mixed-precision matrix product."""
    if dtype is None:
        return a @ b
    return jnp.matmul(a.astype(dtype), b.astype(dtype), preferred_element_type=a.dtype)


def lstm_step(
    recurrent_kernel: jax.Array,
    state: LSTMState,
    xw_t: jax.Array,
    gate_activation: Activation = jax.nn.sigmoid,
    activation: Activation = jnp.tanh,
) -> tuple[LSTMState, Gates]:
    """One LSTM step.

    Args:
      recurrent_kernel: U [H, 4H].
      state: (c, h), each [B, H].
      xw_t: this step's input projection x_t·W + b [B, 4H].
    Returns:
      the new state (c', h') and the activated gates (i, f, g, o), each [B, H].
    """
    a = activate_all(xw_t + state.h @ recurrent_kernel, gate_activation, activation)
    return cell_update(a, state.c, activation), Gates(*jnp.split(a, 4, axis=-1))


def lstm_step_backward(
    a: jax.Array, c_prev: jax.Array, dh: jax.Array, dc: jax.Array
) -> tuple[jax.Array, jax.Array]:
    r"""The backward of one step with the default activations, from its saved gates.

    Args:
      a: the activated gates [σ(i), σ(f), tanh(g), σ(o)] [B, 4H] (``activate_fused``).
      c_prev: the cell state the step started from [B, H].
      dh, dc: the loss's gradients with respect to the step's new h and c [B, H].
    Returns:
      dz, the gradient with respect to the pre-activations z [B, 4H], and the part of the
      gradient with respect to c_prev that flows through the cell [B, H]. (The parts through h,
      dz·Uᵀ, and through z's other inputs are the caller's matrix products.)

    .. math::

        c &= f \odot c_{prev} + i \odot g, \qquad h = o \odot \tanh(c) \\
        \bar c &= dc + dh \odot o \odot (1 - \tanh^2 c) \\
        \bar a &= [\bar c \odot g,\ \bar c \odot c_{prev},\ \bar c \odot i,\ dh \odot \tanh c] \\
        dz &= \bar a \odot (1 - a) \odot (a + 2s - 1) \\
        dc_{prev} &= \bar c \odot f

    The last-but-one line is σ' = σ(1 − σ) on the sigmoid gates (s = ½) and
    tanh' = (1 − tanh)(1 + tanh) on g (s = 1), in one expression over [B, 4H].
    """
    i, f, g, o = jnp.split(a, 4, axis=-1)
    tanh_c = jnp.tanh(f * c_prev + i * g)  # c recomputed: the forward saves only c_prev
    dc = dc + dh * o * (1 - tanh_c * tanh_c)
    # One concatenation into [B, 4H], then one wide loop: faster on the CPU than the same
    # work on a [B, 2, 2, H] view with selects (measured, docs/PERFORMANCE.md).
    da = jnp.concatenate([dc * g, dc * c_prev, dc * i, dh * tanh_c], axis=-1)
    s = gate_scale(a.shape[-1] // 4, a.dtype)
    return da * (1 - a) * (a + 2 * s - 1), dc * f
