"""Flax NNX modules: ``LSTM``, ``Bidirectional``, ``PerStep`` and a checked ``Embedding``.

Dropout follows Keras: ``dropout`` on the inputs and ``recurrent_dropout`` on h, one mask per
sequence reused at every step (variational dropout, Gal & Ghahramani 2016). As with
``nnx.Dropout``, it is active until ``model.eval()`` and again after ``model.train()``.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from flaxlstm.cell import (
    Activation,
    Initializer,
    LSTMState,
    Trace,
    glorot_uniform,
    orthogonal,
    unit_forget_bias,
)
from flaxlstm.recurrent import concrete, lstm_scan, make_mask, scan_cell


def _check_rate(name: str, rate: float) -> None:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {rate}")


def _check_size(name: str, size: int) -> None:
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"{name} must be a positive integer, got {size!r}")


def _variational_mask(key: jax.Array, rate: float, shape: tuple[int, ...], dtype) -> jax.Array:
    """One inverted-dropout mask per sequence: 0 or 1/(1 − rate)."""
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
    return keep.astype(dtype) / (1.0 - rate)


class LSTM(nnx.Module):
    """A hand-written LSTM layer over batch-major inputs [B, T, F].

    Parameters (``nnx.Param``): ``kernel`` [F, 4H], ``recurrent_kernel`` [H, 4H], ``bias``
    [4H], gate order i, f, g, o (see ``flaxlstm.cell``). Called as
    ``layer(x, lengths=None, mask=None, initial_state=None)``; returns the last real step's h
    [B, H], or every step's h [B, T, H] with ``return_sequences``; with ``return_state`` also
    the final ``LSTMState(c, h)``.

    Cell variants (``flaxlstm.variants``) subclass it: they set ``gates`` (the number of gate
    blocks), may widen or narrow h (``state_features``), and supply ``cell_step``; the time
    loop, masking, dropout, reverse and traces stay this class's.
    """

    gates = 4  # gate blocks in kernel, recurrent_kernel and bias: i, f, g, o

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        return_sequences: bool = False,
        return_state: bool = False,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        reverse: bool = False,
        unroll: int = 1,
        remat: bool = False,
        gate_activation: Activation = jax.nn.sigmoid,
        activation: Activation = jnp.tanh,
        kernel_init: Initializer = glorot_uniform,
        recurrent_kernel_init: Initializer = orthogonal,
        bias_init: Initializer = unit_forget_bias,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        # The constructor's arguments, so that reversed_copy builds the same layer again
        # (a tuple: jit hashes a module's static attributes).
        self.init_args = tuple((k, v) for k, v in locals().items() if k not in ("self", "rngs"))
        _check_size("in_features", in_features)
        _check_size("hidden_features", hidden_features)
        _check_size("unroll", unroll)
        _check_rate("dropout", dropout)
        _check_rate("recurrent_dropout", recurrent_dropout)
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.return_sequences = return_sequences
        self.return_state = return_state
        self.dropout = dropout
        self.recurrent_dropout = recurrent_dropout
        self.reverse = reverse
        self.unroll = unroll
        self.remat = remat  # recompute the loop in the backward pass (jax.checkpoint)
        self.gate_activation = gate_activation
        self.activation = activation
        self.deterministic = False
        width = self.gates * hidden_features
        self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, width), param_dtype))
        self.recurrent_kernel = nnx.Param(
            recurrent_kernel_init(rngs.params(), (self.state_features, width), param_dtype)
        )
        self.bias = nnx.Param(bias_init(rngs.params(), (width,), param_dtype))
        uses_dropout = dropout > 0 or recurrent_dropout > 0
        self.rngs = rngs["dropout"].fork() if uses_dropout else nnx.data(None)

    @property
    def state_features(self) -> int:
        """The width of h (and of the layer's outputs): H, or P for a projected LSTM."""
        return self.hidden_features

    # A variant returns ``step(state, xw_t) -> (new_state, Trace of this step)``; None means
    # the standard cell, which runs on ``lstm_scan``'s fast path.
    cell_step = None

    def project(self, x: jax.Array, dtype) -> jax.Array:
        """The input projection of every step at once: x·W + b, [B, T, F] → [B, T, gates·H]."""
        return x @ self.kernel[...].astype(dtype) + self.bias[...].astype(dtype)

    def check_inputs(self, x: jax.Array) -> None:
        """Raise a one-line error unless ``x`` is floating [B, T, in_features]."""
        if jnp.ndim(x) != 3:
            raise ValueError(f"LSTM expects inputs [B, T, F], got shape {jnp.shape(x)}")
        if jnp.shape(x)[-1] != self.in_features:
            raise ValueError(
                f"LSTM expects {self.in_features} input features, got {jnp.shape(x)[-1]}"
                " (inputs [B, T, F])"
            )
        if not jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating):
            raise TypeError(
                f"LSTM expects floating-point features, got {jnp.asarray(x).dtype};"
                " embed token ids first (flaxlstm.Embedding)"
            )

    def __call__(
        self,
        x: jax.Array,
        lengths: jax.Array | None = None,
        mask: jax.Array | None = None,
        initial_state: LSTMState | None = None,
    ):
        state, outputs, _ = self._run(x, lengths, mask, initial_state, return_trace=False)
        result = outputs if self.return_sequences else state.h
        return (result, state) if self.return_state else result

    def trace(self, x, lengths=None, mask=None, initial_state=None) -> Trace:
        """Every step's gates i, f, g, o and states c, h [B, T, H], from the training code path."""
        return self._run(x, lengths, mask, initial_state, return_trace=True)[2]

    def _run(self, x, lengths, mask, initial_state, *, return_trace: bool):
        self.check_inputs(x)
        batch, time, _ = x.shape
        steps = make_mask(batch, time, lengths, mask)
        dtype = jnp.result_type(x.dtype, self.kernel.dtype)
        x = x.astype(dtype)
        rec_mask = None
        if not self.deterministic and self.rngs is not None:
            if self.dropout > 0:
                shape = (batch, 1, self.in_features)
                x = x * _variational_mask(self.rngs(), self.dropout, shape, dtype)
            if self.recurrent_dropout > 0:
                shape = (batch, self.state_features)
                rec_mask = _variational_mask(self.rngs(), self.recurrent_dropout, shape, dtype)
        if initial_state is not None:
            initial_state = LSTMState(*(jnp.asarray(s, dtype) for s in initial_state))
        if self.cell_step is not None:
            if initial_state is None:
                initial_state = LSTMState(
                    jnp.zeros((batch, self.hidden_features), dtype),
                    jnp.zeros((batch, self.state_features), dtype),
                )
            return scan_cell(
                self.cell_step(dtype),
                jnp.swapaxes(self.project(x, dtype), 0, 1),  # time-major [T, B, G]
                steps,
                initial_state,
                reverse=self.reverse,
                unroll=self.unroll,
                recurrent_dropout_mask=rec_mask,
                return_trace=return_trace,
                remat=self.remat,
            )
        return lstm_scan(
            self.kernel[...].astype(dtype),
            self.recurrent_kernel[...].astype(dtype),
            self.bias[...].astype(dtype),
            x,
            steps,
            initial_state,
            reverse=self.reverse,
            unroll=self.unroll,
            recurrent_dropout_mask=rec_mask,
            gate_activation=self.gate_activation,
            activation=self.activation,
            return_trace=return_trace,
            remat=self.remat,
        )

    def reversed_copy(self, rngs: nnx.Rngs) -> LSTM:
        """A new layer of this class and settings, fresh parameters, the other direction."""
        return type(self)(**dict(self.init_args, reverse=not self.reverse), rngs=rngs)


