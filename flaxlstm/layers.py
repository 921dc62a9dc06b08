"""Flax NNX modules: ``LSTM``, ``Bidirectional``, ``PerStep`` and a checked ``Embedding``.

Dropout follows Keras: ``dropout`` on the inputs and ``recurrent_dropout`` on h, one mask per
sequence reused at every step (variational dropout, Gal & Ghahramani 2016). As with
``nnx.Dropout``, it is active until ``model.eval()`` and again after ``model.train()``.
"""

from __future__ import annotations

import inspect
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from flaxlstm._moved import moved_attribute
from flaxlstm.cell import (
    Activation,
    Clamps,
    Initializer,
    LSTMState,
    Trace,
    glorot_uniform,
    orthogonal,
    unit_forget_bias,
    zero_state,
)
from flaxlstm.checks import check_positive_int, check_rate, check_token_ids
from flaxlstm.recurrent import ACCUMULATE_ABOVE_BYTES, lstm_scan, make_mask, real_steps


def _variational_mask(key: jax.Array, rate: float, shape: tuple[int, ...], dtype) -> jax.Array:
    """One inverted-dropout mask per sequence: 0 or 1/(1 − rate)."""
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
    return keep.astype(dtype) / (1.0 - rate)


def sow_output(module: nnx.Module, name: str, value):
    """Record ``value`` as ``module``'s intermediate ``name`` when the module is asked to
    (``sow_intermediates``, set by ``capture_intermediates``); returns ``value``."""
    if getattr(module, "sow_intermediates", False):
        module.sow(nnx.Intermediate, name, value, reduce_fn=lambda _, new: new)
    return value


def capture_intermediates(model: nnx.Module, *args, **kwargs) -> tuple[object, nnx.State]:
    """Call ``model(*args, **kwargs)`` with every module that can record its intermediates
    doing so (NNX's ``sow`` under ``nnx.capture``); returns the output and the recorded
    ``nnx.Intermediate`` state (an ``LSTM`` records its ``Trace`` as ``trace``, the models of
    ``flaxlstm.models`` each layer's output under the layer's name)."""
    recording = nnx.with_attributes(model, sow_intermediates=True, raise_if_not_found=False)
    return nnx.capture(recording, nnx.Intermediate)(*args, **kwargs)


