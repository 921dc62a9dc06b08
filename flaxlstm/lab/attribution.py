"""Which tokens a model's output rests on, and how far back its gradient reaches, on the
model in eval mode (no dropout)::

    saliency(model, ids, lengths)        [B, T] each token's share of the output
    gradient_flow(model, ids, lengths)   [B, T'] ‖∂F/∂h_t‖ at every step of the last LSTM layer

Both explain one number per text, the output F [B] (``explained``):

- a binary classifier's logit (a model giving logits [B]);
- a multi-class head's logit of one class (logits [B, C]): its predicted class, or ``target``;
- a ``LanguageModel``'s log-probability of each text's last real token given those before it,
  log softmax(logits at step L − 2)[ids[L − 1]] (L: the text's length);
- an ensemble with n-gram members (``SentimentClassifier``'s ``ngrams``, ``bigrams``,
  ``nbsvm``): its logit, of which only the network's part depends on the token embeddings and
  the LSTM states, so that the attributions are the network's part's.

Saliency works on the token embeddings e_t [E]: the model runs from given vectors x [B, T, E]
in place of its token ``Embedding``'s lookup (in a fresh copy of the model, whose embedding
becomes ``_GivenVectors``; the caller's model is never changed). Per step t::

    grad_x_input:          a_t = Σ_k e_{t,k} · ∂F/∂x_{t,k} (x = e)
    integrated_gradients:  a_t = Σ_k (e_{t,k} − b_{t,k}) · ∫₀¹ ∂F/∂x_{t,k} (b + α (e − b)) dα

with the baseline b = 0 at the real steps and b = e at padded ones (whose attribution is 0).
The integral along the straight path from b to e gives completeness, Σ_t a_t = F(e) − F(b)
(Sundararajan, Taly & Yan 2017); it is computed by Gauss–Legendre quadrature of ``steps``
nodes α_j = (1 + ξ_j)/2 and weights w_j/2 (captum's default rule), exact for polynomials of
degree < 2·steps.

``gradient_flow`` adds a zero δ_t to the layer's h_t at every step (the h the next step and
the layer's outputs read), so ∂F/∂δ_t is the whole gradient reaching h_t, through later steps
and through the layers above (RNNbow, Cashman et al. 2018, arXiv 1907.12545).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flaxlstm.cell import LSTMState, activate_all, cell_update, clamp, matmul, operand
from flaxlstm.checks import check_positive_int
from flaxlstm.data.batches import Batch, check_data
from flaxlstm.lab.traces import layer_name
from flaxlstm.layers import LSTM, Embedding
from flaxlstm.models.language import LanguageModel
from flaxlstm.models.ngrams import BigramBag
from flaxlstm.recurrent import project_all, scan_cell, time_major
from flaxlstm.training.loop import mode_view
from flaxlstm.variants import VariantLSTM

METHODS = ("grad_x_input", "integrated_gradients")

# ----------------------------------------------------------------------------- the output F


class _GivenVectors(Embedding):
    """A token embedding that returns ``given`` [B, T, E] whatever ids it is called with: what
    the embedding of a fresh copy of the model becomes (``_run``), so that the model runs from
    embedding vectors. Its table stays, for a language model's tied output rows."""

    given: jax.Array

    def __call__(self, ids: jax.Array) -> jax.Array:
        return self.given


def _token_embedding(model: nnx.Module) -> tuple:
    """The path of ``model``'s token embedding: its one ``nnx.Embed`` outside the n-gram
    members (a ``BigramBag`` embeds word pairs, not tokens), or a one-line ValueError."""
    modules = dict(nnx.iter_modules(model))
    found = [
        path
        for path, module in modules.items()
        if isinstance(module, nnx.Embed)
        and not any(isinstance(modules.get(path[:k]), BigramBag) for k in range(len(path)))
    ]
    if len(found) != 1:
        names = ", ".join("/".join(map(str, path)) for path in found) or "none"
        raise ValueError(
            f"saliency needs a model with one token Embedding; a {type(model).__name__} has {names}"
        )
    return found[0]