Merge = Literal["concat", "sum", "mul", "ave"]
_MERGES = {
    "concat": lambda a, b: jnp.concatenate([a, b], axis=-1),
    "sum": lambda a, b: a + b,
    "mul": lambda a, b: a * b,
    "ave": lambda a, b: (a + b) / 2,
}


class Bidirectional(nnx.Module):
    """Runs ``layer`` forwards (attribute ``forward``) and a fresh copy of it backwards
    (attribute ``backward``), and merges their outputs ("concat" [.., 2H], "sum", "mul", "ave").

    The backward direction starts at each sequence's last real token, so padding never leaks
    into it; with ``return_sequences`` its outputs stay aligned with the inputs. With
    ``return_state`` it returns ``(merged, (forward_state, backward_state))``.
    """

    def __init__(self, layer: LSTM, merge: Merge = "concat", *, rngs: nnx.Rngs):
        if merge not in _MERGES:
            raise ValueError(f"merge must be one of {sorted(_MERGES)}, got {merge!r}")
        self.merge = merge
        self.forward = layer
        self.backward = layer.reversed_copy(rngs)

    @property
    def out_features(self) -> int:
        hidden = self.forward.state_features
        return 2 * hidden if self.merge == "concat" else hidden

    def __call__(self, x, lengths=None, mask=None):
        fwd, bwd = self.forward(x, lengths, mask), self.backward(x, lengths, mask)
        if self.forward.return_state:
            (fwd, fwd_state), (bwd, bwd_state) = fwd, bwd
            return _MERGES[self.merge](fwd, bwd), (fwd_state, bwd_state)
        return _MERGES[self.merge](fwd, bwd)


