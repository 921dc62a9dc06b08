"""StackedLSTM against the numpy reference, and the layers composing as NNX users expect:
half-precision parameters, initial states (checked), and padding that reaches every layer."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from reference import lengths_to_mask, lstm_reference
from test_core import close, random_params, set_params

from flaxlstm import LSTM, Bidirectional, LSTMState, StackedLSTM
from flaxlstm.lab.traces import trace_model
from flaxlstm.variants import ProjectedLSTM

F, H, P = 3, 4, 2
X = np.random.default_rng(0).normal(size=(3, 5, F)).astype(np.float32)
LENGTHS = np.array([5, 2, 4])
MASK = lengths_to_mask(np.array([5, 3, 1]), 5, "pre")


def stack_with_params(num_layers=2, bidirectional=True, **kwargs):
    """A stack and its parameters, per layer and direction (W, U, b), in PyTorch's order."""
    stack = StackedLSTM(
        F, H, num_layers=num_layers, bidirectional=bidirectional, rngs=nnx.Rngs(0), **kwargs
    )
    params = [random_params(20 + n, f=lstm.in_features, h=H) for n, lstm in enumerate(stack.lstms)]
    for lstm, p in zip(stack.lstms, params, strict=True):
        set_params(lstm, p)
    return stack, params


def reference_stack(params, directions, x, mask, initial=None):
    """The numpy reference layer by layer: outputs [B, T, D·H], final c and h [L·D, B, H]."""
    cs, hs = [], []
    for layer in range(len(params) // directions):
        outs = []
        for d in range(directions):
            n = layer * directions + d
            c0, h0 = (None, None) if initial is None else (initial.c[n], initial.h[n])
            out, c, h, _ = lstm_reference(*params[n], x, mask, d == 1, c0, h0)
            outs.append(out)
            cs.append(c)
            hs.append(h)
        x = np.concatenate(outs, axis=-1)
    return x, np.stack(cs), np.stack(hs)


def random_state(rows, batch=3, width=H, seed=1):
    rng = np.random.default_rng(seed)
    draw = lambda w: rng.normal(size=(rows, batch, w)).astype(np.float32)  # noqa: E731
    return LSTMState(draw(H), draw(width))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_stack_matches_reference_with_padding_and_initial_state(bidirectional):
    stack, params = stack_with_params(bidirectional=bidirectional, return_state=True)
    directions = 2 if bidirectional else 1
    initial = random_state(2 * directions)
    out, c, h = reference_stack(params, directions, X, MASK, initial)
    run = nnx.jit(lambda m, x, mask, s: m(x, mask=mask, initial_state=s))
    got, state = run(stack, jnp.asarray(X), jnp.asarray(MASK), initial)
    close(got, np.concatenate(list(h[-directions:]), axis=-1))  # the last layer's h, fwd ‖ bwd
    close(state.c, c)
    close(state.h, h)
    stack.return_sequences = True
    close(stack(jnp.asarray(X), mask=jnp.asarray(MASK), initial_state=initial)[0], out)


def test_lengths_reach_every_layer_unlike_nnx_sequential():
    """Every layer skips the padded steps (the reference's layers skip them), whatever they
    hold, and outputs zeros there."""
    stack, params = stack_with_params(return_sequences=True)
    mask = lengths_to_mask(LENGTHS, 5)
    padded = np.where(mask[..., None], X, 9.0)
    got = stack(jnp.asarray(padded), lengths=jnp.asarray(LENGTHS))
    close(got, reference_stack(params, 2, padded, mask)[0])
    assert not np.any(np.asarray(got)[~mask])
    for lstm in stack.lstms:
        lstm.return_state = False
    sequential = nnx.Sequential(*stack.layers)  # lengths reach its first layer only
    wrong = sequential(jnp.asarray(padded), lengths=jnp.asarray(LENGTHS))
    assert not np.allclose(np.asarray(wrong), np.asarray(got), atol=1e-3)


def test_state_continues_a_sequence():
    stack, _ = stack_with_params(bidirectional=False, return_state=True)
    x = jnp.asarray(X)
    whole, state = stack(x)
    _, middle = stack(x[:, :2])
    rest, end = stack(x[:, 2:], initial_state=middle)
    close(rest, np.asarray(whole))
    close(end.c, np.asarray(state.c))
    assert middle.c.shape == middle.h.shape == (2, 3, H)  # [num_layers, B, H]


def test_trace_model_records_every_layer_and_direction():
    stack, params = stack_with_params(return_sequences=True)
    traces = trace_model(stack, X, lengths=LENGTHS)
    names = [f"layers/{k}/{d}" for k in (0, 1) for d in ("forward", "backward")]
    assert list(traces) == names
    out, *_ = reference_stack(params, 2, X, lengths_to_mask(LENGTHS, 5))
    close(traces["layers/1/forward"].h, out[..., :H])
    close(traces["layers/1/backward"].h, out[..., H:])
    assert all(trace.c.shape == (3, 5, H) for trace in traces.values())


def test_dropout_between_layers_until_eval():
    stack = StackedLSTM(F, H, num_layers=2, dropout=0.5, return_sequences=True, rngs=nnx.Rngs(0))
    run, x = nnx.jit(lambda model, x: model(x)), jnp.asarray(X)
    first, second = np.asarray(run(stack, x)), np.asarray(run(stack, x))
    assert not np.allclose(first, second)  # a new mask each call
    assert np.all(first != 0)  # not after the last layer
    stack.eval()
    np.testing.assert_array_equal(np.asarray(run(stack, x)), np.asarray(run(stack, x)))
    assert StackedLSTM(F, H, dropout=0.5, rngs=nnx.Rngs(0)).between is None  # one layer


def test_projected_stack_shapes():
    stack = StackedLSTM(
        F, H, num_layers=2, bidirectional=True, proj_size=P, return_state=True, rngs=nnx.Rngs(0)
    )
    assert all(type(lstm) is ProjectedLSTM for lstm in stack.lstms)
    assert stack.lstms[2].in_features == 2 * P and stack.out_features == 2 * P
    last, state = stack(jnp.asarray(X), initial_state=random_state(4, width=P))
    assert last.shape == (3, 2 * P) and state.c.shape == (4, 3, H) and state.h.shape == (4, 3, P)
    with pytest.raises(ValueError, match=r"\[num_layers·directions, B, P\] = \(4, 3, 2\)"):
        stack(jnp.asarray(X), initial_state=random_state(4))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"num_layers": 0}, "num_layers must be a positive integer"),
        ({"dropout": 1.0}, r"dropout must lie in \[0, 1\)"),
        ({"proj_size": H}, "proj_size must lie in"),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StackedLSTM(F, H, rngs=nnx.Rngs(0), **kwargs)


