"""Stacked LSTM layers with PyTorch's ``nn.LSTM`` semantics::

    x [B, T, F] → layer 0 → dropout → layer 1 → … → layer L−1 → outputs [B, T, D·P]

L = ``num_layers``; D = 2 when ``bidirectional`` (each layer's outputs are forward ‖ backward),
else 1; P = ``proj_size`` when set, else H. ``lengths`` or ``mask`` reach every layer, so in
each of them a padded step keeps the state and outputs zeros. ``nnx.Sequential`` passes them to
its first layer only: a stack built with it is silently wrong on padded batches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from flaxlstm.cell import LSTMState
from flaxlstm.checks import check_positive_int, check_rate
from flaxlstm.interop.torch import torch_directions
from flaxlstm.layers import LSTM, Bidirectional
from flaxlstm.variants import ProjectedLSTM


class StackedLSTM(nnx.Module):
    """``num_layers`` LSTM layers, each taking the previous one's outputs, as PyTorch's
    ``nn.LSTM(in_features, hidden_features, num_layers, bidirectional=, dropout=, proj_size=)``.

    ``layers[k]`` is an ``LSTM`` (a ``flaxlstm.variants.ProjectedLSTM`` when ``proj_size`` >
    0) taking ``in_features`` for k = 0 and D·P after, inside a ``Bidirectional`` ("concat")
    when ``bidirectional``; ``lstm_options`` go to every layer (e.g. ``recurrent_dropout``,
    ``unroll``). ``dropout`` applies to the outputs of every layer but the last (an
    ``nnx.Dropout``, active until ``model.eval()``; none with one layer).

    Called as ``stack(x, lengths=None, mask=None, initial_state=None)`` on x [B, T, F], it
    returns the last layer's outputs [B, T, D·P] with ``return_sequences`` (zero at padded
    steps), else its h after each sequence's last real step [B, D·P] (forward ‖ backward,
    whose last step is the first). With ``return_state`` it also returns the final state of
    every layer and direction as PyTorch's ``(h_n, c_n)`` does: one ``LSTMState`` of ``c``
    [L·D, B, H] and ``h`` [L·D, B, P], in the order layer 0 forward, layer 0 backward, layer 1
    forward, … ``initial_state`` takes the same form (None: zeros), so a call can continue
    from where the last one ended. PyTorch's weights load with ``flaxlstm.load_torch_weights``
    (its state dict), and under ``flaxlstm.capture_intermediates`` every layer and direction
    records its ``Trace`` (``layers/0``, or ``layers/0/forward`` and ``layers/0/backward``).

    Stack LSTM layers with this, not with ``nnx.Sequential``: ``Sequential`` passes
    ``lengths`` and ``mask`` to its first layer only, so later layers would run over padding.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        proj_size: int = 0,
        return_sequences: bool = False,
        return_state: bool = False,
        rngs: nnx.Rngs,
        **lstm_options,
    ):
        check_positive_int("num_layers", num_layers)
        check_rate("dropout", dropout)
        self.num_layers = num_layers
        self.directions = 2 if bidirectional else 1
        self.return_sequences = return_sequences
        self.return_state = return_state
        layers = []
        for k in range(num_layers):
            features = in_features if k == 0 else self.directions * (proj_size or hidden_features)
            options = dict(lstm_options, return_sequences=True, return_state=True, rngs=rngs)
            if proj_size:
                layer = ProjectedLSTM(features, hidden_features, proj_size=proj_size, **options)
            else:
                layer = LSTM(features, hidden_features, **options)
            layers.append(Bidirectional(layer, rngs=rngs) if bidirectional else layer)
        self.layers = nnx.List(layers)
        self.between = nnx.Dropout(dropout, rngs=rngs) if dropout and num_layers > 1 else None

    @property
    def lstms(self) -> list[LSTM]:
        """Every layer's LSTM of each direction, in PyTorch's order (layer 0 forward, layer 0
        backward, layer 1 forward, …)."""
        return list(self.torch_directions().values())

    @property
    def out_features(self) -> int:
        """The width of the outputs: D·P."""
        return self.directions * self.lstms[0].state_features

    def __call__(self, x: jax.Array, lengths=None, mask=None, initial_state=None):
        self.lstms[0].check_inputs(x)  # before reading B from x
        starts = self._layer_states(initial_state, jnp.shape(x)[0])
        finals = []
        for k, (layer, start) in enumerate(zip(self.layers, starts, strict=True)):
            if k > 0 and self.between is not None:
                x = self.between(x)
            x, final = layer(x, lengths, mask, start)
            finals += final if self.directions == 2 else [final]
        result = x
        if not self.return_sequences:
            result = jnp.concatenate([s.h for s in finals[-self.directions :]], axis=-1)
        if not self.return_state:
            return result
        return result, LSTMState(*(jnp.stack(s) for s in zip(*finals, strict=True)))

    def _layer_states(self, initial_state, batch: int) -> list:
        """``initial_state`` (c [L·D, B, H], h [L·D, B, P]) split by layer: an ``LSTMState``
        each, or a (forward, backward) pair of them when bidirectional; None: Nones."""
        if initial_state is None:
            return [None] * self.num_layers
        lstm = self.lstms[0]
        rows = self.num_layers * self.directions
        expected = ((rows, batch, lstm.hidden_features), (rows, batch, lstm.state_features))
        got = tuple(map(jnp.shape, initial_state))
        if got != expected:
            h = "H" if lstm.state_features == lstm.hidden_features else "P"
            raise ValueError(
                f"initial_state must be (c, h) of shapes [num_layers·directions, B, H] ="
                f" {expected[0]} and [num_layers·directions, B, {h}] = {expected[1]}, got {got}"
            )
        states = [LSTMState(c, h) for c, h in zip(*initial_state, strict=True)]
        if self.directions == 1:
            return states
        return [tuple(states[n : n + 2]) for n in range(0, rows, 2)]

    def torch_directions(self) -> dict[str, LSTM]:
        """Each layer's LSTM of each direction by the suffix of its PyTorch weights' names:
        ``"_l0"``, ``"_l0_reverse"``, ``"_l1"``, … (for ``flaxlstm.load_torch_weights``)."""
        return {
            f"_l{k}{suffix.removeprefix('_l0')}": lstm
            for k, layer in enumerate(self.layers)
            for suffix, lstm in torch_directions(layer).items()
        }
