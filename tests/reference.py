"""An LSTM in plain numpy, one sequence and one step at a time, for checking the JAX code.

Written from the equations, independently of flaxlstm: no fused activations, no scan, no
masking tricks — padded steps are simply skipped.
"""

from __future__ import annotations

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def lstm_reference(W, U, b, x, mask=None, reverse=False, c0=None, h0=None):
    """W [F, 4H], U [H, 4H], b [4H], x [B, T, F], mask [B, T] (True = real step).

    Returns outputs [B, T, H] (zero at padded steps), final c [B, H], final h [B, H] and the
    per-step gates dict (i, f, g, o, c, h), each [B, T, H].
    """
    B, T, _ = x.shape
    H = U.shape[0]
    if mask is None:
        mask = np.ones((B, T), bool)
    out = np.zeros((B, T, H), x.dtype)
    trace = {k: np.zeros((B, T, H), x.dtype) for k in "ifgoch"}
    c_final = np.zeros((B, H), x.dtype)
    h_final = np.zeros((B, H), x.dtype)
    for n in range(B):
        c = np.zeros(H, x.dtype) if c0 is None else c0[n].copy()
        h = np.zeros(H, x.dtype) if h0 is None else h0[n].copy()
        order = range(T - 1, -1, -1) if reverse else range(T)
        for t in order:
            if not mask[n, t]:
                continue
            z = x[n, t] @ W + h @ U + b
            i = sigmoid(z[0:H])
            f = sigmoid(z[H : 2 * H])
            g = np.tanh(z[2 * H : 3 * H])
            o = sigmoid(z[3 * H : 4 * H])
            c = f * c + i * g
            h = o * np.tanh(c)
            out[n, t] = h
            for k, v in zip("ifgoch", (i, f, g, o, c, h), strict=True):
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
