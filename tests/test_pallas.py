"""The whole time loop in one Pallas kernel (flaxlstm/pallas.py) gives the numbers of the scan.

``lstm_scan(..., loop="pallas")`` runs the forward and the backward each as one kernel; on the
CPU in Pallas's interpret mode (the same kernel, run exactly), so everything here runs in CI.
Compared with ``loop="scan"`` (the same hand-written backward on ``jax.lax.scan``, itself held
to jax autodiff and the numpy reference by tests/test_speed_paths.py) on outputs, final states
and every gradient: padding anywhere (an all-padded row included), both directions, initial
states, recurrent dropout (the mask's gradient included), rematerialisation, bfloat16
products, and sizes the kernel pads (H 9 → 16 per gate, B 13 → 16 rows). The CUDA lowering is
checked by exporting for CUDA from this CPU machine: one Triton kernel per direction, and no
loop left to XLA.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractDevice, AbstractMesh, use_abstract_mesh
from test_native import assert_close, case, dropout_mask, value_and_grads

from flaxlstm import LSTMState, lstm_scan
from flaxlstm.recurrent import describe_loop

SHAPE = (13, 11, 3, 9)  # B, T, F, H


@pytest.mark.parametrize(
    "padding, reverse, dropout, remat",
    [
        ("scattered", False, False, False),
        ("scattered", True, True, False),
        ("post", True, False, True),
    ],
)
def test_equals_the_scan(padding, reverse, dropout, remat):
    (W, U, b), x, mask, (c0, h0), weights = case(SHAPE, padding)
    rmask = dropout_mask(SHAPE[0], SHAPE[3]) if dropout else None
    args = (W, U, b, x, c0, h0, mask, weights, rmask)
    ours = value_and_grads(*args, loop="pallas", reverse=reverse, remat=remat)
    theirs = value_and_grads(*args, loop="scan", reverse=reverse, remat=remat)
    assert_close(ours, theirs)
    if mask is not None:  # padded steps output zeros
        assert not np.asarray(ours[0][1])[~np.asarray(mask)].any()


def test_a_padded_step_reaches_no_gradient():
    """NaN and infinity at padded steps of x change nothing: not the outputs, not a gradient."""
    (W, U, b), x, mask, (c0, h0), weights = case(SHAPE, "scattered", seed=3)
    padded = np.argwhere(~np.asarray(mask))
    bad = np.asarray(x).copy()
    bad[tuple(padded[0])] = np.nan
    bad[tuple(padded[-1])] = np.inf
    clean = np.where(np.asarray(mask)[..., None], np.asarray(x), 0)
    args = lambda x: (W, U, b, jnp.asarray(x), c0, h0, mask, weights)  # noqa: E731
    ours = value_and_grads(*args(bad), loop="pallas", reverse=False)
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(ours))
    assert_close(ours, value_and_grads(*args(clean), loop="pallas", reverse=False))


def test_bfloat16_products_equal_the_scan():
    (W, U, b), x, mask, (c0, h0), weights = case(SHAPE, "post", seed=1)
    args = (W, U, b, x, c0, h0, mask, weights)
    ours = value_and_grads(*args, loop="pallas", reverse=False, matmul_dtype=jnp.bfloat16)
    theirs = value_and_grads(*args, loop="scan", reverse=False, matmul_dtype=jnp.bfloat16)
    assert_close(ours, theirs, rtol=1e-3, atol=1e-4)
    exact = value_and_grads(*args, loop="scan", reverse=False)  # bfloat16 products do round
    assert not np.allclose(np.asarray(ours[0][0]), np.asarray(exact[0][0]), rtol=1e-6, atol=0)


def test_final_state_only():
    """Without ``return_outputs`` the kernel's state and its gradients are the scan's."""
    (W, U, b), x, mask, state, _ = case(SHAPE, "pre", seed=2)

    def final(loop):
        def loss(W, U, x):
            c, h = lstm_scan(W, U, b, x, mask, LSTMState(*state), loop=loop, return_outputs=False)[
                0
            ]
            return jnp.sum(c * h), (c, h)

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(W, U, x)

    assert_close(final("pallas"), final("scan"))


@pytest.mark.parametrize("shape", ["seed003", "seed002", "large"])
def test_exports_for_cuda_with_the_loop_inside_the_kernels(shape):
    """Lowered for CUDA on this CPU machine, for an H100 (the abstract device that names the
    target; newer jax asks for it where no GPU is present): the forward and the backward are
    one Triton kernel each (the Triton backend checks the block shapes and types here), and
    XLA runs no loop. At the benchmark's shapes (B, T, E, H)."""
    B, T, F, H = {"seed003": (64, 500, 32, 100), "seed002": (32, 80, 128, 128)}.get(
        shape, (128, 200, 256, 512)
    )

    def loss(W, U, b, x, lengths):
        mask = jnp.arange(T)[None] < lengths[:, None]
        state, out, _ = lstm_scan(W, U, b, x, mask, loop="pallas")
        return jnp.sum(out**2) + jnp.sum(state.h)

    args = (jnp.zeros((F, 4 * H)), jnp.zeros((H, 4 * H)), jnp.zeros(4 * H))
    args += (jnp.zeros((B, T, F)), jnp.full((B,), T))
    triton = "__gpu$xla.gpu.triton"
    h100 = AbstractDevice(device_kind="NVIDIA H100", num_cores=None, platform="cuda")
    with use_abstract_mesh(AbstractMesh((1,), ("batch",), abstract_device=h100)):
        exported = jax.export.export(
            jax.jit(jax.grad(loss, argnums=(0, 1, 2))),
            platforms=["cuda"],
            disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(triton)],
        )(*args)
    text = exported.mlir_module()
    assert text.count(f"@{triton}") == 2
    assert 'name = "_forward_kernel"' in text and 'name = "_backward_kernel"' in text
    assert "stablehlo.while" not in text


def test_says_where_it_cannot_run():
    (W, U, b), x, *_ = case(SHAPE, None)
    with pytest.raises(ValueError, match="loop='pallas' cannot run here: it computes in float32"):
        lstm_scan(*(a.astype(jnp.bfloat16) for a in (W, U, b, x)), loop="pallas")
    with pytest.raises(
        ValueError, match="loop='pallas' cannot run here: it runs only the standard"
    ):
        lstm_scan(W, U, b, x, loop="pallas", return_trace=True)
    with pytest.raises(ValueError, match="loop must be one of"):
        lstm_scan(W, U, b, x, loop="cuda")
    assert "Pallas kernel" in describe_loop("pallas")