def _run(graphdef, state, ids, lengths, *, vectors=None, embed=None, deltas=None, seen=None):
    """A fresh copy of the model (``nnx.merge``) and its output on ``ids`` [B, T]: from the
    embedding vectors ``vectors`` [B, T, E] when given (its embedding at path ``embed`` made
    ``_GivenVectors``), with ``deltas`` {layer path: δ [B, T', H] or None (zeros)} added to
    those layers' h_t (``_perturb``; ``seen`` gets their shapes)."""
    model = nnx.merge(graphdef, state)
    modules = dict(nnx.iter_modules(model))
    if vectors is not None:
        modules[embed].__class__ = _GivenVectors  # (the copy's, made by merge just now)
        modules[embed].given = vectors
    for path, delta in (deltas or {}).items():
        _perturb(modules[path], delta, path, seen)
    return model, model(ids) if lengths is None else model(ids, lengths)


def explained(model: nnx.Module, output, ids, lengths, target) -> jax.Array:
    """F [B] from the model's ``output`` on ``ids`` [B, T]: logits [B] as they are; logits
    [B, C] at class ``target`` [B] (None: the predicted class, held out of the gradient); for
    a ``LanguageModel``, log p(ids[L − 1] | ids[:L − 1]) with L the ``lengths`` (None: T)."""
    rows = jnp.arange(ids.shape[0])
    if isinstance(model, LanguageModel):
        features, _ = output  # [B, T, D]
        last = jnp.broadcast_to(ids.shape[1] - 1 if lengths is None else lengths - 1, rows.shape)
        log_p = jax.nn.log_softmax(model.logits(features[rows, last - 1]))  # [B, V]
        return log_p[rows, ids[rows, last]]
    if output.ndim == 1 or output.shape[-1] == 1:  # one logit (or probability) per text
        return output.reshape(-1)
    if target is None:
        target = jnp.argmax(jax.lax.stop_gradient(output), axis=-1)
    return output[rows, target]


def _fixed_target(model: nnx.Module, output, target):
    """``target`` [B], or for a multi-class head without one the predicted classes [B]; None
    for other outputs."""
    if target is not None or isinstance(model, LanguageModel):
        return target
    return None if output.ndim == 1 or output.shape[-1] == 1 else jnp.argmax(output, axis=-1)


def _checked(model: nnx.Module, ids, lengths, target, name: str):
    """(ids [B, T], lengths [B] or None, target [B] or None, real [B, T]) as jax arrays, and
    the (graphdef, state) of ``model`` in eval mode; or a one-line ValueError."""
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name} takes token ids [B, T] (integers), got {ids.dtype} {ids.shape}")
    data = check_data(model, Batch(ids, None, lengths))  # vocabulary, lengths: one-line errors
    graphdef, state = nnx.split(mode_view(model, training=False))
    size = ids.shape[0]
    output = jax.eval_shape(lambda s: _run(graphdef, s, data.inputs, data.lengths)[1], state)
    shape = getattr(output, "shape", ())
    if isinstance(model, LanguageModel):
        shortest = ids.shape[1] if data.lengths is None else int(data.lengths.min())
        if shortest < 2:
            raise ValueError(
                f"a language model's output needs texts of at least 2 real tokens, got {shortest}"
            )
    elif len(shape) not in (1, 2) or shape[0] != size:
        raise ValueError(f"{name} explains logits [B] or [B, C]; the model gives {shape}")
    if target is not None:
        if isinstance(model, LanguageModel) or len(shape) == 1:
            raise ValueError("target picks a class of a multi-class head ([B, C] logits)")
        target = np.broadcast_to(np.asarray(target), (size,))
        classes = shape[-1]
        integers = np.issubdtype(target.dtype, np.integer)
        if not integers or target.min() < 0 or target.max() >= classes:
            raise ValueError(f"target must be class ids in [0, {classes}), got {target}")
    real = np.ones(ids.shape, bool)
    if data.lengths is not None:
        real = np.arange(ids.shape[1]) < data.lengths[:, None]
    arrays = (data.inputs, data.lengths, target, real)
    return (graphdef, state), tuple(None if a is None else jnp.asarray(a) for a in arrays)


# ----------------------------------------------------------------------------- saliency


