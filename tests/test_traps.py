"""Traps of the gradient and of bad ids, on every loop and layer.

- A NaN or ±infinity at a padded step of the input reaches no gradient: every parameter's and
  the input's gradients are finite and equal to those with zeros there, on every loop of the
  standard cell (the scan with its hand-written backward, jax autodiff, the C loop, the Pallas
  kernel), every cell variant, ``Bidirectional``, ``StackedLSTM`` and ``PerStep``
  (``recurrent.real_steps``).
- ``flaxlstm.Embedding`` gives a NaN row, inside jit, for an id outside [0, V) (−1, V,
  2**31 − 1), never another row, and outside jit, as ``fit``, ``evaluate`` and ``predict``
  do, refuses it in one line naming the id and the vocabulary's size.
- A second derivative through a kernel loop (the C loop, the Pallas kernel), and ``jax.export``
  of the C loop, end in one line naming ``loop="scan"``, which does both (``flaxlstm.limits``).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxlstm import LSTM, Bidirectional, Embedding, PerStep, StackedLSTM, native
from flaxlstm.layers import set_loop
from flaxlstm.models import TokenClassifier
from flaxlstm.training.fit import evaluate, fit, predict
from flaxlstm.variants import CoupledLSTM, LayerNormLSTM, PeepholeLSTM, ProjectedLSTM

# The reported case: B 8, T 12, a NaN at row 1 step 8, infinities at row 2 step 5 and row 5
# step 10, all at padded steps.
B, T, F, H = 8, 12, 3, 4
LENGTHS = np.array([12, 5, 1, 12, 7, 3, 9, 12])
REAL = np.arange(T)[None] < LENGTHS[:, None]
CLEAN = np.where(REAL[..., None], np.random.default_rng(0).normal(size=(B, T, F)), 0)
BAD = CLEAN.copy()
BAD[1, 8, 0], BAD[2, 5, 1], BAD[5, 10, 2] = np.nan, np.inf, -np.inf
assert not REAL[1, 8] and not REAL[2, 5] and not REAL[5, 10]

needs_native = pytest.mark.skipif(not native.available(), reason=str(native.why_not()))
sequences = dict(return_sequences=True)
LAYERS = {
    "scan": lambda r: LSTM(F, H, loop="scan", **sequences, rngs=r),
    "autodiff": lambda r: LSTM(F, H, loop="scan", hand_written_backward=False, **sequences, rngs=r),
    "native": lambda r: LSTM(F, H, loop="native", **sequences, rngs=r),
    "pallas": lambda r: LSTM(F, H, loop="pallas", **sequences, rngs=r),
    "peephole": lambda r: PeepholeLSTM(F, H, **sequences, rngs=r),
    "coupled": lambda r: CoupledLSTM(F, H, **sequences, rngs=r),
    "layer-norm": lambda r: LayerNormLSTM(F, H, **sequences, rngs=r),
    "projected": lambda r: ProjectedLSTM(F, H, proj_size=2, **sequences, rngs=r),
    "bidirectional": lambda r: Bidirectional(LSTM(F, H, **sequences, rngs=r), rngs=r),
    "stacked": lambda r: StackedLSTM(
        F, H, num_layers=2, bidirectional=True, loop="scan", **sequences, rngs=r
    ),  # fmt: skip
    "per-step": lambda r: PerStep(nnx.Linear(F, H, rngs=r)),
}
MARKS = {"native": [needs_native]}


def gradients(model: nnx.Module, *xs: np.ndarray) -> list:
    """Every parameter's gradient and the input's, (params, dx), of Σ sin(outputs) for each
    of ``xs`` [B, T, F] (one compilation for all)."""
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(params, x):
        return jnp.sum(jnp.sin(nnx.merge(graphdef, params)(x, lengths=jnp.asarray(LENGTHS))))

    step = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return [step(params, jnp.asarray(x, jnp.float32)) for x in xs]


@pytest.mark.parametrize("name", [pytest.param(name, marks=MARKS.get(name, [])) for name in LAYERS])
def test_non_finite_inputs_at_padded_steps_reach_no_gradient(name):
    clean, bad = gradients(LAYERS[name](nnx.Rngs(0)), CLEAN, BAD)
    assert len(jax.tree.leaves(bad)) >= 2  # the parameters' gradients and the input's
    for got, expected in zip(jax.tree.leaves(bad), jax.tree.leaves(clean), strict=True):
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    dx = np.asarray(bad[1])
    assert (dx[~REAL] == 0).all() and np.abs(dx[REAL]).max() > 0  # padded steps read nothing


# ---------------------------------------------------------------------------- bad token ids

V = 5
BAD_IDS = [-1, V, 2**31 - 1]


def test_an_id_outside_the_vocabulary_gives_a_nan_row_inside_jit():
    layer = Embedding(V, 3, rngs=nnx.Rngs(0))
    ids = jnp.array([[0, -1, 4, V], [2**31 - 1, 1, 2, 3]], jnp.int32)
    rows = np.asarray(nnx.jit(lambda layer, ids: layer(ids))(layer, ids))
    outside = np.array([[False, True, False, True], [True, False, False, False]])
    assert np.isnan(rows[outside]).all()
    table = np.asarray(layer.embedding[...])
    np.testing.assert_array_equal(rows[~outside], table[np.asarray(ids)[~outside]])
    narrow = nnx.jit(lambda layer, ids: layer(ids))(layer, jnp.array([1, 255], jnp.uint8))
    assert np.isfinite(narrow[0]).all() and np.isnan(narrow[1]).all()  # compared as uint8


def test_an_id_outside_the_vocabulary_at_a_padded_step_reaches_nothing():
    """Padding ids are 0; were one out of range, its NaN row is a padded step's input, which
    the LSTM reads as zeros (on the scan: the C loop skips padded rows anyway)."""
    model = TokenClassifier(V, 3, 4, 2, rngs=nnx.Rngs(0))
    set_loop(model, "scan")
    graphdef, params = nnx.split(model, nnx.Param)
    lengths = jnp.array([3, 1])
    ids = jnp.array([[[1, 2, 3, 0], [4, 0, 0, 0]], [[1, 2, 3, -1], [4, 0, V, 0]]], jnp.int32)

    def loss(params, ids):
        return jnp.sum(jnp.sin(nnx.merge(graphdef, params)(ids, lengths)))

    values, grads = jax.jit(jax.vmap(jax.value_and_grad(loss), in_axes=(None, 0)))(params, ids)
    assert values[1] == values[0]
    for leaf in jax.tree.leaves(grads):
        np.testing.assert_array_equal(leaf[1], leaf[0])


@pytest.mark.parametrize("bad", BAD_IDS)
def test_an_id_outside_the_vocabulary_is_refused_in_one_line(bad):
    model = TokenClassifier(V, 3, 4, 2, rngs=nnx.Rngs(0))
    ids = np.array([[1, 2, 3], [4, bad, 0]], np.int64)
    message = rf"^token ids must lie in \[0, {V}\) \(a vocabulary of {V}\), got {bad} at index"
    calls = {
        "layer": lambda: model.embed(ids),
        "predict": lambda: predict(model, ids),
        "evaluate": lambda: evaluate(model, ids, np.array([0, 1])),
        "fit": lambda: fit(model, ids, np.array([0, 1]), quiet=True),
    }
    for call in calls.values():
        with pytest.raises(ValueError, match=message + r" \[1, 1\] \(1 outside it\)$"):
            call()


# ---------------------------------------------------------------- the kernel loops' limits


def small_loss(loop: str):
    """(loss(params, x), params, x) of a small layer on ``loop``."""
    layer = LSTM(2, 3, loop=loop, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(layer, nnx.Param)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 2)), jnp.float32)

    def loss(params, x):
        return jnp.sum(nnx.merge(graphdef, params)(x, lengths=jnp.array([3, 2])) ** 2)

    return loss, params, x


@functools.partial(jax.jit, static_argnums=0)
def gradient_penalty(loss, params, x):
    """The gradient, with respect to the parameters, of |∂loss/∂x|²: a second derivative."""
    penalty = lambda params: jnp.sum(jax.grad(loss, argnums=1)(params, x) ** 2)  # noqa: E731
    return jax.grad(penalty)(params)


@pytest.mark.parametrize("loop", [pytest.param("native", marks=needs_native), "pallas"])
def test_a_second_derivative_of_a_kernel_loop_names_the_scan(loop):
    with pytest.raises(ValueError, match=r'cannot be differentiated twice .* loop="scan" does it'):
        gradient_penalty(*small_loss(loop))


@needs_native
def test_exporting_the_c_loop_names_the_scan():
    loss, params, x = small_loss("native")
    with pytest.raises(ValueError, match=r'^the C loop .* cannot be exported .* loop="scan" to'):
        jax.export.export(jax.jit(loss))(params, x)


def test_the_scan_does_both():
    loss, params, x = small_loss("scan")
    grads = gradient_penalty(loss, params, x)
    assert all(
        np.isfinite(leaf).all() and np.abs(leaf).max() > 0 for leaf in jax.tree.leaves(grads)
    )
    loss = jax.jit(loss)
    np.testing.assert_allclose(jax.export.export(loss)(params, x).call(params, x), loss(params, x))
