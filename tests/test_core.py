"""The JAX LSTM against the independent numpy reference in tests/reference.py."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import bidirectional_reference, lengths_to_mask, lstm_reference

import flaxlstm
from flaxlstm import LSTM, Bidirectional, LSTMState, PerStep, Trace, lstm_scan

F, H = 3, 4
RTOL, ATOL = 1e-5, 1e-6


def random_params(seed, f=F, h=H, dtype=np.float32):
    """Weights large enough that every gate is far from its resting value."""
    rng = np.random.default_rng(seed)
    return tuple(rng.normal(0, 0.6, s).astype(dtype) for s in ((f, 4 * h), (h, 4 * h), (4 * h,)))


def set_params(layer, params):
    """``layer`` with its kernel, recurrent kernel and bias set to ``params`` (W, U, b)."""
    layer.kernel[...], layer.recurrent_kernel[...], layer.bias[...] = map(jnp.asarray, params)
    return layer


def make_layer(params, rngs=None, **kwargs):
    layer = LSTM(params[0].shape[0], params[1].shape[0], rngs=rngs or nnx.Rngs(0), **kwargs)
    return set_params(layer, params)


def close(a, b):
    np.testing.assert_allclose(np.asarray(a), b, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("padding", ["post", "pre"])
@pytest.mark.parametrize("batch,time", [(1, 1), (3, 6)])
def test_matches_reference_with_ragged_lengths(batch, time, padding, reverse):
    params = random_params(batch * 10 + time)
    x = np.random.default_rng(1).normal(size=(batch, time, F)).astype(np.float32)
    lengths = np.arange(batch) % (time + 1) if batch > 1 else np.array([time])
    mask = lengths_to_mask(lengths, time, padding)
    out, c, h, _ = lstm_reference(*params, x, mask, reverse=reverse)
    layer = make_layer(params, return_sequences=True, return_state=True, reverse=reverse)
    got, state = layer(jnp.asarray(x), mask=jnp.asarray(mask))
    close(got, out)
    close(state.c, c)
    close(state.h, h)
    if padding == "post":  # lengths mean the same as the mask
        got_l, state_l = layer(jnp.asarray(x), lengths=jnp.asarray(lengths))
        close(got_l, out)
        close(state_l.h, h)


def test_padding_side_does_not_change_the_result():
    params = random_params(3)
    layer = make_layer(params, return_sequences=True, return_state=True)
    rng = np.random.default_rng(2)
    lengths, T = np.array([5, 2, 0, 3]), 5
    tokens = [rng.normal(size=(n, F)).astype(np.float32) for n in lengths]
    post = np.zeros((4, T, F), np.float32)
    pre = np.full((4, T, F), 7.0, np.float32)  # padding values must not matter
    for n, seq in enumerate(tokens):
        post[n, : len(seq)] = seq
        pre[n, T - len(seq) :] = seq
    out_post, s_post = layer(jnp.asarray(post), lengths=jnp.asarray(lengths))
    out_pre, s_pre = layer(jnp.asarray(pre), mask=jnp.asarray(lengths_to_mask(lengths, T, "pre")))
    close(s_pre.c, np.asarray(s_post.c))
    close(s_pre.h, np.asarray(s_post.h))
    for n, m in enumerate(lengths):
        close(out_pre[n, T - m :], np.asarray(out_post[n, :m]))
        assert not np.any(np.asarray(out_post[n, m:]))  # padded steps output zeros


def test_length_zero_returns_the_initial_state():
    params = random_params(4)
    layer = make_layer(params, return_state=True)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, F)).astype(np.float32)
    init = LSTMState(*(jnp.asarray(rng.normal(size=(2, H)), jnp.float32) for _ in range(2)))
    h, state = layer(jnp.asarray(x), lengths=jnp.array([0, 3]), initial_state=init)
    close(state.c[0], np.asarray(init.c[0]))
    close(h[0], np.asarray(init.h[0]))
    _, c_ref, h_ref, _ = lstm_reference(*params, x, c0=np.asarray(init.c), h0=np.asarray(init.h))
    close(state.c[1], c_ref[1])
    close(h[1], h_ref[1])


@pytest.mark.parametrize("merge", ["concat", "sum", "mul", "ave"])
@pytest.mark.parametrize("padding", ["post", "pre"])
def test_bidirectional_matches_reference(merge, padding):
    fwd, bwd = random_params(5), random_params(6)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 5, F)).astype(np.float32)
    mask = lengths_to_mask(np.array([5, 3, 1]), 5, padding)
    seq_ref, last_ref = bidirectional_reference(fwd, bwd, x, mask, merge)
    bi = Bidirectional(make_layer(fwd, return_sequences=True), merge=merge, rngs=nnx.Rngs(1))
    set_params(bi.backward, bwd)
    close(bi(jnp.asarray(x), mask=jnp.asarray(mask)), seq_ref)
    bi.forward.return_sequences = bi.backward.return_sequences = False
    close(bi(jnp.asarray(x), mask=jnp.asarray(mask)), last_ref)
    assert bi.out_features == (2 * H if merge == "concat" else H)


def test_two_stacked_layers_match_reference():
    p1, p2 = random_params(7), random_params(8, f=H)
    x = np.random.default_rng(5).normal(size=(2, 4, F)).astype(np.float32)
    lengths = np.array([4, 2])
    mask = lengths_to_mask(lengths, 4)
    out1, *_ = lstm_reference(*p1, x, mask)
    _, _, h2, _ = lstm_reference(*p2, out1, mask)
    l1, l2 = make_layer(p1, return_sequences=True), make_layer(p2)
    got = l2(l1(jnp.asarray(x), lengths=lengths), lengths=lengths)
    close(got, h2)


def test_unroll_gives_the_same_result():
    params = random_params(9)
    x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 5, F)), jnp.float32)
    close(make_layer(params, unroll=3)(x), np.asarray(make_layer(params)(x)))


def test_trace_matches_reference_gates_and_states():
    params = random_params(10)
    x = np.random.default_rng(7).normal(size=(2, 4, F)).astype(np.float32)
    mask = lengths_to_mask(np.array([4, 2]), 4, "pre")
    *_, ref = lstm_reference(*params, x, mask, reverse=True)
    trace = make_layer(params, reverse=True).trace(jnp.asarray(x), mask=jnp.asarray(mask))
    for name in Trace._fields:  # gates, states, pre-activations
        close(getattr(trace, name), ref[name])


def test_gradients_match_central_finite_differences():
    """d(loss)/d(W, U, b, x) in float64 against finite differences of the numpy reference."""
    rng = np.random.default_rng(8)
    W, U, b = random_params(11, dtype=np.float64)
    x = rng.normal(size=(2, 4, F))
    mask = lengths_to_mask(np.array([4, 3]), 4, "pre")
    weights = rng.normal(size=(2, 4, H)), rng.normal(size=(2, H))

    def ref_loss(W, U, b, x):
        out, c, _, _ = lstm_reference(W, U, b, x, mask, reverse=True)
        return np.sum(out * weights[0]) + np.sum(c * weights[1])

    with jax.enable_x64(True):

        def loss(W, U, b, x):
            state, out, _ = lstm_scan(W, U, b, x, jnp.asarray(mask), reverse=True)
            return jnp.sum(out * weights[0]) + jnp.sum(state.c * weights[1])

        grads = jax.grad(loss, argnums=(0, 1, 2, 3))(W, U, b, x)
        assert all(g.dtype == jnp.float64 for g in grads)
        np.testing.assert_allclose(float(loss(W, U, b, x)), ref_loss(W, U, b, x), rtol=1e-12)

    args, eps = [W, U, b, x], 1e-6
    for k, grad in enumerate(grads):
        numeric = np.zeros_like(args[k])
        for idx in np.ndindex(args[k].shape):
            plus = [a.copy() for a in args]
            minus = [a.copy() for a in args]
            plus[k][idx] += eps
            minus[k][idx] -= eps
            numeric[idx] = (ref_loss(*plus) - ref_loss(*minus)) / (2 * eps)
        np.testing.assert_allclose(np.asarray(grad), numeric, atol=1e-4, rtol=1e-4)
        assert np.abs(numeric).max() > 1e-3  # the check is not vacuous


def test_flax_optimized_lstm_cell_gives_the_same_outputs():
    params = random_params(12)
    x = jnp.asarray(np.random.default_rng(9).normal(size=(2, 5, F)), jnp.float32)
    cell = nnx.OptimizedLSTMCell(F, H, rngs=nnx.Rngs(0))
    cell.dense_i.kernel[...] = params[0]
    cell.dense_h.kernel[...] = params[1]
    cell.dense_h.bias[...] = params[2]
    lengths = jnp.array([5, 3])
    flax_out = nnx.RNN(cell)(x, seq_lengths=lengths)
    ours = make_layer(params, return_sequences=True)(x, lengths=lengths)
    close(ours[:, :3], np.asarray(flax_out[:, :3]))
    close(ours[0], np.asarray(flax_out[0]))


def test_default_initialisation_is_keras():
    layer = LSTM(6, 5, rngs=nnx.Rngs(0))
    kernel, recurrent, bias = (
        np.asarray(p[...]) for p in (layer.kernel, layer.recurrent_kernel, layer.bias)
    )
    limit = np.sqrt(6 / (6 + 20))  # glorot uniform over [in, 4H]
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.5 * limit
    np.testing.assert_allclose(recurrent @ recurrent.T, np.eye(5), atol=1e-5)  # orthogonal rows
    np.testing.assert_array_equal(bias, np.r_[np.zeros(5), np.ones(5), np.zeros(10)])


def test_per_step_zeroes_padded_steps():
    head = nnx.Linear(H, 2, rngs=nnx.Rngs(0))
    x = jnp.ones((2, 3, H))
    y = PerStep(head)(x, lengths=jnp.array([3, 1]))
    close(y[0], np.asarray(head(x[0])))
    assert not np.any(np.asarray(y[1, 1:]))
    close(y[1, 0], np.asarray(head(x[1, 0])))  # equal up to rounding (GPUs batch otherwise)


def test_variational_dropout_reuses_one_mask_per_sequence():
    """With one feature and one unit, a per-sequence mask scales x (or U) by 0 or 2 for the
    whole sequence; a per-step mask would mix the two."""
    params = random_params(13, f=1, h=1)
    x = np.random.default_rng(10).normal(size=(16, 6, 1)).astype(np.float32)
    for kind in ("dropout", "recurrent_dropout"):
        layer = make_layer(params, nnx.Rngs(3), return_sequences=True, **{kind: 0.5})
        got = np.asarray(layer(jnp.asarray(x)))
        W, U, b = params
        scaled = [(W * s, U, b) if kind == "dropout" else (W, U * s, b) for s in (0.0, 2.0)]
        refs = [lstm_reference(*p, x)[0] for p in scaled]
        which = [
            next(k for k, r in enumerate(refs) if np.allclose(got[n], r[n], rtol=1e-5, atol=1e-6))
            for n in range(16)
        ]
        assert 0 < sum(which) < 16  # both masks occur
        layer.eval()
        close(layer(jnp.asarray(x)), lstm_reference(*params, x)[0])
        layer.train()
        assert not np.allclose(np.asarray(layer(jnp.asarray(x))), lstm_reference(*params, x)[0])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_inputs_are_computed_in_float32(dtype):
    params = random_params(14)
    x = np.random.default_rng(11).normal(size=(2, 3, F)).astype(np.float32)
    low = jnp.asarray(x, dtype)
    got = make_layer(params)(low)
    assert got.dtype == jnp.float32
    close(got, lstm_reference(*params, np.asarray(low.astype(jnp.float32)))[2])


def test_float64_inputs_work_with_x64():
    params = random_params(15, dtype=np.float64)
    x = np.random.default_rng(12).normal(size=(2, 3, F))
    with jax.enable_x64(True):
        layer = make_layer(params, param_dtype=jnp.float64)
        got = layer(jnp.asarray(x))
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got), lstm_reference(*params, x)[2], rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    time=st.integers(1, 5),
    padding=st.sampled_from(["pre", "post"]),
    reverse=st.booleans(),
    data=st.data(),
)
def test_property_matches_reference(batch, time, padding, reverse, data):
    lengths = np.array(data.draw(st.lists(st.integers(0, time), min_size=batch, max_size=batch)))
    params = random_params(int(lengths.sum()))
    x = np.random.default_rng(batch * time).normal(size=(batch, time, F)).astype(np.float32)
    mask = lengths_to_mask(lengths, time, padding)
    out, c, h, _ = lstm_reference(*params, x, mask, reverse=reverse)
    layer = make_layer(params, return_sequences=True, return_state=True, reverse=reverse)
    got, state = layer(jnp.asarray(x), mask=jnp.asarray(mask))
    close(got, out)
    close(state.c, c)
    close(state.h, h)


# --- bad input: one clear error naming the problem ---------------------------------------


@pytest.fixture(scope="module")
def layer():
    return LSTM(F, H, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "call,error,message",
    [
        (lambda lstm: lstm(jnp.ones((2, F))), ValueError, r"inputs \[B, T, F\]"),
        (lambda lstm: lstm(jnp.ones((2, 3, F + 1))), ValueError, "3 input features, got 4"),
        (lambda lstm: lstm(jnp.ones((2, 3, F), jnp.int32)), TypeError, "floating-point"),
        (
            lambda lstm: lstm(jnp.ones((2, 3, F)), lengths=jnp.array([1, 2, 3])),
            ValueError,
            r"shape \[B\]",
        ),
        (
            lambda lstm: lstm(jnp.ones((2, 3, F)), lengths=jnp.array([1, 4])),
            ValueError,
            r"\[0, T=3\]",
        ),
        (
            lambda lstm: lstm(jnp.ones((2, 3, F)), lengths=jnp.array([-1, 2])),
            ValueError,
            r"\[0, T=3\]",
        ),
        (
            lambda lstm: lstm(jnp.ones((2, 3, F)), lengths=jnp.array([1.0, 2.0])),
            TypeError,
            "integers",
        ),
        (lambda lstm: lstm(jnp.ones((2, 3, F)), mask=jnp.ones((2, 4), bool)), ValueError, "mask"),
        (lambda lstm: lstm(jnp.ones((2, 3, F)), mask=jnp.ones((2, 3))), TypeError, "boolean"),
        (
            lambda lstm: lstm(
                jnp.ones((2, 3, F)), lengths=jnp.array([1, 2]), mask=jnp.ones((2, 3), bool)
            ),
            ValueError,
            "not both",
        ),
    ],
)
def test_bad_input_is_refused(layer, call, error, message):
    with pytest.raises(error, match=message):
        call(layer)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"dropout": 1.0}, r"dropout must lie in \[0, 1\)"),
        ({"recurrent_dropout": -0.1}, "recurrent_dropout"),
        ({"unroll": 0}, "unroll"),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LSTM(F, H, rngs=nnx.Rngs(0), **kwargs)
    with pytest.raises(ValueError, match="hidden_features"):
        LSTM(F, 0, rngs=nnx.Rngs(0))


def test_bad_merge_is_refused():
    with pytest.raises(ValueError, match="merge must be one of"):
        Bidirectional(LSTM(F, H, rngs=nnx.Rngs(0)), merge="max", rngs=nnx.Rngs(1))


def test_out_of_range_token_ids_are_refused():
    embed = flaxlstm.Embedding(10, 4, rngs=nnx.Rngs(0))
    assert embed(jnp.array([[0, 9]])).shape == (1, 2, 4)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 10\)"):
        embed(jnp.array([[0, 10]]))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        embed(jnp.array([[-1, 3]]))
    with pytest.raises(TypeError, match="integers"):
        embed(jnp.array([[0.0, 1.0]]))


def test_import_does_not_import_tensorflow():
    code = "import sys, flaxlstm; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
