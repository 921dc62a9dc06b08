"""Keras 3 models as NNX models: ``from_keras(path_or_model)``.

A saved Keras model (``.keras``, or ``.h5`` where Keras 3 reads it) that is a chain of the
layers the seeds use becomes a ``KerasSequential`` of flaxlstm and NNX modules with Keras's
weights, whose outputs equal Keras's ``predict`` (final activation included). Its recurrent
layers are ``flaxlstm.LSTM`` and ``flaxlstm.Bidirectional``, so ``traces.trace_model`` reads
a Keras-trained LSTM's gates. Keras is optional: it is imported only when a file is loaded.

The mask follows Keras 3 (checked against it in tests/test_keras.py):

- ``Embedding(mask_zero=True)`` masks the ids equal to 0; ``Dropout``, ``Dense`` and
  ``TimeDistributed(Dense)`` pass the mask on (their padded steps are not zeroed).
- ``LSTM`` keeps its state at masked steps; with ``return_sequences`` it repeats the previous
  step's output there (zeros before the first real step) and passes the mask on; with
  ``go_backwards`` it returns the steps in the order it ran them, i.e. reversed, with the mask
  not reversed. Inside ``Bidirectional`` the masked steps output zeros and the backward
  direction is flipped back into line, as ``flaxlstm.Bidirectional`` does.
- ``Conv1D``, ``MaxPooling1D`` and ``GlobalMaxPooling1D`` ignore the mask and drop it:
  padding enters the convolution (as the embedding of id 0), the pooling and the maximum, and
  every later layer sees every step. ``GlobalAveragePooling1D`` averages the real steps.
"""

from __future__ import annotations

import os
from functools import partial
from itertools import pairwise
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from flaxlstm.data.vocabulary import padding_mask
from flaxlstm.layers import LSTM, Bidirectional, Embedding, sow_output
from flaxlstm.recurrent import make_mask


def linear(x: jax.Array) -> jax.Array:
    return x


def gelu(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)  # Keras's default; JAX's is the tanh approximation


def leaky_relu(x: jax.Array) -> jax.Array:
    return jax.nn.leaky_relu(x, negative_slope=0.2)  # Keras's default slope


# Keras's activations by name → the same functions in JAX.
ACTIVATIONS = {
    "linear": linear,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "hard_sigmoid": jax.nn.hard_sigmoid,  # Keras 3's: relu6(x + 3) / 6
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "elu": jax.nn.elu,
    "selu": jax.nn.selu,
    "gelu": gelu,
    "leaky_relu": leaky_relu,
    "silu": jax.nn.silu,
    "hard_silu": jax.nn.hard_silu,
    "softplus": jax.nn.softplus,
    "softsign": jax.nn.soft_sign,
    "exponential": jnp.exp,
    "softmax": jax.nn.softmax,
}


class Activated(nnx.Module):
    """``activation(module(x))`` [.., F] → [.., F']: Keras's ``Dense`` and
    ``TimeDistributed(Dense)`` (``module`` an ``nnx.Linear``; the mask passes on) or ``Conv1D``
    (an ``nnx.Conv``; the mask is dropped, as Keras's Conv1D does)."""

    def __init__(self, module: nnx.Module, activation, *, keeps_mask: bool):
        self.module = module
        self.activation = activation
        self.keeps_mask = keeps_mask

    def __call__(self, x, mask):
        return self.activation(self.module(x)), mask if self.keeps_mask else None


class Pooling(nnx.Module):
    """A Keras pooling layer, ``pool(x [B, T, C], mask)``; like Keras's, it passes no mask on."""

    def __init__(self, pool):
        self.pool = pool

    def __call__(self, x, mask):
        return self.pool(x, mask), None


def max_pool(x, mask, *, size: int, strides: int, padding: str) -> jax.Array:
    """``MaxPooling1D``: [B, T, C] → [B, T', C] over every step (Keras ignores the mask)."""
    return nnx.max_pool(x, (size,), (strides,), padding.upper())


def global_max(x, mask, *, keepdims: bool) -> jax.Array:
    """``GlobalMaxPooling1D``: [B, T, C] → [B, C], over every step (Keras ignores the mask)."""
    return x.max(axis=1, keepdims=keepdims)


def global_average(x, mask, *, keepdims: bool) -> jax.Array:
    """``GlobalAveragePooling1D``: [B, T, C] → [B, C], the mean of the real steps (NaN where
    there are none, as in Keras)."""
    if mask is None:
        return x.mean(axis=1, keepdims=keepdims)
    real = mask[..., None]
    total = jnp.where(real, x, 0).sum(axis=1, keepdims=keepdims)
    return total / real.astype(x.dtype).sum(axis=1, keepdims=keepdims)


