"""Cell variants against the numpy reference extended for each of them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from reference import lengths_to_mask, lstm_reference
from test_core import close, set_params

from flaxlstm import LSTM, Bidirectional, Trace
from flaxlstm.variants import CoupledLSTM, LayerNormLSTM, PeepholeLSTM, ProjectedLSTM

F, H, P = 3, 4, 2
X = np.random.default_rng(0).normal(size=(3, 5, F)).astype(np.float32)
MASK = lengths_to_mask(np.array([5, 3, 1]), 5, "pre")


def normals(seed):
    """Draws of N(0, 0.6²) in float32 from a generator of one maker's own, so that a variant's
    parameters do not depend on which tests ran before."""
    rng = np.random.default_rng(seed)
    return lambda *shape: rng.normal(0, 0.6, shape).astype(np.float32)


def peephole():
    normal = normals(1)
    layer = PeepholeLSTM(F, H, return_sequences=True, return_state=True, rngs=nnx.Rngs(0))
    W, U, b, p = normal(F, 4 * H), normal(H, 4 * H), normal(4 * H), normal(3, H)
    set_params(layer, (W, U, b)).peephole[...] = p
    checked = (lambda m: m.peephole, lambda ps, ex, v: (ps, {**ex, "peephole": v}))
    return layer, (W, U, b), {"peephole": p}, checked


def coupled():
    normal = normals(2)
    layer = CoupledLSTM(F, H, return_sequences=True, return_state=True, rngs=nnx.Rngs(0))
    W, U, b = normal(F, 3 * H), normal(H, 3 * H), normal(3 * H)
    set_params(layer, (W, U, b))
    checked = (lambda m: m.recurrent_kernel, lambda ps, ex, v: ((ps[0], v, ps[2]), ex))
    return layer, (W, U, b), {"coupled": True}, checked


def layer_norm():
    normal = normals(3)
    layer = LayerNormLSTM(F, H, return_sequences=True, return_state=True, rngs=nnx.Rngs(0))
    W, U, b = normal(F, 4 * H), normal(H, 4 * H), normal(4 * H)
    norms = (1 + normal(4 * H), 1 + normal(4 * H), 1 + normal(H), normal(H))
    set_params(layer, (W, U, b))
    layer.input_norm.scale[...] = norms[0]
    layer.recurrent_norm.scale[...] = norms[1]
    layer.cell_norm.scale[...], layer.cell_norm.bias[...] = norms[2], norms[3]
    checked = (
        lambda m: m.cell_norm.scale,
        lambda ps, ex, v: (ps, {"norms": (*ex["norms"][:2], v, ex["norms"][3])}),
    )
    return layer, (W, U, b), {"norms": norms}, checked


def projected():
    normal = normals(4)
    layer = ProjectedLSTM(
        F, H, proj_size=P, return_sequences=True, return_state=True, rngs=nnx.Rngs(0)
    )
    W, U, b, proj = normal(F, 4 * H), normal(P, 4 * H), normal(4 * H), normal(H, P)
    set_params(layer, (W, U, b)).projection[...] = proj
    checked = (lambda m: m.projection, lambda ps, ex, v: (ps, {**ex, "projection": v}))
    return layer, (W, U, b), {"projection": proj}, checked


VARIANTS = [peephole, coupled, layer_norm, projected]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("make", VARIANTS, ids=lambda f: f.__name__)
def test_variant_matches_its_reference(make, reverse):
    layer, params, extra, _ = make()
    layer.reverse = reverse
    out, c, h, ref = lstm_reference(*params, X, MASK, reverse=reverse, **extra)
    got, state = layer(jnp.asarray(X), mask=jnp.asarray(MASK))
    close(got, out)
    close(state.c, c)
    close(state.h, h)
    trace = layer.trace(jnp.asarray(X), mask=jnp.asarray(MASK))
    for name in Trace._fields:  # gates, states, pre-activations
        close(getattr(trace, name), ref[name])


@pytest.mark.parametrize("make", VARIANTS, ids=lambda f: f.__name__)
def test_variant_gradients_match_finite_differences_of_its_reference(make):
    """The gradient of the variant's own parameter, in float64, against the reference."""
    layer, params, extra, (target, substitute) = make()
    x, mask = X[:2].astype(np.float64), MASK[:2]
    weights = np.random.default_rng(1).normal(size=(2, 5, layer.state_features))
    v0 = np.asarray(target(layer)[...], np.float64)

    def ref_loss(v):
        ps, ex = substitute(tuple(np.float64(p) for p in params), extra, v)
        return np.sum(lstm_reference(*ps, x, mask, **ex)[0] * weights)

    with jax.enable_x64(True):
        graphdef, state = nnx.split(layer)
        state = jax.tree.map(lambda a: a.astype(jnp.float64), state)

        def loss(v):
            model = nnx.merge(graphdef, state, copy=True)  # Variables of this trace
            target(model)[...] = v
            out, _ = model(jnp.asarray(x), mask=jnp.asarray(mask))
            return jnp.sum(out * weights)

        grad = np.asarray(jax.grad(loss)(jnp.asarray(v0)))
        np.testing.assert_allclose(float(loss(jnp.asarray(v0))), ref_loss(v0), rtol=1e-10)
    numeric = np.zeros_like(v0)
    for idx in np.ndindex(v0.shape):
        plus, minus = v0.copy(), v0.copy()
        plus[idx] += 1e-6
        minus[idx] -= 1e-6
        numeric[idx] = (ref_loss(plus) - ref_loss(minus)) / 2e-6
    np.testing.assert_allclose(grad, numeric, atol=1e-4, rtol=1e-4)
    assert np.abs(numeric).max() > 1e-3