def saliency(
    model: nnx.Module,
    ids,
    lengths=None,
    method: str = "grad_x_input",
    steps: int = 32,
    target=None,
) -> np.ndarray:
    """Each token's share of the model's output F (the module docstring's), computed on the
    embedding vectors, in eval mode.

    Args:
      model: a model of token ids with one token ``Embedding`` (any of ``flaxlstm.models``'
        classifiers, a ``LanguageModel``, a ``KerasSequential``); for an ensemble with n-gram
        members, the network's part of its logit is what is attributed.
      ids: token ids [B, T]; lengths: [B] real tokens of post-padded ids (None: every step is
        real to the baseline; steps the model itself treats as padding get no gradient).
      method: "grad_x_input", Σ_k e_{t,k} ∂F/∂e_{t,k}; or "integrated_gradients" from the
        all-zero embedding at the real steps (padded steps keep theirs) along the straight path,
        ``steps`` Gauss–Legendre nodes: Σ_t a_t = F(text) − F(baseline) (completeness).
      target: for a multi-class head, the class whose logit is explained, an int or [B] ints
        (None: each text's predicted class).
    Returns:
      the attributions [B, T] (float32), exactly 0 at padded steps.

    How many steps completeness needs depends on how sharply F turns along the path: on a
    small trained classifier (tests/test_hypotheses.py) 12 to 16 steps came within 1 % and 32
    within float32 rounding; one trained to saturation (logits ±8) needed 128 (64: 3 %).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    check_positive_int("steps", steps)
    embed = _token_embedding(model)
    (graphdef, state), (ids, lengths, target, real) = _checked(
        model, ids, lengths, target, "saliency"
    )
    nodes = _gauss_legendre(steps) if method == "integrated_gradients" else None
    options = dict(graphdef=graphdef, embed=embed)
    return np.asarray(_saliency(state, ids, lengths, target, real, nodes, **options))


def _gauss_legendre(steps: int) -> tuple[jax.Array, jax.Array]:
    """The nodes α [steps] and weights [steps] of Gauss–Legendre quadrature on [0, 1]:
    ∫₀¹ f(α) dα ≈ Σ_j w_j f(α_j)."""
    xi, w = np.polynomial.legendre.leggauss(steps)  # on [−1, 1]
    return jnp.asarray((xi + 1) / 2, jnp.float32), jnp.asarray(w / 2, jnp.float32)


@partial(jax.jit, static_argnames=("graphdef", "embed"))
def _saliency(state, ids, lengths, target, real, nodes, *, graphdef, embed) -> jax.Array:
    """``saliency``'s attributions [B, T]: gradient × input when ``nodes`` is None, else
    integrated gradients over the quadrature ``nodes`` (α [S], weights [S])."""
    model, out = _run(graphdef, state, ids, lengths)
    e = dict(nnx.iter_modules(model))[embed](ids)  # [B, T, E]
    target = _fixed_target(model, out, target)  # the same all along the path

    def output(x: jax.Array, target) -> jax.Array:  # Σ_b F_b(x): example b's gradient is row b
        model, out = _run(graphdef, state, ids, lengths, vectors=x, embed=embed)
        return explained(model, out, ids, lengths, target).sum()

    if nodes is None:
        mean_gradient = jax.grad(output)(e, target)
    else:

        def node(total, alpha_weight):  # Σ_j w_j ∂F/∂x (b + α_j (e − b)), b = 0 at real steps
            alpha, weight = alpha_weight
            x = jnp.where(real[..., None], alpha * e, e)
            return total + weight * jax.grad(output)(x, target), None

        mean_gradient, _ = jax.lax.scan(node, jnp.zeros_like(e), nodes)
    return jnp.where(real, (e * mean_gradient).sum(axis=-1), 0)  # (e − b) = e at real steps


# ----------------------------------------------------------------------------- gradient flow


def _standard_step(layer: LSTM, dtype):
    """The standard cell's step for ``scan_cell``, as ``lstm_scan``'s autodiff path runs it
    (clamps included): z = xw_t + h·U, a = activate(z), (c, h) = cell_update(a, c_prev)."""
    U = operand(layer.recurrent_kernel[...].astype(dtype), layer.dtype)

    def step(state: LSTMState, xw_t):
        z = xw_t + matmul(state.h, U, layer.dtype)
        a = clamp(activate_all(z, layer.gate_activation, layer.activation), layer.clamps, "ifgo")
        new = cell_update(a, state.c, layer.activation, layer.clamps)
        return new, None

    return step


def _perturb(layer: LSTM, delta, path: tuple, seen: dict | None) -> None:
    """Make ``layer`` (of a fresh copy of a model) add δ_t to its h_t at every step, the h
    that the next step and the layer's outputs read: h_t ← h_t + δ_t, with δ [B, T', H]
    (None: zeros; ``seen``, when given, records its shape under ``path``). The layer's own
    ``scan`` is replaced, on this one instance, by the same cell scanned with δ beside xw."""

    def scan(x, mask, initial_state, recurrent_mask, *, return_trace):
        if isinstance(layer, VariantLSTM):
            step, xw = layer.cell_step(x.dtype), time_major(layer.project(x))
        else:
            W, b = (p[...].astype(x.dtype) for p in (layer.kernel, layer.bias))
            step, xw = _standard_step(layer, x.dtype), project_all(W, b, x, layer.dtype)
        d = jnp.zeros((*x.shape[:2], layer.state_features), x.dtype) if delta is None else delta
        if seen is not None:
            seen[path] = jax.ShapeDtypeStruct(d.shape, d.dtype)
        width = xw.shape[-1]

        def perturbed(state, inputs):  # inputs [B, G + H]: xw_t, then δ_t
            new, _ = step(state, inputs[:, :width])
            return LSTMState(new.c, new.h + inputs[:, width:]), None

        both = jnp.concatenate([xw, time_major(d)], axis=-1)  # [T', B, G + H]
        options = dict(reverse=layer.reverse, unroll=layer.unroll)
        return *scan_cell(perturbed, both, mask, initial_state, **options)[:2], None

    layer.scan = scan


def _natural(name: str) -> tuple[str, ...]:
    """A layer name's sort key, numbers by value: layers/10 after layers/9."""
    return tuple(part.zfill(9) if part.isdigit() else part for part in name.split("/"))