class PerStep(nnx.Module):
    """Applies ``module`` at every step of [B, T, F] (Keras's TimeDistributed) and zeroes the
    padded steps given by ``lengths`` or ``mask``."""

    def __init__(self, module: nnx.Module):
        self.module = module

    def __call__(self, x, lengths=None, mask=None):
        y = self.module(x)
        steps = make_mask(x.shape[0], x.shape[1], lengths, mask)
        if steps is None:
            return y
        return jnp.where(steps[..., None], y, 0)


class Embedding(nnx.Embed):
    """``nnx.Embed`` that refuses token ids outside [0, vocabulary) instead of clamping them.

    JAX's gather clamps out-of-range ids silently inside jit, so ids are checked here whenever
    they are concrete, and by the training loop before they enter jit.
    """

    def __call__(self, ids: jax.Array) -> jax.Array:
        check_token_ids(ids, self.num_embeddings)
        return super().__call__(ids)


def check_token_ids(ids, vocab_size: int) -> None:
    """Raise a one-line error unless ``ids`` are integers in [0, vocab_size)."""
    dtype = jnp.asarray(ids).dtype if not isinstance(ids, jax.core.Tracer) else ids.dtype
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"token ids must be integers, got {dtype}")
    values = concrete(ids)
    if values is not None and values.size and (values.min() < 0 or values.max() >= vocab_size):
        raise ValueError(
            f"token ids must lie in [0, {vocab_size}), got values from {values.min()}"
            f" to {values.max()}"
        )


def as_array(weights) -> jax.Array:
    """A PyTorch tensor (or any array) as a JAX array."""
    return jnp.asarray(weights.detach().numpy() if hasattr(weights, "detach") else weights)


def load_torch_weights(layer: LSTM, weight_ih, weight_hh, bias_ih=None, bias_hh=None) -> LSTM:
    """Copy one direction of a PyTorch ``nn.LSTM`` into ``layer`` (arrays or tensors).

    PyTorch stores ``weight_ih`` [4H, F] and ``weight_hh`` [4H, H] in the same gate order
    (i, f, g, o), so ``kernel = weight_ihᵀ``, ``recurrent_kernel = weight_hhᵀ``, and its two
    biases add up to ``bias``. Keras's weights need no conversion at all:
    ``layer.kernel[...], layer.recurrent_kernel[...], layer.bias[...] = keras_layer.get_weights()``.
    """
    kernel, recurrent = as_array(weight_ih).T, as_array(weight_hh).T
    expected = (layer.kernel.shape, layer.recurrent_kernel.shape)
    if (kernel.shape, recurrent.shape) != expected:
        raise ValueError(
            f"PyTorch weights of shapes {kernel.T.shape} and {recurrent.T.shape} do not fit an LSTM"
            f" with {layer.in_features} inputs and {layer.hidden_features} units"
        )
    bias = sum(as_array(b) for b in (bias_ih, bias_hh) if b is not None)
    layer.kernel[...] = kernel.astype(layer.kernel.dtype)
    layer.recurrent_kernel[...] = recurrent.astype(layer.recurrent_kernel.dtype)
    layer.bias[...] = jnp.broadcast_to(bias, layer.bias.shape).astype(layer.bias.dtype)
    return layer