class LSTM(nnx.Module):
    """A hand-written LSTM layer over batch-major inputs [B, T, F].

    Parameters (``nnx.Param``): ``kernel`` [F, 4H], ``recurrent_kernel`` [H, 4H], ``bias``
    [4H], gate order i, f, g, o (see ``flaxlstm.cell``). Called as
    ``layer(x, lengths=None, mask=None, initial_state=None)``; returns the last real step's h
    [B, H], or every step's h [B, T, H] with ``return_sequences``; with ``return_state`` also
    the final ``LSTMState(c, h)``. Under ``capture_intermediates`` it records its ``Trace`` as
    ``trace`` and which of its steps are real as ``real`` [B, T] (booleans).

    ``dtype`` (e.g. ``jnp.bfloat16``) is mixed precision, Flax's convention beside
    ``param_dtype``: the matrix products take operands of that dtype and accumulate in float32,
    while the gates, the states, the outputs, the parameters and their gradients stay float32
    (``lstm_scan``'s ``matmul_dtype``; the standard cell only).

    ``hand_written_backward`` and ``accumulate_above_bytes`` choose how the time loop is
    differentiated and ``loop`` where its steps run ("auto": in C on the CPU where it can,
    flaxlstm/native/; "scan"; "native"; "pallas": one kernel, flaxlstm/pallas.py;
    ``flaxlstm.recurrent.lstm_scan``). They are fields of the layer, so a jitted step compiled
    for one setting is never reused for another. So is ``clamps`` (empty at construction): units
    of gates or states held at fixed values at every step, an ablation (``flaxlstm.cell.Clamp``;
    set and restored by ``flaxlstm.lab.internals.ablate``); the loop then runs on ``scan_cell``,
    so training and evaluation code run the ablated model unchanged.

    Cell variants (``flaxlstm.variants``) subclass it and replace ``scan``; the checks,
    masking, dropout, reverse and traces stay this class's.
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
        dtype=None,
        hand_written_backward: bool = True,
        accumulate_above_bytes: int = ACCUMULATE_ABOVE_BYTES,
        loop: str = "auto",
        rngs: nnx.Rngs,
    ):
        check_positive_int("in_features", in_features)
        check_positive_int("hidden_features", hidden_features)
        check_positive_int("unroll", unroll)
        check_rate("dropout", dropout)
        check_rate("recurrent_dropout", recurrent_dropout)
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
        self.kernel_init = kernel_init
        self.recurrent_kernel_init = recurrent_kernel_init
        self.bias_init = bias_init
        self.param_dtype = param_dtype
        self.dtype = dtype  # the matrix products' dtype (mixed precision); None: the inputs'
        self.hand_written_backward = hand_written_backward
        self.accumulate_above_bytes = accumulate_above_bytes
        self.loop = loop  # "auto", "scan", "native" or "pallas": where the steps run (lstm_scan)
        self.clamps: Clamps = ()  # an ablation (flaxlstm.lab.internals.ablate), static
        self.deterministic = False
        self.sow_intermediates = False
        self.kernel, self.recurrent_kernel, self.bias = self.initial_parameters(rngs)
        uses_dropout = dropout > 0 or recurrent_dropout > 0
        self.rngs = rngs["dropout"].fork() if uses_dropout else nnx.data(None)

    def initial_parameters(self, rngs: nnx.Rngs) -> tuple[nnx.Param, nnx.Param, nnx.Param]:
        """W [F, 4H], U [H, 4H] and b [4H] drawn by the layer's initialisers in float32 at
        least (the orthogonal initialiser's QR has no bfloat16), then cast to param_dtype."""
        width, dtype = self.gates * self.hidden_features, self.param_dtype
        init_dtype = jnp.promote_types(dtype, jnp.float32)
        kernel = self.kernel_init(rngs.params(), (self.in_features, width), init_dtype)
        shape = (self.state_features, width)
        recurrent = self.recurrent_kernel_init(rngs.params(), shape, init_dtype)
        bias = self.bias_init(rngs.params(), (width,), init_dtype)
        return tuple(nnx.Param(a.astype(dtype)) for a in (kernel, recurrent, bias))

    def constructor_arguments(self) -> dict:
        """The arguments this layer was built with (all but ``rngs``), read back from its
        attributes of the same names, as scikit-learn's ``get_params`` does: what builds the
        same layer again (``reversed_copy``). Subclasses keep every argument they add."""
        names = {
            name
            for cls in type(self).__mro__
            if issubclass(cls, LSTM) and "__init__" in vars(cls)
            for name, parameter in inspect.signature(cls.__init__).parameters.items()
            if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
        }
        return {name: getattr(self, name) for name in sorted(names - {"self", "rngs"})}

    @property
    def state_features(self) -> int:
        """The width of h (and of the layer's outputs): H, or P for a projected LSTM."""
        return self.hidden_features

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
        record = self.sow_intermediates
        state, outputs, trace = self.run(x, lengths, mask, initial_state, return_trace=record)
        if record:
            sow_output(self, "trace", trace)
            real = make_mask(*x.shape[:2], lengths, mask)
            sow_output(self, "real", jnp.ones(x.shape[:2], bool) if real is None else real)
        result = outputs if self.return_sequences else state.h
        return (result, state) if self.return_state else result

    def trace(self, x, lengths=None, mask=None, initial_state=None) -> Trace:
        """Every step's gates i, f, g, o, states c, h and pre-activations zi, zf, zg, zo
        [B, T, H], computed by the same cell functions as training (on ``scan_cell``; equal to
        the fast path up to rounding)."""
        return self.run(x, lengths, mask, initial_state, return_trace=True)[2]

    def run(self, x, lengths=None, mask=None, initial_state=None, *, return_trace: bool = False):
        """The checked, dropped-out inputs through ``scan``: (final state, outputs [B, T, H],
        ``Trace`` or None); the outputs may be None when the layer returns only its last
        state (``return_sequences=False``) and no trace is asked for."""
        self.check_inputs(x)
        batch, time, _ = x.shape
        steps = make_mask(batch, time, lengths, mask)
        dtype = jnp.result_type(x.dtype, self.kernel.dtype)
        x = x.astype(dtype)
        recurrent_mask = None
        if not self.deterministic and self.rngs is not None:
            if self.dropout > 0:
                shape = (batch, 1, self.in_features)
                x = x * _variational_mask(self.rngs(), self.dropout, shape, dtype)
            if self.recurrent_dropout > 0:
                shape = (batch, self.state_features)
                recurrent_mask = _variational_mask(
                    self.rngs(), self.recurrent_dropout, shape, dtype
                )
        if initial_state is None:
            initial_state = zero_state(batch, self.hidden_features, dtype, self.state_features)
        is_pair = isinstance(initial_state, tuple | list) and len(initial_state) == 2
        got = tuple(map(jnp.shape, initial_state)) if is_pair else jnp.shape(initial_state)
        expected = ((batch, self.hidden_features), (batch, self.state_features))
        if got != expected:
            h = "H" if self.state_features == self.hidden_features else "P"
            raise ValueError(
                f"initial_state must be (c, h) of shapes [B, H] = {expected[0]} and"
                f" [B, {h}] = {expected[1]}, got {got}"
            )
        initial_state = LSTMState(*(jnp.asarray(s, dtype) for s in initial_state))
        return self.scan(x, steps, initial_state, recurrent_mask, return_trace=return_trace)

    def scan(self, x, mask, initial_state: LSTMState, recurrent_mask, *, return_trace: bool):
        """The time loop over x [B, T, F] (already in the compute dtype): the standard cell's
        ``lstm_scan``. Variants replace this."""
        return lstm_scan(
            self.kernel[...],
            self.recurrent_kernel[...],
            self.bias[...],
            x,
            mask,
            initial_state,
            reverse=self.reverse,
            unroll=self.unroll,
            recurrent_dropout_mask=recurrent_mask,
            gate_activation=self.gate_activation,
            activation=self.activation,
            return_trace=return_trace,
            remat=self.remat,
            hand_written_backward=self.hand_written_backward,
            accumulate_above_bytes=self.accumulate_above_bytes,
            matmul_dtype=self.dtype,
            clamps=self.clamps,
            loop=self.loop,
            return_outputs=self.return_sequences or return_trace,
        )

    def reversed_copy(self, rngs: nnx.Rngs) -> LSTM:
        """A new layer of this class and settings, fresh parameters, the other direction."""
        return type(self)(**self.constructor_arguments() | {"reverse": not self.reverse}, rngs=rngs)


Merge = Literal["concat", "sum", "mul", "ave"]
_MERGES = {
    "concat": lambda a, b: jnp.concatenate([a, b], axis=-1),
    "sum": lambda a, b: a + b,
    "mul": lambda a, b: a * b,
    "ave": lambda a, b: (a + b) / 2,
}


def set_loop(model: nnx.Module, loop: str) -> None:
    """Set ``loop`` ("auto", "scan", "native" or "pallas": where the steps run, ``lstm_scan``) on
    every ``LSTM`` inside ``model``, before its steps are traced (``flaxlstm train --loop``)."""
    for _, module in nnx.iter_graph(model):
        if isinstance(module, LSTM):
            module.loop = loop


class Bidirectional(nnx.Module):
    """Runs ``layer`` forwards (attribute ``forward``) and a fresh copy of it backwards
    (attribute ``backward``), and merges their outputs ("concat" [.., 2H], "sum", "mul", "ave").

    The backward direction starts at each sequence's last real token, so padding never leaks
    into it; with ``return_sequences`` its outputs stay aligned with the inputs. With
    ``return_state`` it returns ``(merged, (forward_state, backward_state))``, and
    ``initial_state`` takes such a pair (either may be None: zeros), or None.
    """

    def __init__(self, layer: LSTM, merge: Merge = "concat", *, rngs: nnx.Rngs):
        if not isinstance(layer, LSTM):
            raise TypeError(
                "Bidirectional needs a flaxlstm LSTM layer (flaxlstm.LSTM or a variant),"
                f" got a {type(layer).__name__}"
            )
        if merge not in _MERGES:
            raise ValueError(f"merge must be one of {sorted(_MERGES)}, got {merge!r}")
        self.merge = merge
        self.forward = layer
        self.backward = layer.reversed_copy(rngs)

    @property
    def out_features(self) -> int:
        hidden = self.forward.state_features
        return 2 * hidden if self.merge == "concat" else hidden

    def __call__(self, x, lengths=None, mask=None, initial_state=None):
        if initial_state is None:
            initial_state = (None, None)
        is_pair = isinstance(initial_state, tuple | list) and len(initial_state) == 2
        if isinstance(initial_state, LSTMState) or not is_pair:
            raise TypeError(
                "Bidirectional takes initial_state as a pair (forward_state, backward_state),"
                f" got a {type(initial_state).__name__}"
            )
        fwd = self.forward(x, lengths, mask, initial_state[0])
        bwd = self.backward(x, lengths, mask, initial_state[1])
        if self.forward.return_state:
            (fwd, fwd_state), (bwd, bwd_state) = fwd, bwd
            return _MERGES[self.merge](fwd, bwd), (fwd_state, bwd_state)
        return _MERGES[self.merge](fwd, bwd)


class PerStep(nnx.Module):
    """Applies ``module`` at every step of [B, T, F] (Keras's TimeDistributed) and zeroes the
    padded steps given by ``lengths`` or ``mask``, in its inputs too (``real_steps``: a NaN
    there reaches no gradient)."""

    def __init__(self, module: nnx.Module):
        self.module = module

    def __call__(self, x, lengths=None, mask=None):
        if jnp.ndim(x) != 3:
            raise ValueError(f"PerStep expects inputs x [B, T, F], got shape {jnp.shape(x)}")
        steps = make_mask(x.shape[0], x.shape[1], lengths, mask)
        y = self.module(real_steps(x, steps))
        if steps is None:
            return y
        return jnp.where(steps[..., None], y, 0)


def keras_embedding_init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Keras's Embedding initialiser, uniform in [−0.05, 0.05]: the seeds were tuned with it."""
    return jax.random.uniform(key, shape, dtype, -0.05, 0.05)


class Embedding(nnx.Embed):
    """``nnx.Embed`` [V, E] that never reads another row for a token id outside [0, V).

    ids [...] → rows [..., E]. JAX's gather would: −1 reads the last row, and an id ≥ V gives a
    NaN row. Here such an id is refused in one line wherever the ids are concrete (outside
    jit, ``check_token_ids``; ``fit``, ``evaluate`` and ``predict`` check their data before
    anything is compiled, ``flaxlstm.data.batches.check_data``), and inside jit it gives a row
    of NaN: a loss that reads it is NaN, so nothing trains silently on a wrong row. (At a padded
    step the LSTM reads no input, ``flaxlstm.recurrent.real_steps``: padding ids are 0.)
    """

    def __init__(self, num_embeddings: int, features: int, **kwargs):
        check_positive_int("num_embeddings", num_embeddings)
        check_positive_int("features", features)
        super().__init__(num_embeddings, features, **kwargs)

    def __call__(self, ids: jax.Array) -> jax.Array:
        check_token_ids(ids, self.num_embeddings)
        ids = jnp.asarray(ids)
        (table,) = self.promote_dtype((self.embedding[...],), dtype=self.dtype, inexact=False)
        # In [0, V): compared in the ids' own dtype (V may exceed a narrow one's largest value).
        last = min(self.num_embeddings - 1, int(jnp.iinfo(ids.dtype).max))
        known = (ids >= 0) & (ids <= last)
        rows = jnp.take(table, jnp.where(known, ids, 0), axis=0)
        return jnp.where(known[..., None], rows, jnp.nan)


def __getattr__(name: str):
    """The names that moved to flaxlstm.interop.torch (flaxlstm/_moved.py)."""
    return moved_attribute(__name__, name)
