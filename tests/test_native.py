"""The time loop in C (flaxlstm/native/) gives the numbers of the scanned loop.

``lstm_scan(..., loop="native")`` runs the steps of the standard cell in C through XLA's FFI;
``loop="scan"`` runs them on ``jax.lax.scan`` with the same hand-written backward, which
tests/test_speed_paths.py compares with jax autodiff and the numpy reference. Here the two are
compared on outputs, final states and every gradient, for padding anywhere (an all-padded row
included), both directions, initial states, recurrent dropout (the mask's gradient included),
rematerialisation, a batch smaller than the CPU count, sizes that are not multiples of the
loop's 16-wide vectors, under ``jax.vmap``, and with bfloat16 products where the CPU has them;
on every instruction set the CPU runs (``native.using``: AVX2 + FMA, AVX-512), each with its own
product tiles and its own rounding of the rows it computes.
"""

import contextlib
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxlstm import LSTMState, lstm_scan, native


@pytest.fixture(autouse=True)
def built():
    """The C loop is built by ``pip install -e .`` (setup.py): required under CI."""
    if native.available():
        return
    message = "flaxlstm.native._lstm_cpu is not built (pip install -e . compiles it with gcc)"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(message)
    pytest.skip(message)


# (B, T, F, H): 4H = 36 pads to 48; 13 rows make parts of 6 and 7 on 2 CPUs (13 on one), so
# that padded rows beyond a multiple of 4 are skipped; one row for 2 CPUs.
SHAPES = [(13, 11, 3, 9), (1, 4, 2, 16)]


def case(shape, padding, seed=0):
    batch, time, features, hidden = shape
    rng = np.random.default_rng(seed)
    normal = lambda *s: jnp.asarray(rng.normal(0, 0.6, s), jnp.float32)  # noqa: E731
    lengths = rng.integers(1, time + 1, batch)
    mask = {
        None: None,
        "post": np.arange(time)[None] < lengths[:, None],
        "pre": np.arange(time)[None] >= time - lengths[:, None],
        "scattered": rng.uniform(size=(batch, time)) < 0.6,
    }[padding]
    if padding == "scattered" and batch > 1:
        mask[0] = False  # a row with no real step
    params = (normal(features, 4 * hidden), normal(hidden, 4 * hidden), normal(4 * hidden))
    x, state = normal(batch, time, features), (normal(batch, hidden), normal(batch, hidden))
    weights = (normal(batch, time, hidden), normal(batch, hidden), normal(batch, hidden))
    return params, x, None if mask is None else jnp.asarray(mask), state, weights


# The float32 paths: the loop's steps compiled for AVX2 + FMA and for AVX-512 ("avx512bf16"
# runs AVX-512's float32 code), each tested where the CPU runs it.
PATHS = [
    pytest.param(isa, marks=pytest.mark.skipif(isa not in native.instruction_sets(), reason=isa))
    for isa in ("avx2", "avx512")
]


@functools.partial(jax.jit, static_argnames=("loop", "reverse", "remat", "matmul_dtype", "isa"))
def value_and_grads(
    W, U, b, x, c0, h0, mask, weights, rmask=None, *, loop, reverse, remat=False,
    matmul_dtype=None, isa=None,
):  # fmt: skip
    """The loss over every output and both final states, the outputs, and the gradients with
    respect to W, U, b, x, c0, h0 and the recurrent dropout mask ``rmask`` [B, H] (if any);
    the C loop on the instruction set ``isa`` (None: the CPU's best)."""

    def loss(W, U, b, x, c0, h0, rmask):
        kwargs = dict(reverse=reverse, remat=remat, loop=loop, recurrent_dropout_mask=rmask)
        kwargs |= dict(matmul_dtype=matmul_dtype)
        with native.using(isa) if isa else contextlib.nullcontext():
            state, out, _ = lstm_scan(W, U, b, x, mask, LSTMState(c0, h0), **kwargs)
        w_out, w_c, w_h = weights
        total = jnp.sum(out * w_out) + jnp.sum(state.c * w_c) + jnp.sum(state.h * w_h)
        return total, out

    argnums = range(6 if rmask is None else 7)
    return jax.value_and_grad(loss, argnums=argnums, has_aux=True)(W, U, b, x, c0, h0, rmask)


