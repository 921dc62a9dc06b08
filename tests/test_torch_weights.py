"""PyTorch's trained nn.LSTM weights load unchanged and give the same outputs."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxlstm import LSTM, Bidirectional, load_torch_weights

torch = pytest.importorskip("torch", reason="PyTorch is in the test extras: pip install -e .[test]")
F, H = 3, 5


def torch_lstm(bidirectional=False):
    torch.manual_seed(0)
    return torch.nn.LSTM(F, H, batch_first=True, bidirectional=bidirectional)


def test_torch_weights_give_torch_outputs_with_ragged_lengths():
    net = torch_lstm()
    x = np.random.default_rng(0).normal(size=(3, 6, F)).astype(np.float32)
    lengths = [6, 4, 1]
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        torch.from_numpy(x), lengths, batch_first=True, enforce_sorted=False
    )
    out, (h, c) = net(packed)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=6)
    layer = LSTM(F, H, return_sequences=True, return_state=True, rngs=nnx.Rngs(0))
    load_torch_weights(layer, net.weight_ih_l0, net.weight_hh_l0, net.bias_ih_l0, net.bias_hh_l0)
    got, state = layer(jnp.asarray(x), lengths=jnp.array(lengths))
    np.testing.assert_allclose(np.asarray(got), out.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(state.h), h[0].detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(state.c), c[0].detach().numpy(), rtol=1e-5, atol=1e-6)


def test_torch_bidirectional_weights_give_torch_outputs():
    net = torch_lstm(bidirectional=True)
    x = np.random.default_rng(1).normal(size=(2, 5, F)).astype(np.float32)
    lengths = [5, 3]
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        torch.from_numpy(x), lengths, batch_first=True, enforce_sorted=False
    )
    out, _ = net(packed)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=5)
    bi = Bidirectional(LSTM(F, H, return_sequences=True, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
    load_torch_weights(
        bi.forward, net.weight_ih_l0, net.weight_hh_l0, net.bias_ih_l0, net.bias_hh_l0
    )
    load_torch_weights(
        bi.backward,
        net.weight_ih_l0_reverse,
        net.weight_hh_l0_reverse,
        net.bias_ih_l0_reverse,
        net.bias_hh_l0_reverse,
    )
    got = bi(jnp.asarray(x), lengths=jnp.array(lengths))
    np.testing.assert_allclose(np.asarray(got), out.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_torch_weights_of_the_wrong_size_are_refused():
    net = torch_lstm()
    with pytest.raises(ValueError, match="do not fit an LSTM with 4 inputs and 5 units"):
        load_torch_weights(LSTM(4, H, rngs=nnx.Rngs(0)), net.weight_ih_l0, net.weight_hh_l0)
