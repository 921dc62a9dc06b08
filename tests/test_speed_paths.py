"""The fast code paths of the time loop give the same numbers as the plain ones.

``lstm_scan`` differentiates its loop with a hand-written backward (a ``jax.custom_vjp`` in
flaxlstm/recurrent.py) for the default activations. Here its gradients are compared with jax
autodiff of the plain scan (``hand_written_backward=False``, the code path that
custom activations and traces take) and, in float64, with the numpy reference; for both ways
of forming the weight gradients (inside the loop, or as one product after it), every kind of
padding, both directions, initial states, recurrent dropout masks and rematerialisation.
Shapes are tiny: these run on two CPU cores in CI.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from reference import lengths_to_mask, lstm_reference

from flaxlstm import LSTM, LSTMState, lstm_scan

B, T, F, H = 3, 5, 2, 4
LENGTHS = np.array([5, 2, 0])  # a full sequence, a short one, and an empty one


@pytest.fixture(params=["in_loop", "after_loop"])
def weight_gradients(request):
    """Both ways the hand-written backward forms dW, dU and db: ``accumulate_above_bytes``."""
    return 0 if request.param == "in_loop" else 1 << 62


def inputs(seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    normal = lambda *shape, scale=1.0: rng.normal(0, scale, shape).astype(dtype)  # noqa: E731
    return dict(
        W=normal(F, 4 * H, scale=0.6),
        U=normal(H, 4 * H, scale=0.6),
        b=normal(4 * H, scale=0.6),
        x=normal(B, T, F),
        c0=normal(B, H),
        h0=normal(B, H),
        rec=rng.uniform(0, 2, (B, H)).astype(dtype),
        # weights of the loss on the outputs and on the final state
        w_out=normal(B, T, H),
        w_c=normal(B, H),
        w_h=normal(B, H),
    )


def make_loss(v, mask, reverse, *, initial_state, dropout, remat=False, accumulate_above=None):
    """A loss that reaches every output and both final states; ``loss.options(hand_written)``
    is the same loss with the backward chosen."""

    def options(hand_written: bool):
        return functools.partial(loss, hand_written_backward=hand_written)

    def loss(W, U, b, x, c0, h0, rec, hand_written_backward=True):
        state, out, _ = lstm_scan(
            W,
            U,
            b,
            x,
            mask,
            LSTMState(c0, h0) if initial_state else None,
            reverse=reverse,
            recurrent_dropout_mask=rec if dropout else None,
            remat=remat,
            hand_written_backward=hand_written_backward,
            **({} if accumulate_above is None else {"accumulate_above_bytes": accumulate_above}),
        )
        return jnp.sum(out * v["w_out"]) + jnp.sum(state.c * v["w_c"]) + jnp.sum(state.h * v["w_h"])

    loss.options = options
    return loss


ARGS = ("W", "U", "b", "x", "c0", "h0", "rec")


def gradients(loss, v, hand_written: bool):
    args = [jnp.asarray(v[k]) for k in ARGS]
    value_and_grad = jax.value_and_grad(loss.options(hand_written), argnums=range(len(ARGS)))
    value, grads = jax.jit(value_and_grad)(*args)
    return value, dict(zip(ARGS, grads, strict=True))


def assert_same_gradients(ours, theirs, rtol=1e-5, atol=1e-6):
    for name in ARGS:
        np.testing.assert_allclose(
            np.asarray(ours[name]), np.asarray(theirs[name]), rtol=rtol, atol=atol, err_msg=name
        )


def uses_hand_written_backward(loss, v) -> bool:
    jaxpr = str(jax.make_jaxpr(loss)(*[jnp.asarray(v[k]) for k in ARGS]))
    return "custom_vjp_call" in jaxpr


@pytest.mark.parametrize("padding", [None, "post", "pre"])
@pytest.mark.parametrize("reverse", [False, True])
def test_hand_written_backward_equals_autodiff(weight_gradients, padding, reverse):
    v = inputs(1)
    mask = None if padding is None else jnp.asarray(lengths_to_mask(LENGTHS, T, padding))
    loss = make_loss(
        v, mask, reverse, initial_state=True, dropout=True, accumulate_above=weight_gradients
    )
    assert uses_hand_written_backward(loss, v)
    assert not uses_hand_written_backward(loss.options(False), v)
    value, ours = gradients(loss, v, hand_written=True)
    value_ref, theirs = gradients(loss, v, hand_written=False)
    np.testing.assert_allclose(float(value), float(value_ref), rtol=1e-6)
    assert_same_gradients(ours, theirs)
    assert np.abs(np.asarray(theirs["U"])).max() > 1e-2  # the comparison is not vacuous


@pytest.mark.parametrize("initial_state,dropout", [(False, False), (True, False), (False, True)])
def test_without_initial_state_or_dropout_mask(weight_gradients, initial_state, dropout):
    v = inputs(2)
    mask = jnp.asarray(lengths_to_mask(LENGTHS, T, "pre"))
    loss = make_loss(
        v,
        mask,
        False,
        initial_state=initial_state,
        dropout=dropout,
        accumulate_above=weight_gradients,
    )
    assert_same_gradients(gradients(loss, v, True)[1], gradients(loss, v, False)[1])


@pytest.mark.parametrize("reverse", [False, True])
def test_rematerialised_backward_gives_the_same_gradients(weight_gradients, reverse):
    v = inputs(3)
    mask = jnp.asarray(lengths_to_mask(LENGTHS, T, "post"))
    options = dict(initial_state=True, dropout=True, accumulate_above=weight_gradients)
    plain = make_loss(v, mask, reverse, **options)
    remat = make_loss(v, mask, reverse, remat=True, **options)
    assert_same_gradients(gradients(remat, v, True)[1], gradients(plain, v, True)[1])
    assert_same_gradients(gradients(remat, v, False)[1], gradients(plain, v, False)[1])


@pytest.mark.parametrize("padding,reverse", [("post", False), ("pre", True)])
def test_float64_gradients_equal_autodiff_and_the_reference(weight_gradients, padding, reverse):
    """In float64 the two backward passes agree to rounding, and the loss is the numpy
    reference's."""
    v = inputs(4, np.float64)
    mask_np = lengths_to_mask(LENGTHS, T, padding)
    with jax.enable_x64(True):
        loss = make_loss(
            v,
            jnp.asarray(mask_np),
            reverse,
            initial_state=True,
            dropout=False,
            accumulate_above=weight_gradients,
        )
        value, ours = gradients(loss, v, True)
        _, theirs = gradients(loss, v, False)
        assert ours["W"].dtype == jnp.float64
    assert_same_gradients(ours, theirs, rtol=1e-12, atol=1e-12)
    out, c, h, _ = lstm_reference(
        v["W"], v["U"], v["b"], v["x"], mask_np, reverse=reverse, c0=v["c0"], h0=v["h0"]
    )
    expected = np.sum(out * v["w_out"]) + np.sum(c * v["w_c"]) + np.sum(h * v["w_h"])
    np.testing.assert_allclose(float(value), expected, rtol=1e-12)