def assert_close(ours, theirs, rtol=2e-5, atol=2e-6):
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def dropout_mask(batch, hidden):
    keep = np.random.default_rng(4).uniform(size=(batch, hidden)) < 0.7
    return jnp.asarray(keep / 0.7, jnp.float32)  # inverted dropout, as layers.LSTM makes it


@pytest.mark.parametrize("isa", PATHS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("padding", [None, "post", "pre", "scattered"])
@pytest.mark.parametrize("reverse", [False, True])
def test_the_c_loop_equals_the_scan(isa, shape, padding, reverse):
    (W, U, b), x, mask, (c0, h0), weights = case(shape, padding)
    args = (W, U, b, x, c0, h0, mask, weights)
    ours = value_and_grads(*args, loop="native", reverse=reverse, isa=isa)
    theirs = value_and_grads(*args, loop="scan", reverse=reverse)
    assert_close(ours, theirs)
    (_, out), grads = ours
    assert np.abs(np.asarray(grads[1])).max() > 1e-2  # not vacuous: U's gradient is not zero
    if mask is not None:  # padded steps output zeros
        assert np.all(np.asarray(out)[~np.asarray(mask)] == 0)


@pytest.mark.parametrize("isa", PATHS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("padding", [None, "scattered"])
@pytest.mark.parametrize("reverse", [False, True])
def test_the_c_loop_with_recurrent_dropout_equals_the_scan(isa, shape, padding, reverse):
    (W, U, b), x, mask, (c0, h0), weights = case(shape, padding, seed=3)
    rmask = dropout_mask(shape[0], shape[3])
    args = (W, U, b, x, c0, h0, mask, weights, rmask)
    ours = value_and_grads(*args, loop="native", reverse=reverse, isa=isa)
    assert_close(ours, value_and_grads(*args, loop="scan", reverse=reverse))
    without = value_and_grads(*args[:-1], loop="native", reverse=reverse, isa=isa)
    assert not np.allclose(ours[0][1], without[0][1])  # the mask changed the outputs
    assert np.abs(np.asarray(ours[1][6])).max() > 1e-2  # and has a gradient


@pytest.mark.skipif(not native.has_bfloat16(), reason="the CPU has no AVX512-BF16")
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reverse", [False, True])
def test_the_c_loop_in_bfloat16_equals_the_scan_in_bfloat16(shape, reverse):
    (W, U, b), x, mask, (c0, h0), weights = case(shape, "scattered", seed=5)
    args = (W, U, b, x, c0, h0, mask, weights, dropout_mask(shape[0], shape[3]))
    ours = value_and_grads(*args, loop="native", reverse=reverse, matmul_dtype=jnp.bfloat16)
    theirs = value_and_grads(*args, loop="scan", reverse=reverse, matmul_dtype=jnp.bfloat16)
    # the same bfloat16 roundings of operands that differ in their last float32 bits only
    assert_close(ours, theirs, rtol=1e-3, atol=1e-4)
    in_float32 = value_and_grads(*args, loop="native", reverse=reverse)
    for a, b in zip(jax.tree.leaves(ours[1]), jax.tree.leaves(in_float32[1]), strict=True):
        assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-4  # really in bfloat16


@pytest.mark.parametrize("isa", PATHS)
def test_the_c_loop_copies_large_panels_of_its_products_and_still_equals_the_scan(isa):
    # H 256: the weight gradients' product reads dz [steps x rows, 4H] from many tiles (K =
    # 258 rows), its rows 4 KiB apart: GEMM copies each panel of it first
    (W, U, b), x, mask, (c0, h0), weights = case((3, 9, 2, 256), "post", seed=7)
    W, U = W / 10, U / 10  # z of the size case()'s 9 units give (else saturated, chaotic)
    args = (W, U, b, x, c0, h0, mask, weights)
    ours = value_and_grads(*args, loop="native", reverse=False, isa=isa)
    assert_close(ours, value_and_grads(*args, loop="scan", reverse=False))


@pytest.mark.parametrize("loop", ["native", "scan"])
@pytest.mark.parametrize("remat", [False, True])
def test_the_final_state_alone_gives_its_gradients_without_the_outputs(loop, remat):
    (W, U, b), x, mask, (c0, h0), (_, w_c, w_h) = case(SHAPES[0], "scattered", seed=6)

    @functools.partial(jax.jit, static_argnames="return_outputs")
    def final_state_loss(W, U, b, x, c0, h0, return_outputs):
        kwargs = dict(loop=loop, remat=remat, return_outputs=return_outputs)
        state, out, _ = lstm_scan(W, U, b, x, mask, LSTMState(c0, h0), **kwargs)
        assert (out is None) != return_outputs
        return jnp.sum(state.c * w_c) + jnp.sum(state.h * w_h)

    grads = jax.value_and_grad(final_state_loss, argnums=range(6))
    args = (W, U, b, x, c0, h0)
    assert_close(grads(*args, return_outputs=False), grads(*args, return_outputs=True))


@pytest.mark.parametrize("isa", PATHS)
def test_rematerialised_c_loop_gives_the_same_gradients(isa):
    (W, U, b), x, mask, (c0, h0), weights = case(SHAPES[0], "post", seed=1)
    args = (W, U, b, x, c0, h0, mask, weights)
    remat = value_and_grads(*args, loop="native", reverse=True, remat=True, isa=isa)
    assert_close(remat, value_and_grads(*args, loop="native", reverse=True, isa=isa))


def test_the_c_loop_under_vmap_runs_each_batch_as_alone():
    (W, U, b), x, _, _, _ = case(SHAPES[0], None, seed=2)
    xs = jnp.stack([x, 2 * x])  # [2, B, T, F]: two batches

    def outputs(x, loop):
        return lstm_scan(W, U, b, x, loop=loop)[1]

    mapped = jax.jit(jax.vmap(functools.partial(outputs, loop="native")))(xs)
    for i in range(2):
        np.testing.assert_allclose(mapped[i], outputs(xs[i], "scan"), rtol=2e-5, atol=2e-6)


def runs_in_c(hidden, features=2, batch=64, **kwargs) -> bool:
    """Whether ``lstm_scan`` on these sizes calls the C loop (traced only, nothing run)."""
    W = jax.ShapeDtypeStruct((features, 4 * hidden), jnp.float32)
    U = jax.ShapeDtypeStruct((hidden, 4 * hidden), jnp.float32)
    b = jax.ShapeDtypeStruct((4 * hidden,), jnp.float32)
    x = jax.ShapeDtypeStruct((batch, 5, features), jnp.float32)
    scan = functools.partial(lstm_scan, **kwargs)
    return "flaxlstm_LstmForward" in str(jax.make_jaxpr(scan)(W, U, b, x))


def test_auto_takes_the_c_loop_wherever_it_can_run():
    assert runs_in_c(100, features=32)  # seed 003's layer
    assert runs_in_c(128, features=128)  # seed 002's
    assert runs_in_c(4, loop="native")
    assert not runs_in_c(4, loop="scan")
    assert runs_in_c(4, matmul_dtype=jnp.bfloat16) == native.has_bfloat16()  # AVX512-BF16
    assert not runs_in_c(4, matmul_dtype=jnp.float16)
    assert not runs_in_c(4, return_trace=True)  # traces come from scan_cell
    assert not runs_in_c(4, hand_written_backward=False)
    assert runs_in_c(4, recurrent_dropout_mask=jnp.ones((64, 4)))


def test_auto_takes_the_c_loop_only_where_it_was_measured_faster_than_the_scan():
    # [W; U] of 0.5, 1.5 and 6 MiB: measured faster on every set, on AVX-512 only, on none at
    # every batch
    with native.using("avx2"):
        assert runs_in_c(128, features=128)
        assert not runs_in_c(256, features=128)
        assert runs_in_c(256, features=128, loop="native")  # "native" is always the C loop
    if "avx512" in native.instruction_sets():
        with native.using("avx512"):
            assert runs_in_c(256, features=128)
    assert not runs_in_c(512, features=256)  # the bench's large shape
    assert runs_in_c(512, features=256, loop="native")
    # a batch too small to split (one or two rows a CPU): only a small [W; U] (0.2 MiB)
    assert runs_in_c(100, features=32, batch=1) and not runs_in_c(128, features=128, batch=2)
    if native.has_bfloat16():  # bfloat16 products: faster at 0.5 MiB, slower at 1.5 MiB
        assert runs_in_c(128, features=128, matmul_dtype=jnp.bfloat16)
        assert not runs_in_c(256, features=128, matmul_dtype=jnp.bfloat16)


def test_loop_native_refuses_what_it_cannot_run_in_one_line():
    W, U, b = jnp.zeros((2, 16)), jnp.zeros((4, 16)), jnp.zeros(16)
    x = jnp.zeros((3, 5, 2))
    with pytest.raises(ValueError, match="loop='native' cannot run here: its products are"):
        lstm_scan(W, U, b, x, matmul_dtype=jnp.float16, loop="native")
    with pytest.raises(
        ValueError, match="loop must be one of 'auto', 'scan', 'native', 'pallas', got .fast."
    ):
        lstm_scan(W, U, b, x, loop="fast")


def runs_on(isa=None) -> int:
    """The instruction set (the loop's attribute: 1 AVX2, 2 AVX-512, 3 AVX512-BF16) that
    ``lstm_scan`` traces its C loop with, inside ``native.using(isa)`` when given."""
    W, U, b = jnp.zeros((2, 16)), jnp.zeros((4, 16)), jnp.zeros(16)
    with native.using(isa) if isa else contextlib.nullcontext():
        text = str(
            jax.make_jaxpr(lambda x: lstm_scan(W, U, b, x, loop="native"))(jnp.zeros((3, 5, 2)))
        )
    return int(text.split("('isa', np.int32(")[1].split(")")[0])


def test_the_best_instruction_set_runs_unless_a_lower_one_is_asked_for(monkeypatch):
    sets = native.instruction_sets()
    assert sets == native.INSTRUCTION_SETS[: len(sets)]  # lowest first, none skipped
    assert native.instruction_set() == sets[-1] and runs_on() == len(sets)
    monkeypatch.setenv("FLAXLSTM_NATIVE_ISA", "avx2")
    assert native.instruction_set() == "avx2" and runs_on() == 1
    assert not native.has_bfloat16()  # bfloat16 products are AVX512-BF16's
    if "avx512" in sets:  # a block's set wins over the environment's
        assert runs_on("avx512") == 2
    monkeypatch.delenv("FLAXLSTM_NATIVE_ISA")
    assert runs_on("avx2") == 1 and native.instruction_set() == sets[-1]  # the block is over


def test_an_instruction_set_the_cpu_cannot_run_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv("FLAXLSTM_NATIVE_ISA", "sse2")
    with pytest.raises(
        ValueError,
        match=r"^FLAXLSTM_NATIVE_ISA must be one of avx2, avx512, avx512bf16, got 'sse2'$",
    ):
        native.instruction_set()
    monkeypatch.setattr(native, "_BEST", "avx2")  # as on a CPU without AVX-512
    monkeypatch.setenv("FLAXLSTM_NATIVE_ISA", "avx512")
    with pytest.raises(
        ValueError, match=r"^FLAXLSTM_NATIVE_ISA=avx512 cannot run on this CPU \(it runs avx2\)$"
    ):
        native.instruction_set()
    with pytest.raises(ValueError, match="cannot run on this CPU"):
        runs_on("avx512bf16")  # fmt: skip