def carry_forward(y: jax.Array, mask: jax.Array) -> jax.Array:
    """y [B, T, H] with each step that ``mask`` [B, T] marks as padding replaced by the last
    real step before it (zeros before the first): what Keras's LSTM outputs at masked steps."""
    last = jax.lax.cummax(jnp.where(mask, jnp.arange(y.shape[1]), -1), axis=1)  # [B, T]
    y = jnp.take_along_axis(y, jnp.maximum(last, 0)[..., None], axis=1)
    return jnp.where(last[..., None] >= 0, y, 0)


def keras_lstm(layer: LSTM, x: jax.Array, mask, *, zero_output: bool) -> jax.Array:
    """Keras's output of an ``LSTM`` computed by ``layer`` (``reverse`` = ``go_backwards``):
    h [B, H], or [B, T, H] with ``return_sequences``, in the order Keras ran the steps and with
    the previous output (or zeros: ``zero_output_for_mask``) at masked steps."""
    y = layer(x, mask=mask)
    if not layer.return_sequences:
        if mask is None or not zero_output:
            return y
        last_run = mask[:, 0] if layer.reverse else mask[:, -1]
        return jnp.where(last_run[:, None], y, 0)  # Keras: zero if the last step run is masked
    if layer.reverse:
        y, mask = jnp.flip(y, 1), None if mask is None else jnp.flip(mask, 1)
    return y if mask is None or zero_output else carry_forward(y, mask)


class KerasSequential(nnx.Module):
    """A chain of Keras layers rebuilt from flaxlstm and NNX modules (``from_keras``).

    ``model(x, lengths=None, mask=None)``: token ids [B, T] (or features [B, T, F]) → what
    Keras's ``predict`` returns, e.g. probabilities [B, 1] after ``Dense(1, "sigmoid")``, or
    logits [B] when built with ``logits=True``. With neither ``lengths`` nor ``mask``, the ids
    equal to 0 are padding if the first layer is ``Embedding(mask_zero=True)``; given, they
    replace that mask. Each layer is an attribute named as in Keras (``model.lstm``), run in
    the order of ``names``; under ``capture_intermediates`` each layer's output is recorded
    as ``<name>_output`` and each LSTM's ``Trace`` as ``<name>/trace``.
    """

    def __init__(
        self,
        layers: dict[str, nnx.Module],
        *,
        mask_zero: bool = False,
        zero_output: tuple[str, ...] = (),
        squeeze: bool = False,
    ):
        self.mask_zero = mask_zero  # id 0 is padding (Keras's Embedding(mask_zero=True))
        self.zero_output = zero_output  # LSTMs with Keras's zero_output_for_mask
        self.squeeze = squeeze  # drop the last axis of size 1 (logits=True)
        self.sow_intermediates = False
        self.names = tuple(layers)
        for name, layer in layers.items():
            if hasattr(self, name):
                raise ValueError(f"from_keras: rename the layer {name!r}; KerasSequential uses it")
            setattr(self, name, layer)

    def __call__(self, x: jax.Array, lengths=None, mask=None) -> jax.Array:
        mask = make_mask(*jnp.shape(x)[:2], lengths, mask)
        if mask is None and self.mask_zero:
            mask = padding_mask(x)
        for name in self.names:
            x, mask = self.call_layer(name, x, mask)
            sow_output(self, f"{name}_output", x)
        return x[..., 0] if self.squeeze else x

    def call_layer(self, name: str, x: jax.Array, mask) -> tuple[jax.Array, jax.Array | None]:
        """The layer ``name`` on x with its [B, T] mask (or None): (output, the mask Keras
        passes on)."""
        layer = getattr(self, name)
        if isinstance(layer, (Embedding, nnx.Dropout)):
            return layer(x), mask
        if isinstance(layer, Bidirectional):
            return layer(x, mask=mask), mask if layer.forward.return_sequences else None
        if isinstance(layer, LSTM):
            y = keras_lstm(layer, x, mask, zero_output=name in self.zero_output)
            return y, mask if layer.return_sequences else None
        return layer(x, mask)


# ------------------------------------------------------------------ Keras layer → NNX module


