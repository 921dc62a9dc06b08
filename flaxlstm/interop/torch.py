"""PyTorch's LSTM weights in flaxlstm's layers: ``load_torch_weights`` fills an ``LSTM``, a
``Bidirectional`` or a ``StackedLSTM`` from an ``nn.LSTM`` (or its ``state_dict()``, or one
direction's weights), transposed, the two biases summed; every name and shape is checked
first, in one line. PyTorch itself is never imported: tensors are read through ``.detach()``.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from flaxlstm.layers import LSTM, Bidirectional

# PyTorch's weights of one direction and the parameters they fill, transposed (``weight_hr``:
# a projected LSTM's); its two biases add up to ``bias``.
_TORCH_WEIGHTS = {"weight_ih": "kernel", "weight_hh": "recurrent_kernel", "weight_hr": "projection"}
_TORCH_BIASES = ("bias_ih", "bias_hh")


def torch_array(weights) -> jax.Array:
    """A PyTorch tensor (or any array) as a JAX array."""
    return jnp.asarray(weights.detach().numpy() if hasattr(weights, "detach") else weights)


def torch_directions(module: nnx.Module) -> dict[str, LSTM]:
    """Each direction of each layer of ``module``, by the suffix of its PyTorch weights' names:
    ``{"_l0": layer}`` for an ``LSTM``, also ``"_l0_reverse"`` for a ``Bidirectional``, and
    ``"_l1"``, … for a module with a ``torch_directions`` method (``flaxlstm.StackedLSTM``)."""
    if isinstance(module, LSTM):
        return {"_l0": module}
    if isinstance(module, Bidirectional):
        return {"_l0": module.forward, "_l0_reverse": module.backward}
    if hasattr(module, "torch_directions"):
        return module.torch_directions()
    raise TypeError(
        "PyTorch weights load into an LSTM, a Bidirectional or a StackedLSTM,"
        f" not a {type(module).__name__}"
    )


def load_torch_weights(
    module: nnx.Module, weight_ih, weight_hh=None, bias_ih=None, bias_hh=None, *, weight_hr=None
) -> nnx.Module:
    """Copy the weights of a PyTorch ``nn.LSTM`` into ``module`` (arrays or tensors).

    ``load_torch_weights(module, state_dict)`` (or the ``nn.LSTM`` itself) loads every layer
    and direction, ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``
    and with ``proj_size`` ``weight_hr_l{k}`` (``..._l{k}_reverse``: the backward direction),
    into a ``StackedLSTM`` of the same shape, or from an ``nn.LSTM`` of one layer into an
    ``LSTM`` or a ``Bidirectional``. ``load_torch_weights(layer, weight_ih, weight_hh,
    bias_ih, bias_hh, weight_hr=None)`` loads one direction into one ``LSTM``. A missing or
    extra key or a wrong shape is a ValueError naming the key, and nothing is loaded.

    PyTorch stores ``weight_ih`` [4H, F], ``weight_hh`` [4H, P] and ``weight_hr`` [P, H] in
    the same gate order (i, f, g, o), so ``kernel = weight_ihᵀ``, ``recurrent_kernel =
    weight_hhᵀ``, ``projection = weight_hrᵀ``, and its two biases add up to ``bias`` (zero
    without them, as ``bias=False``). Keras's weights need no conversion at all:
    ``layer.kernel[...], layer.recurrent_kernel[...], layer.bias[...] = keras_layer.get_weights()``.
    """
    if hasattr(weight_ih, "state_dict"):  # the torch.nn.LSTM itself
        weight_ih = weight_ih.state_dict()
    if isinstance(weight_ih, Mapping):
        if any(w is not None for w in (weight_hh, bias_ih, bias_hh, weight_hr)):
            raise TypeError(
                "give load_torch_weights a state dict alone, or one direction's weights"
            )
        weights, directions = weight_ih, torch_directions(module)
    elif isinstance(module, LSTM):
        names = ("weight_ih", "weight_hh", *_TORCH_BIASES, "weight_hr")
        given = zip(names, (weight_ih, weight_hh, bias_ih, bias_hh, weight_hr), strict=True)
        weights, directions = {name: w for name, w in given if w is not None}, {"": module}
    else:
        raise TypeError(
            f"one direction's weights load into an LSTM, not a {type(module).__name__}:"
            " give it the state dict"
        )
    arrays = {suffix: _torch_arrays(layer, weights, suffix) for suffix, layer in directions.items()}
    used = {name + suffix for suffix, named in arrays.items() for name in named}
    for key in weights:
        if key not in used:
            name = type(module).__name__
            raise ValueError(f"unexpected PyTorch weight {key!r}: this {name} has no place for it")
    for suffix, layer in directions.items():
        _set_torch_arrays(layer, arrays[suffix])
    return module


def _torch_arrays(layer: LSTM, weights: Mapping, suffix: str) -> dict[str, jax.Array]:
    """The PyTorch weights ``weights[name + suffix]`` that ``layer`` takes, by name, each
    checked against the parameter it fills."""
    names = [name for name, param in _TORCH_WEIGHTS.items() if hasattr(layer, param)]
    if any(bias + suffix in weights for bias in _TORCH_BIASES):  # none: bias=False
        names += _TORCH_BIASES
    arrays = {}
    for name in names:
        key = name + suffix
        if key not in weights:
            raise ValueError(f"missing PyTorch weight {key!r} for {_describe(layer)}")
        arrays[name] = torch_array(weights[key])
        param = getattr(layer, _TORCH_WEIGHTS.get(name, "bias"))
        expected = param.shape if name in _TORCH_BIASES else param.shape[::-1]
        if arrays[name].shape != expected:
            raise ValueError(
                f"PyTorch weight {key!r} has shape {arrays[name].shape}, expected {expected}"
                f" for {_describe(layer)}"
            )
    return arrays


def _set_torch_arrays(layer: LSTM, arrays: dict[str, jax.Array]) -> None:
    """Copy checked PyTorch weights into ``layer``: transposed, the two biases summed."""
    for name, param in _TORCH_WEIGHTS.items():
        if name in arrays:
            target = getattr(layer, param)
            target[...] = arrays[name].T.astype(target.dtype)
    bias = sum(arrays.get(name, 0) for name in _TORCH_BIASES)
    layer.bias[...] = jnp.broadcast_to(bias, layer.bias.shape).astype(layer.bias.dtype)


def _describe(layer: LSTM) -> str:
    """``LSTM(in_features=3, hidden_features=5)``, with proj_size where h is projected."""
    sizes = f"in_features={layer.in_features}, hidden_features={layer.hidden_features}"
    if layer.state_features != layer.hidden_features:
        sizes += f", proj_size={layer.state_features}"
    return f"{type(layer).__name__}({sizes})"