def test_custom_activations_fall_back_to_autodiff():
    v = inputs(5)
    hard = lambda z: jnp.clip(0.2 * z + 0.5, 0, 1)  # noqa: E731

    def loss(W, U, b, x, c0, h0, rec):
        _, out, _ = lstm_scan(W, U, b, x, gate_activation=hard)
        return jnp.sum(out * v["w_out"])

    assert not uses_hand_written_backward(loss, v)


def test_the_trace_comes_from_the_same_forward():
    v = inputs(6)
    mask = jnp.asarray(lengths_to_mask(LENGTHS, T, "pre"))
    args = [jnp.asarray(v[k]) for k in ("W", "U", "b", "x")]
    state, out, trace = lstm_scan(*args, mask, reverse=True, return_trace=True)
    state_fast, out_fast, none = lstm_scan(*args, mask, reverse=True)
    assert none is None
    np.testing.assert_allclose(np.asarray(out_fast), np.asarray(out), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(trace.h), np.asarray(out), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(state_fast.c), np.asarray(state.c), rtol=1e-6)


def test_mixed_dtypes_give_gradients_of_each_input_dtype():
    v = inputs(7)
    W, U, b = (jnp.asarray(v[k]) for k in ("W", "U", "b"))
    x = jnp.asarray(v["x"], jnp.bfloat16)
    grads = jax.grad(lambda W, x: jnp.sum(lstm_scan(W, U, b, x)[1]), argnums=(0, 1))(W, x)
    assert grads[0].dtype == jnp.float32 and grads[1].dtype == jnp.bfloat16


def test_layer_gradients_with_dropout_equal_autodiff(weight_gradients):
    """Through the NNX layer, with input and recurrent dropout and lengths: the same dropout
    masks (same RNG) and the same gradients either way."""

    def layer_grads(hand_written: bool):
        layer = LSTM(
            F,
            H,
            return_sequences=True,
            dropout=0.3,
            recurrent_dropout=0.4,
            hand_written_backward=hand_written,
            accumulate_above_bytes=weight_gradients,
            rngs=nnx.Rngs(0),
        )
        x = jnp.asarray(inputs(8)["x"])

        def loss(layer):
            return jnp.sum(layer(x, lengths=jnp.asarray(LENGTHS)) ** 2)

        return nnx.grad(loss)(layer)

    ours, theirs = layer_grads(True), layer_grads(False)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_backward_choice_is_part_of_the_layer_graph():
    """The choice is a field of the layer: a jitted step (static on the graphdef) compiled for
    one setting is never reused for the other."""
    make = lambda **kw: nnx.graphdef(LSTM(F, H, rngs=nnx.Rngs(0), **kw))  # noqa: E731
    assert make() == make(hand_written_backward=True)
    assert make() != make(hand_written_backward=False)
    assert make() != make(accumulate_above_bytes=0)


def test_forward_mode_autodiff_runs_on_the_autodiff_path():
    """jax.jvp cannot enter a custom VJP (JAX's rule); with hand_written_backward=False the
    layer is forward-differentiable, and the tangent equals the reverse-mode product."""
    layer = LSTM(F, H, return_sequences=True, hand_written_backward=False, rngs=nnx.Rngs(0))
    x = jnp.asarray(inputs(9)["x"])
    v = jnp.asarray(inputs(10)["x"])  # a direction for x
    w = jnp.asarray(inputs(11)["w_out"])  # weights of the outputs
    out, tangent = jax.jvp(lambda x: layer(x, lengths=jnp.asarray(LENGTHS)), (x,), (v,))
    _, pullback = jax.vjp(lambda x: layer(x, lengths=jnp.asarray(LENGTHS)), x)
    np.testing.assert_allclose(
        float(jnp.sum(tangent * w)), float(jnp.sum(pullback(w)[0] * v)), rtol=1e-5
    )
    assert np.abs(np.asarray(tangent)).max() > 1e-3