def from_keras(path_or_model, *, logits: bool = False) -> KerasSequential:
    """The ``KerasSequential`` equal to a Keras 3 model, in eval mode (no dropout).

    Args:
      path_or_model: a ``.keras`` (or ``.h5``) file, or a Keras model: a ``Sequential``, or a
        functional model whose layers form a chain, of the layers in ``CONVERTERS``.
      logits: drop the final ``Dense``'s sigmoid (and its output axis of size 1) or softmax,
        so that the model outputs logits, as ``flaxlstm.train.fit`` and ``predict`` expect.
        Without it, the model outputs Keras's final activations (``predict`` with
        ``loss="mse"`` returns them unchanged).
    Raises:
      ValueError naming the first layer or setting that has no equivalent here;
      FileNotFoundError for a path with no file.
    """
    keras_model = load_keras(path_or_model)
    rngs = nnx.Rngs(0)  # every parameter is then overwritten by Keras's
    layers = keras_layers(keras_model)
    for position, layer in enumerate(layers):
        if type(layer).__name__ == "Embedding" and position:
            raise ValueError(f"from_keras: the Embedding {layer.name!r} must be the first layer")
    modules = {layer.name: convert(layer, rngs) for layer in layers}
    zero_output = tuple(
        layer.name for layer in layers if getattr(layer, "zero_output_for_mask", False)
    )
    squeeze = drop_final_activation(list(modules.values())[-1]) if logits else False
    mask_zero = getattr(layers[0], "mask_zero", False)
    model = KerasSequential(modules, mask_zero=mask_zero, zero_output=zero_output, squeeze=squeeze)
    model.eval()
    return model


def load_keras(path_or_model):
    """The Keras model saved at a path (loaded on Keras's JAX backend unless ``KERAS_BACKEND``
    says otherwise), or the model itself."""
    if not isinstance(path_or_model, (str, os.PathLike)):
        if not hasattr(path_or_model, "layers"):
            raise TypeError(f"from_keras takes a path or a Keras model, got {path_or_model!r}")
        return path_or_model
    if not Path(path_or_model).is_file():
        raise FileNotFoundError(f"from_keras: no Keras model file {str(path_or_model)!r}")
    os.environ.setdefault("KERAS_BACKEND", "jax")
    try:
        import keras
    except ImportError:
        raise ImportError("from_keras needs Keras 3: pip install 'keras>=3.6'") from None
    return keras.saving.load_model(path_or_model, compile=False)


def keras_layers(model) -> list:
    """The model's layers in order without its InputLayer, or a one-line error unless each
    feeds the next."""
    if not model.built:
        raise ValueError("from_keras: the Keras model is not built (give it a keras.Input)")
    layers = list(model.layers)
    if type(model).__name__ != "Sequential":
        try:
            chain = len(model.inputs) == 1 and layers[-1].output is model.outputs[0]
            chain = chain and all(first_input(b) is a.output for a, b in pairwise(layers))
        except (AttributeError, ValueError):  # a layer called more than once
            chain = False
        if not chain:
            raise ValueError(
                "from_keras: the model's layers are not a chain, each feeding the next"
            )
    layers = [layer for layer in layers if type(layer).__name__ != "InputLayer"]
    if not layers:
        raise ValueError("from_keras: the Keras model has no layers")
    return layers


def first_input(layer):
    """The tensor a Keras layer was called on (``layer.input`` also lists the mask it got)."""
    return layer.input[0] if isinstance(layer.input, (list, tuple)) else layer.input


def convert(layer, rngs: nnx.Rngs) -> nnx.Module:
    """The NNX module of one Keras layer, with its weights."""
    kind = type(layer).__name__
    if kind not in CONVERTERS:
        unsupported(layer)
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        unsupported(layer, "data_format='channels_first'")
    return CONVERTERS[kind](layer, rngs)


def unsupported(layer, setting: str = "") -> None:
    """Raise the one-line ValueError for a Keras layer, or a ``setting`` of it, not supported."""
    where = f"from_keras: layer {layer.name!r} ({type(layer).__name__})"
    if setting:
        raise ValueError(f"{where}: {setting} is not supported")
    raise ValueError(f"{where} is not supported; supported: {', '.join(sorted(CONVERTERS))}")


def activation(layer, function):
    """The JAX function of a Keras activation of ``layer``."""
    import keras

    name = getattr(function, "__name__", None)
    if name not in ACTIVATIONS or keras.activations.get(name) is not function:
        raise ValueError(
            f"from_keras: activation {name or function!r} of layer {layer.name!r} is not"
            f" supported; supported: {', '.join(ACTIVATIONS)}"
        )
    return ACTIVATIONS[name]


def with_weights(module: nnx.Module, layer, names=("kernel", "bias")) -> nnx.Module:
    """``module`` with the Keras ``layer``'s weights as its parameters ``names``, in order
    (a layer without a bias has one weight fewer)."""
    for name, weight in zip(names, layer.get_weights(), strict=False):
        getattr(module, name)[...] = jnp.asarray(weight)
    return module


