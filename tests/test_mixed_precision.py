"""Mixed precision: bfloat16 matrix products, float32 everything else (``LSTM(dtype=...)``,
``lstm_scan(matmul_dtype=...)``), close to float32 and the same on every code path."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxlstm import LSTM, lstm_scan

B, T, F, H = 3, 6, 4, 5
LENGTHS = jnp.array([6, 3, 1])


def layer_grads(**options):
    layer = LSTM(F, H, return_sequences=True, rngs=nnx.Rngs(0), **options)
    x = jax.random.normal(jax.random.key(1), (B, T, F))

    def loss(layer):
        return jnp.sum(jnp.sin(layer(x, lengths=LENGTHS)))

    value, grads = nnx.value_and_grad(loss)(layer)
    return value, jax.tree.leaves(nnx.state(grads, nnx.Param)), layer(x, lengths=LENGTHS)


def relative_error(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("hand_written", [True, False])
def test_bfloat16_products_stay_within_a_percent_of_float32(hand_written):
    value32, grads32, out32 = layer_grads(hand_written_backward=hand_written)
    value16, grads16, out16 = layer_grads(dtype=jnp.bfloat16, hand_written_backward=hand_written)
    assert out16.dtype == jnp.float32 and all(g.dtype == jnp.float32 for g in grads16)
    assert relative_error(out16, out32) < 1e-2
    assert float(value16) == pytest.approx(float(value32), rel=1e-2)
    for g16, g32 in zip(grads16, grads32, strict=True):
        assert relative_error(g16, g32) < 3e-2
    assert relative_error(out16, out32) > 0  # the products really ran in bfloat16


@pytest.mark.parametrize("accumulate_above_bytes", [0, 1 << 62])  # in the loop, or after it
def test_hand_written_backward_equals_autodiff_in_bfloat16(accumulate_above_bytes):
    _, ours, _ = layer_grads(dtype=jnp.bfloat16, accumulate_above_bytes=accumulate_above_bytes)
    _, theirs, _ = layer_grads(dtype=jnp.bfloat16, hand_written_backward=False)
    for a, b in zip(ours, theirs, strict=True):
        assert relative_error(a, b) < 1e-2


def test_the_products_take_bfloat16_operands_and_accumulate_in_float32():
    W, U, b = jnp.ones((F, 4 * H)), jnp.ones((H, 4 * H)), jnp.zeros(4 * H)
    x = jnp.ones((B, T, F))
    scan = partial(lstm_scan, loop="scan")  # the C loop rounds inside (tests/test_native.py)
    jaxpr = str(jax.make_jaxpr(lambda W: scan(W, U, b, x, matmul_dtype=jnp.bfloat16)[1])(W))
    assert "preferred_element_type=float32" in jaxpr and "bf16[" in jaxpr
    assert "bf16[" not in str(jax.make_jaxpr(lambda W: scan(W, U, b, x)[1])(W))
