"""An LSTM in plain numpy, one sequence and one step at a time, for checking the JAX code.

Written from the equations, independently of flaxlstm: no fused activations, no scan, no
masking tricks — padded steps are simply skipped.
"""

from __future__ import annotations

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def layer_norm(v, scale, shift=0.0, eps=1e-6):
    return (v - v.mean()) / np.sqrt(v.var() + eps) * scale + shift


def lstm_reference(
    W,
    U,
    b,
    x,
    mask=None,
    reverse=False,
    c0=None,
    h0=None,
    *,
    peephole=None,
    coupled=False,
    norms=None,
    projection=None,
    clamps=(),
):
    """W [F, 4H], U [P, 4H], b [4H], x [B, T, F], mask [B, T] (True = real step).

    Variants: ``peephole`` [3, H] (p_i, p_f, p_o); ``coupled`` (three blocks i, g, o and
    f = 1 − i); ``norms`` (γ_x [4H], γ_h [4H], γ_c [H], β_c [H]) for the layer-normalised LSTM;
    ``projection`` [H, P] for LSTMP. ``clamps``: (what, units, value) triples, each setting
    ``units`` of a gate ("i", "f", "g", "o") or state ("c", "h") to ``value`` once computed.

    Returns outputs [B, T, P] (zero at padded steps), final c [B, H], final h [B, P] and the
    per-step dict of gates, states and pre-activations (i, f, g, o, c, h, zi, zf, zg, zo),
    each [B, T, H] (h: [B, T, P]); zi, zf, zg, zo are what σ and tanh are given (coupled:
    zf = −zi, as σ(−z) = 1 − σ(z)).
    """
    B, T, _ = x.shape
    H = W.shape[1] // (3 if coupled else 4)
    P = H if projection is None else projection.shape[1]
    if mask is None:
        mask = np.ones((B, T), bool)
    out = np.zeros((B, T, P), x.dtype)
    names = ("i", "f", "g", "o", "c", "h", "zi", "zf", "zg", "zo")
    trace = {k: np.zeros((B, T, P if k == "h" else H), x.dtype) for k in names}

    def held(name, v):
        v = v.copy()
        for what, units, value in clamps:
            if what == name:
                v[list(units)] = value
        return v

    c_final = np.zeros((B, H), x.dtype)
    h_final = np.zeros((B, P), x.dtype)
    for n in range(B):
        c = np.zeros(H, x.dtype) if c0 is None else c0[n].copy()
        h = np.zeros(P, x.dtype) if h0 is None else h0[n].copy()
        order = range(T - 1, -1, -1) if reverse else range(T)
        for t in order:
            if not mask[n, t]:
                continue
            if norms is None:
                z = x[n, t] @ W + h @ U + b
            else:
                z = layer_norm(x[n, t] @ W, norms[0]) + layer_norm(h @ U, norms[1]) + b
            if coupled:
                zi, zg, zo = z[0:H], z[H : 2 * H], z[2 * H : 3 * H]
                zf = -zi
            else:
                zi, zf, zg, zo = z[0:H], z[H : 2 * H], z[2 * H : 3 * H], z[3 * H : 4 * H]
            if peephole is not None:
                zi, zf = zi + peephole[0] * c, zf + peephole[1] * c
            i = held("i", sigmoid(zi))
            f = held("f", 1 - i if coupled else sigmoid(zf))
            g = held("g", np.tanh(zg))
            c = held("c", f * c + i * g)
            if peephole is not None:
                zo = zo + peephole[2] * c
            o = held("o", sigmoid(zo))
            if norms is not None:
                h = o * np.tanh(layer_norm(c, norms[2], norms[3]))
            else:
                h = o * np.tanh(c)
            if projection is not None:
                h = h @ projection
            h = held("h", h)
            out[n, t] = h
            for k, v in zip(names, (i, f, g, o, c, h, zi, zf, zg, zo), strict=True):
                trace[k][n, t] = v
        c_final[n], h_final[n] = c, h
    return out, c_final, h_final, trace


MERGES = {
    "concat": lambda a, b: np.concatenate([a, b], axis=-1),
    "sum": lambda a, b: a + b,
    "mul": lambda a, b: a * b,
    "ave": lambda a, b: (a + b) / 2,
}


def bidirectional_reference(fwd, bwd, x, mask=None, merge="concat"):
    """fwd and bwd are (W, U, b); returns the merged per-step outputs and final h's."""
    out_f, _, h_f, _ = lstm_reference(*fwd, x, mask)
    out_b, _, h_b, _ = lstm_reference(*bwd, x, mask, reverse=True)
    return MERGES[merge](out_f, out_b), MERGES[merge](h_f, h_b)


def lengths_to_mask(lengths, T, padding="post"):
    """[B] lengths → [B, T] mask with the real tokens first ("post") or last ("pre")."""
    steps = np.arange(T)[None, :]
    lengths = np.asarray(lengths)[:, None]
    return steps < lengths if padding == "post" else steps >= T - lengths