def embedding(layer, rngs: nnx.Rngs) -> Embedding:
    module = Embedding(layer.input_dim, layer.output_dim, rngs=rngs)
    return with_weights(module, layer, ("embedding",))  # [V, E]


def lstm(layer, rngs: nnx.Rngs) -> LSTM:
    """An ``LSTM``: Keras's kernel [F, 4H], recurrent_kernel [H, 4H] and bias [4H] are in
    flaxlstm's layout and gate order (i, f, g, o), as they are."""
    if layer.return_state or layer.stateful:
        unsupported(layer, "return_state or stateful")
    module = LSTM(
        layer.cell.kernel.shape[0],
        layer.units,
        return_sequences=layer.return_sequences,
        reverse=layer.go_backwards,
        dropout=layer.dropout,
        recurrent_dropout=layer.recurrent_dropout,
        gate_activation=activation(layer, layer.recurrent_activation),
        activation=activation(layer, layer.activation),
        bias_init=nnx.initializers.zeros,  # use_bias=False
        rngs=rngs,
    )
    return with_weights(module, layer, ("kernel", "recurrent_kernel", "bias"))


def bidirectional(layer, rngs: nnx.Rngs) -> Bidirectional:
    forward, backward = layer.forward_layer, layer.backward_layer
    if {type(forward).__name__, type(backward).__name__} != {"LSTM"}:
        unsupported(layer, f"a wrapped {type(forward).__name__} (only LSTM)")
    if forward.go_backwards:
        unsupported(layer, "a go_backwards forward layer")
    if layer.merge_mode is None:
        unsupported(layer, "merge_mode=None")
    module = Bidirectional(lstm(forward, rngs), layer.merge_mode, rngs=rngs)
    module.backward = lstm(backward, rngs)  # Keras's own, which may differ from the forward
    return module


def dense(layer, rngs: nnx.Rngs) -> Activated:
    linear_layer = nnx.Linear(*layer.kernel.shape, use_bias=layer.use_bias, rngs=rngs)
    return Activated(
        with_weights(linear_layer, layer), activation(layer, layer.activation), keeps_mask=True
    )


def time_distributed(layer, rngs: nnx.Rngs) -> Activated:
    if type(layer.layer).__name__ != "Dense":
        unsupported(layer, f"a wrapped {type(layer.layer).__name__} (only Dense)")
    return dense(layer.layer, rngs)  # a Dense applies to the last axis of [B, T, F] anyway


def conv1d(layer, rngs: nnx.Rngs) -> Activated:
    """An ``nnx.Conv``: Keras's kernel [k, F / groups, C] is its layout."""
    size, features, channels = layer.kernel.shape
    conv = nnx.Conv(
        features * layer.groups,
        channels,
        (size,),
        strides=layer.strides,
        padding=layer.padding.upper(),  # VALID, SAME or CAUSAL
        kernel_dilation=layer.dilation_rate,
        feature_group_count=layer.groups,
        use_bias=layer.use_bias,
        rngs=rngs,
    )
    return Activated(
        with_weights(conv, layer), activation(layer, layer.activation), keeps_mask=False
    )


def max_pooling(layer, rngs: nnx.Rngs) -> Pooling:
    (size,), (strides,) = layer.pool_size, layer.strides
    return Pooling(partial(max_pool, size=size, strides=strides, padding=layer.padding))


# Keras layer class → its converter (the layer, nnx.Rngs) → NNX module.
CONVERTERS = {
    "Bidirectional": bidirectional,
    "Conv1D": conv1d,
    "Dense": dense,
    "Dropout": lambda layer, rngs: nnx.Dropout(layer.rate, rngs=rngs),
    "Embedding": embedding,
    "GlobalAveragePooling1D": lambda layer, _: Pooling(
        partial(global_average, keepdims=layer.keepdims)
    ),
    "GlobalMaxPooling1D": lambda layer, _: Pooling(partial(global_max, keepdims=layer.keepdims)),
    "LSTM": lstm,
    "MaxPooling1D": max_pooling,
    "TimeDistributed": time_distributed,
}


def drop_final_activation(last: nnx.Module) -> bool:
    """For ``logits=True``: replace the last layer's sigmoid or softmax by the identity; True
    when its output axis has size 1 (a sigmoid's logit, to be squeezed)."""
    if not isinstance(last, Activated) or last.activation not in (jax.nn.sigmoid, jax.nn.softmax):
        raise ValueError("from_keras(logits=True): the last layer must end in a sigmoid or softmax")
    squeeze = last.activation is jax.nn.sigmoid and last.module.kernel.shape[-1] == 1
    last.activation = linear
    return squeeze
