"""PyTorch's trained nn.LSTM weights load unchanged and give the same outputs and states."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxlstm import LSTM, Bidirectional, StackedLSTM, load_torch_weights

torch = pytest.importorskip("torch", reason="PyTorch is in the test extras: pip install -e .[test]")
F, H, P = 3, 5, 2
X = np.random.default_rng(0).normal(size=(4, 5, F)).astype(np.float32)
LENGTHS = [5, 2, 1, 4]


def torch_lstm(**options):
    torch.manual_seed(0)
    return torch.nn.LSTM(F, H, batch_first=True, **options)


def torch_run(net, x=X, lengths=LENGTHS):
    """PyTorch's outputs [B, T, D·P] on the ragged batch (zero at padded steps), h_n, c_n."""
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        torch.from_numpy(x), lengths, batch_first=True, enforce_sorted=False
    )
    with torch.no_grad():
        out, (h, c) = net(packed)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out.numpy(), h.numpy(), c.numpy()


# One compilation per model structure and mode, however often it is called.
run = nnx.jit(lambda model, x, lengths: model(x, lengths=lengths))


def close(a, b):
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-5)


def test_torch_weights_give_torch_outputs_with_ragged_lengths():
    net = torch_lstm()
    out, h, c = torch_run(net)
    layer = LSTM(F, H, return_sequences=True, return_state=True, rngs=nnx.Rngs(0))
    load_torch_weights(layer, net.weight_ih_l0, net.weight_hh_l0, net.bias_ih_l0, net.bias_hh_l0)
    got, state = layer(jnp.asarray(X), lengths=jnp.array(LENGTHS))
    close(got, out)
    close(state.h, h[0])
    close(state.c, c[0])


def test_one_layer_state_dict_loads_into_bidirectional():
    net = torch_lstm(bidirectional=True)
    out, *_ = torch_run(net)
    bi = Bidirectional(LSTM(F, H, return_sequences=True, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
    load_torch_weights(bi, net)  # the nn.LSTM itself, or its state_dict()
    close(bi(jnp.asarray(X), lengths=jnp.array(LENGTHS)), out)


@pytest.mark.parametrize(
    "options",
    [
        {"num_layers": 2, "bidirectional": True},
        {"num_layers": 2, "bidirectional": True, "proj_size": P},
        {"num_layers": 3},
    ],
    ids=["2-layers-bidirectional", "proj_size", "3-layers"],
)
def test_stack_gives_torch_outputs_and_every_final_state(options):
    net = torch_lstm(**options)
    out, h, c = torch_run(net)
    stack = StackedLSTM(F, H, return_sequences=True, return_state=True, rngs=nnx.Rngs(0), **options)
    load_torch_weights(stack, net.state_dict())
    got, state = run(stack, jnp.asarray(X), jnp.array(LENGTHS))
    close(got, out)
    for n, length in enumerate(LENGTHS):
        assert not np.any(np.asarray(got[n, length:]))  # zeros at padded steps
    close(state.h, h)  # [num_layers·directions, B, P]
    close(state.c, c)  # [num_layers·directions, B, H]


def test_dropout_between_layers_is_random_in_training_and_torchs_in_eval():
    net = torch_lstm(num_layers=2, dropout=0.5)
    stacks = [
        StackedLSTM(F, H, num_layers=2, dropout=0.5, return_sequences=True, rngs=nnx.Rngs(seed))
        for seed in (0, 1)
    ]
    for stack in stacks:
        load_torch_weights(stack, net.state_dict())
    x, lengths = jnp.asarray(X), jnp.array(LENGTHS)
    first, second = (np.asarray(run(stack, x, lengths)) for stack in stacks)
    assert not np.allclose(first, second)
    net.eval()
    out, *_ = torch_run(net)
    for stack in stacks:
        stack.eval()
        close(run(stack, x, lengths), out)
        close(run(stack, x, lengths), out)


@pytest.mark.parametrize(
    "source,target,drop,message",
    [
        ({"num_layers": 2}, {}, None, "unexpected PyTorch weight 'weight_ih_l1'"),
        ({}, {"bidirectional": True}, None, "missing PyTorch weight 'weight_ih_l0_reverse'"),
        ({"proj_size": P}, {"proj_size": P}, "weight_hr_l0", "missing .* 'weight_hr_l0'"),
        ({"num_layers": 2}, {"num_layers": 2}, "bias_hh_l1", "missing .* 'bias_hh_l1'"),
        ({"num_layers": 2}, {"num_layers": 2, "in_features": 4}, None, "'weight_ih_l0' has shape"),
    ],
)
def test_state_dicts_that_do_not_fit_are_refused_and_load_nothing(source, target, drop, message):
    stack = StackedLSTM(target.pop("in_features", F), H, rngs=nnx.Rngs(0), **target)
    before = np.asarray(stack.lstms[0].kernel[...])
    state = torch_lstm(**source).state_dict()
    state.pop(drop, None)
    with pytest.raises(ValueError, match=message):
        load_torch_weights(stack, state)
    np.testing.assert_array_equal(np.asarray(stack.lstms[0].kernel[...]), before)


def test_torch_weights_of_the_wrong_size_are_refused():
    net = torch_lstm()
    with pytest.raises(ValueError, match=r"'weight_ih' has shape \(20, 3\), expected \(20, 4\)"):
        load_torch_weights(LSTM(4, H, rngs=nnx.Rngs(0)), net.weight_ih_l0, net.weight_hh_l0)
    state = net.state_dict()
    state["bias_hh_l0"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"'bias_hh_l0' has shape \(3,\), expected \(20,\)"):
        load_torch_weights(LSTM(F, H, rngs=nnx.Rngs(0)), state)
    with pytest.raises(TypeError, match="not a Linear"):
        load_torch_weights(nnx.Linear(F, H, rngs=nnx.Rngs(0)), state)