# --- composing as NNX users expect ---------------------------------------------------------


def test_bfloat16_parameters():
    layer = LSTM(F, H, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert layer.recurrent_kernel.dtype == jnp.bfloat16
    params = [np.asarray(p[...], np.float32) for p in (layer.kernel, layer.recurrent_kernel)]
    params.append(np.asarray(layer.bias[...], np.float32))
    np.testing.assert_allclose(params[1] @ params[1].T, np.eye(H), atol=2e-2)  # orthogonal
    close(layer(jnp.asarray(X)), lstm_reference(*params, X)[2])
    stack = StackedLSTM(F, H, num_layers=2, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert stack(jnp.asarray(X)).shape == (3, H)


def test_bidirectional_takes_a_pair_of_initial_states():
    fwd, bwd = random_params(5), random_params(6)
    bi = Bidirectional(set_params(LSTM(F, H, rngs=nnx.Rngs(0)), fwd), rngs=nnx.Rngs(1))
    set_params(bi.backward, bwd)
    s = random_state(2)
    start_f, start_b = LSTMState(s.c[0], s.h[0]), LSTMState(s.c[1], s.h[1])
    got = bi(jnp.asarray(X), mask=jnp.asarray(MASK), initial_state=(start_f, start_b))
    h_f = lstm_reference(*fwd, X, MASK, False, start_f.c, start_f.h)[2]
    h_b = lstm_reference(*bwd, X, MASK, True, start_b.c, start_b.h)[2]
    close(got, np.concatenate([h_f, h_b], axis=-1))
    with pytest.raises(TypeError, match=r"pair \(forward_state, backward_state\)"):
        bi(jnp.asarray(X), initial_state=start_f)


@pytest.mark.parametrize(
    "make,state,message",
    [
        (lambda: LSTM(F, H, rngs=nnx.Rngs(0)), ((3, H), (3, H + 1)), r"\[B, H\] = \(3, 4\)"),
        (lambda: LSTM(F, H, rngs=nnx.Rngs(0)), ((2, H), (2, H)), r"\(3, 4\) and \[B, H\]"),
        (
            lambda: ProjectedLSTM(F, H, proj_size=P, rngs=nnx.Rngs(0)),
            ((3, H), (3, H)),
            r"\[B, P\] = \(3, 2\), got \(\(3, 4\), \(3, 4\)\)",
        ),
    ],
)
def test_wrong_initial_state_shape_is_refused(make, state, message):
    start = LSTMState(*(jnp.zeros(shape) for shape in state))
    with pytest.raises(ValueError, match=message):
        make()(jnp.asarray(X), initial_state=start)
