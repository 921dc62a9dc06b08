r"""Cell variants: each is ``flaxlstm.LSTM`` with its own step, a few dozen lines.

Each subclasses ``VariantLSTM``: the layer's checks, masking, dropout, reverse,
``Bidirectional`` and traces, with the step of its own gate math (``cell_step``) scanned by
``flaxlstm.recurrent.scan_cell`` (differentiated by jax), on inputs zeroed at padded steps
before they are projected (``recurrent.real_steps``: a NaN there reaches no gradient).
Notation as in ``flaxlstm.cell``: :math:`z = x_t W + h_{t-1} U + b` split into gate blocks
:math:`z_i, z_f, z_g, z_o`, σ the gate activation, tanh the activation. Each step's
``Trace`` records, as ``zi, zf, zg, zo``, what σ and tanh are given (with peepholes, the
peephole terms included).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from flaxlstm.cell import LSTMState, Trace
from flaxlstm.interop.torch import load_torch_weights
from flaxlstm.layers import LSTM
from flaxlstm.recurrent import real_steps, scan_cell, time_major


class VariantLSTM(LSTM):
    """An ``LSTM`` whose cell is ``cell_step``: subclasses define it (and may widen h,
    ``state_features``, or change the input projection, ``project``). Variants are always
    differentiated by jax: ``hand_written_backward`` and ``accumulate_above_bytes`` do not
    apply to them, and neither do ``clamps`` (ablations are the standard cell's)."""

    def cell_step(self, dtype):
        """``step(state, xw_t) -> (new_state, Trace of this step)`` in ``dtype``."""
        raise NotImplementedError

    def project(self, x: jax.Array) -> jax.Array:
        """The input projection of every step at once: x·W + b, [B, T, F] → [B, T, gates·H]."""
        return x @ self.kernel[...].astype(x.dtype) + self.bias[...].astype(x.dtype)

    def scan(self, x, mask, initial_state: LSTMState, recurrent_mask, *, return_trace: bool):
        if self.clamps:
            raise ValueError(
                f"clamps (ablations) apply to the standard LSTM, not a {type(self).__name__}"
            )
        return scan_cell(
            self.cell_step(x.dtype),
            time_major(self.project(real_steps(x, mask))),  # padded steps' inputs: zeros
            mask,
            initial_state,
            reverse=self.reverse,
            unroll=self.unroll,
            recurrent_dropout_mask=recurrent_mask,
            return_trace=return_trace,
            remat=self.remat,
        )


class PeepholeLSTM(VariantLSTM):
    r"""Peephole connections (Gers & Schmidhuber 2000): the gates also look at the cell.

    .. math::

        i_t = σ(z_i + p_i ⊙ c_{t-1}), \quad f_t = σ(z_f + p_f ⊙ c_{t-1}), \quad g_t = \tanh(z_g)
        \\ c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t, \quad o_t = σ(z_o + p_o ⊙ c_t), \quad
        h_t = o_t ⊙ \tanh(c_t)

    Extra parameter ``peephole`` [3, H]: the rows p_i, p_f, p_o, zero at initialisation (so
    the layer starts as a plain LSTM).
    """

    def __init__(self, in_features: int, hidden_features: int, *, rngs: nnx.Rngs, **kwargs):
        super().__init__(in_features, hidden_features, rngs=rngs, **kwargs)
        self.peephole = nnx.Param(jnp.zeros((3, hidden_features), self.kernel.dtype))

    def cell_step(self, dtype):
        U = self.recurrent_kernel[...].astype(dtype)
        p_i, p_f, p_o = self.peephole[...].astype(dtype)
        sigma, tanh = self.gate_activation, self.activation

        def step(state: LSTMState, xw_t):
            z_i, z_f, z_g, z_o = jnp.split(xw_t + state.h @ U, 4, axis=-1)
            # The pre-activations, peepholes included, as the trace records them.
            z_i, z_f = z_i + p_i * state.c, z_f + p_f * state.c
            i, f, g = sigma(z_i), sigma(z_f), tanh(z_g)
            c = f * state.c + i * g
            z_o = z_o + p_o * c
            o = sigma(z_o)
            h = o * tanh(c)
            return LSTMState(c, h), Trace(i, f, g, o, c, h, z_i, z_f, z_g, z_o)

        return step


class CoupledLSTM(VariantLSTM):
    r"""Coupled input and forget gates (CIFG; Greff et al. 2017): :math:`f_t = 1 - i_t`.

    Three gate blocks, in the order i, g, o: ``kernel`` [F, 3H], ``recurrent_kernel`` [H, 3H],
    ``bias`` [3H] (zero at initialisation).

    .. math::

        i_t = σ(z_i), \quad f_t = 1 - i_t, \quad g_t = \tanh(z_g), \quad o_t = σ(z_o)
        \\ c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t, \quad h_t = o_t ⊙ \tanh(c_t)

    f has no pre-activation of its own: its trace's ``zf`` is :math:`-z_i`, since
    :math:`σ(-z) = 1 - σ(z)`.
    """

    gates = 3

    def __init__(self, in_features: int, hidden_features: int, *, rngs: nnx.Rngs, **kwargs):
        kwargs.setdefault("bias_init", nnx.initializers.zeros_init())
        super().__init__(in_features, hidden_features, rngs=rngs, **kwargs)

    def cell_step(self, dtype):
        U = self.recurrent_kernel[...].astype(dtype)
        sigma, tanh = self.gate_activation, self.activation

        def step(state: LSTMState, xw_t):
            z_i, z_g, z_o = jnp.split(xw_t + state.h @ U, 3, axis=-1)
            i, g, o = sigma(z_i), tanh(z_g), sigma(z_o)
            f = 1 - i
            c = f * state.c + i * g
            h = o * tanh(c)
            return LSTMState(c, h), Trace(i, f, g, o, c, h, z_i, -z_i, z_g, z_o)

        return step


class LayerNormLSTM(VariantLSTM):
    r"""Layer-normalised LSTM (Ba, Kiros & Hinton 2016): the two projections and the cell
    are normalised over their features before they are used.

    .. math::

        z_t = \mathrm{LN}(x_t W; γ_x) + \mathrm{LN}(h_{t-1} U; γ_h) + b \\
        c_t = σ(z_f) ⊙ c_{t-1} + σ(z_i) ⊙ \tanh(z_g), \quad
        h_t = σ(z_o) ⊙ \tanh(\mathrm{LN}(c_t; γ_c, β_c))

    LN(x_t W) needs no state, so it is computed for all steps at once, outside the loop, like
    the plain input projection. Submodules ``input_norm`` [4H], ``recurrent_norm`` [4H] (scale
    only: ``bias`` already shifts z) and ``cell_norm`` [H].
    """

    def __init__(self, in_features: int, hidden_features: int, *, rngs: nnx.Rngs, **kwargs):
        super().__init__(in_features, hidden_features, rngs=rngs, **kwargs)
        width, dtype = 4 * hidden_features, self.kernel.dtype
        self.input_norm = nnx.LayerNorm(width, use_bias=False, param_dtype=dtype, rngs=rngs)
        self.recurrent_norm = nnx.LayerNorm(width, use_bias=False, param_dtype=dtype, rngs=rngs)
        self.cell_norm = nnx.LayerNorm(hidden_features, param_dtype=dtype, rngs=rngs)

    def project(self, x):
        xw = self.input_norm(x @ self.kernel[...].astype(x.dtype))
        return xw.astype(x.dtype) + self.bias[...].astype(x.dtype)

    def cell_step(self, dtype):
        U = self.recurrent_kernel[...].astype(dtype)
        sigma, tanh = self.gate_activation, self.activation

        def step(state: LSTMState, xw_t):
            z = xw_t + self.recurrent_norm(state.h @ U)
            z_i, z_f, z_g, z_o = jnp.split(z, 4, axis=-1)
            i, f, g, o = sigma(z_i), sigma(z_f), tanh(z_g), sigma(z_o)
            c = f * state.c + i * g
            h = o * tanh(self.cell_norm(c))
            return LSTMState(c, h), Trace(i, f, g, o, c, h, z_i, z_f, z_g, z_o)

        return step


class ProjectedLSTM(VariantLSTM):
    r"""LSTM with a projection layer on h (LSTMP; Sak et al. 2014; PyTorch's ``proj_size``).

    .. math::

        c_t = σ(z_f) ⊙ c_{t-1} + σ(z_i) ⊙ \tanh(z_g), \quad
        h_t = (σ(z_o) ⊙ \tanh(c_t))\, P

    with ``projection`` P [H, proj_size]; h, the outputs and ``recurrent_kernel``
    [proj_size, 4H] are proj_size wide, the cell c stays H wide.
    """

    def __init__(
        self, in_features: int, hidden_features: int, *, proj_size: int, rngs: nnx.Rngs, **kwargs
    ):
        if not isinstance(proj_size, int) or not 0 < proj_size < hidden_features:
            raise ValueError(f"proj_size must lie in [1, {hidden_features}), got {proj_size!r}")
        self.proj_size = proj_size
        super().__init__(in_features, hidden_features, rngs=rngs, **kwargs)
        shape = (hidden_features, proj_size)
        self.projection = nnx.Param(
            nnx.initializers.glorot_uniform()(rngs.params(), shape, self.kernel.dtype)
        )

    @property
    def state_features(self) -> int:
        return self.proj_size

    def cell_step(self, dtype):
        U, P = self.recurrent_kernel[...].astype(dtype), self.projection[...].astype(dtype)
        sigma, tanh = self.gate_activation, self.activation

        def step(state: LSTMState, xw_t):
            z_i, z_f, z_g, z_o = jnp.split(xw_t + state.h @ U, 4, axis=-1)
            i, f, g, o = sigma(z_i), sigma(z_f), tanh(z_g), sigma(z_o)
            c = f * state.c + i * g
            h = (o * tanh(c)) @ P
            return LSTMState(c, h), Trace(i, f, g, o, c, h, z_i, z_f, z_g, z_o)

        return step

    def load_torch_weights(self, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr):
        """One direction of a PyTorch ``nn.LSTM(..., proj_size=P)``: ``weight_hr`` [P, H]
        (``flaxlstm.load_torch_weights`` with ``weight_hr``)."""
        return load_torch_weights(self, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr=weight_hr)