@pytest.mark.parametrize("make", VARIANTS, ids=lambda f: f.__name__)
def test_variant_runs_bidirectional_with_its_own_class(make):
    layer = make()[0]
    bi = Bidirectional(layer, rngs=nnx.Rngs(1))
    assert type(bi.backward) is type(layer) and bi.backward.reverse
    merged, _ = bi(jnp.asarray(X), mask=jnp.asarray(MASK))
    assert merged.shape == (3, 5, 2 * layer.state_features)


def test_peephole_and_coupled_start_where_the_equations_say():
    """Peepholes start at zero (a plain LSTM); CIFG's forget gate is exactly 1 − i."""
    layer, params, _, _ = peephole()
    layer.peephole[...] = jnp.zeros((3, H))
    close(layer(jnp.asarray(X))[0], lstm_reference(*params, X)[0])
    trace = coupled()[0].trace(jnp.asarray(X))
    close(trace.f, 1 - np.asarray(trace.i))


def test_projected_lstm_loads_pytorch_proj_size_weights():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.LSTM(F, H, batch_first=True, proj_size=P)
    out, (h, c) = net(torch.from_numpy(X))
    layer = ProjectedLSTM(F, H, proj_size=P, return_sequences=True, rngs=nnx.Rngs(0))
    layer.load_torch_weights(
        net.weight_ih_l0, net.weight_hh_l0, net.bias_ih_l0, net.bias_hh_l0, net.weight_hr_l0
    )
    close(layer(jnp.asarray(X)), out.detach().numpy())
    with pytest.raises(ValueError, match="proj_size must lie in"):
        ProjectedLSTM(F, H, proj_size=H, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "cls, extra",
    [(LSTM, {}), (PeepholeLSTM, {}), (CoupledLSTM, {}), (LayerNormLSTM, {}),
     (ProjectedLSTM, {"proj_size": 3})],
)  # fmt: skip
def test_a_reversed_copy_is_the_same_layer_built_again_the_other_way(cls, extra):
    zeros = nnx.initializers.zeros_init()
    layer = cls(2, 5, dropout=0.1, unroll=2, kernel_init=zeros, rngs=nnx.Rngs(0), **extra)
    twin = layer.reversed_copy(nnx.Rngs(1))
    assert type(twin) is cls and twin.reverse and not layer.reverse
    assert twin.constructor_arguments() == layer.constructor_arguments() | {"reverse": True}
    assert twin.dropout == 0.1 and twin.unroll == 2 and not np.any(twin.kernel[...])
    assert set(extra) <= set(layer.constructor_arguments())