def _flow_layers(model: nnx.Module, layer: str | None) -> tuple[tuple, ...]:
    """The paths of the LSTM layer(s) ``gradient_flow`` differentiates at: ``layer`` (a name
    of ``trace_model``'s, or a bidirectional layer's name: both directions), or None: the
    last layer in that order, both directions if bidirectional."""
    paths = {layer_name(p): p for p, m in nnx.iter_modules(model) if isinstance(m, LSTM)}
    if not paths:
        raise ValueError(f"no flaxlstm LSTM layer in a {type(model).__name__}")
    group = {name: name.removesuffix("/forward").removesuffix("/backward") for name in paths}
    layer = max(group.values(), key=_natural) if layer is None else layer
    chosen = sorted(name for name in paths if layer in (name, group[name]))
    if not chosen:
        raise ValueError(f"no LSTM layer {layer!r}; the model has {', '.join(sorted(paths))}")
    return tuple(paths[name] for name in chosen)


def gradient_flow(model: nnx.Module, ids, lengths=None, *, layer=None, target=None) -> np.ndarray:
    """‖∂F/∂h_t‖ [B, T'] at every step of an LSTM layer: how much of the gradient of the output
    F (the module docstring's) reaches each step's hidden state, through the later steps and
    the layers above (RNNbow's picture), in eval mode. Zero at padded steps.

    ``layer``: a name of ``flaxlstm.lab.traces.trace_model``'s ("lstm", "layers/1",
    "lstm/forward", ...) or a bidirectional layer's ("lstm": the norm over both directions'
    h_t together); None: the model's last LSTM layer. T' is the layer's steps (T // 2 after a
    CNN's pooling). ``ids``, ``lengths`` and ``target`` are ``saliency``'s.
    """
    (graphdef, state), (ids, lengths, target, real) = _checked(
        model, ids, lengths, target, "gradient_flow"
    )
    layers = _flow_layers(model, layer)
    norms = np.asarray(_flow(state, ids, lengths, target, graphdef=graphdef, layers=layers))
    return np.where(real, norms, 0) if norms.shape == real.shape else norms


@partial(jax.jit, static_argnames=("graphdef", "layers"))
def _flow(state, ids, lengths, target, *, graphdef, layers) -> jax.Array:
    """‖∂F/∂δ‖ [B, T'] over every unit of the ``layers``' δ (``_perturb``) at δ = 0."""
    seen = {}  # the δ shapes, found by tracing the model once (nothing computed)
    jax.eval_shape(
        lambda: _run(graphdef, state, ids, lengths, deltas=dict.fromkeys(layers), seen=seen)[1]
    )
    if len(seen) < len(layers):
        raise ValueError("the chosen LSTM layer does not run its own scan: no h_t to perturb")
    zeros = {path: jnp.zeros(seen[path].shape, seen[path].dtype) for path in layers}
    model, out = _run(graphdef, state, ids, lengths)
    target = _fixed_target(model, out, target)

    def output(deltas) -> jax.Array:  # Σ_b F_b: example b's gradient is row b
        model, out = _run(graphdef, state, ids, lengths, deltas=deltas)
        return explained(model, out, ids, lengths, target).sum()

    gradients = jax.grad(output)(zeros)  # {path: [B, T', H]}
    return jnp.sqrt(sum((g * g).sum(axis=-1) for g in gradients.values()))
