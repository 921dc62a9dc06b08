"""The standard cell's whole time loop in one Pallas kernel: ``lstm_scan(..., loop="pallas")``.

The forward and the backward are each ONE kernel launch over all T steps. The batch rows are
independent, so the grid splits them into blocks of ``BLOCK_ROWS`` and each program runs every
step for its rows, with h and c on chip between steps: no grid-wide barrier, no launch per
step. What is not recurrent is done outside the kernels as large matrix products by XLA:
before the forward, the input projection x·W + b for all steps [T, B, 4H]; after the backward,
dW = Σ xᵀ·dz, dU = Σ h_inᵀ·dz, db = Σ dz and dx = dz·Wᵀ from the per-step dz [T, B, 4H] the
backward kernel writes (``recurrent._weight_gradients_after``, shared with the scan).

Per step and block of rows, forward (cell.py's ``activate_all`` and ``cell_update``, gate by
gate, k ∈ {i, f, g, o})::

    z_k = xw_t,k + (h ⊙ r)·U_k            U_k = U[:, k-th H columns] [H, H]; r the recurrent
    i, f, o = σ(z_i), σ(z_f), σ(z_o)      dropout mask [B, H] (ones without one)
    g = tanh(z_g)
    c' = f ⊙ c + i ⊙ g,  h' = o ⊙ tanh(c')
    (c, h) = (c', h') at real steps, kept at padded ones; the output is h' there, else 0

and backward, from the saved gates a_t and the state c_t the step started from (cell.py's
``lstm_step_backward``, gate by gate)::

    dh += dout_t (real steps);  c' = f ⊙ c_t + i ⊙ g;  c̄ = dc + dh ⊙ o ⊙ (1 − tanh² c')
    dz_i = c̄ ⊙ g ⊙ i(1 − i),  dz_f = c̄ ⊙ c_t ⊙ f(1 − f),  dz_g = c̄ ⊙ i ⊙ (1 − g²),
    dz_o = dh ⊙ tanh c' ⊙ o(1 − o)          (dz = 0 at padded steps)
    dh ← r ⊙ Σ_k dz_k·U_kᵀ,  dc ← c̄ ⊙ f     (both passed on unchanged at padded steps)

tests/test_pallas.py holds both equal to the scan's loop, step functions included.

Shapes inside: H is padded to a power of two ≥ 16 per gate (Hp; the padded units have zero
weights, so they stay 0 and change nothing), B to a multiple of ``BLOCK_ROWS`` (padded rows are
padded steps) and T to a power of two (padded steps at the end: they keep the state): the
Triton backend takes power-of-two blocks only and ``jnp.dot`` needs 16 rows. ``reverse``
flips the steps outside the kernel.

Where it runs: ``jax.lax.platform_dependent`` picks the compiled kernel when lowering for CUDA
(Pallas's Triton backend) and the same kernel in Pallas's interpret mode on every other
platform: exact, slow, and what CI tests on the CPU. The choice is made by the platform being
lowered for, not by ``jax.default_backend()``, so ``jax.export`` for CUDA from a CPU machine
yields the real kernel (tests/test_pallas.py checks: one Triton call per direction, no
``while`` loop in XLA).

Budget, on paper (one H100 SM: 228 KiB of shared memory, 64 K registers): U [Hp, 4Hp] is
re-read by every program at every step rather than held on chip (float32 at H 100 → Hp 128:
256 KiB, more than an SM's shared memory; bfloat16 products: 128 KiB), from L2, where it
stays for the whole sequence (256 KiB of 50 MiB); h, c and the gates of a block live in
registers (16 rows × 128 × 4 B = 8 KiB each, 4 warps). At the large shape (H 512: U 4 MiB)
every step streams U through each SM; ``loop="auto"`` never takes this kernel (it is not
timed yet: docs/PERFORMANCE.md).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

from flaxlstm.cell import LSTMState, operand

# Rows of the batch per program: the smallest that the Triton backend's dot takes (16).
BLOCK_ROWS = 16
# Warps per program (Triton); tuned on a GPU when one is lent.
NUM_WARPS = 4


def padded_size(n: int, least: int = 16) -> int:
    """The power of two ≥ max(n, least) that a kernel's block takes."""
    return max(least, 1 << max(n - 1, 0).bit_length())


def _call(kernel, grid, in_specs, out_specs, out_shape, *args):
    """``pl.pallas_call`` compiled for CUDA (Triton) and interpreted on every other platform,
    chosen by the platform lowered for."""
    call = functools.partial(
        pl.pallas_call, kernel, grid=grid, in_specs=in_specs, out_specs=out_specs,
        out_shape=out_shape,
    )  # fmt: skip
    params = plt.CompilerParams(num_warps=NUM_WARPS, num_stages=1)
    return jax.lax.platform_dependent(
        *args,
        cuda=lambda *a: call(compiler_params=params)(*a),
        default=lambda *a: call(interpret=True)(*a),
    )


def _forward_kernel(mm_dtype, steps, hidden, save, *refs):
    """One program: ``steps`` steps for its rows. refs: xw [T, R, 4Hp], U [Hp, 4Hp],
    r [R, Hp], c0, h0 [R, Hp], m [T, R, 1] → outputs [T, R, Hp], c, h [R, Hp] and, when
    ``save``, a [T, R, 4Hp], c_prev, h_prev [T, R, Hp]."""
    xw_ref, u_ref, r_ref, c0_ref, h0_ref, m_ref, out_ref, c_ref, h_ref = refs[:9]
    gate = lambda k: pl.ds(k * hidden, hidden)  # noqa: E731  the k-th gate's columns

    def step(t, state):
        c, h = state
        h_in = (h * r_ref[...]).astype(mm_dtype)
        z = [
            xw_ref[t, :, gate(k)]
            + jnp.dot(h_in, u_ref[:, gate(k)], preferred_element_type=jnp.float32)
            for k in range(4)
        ]
        σ = jax.nn.sigmoid
        i, f, g, o = σ(z[0]), σ(z[1]), jnp.tanh(z[2]), σ(z[3])
        c_new = f * c + i * g
        h_new = o * jnp.tanh(c_new)
        real = m_ref[t] > 0  # [R, 1]
        out_ref[t] = jnp.where(real, h_new, 0.0)
        if save:
            a_ref, c_prev_ref, h_prev_ref = refs[9:]
            for k, value in enumerate((i, f, g, o)):
                a_ref[t, :, gate(k)] = value
            c_prev_ref[t], h_prev_ref[t] = c, h
        return jnp.where(real, c_new, c), jnp.where(real, h_new, h)

    c, h = jax.lax.fori_loop(0, steps, step, (c0_ref[...], h0_ref[...]))
    c_ref[...], h_ref[...] = c, h


def _backward_kernel(mm_dtype, steps, hidden, *refs):
    """One program, the steps in reverse. refs: a [T, R, 4Hp], c_prev [T, R, Hp], dout
    [T, R, Hp], m [T, R, 1], Uᵀ [4Hp, Hp], r [R, Hp], dh, dc [R, Hp] (of the final state) →
    dz [T, R, 4Hp], dh0, dc0 [R, Hp]."""
    a_ref, c_ref, dout_ref, m_ref, ut_ref, r_ref, dh_ref, dc_ref, dz_ref, dh0_ref, dc0_ref = refs
    gate = lambda k: pl.ds(k * hidden, hidden)  # noqa: E731

    def step(s, carry):
        dh, dc = carry
        t = steps - 1 - s
        real = m_ref[t] > 0
        i, f, g, o = (a_ref[t, :, gate(k)] for k in range(4))
        c_prev = c_ref[t]
        dh = dh + jnp.where(real, dout_ref[t], 0.0)
        tanh_c = jnp.tanh(f * c_prev + i * g)
        c_bar = dc + dh * o * (1 - tanh_c * tanh_c)
        dz = (
            c_bar * g * i * (1 - i),
            c_bar * c_prev * f * (1 - f),
            c_bar * i * (1 - g * g),
            dh * tanh_c * o * (1 - o),
        )
        dz = [jnp.where(real, d, 0.0) for d in dz]
        dh_in = sum(
            jnp.dot(d.astype(mm_dtype), ut_ref[gate(k), :], preferred_element_type=jnp.float32)
            for k, d in enumerate(dz)
        )
        for k, d in enumerate(dz):
            dz_ref[t, :, gate(k)] = d
        return jnp.where(real, dh_in * r_ref[...], dh), jnp.where(real, c_bar * f, dc)

    dh, dc = jax.lax.fori_loop(0, steps, step, (dh_ref[...], dc_ref[...]))
    dh0_ref[...], dc0_ref[...] = dh, dc


# ----------------------------------------------------------------------------- the wrappers


def _pad_to(a: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``a`` padded with zeros at the end of every axis to ``shape``."""
    return jnp.pad(a, [(0, n - m) for m, n in zip(a.shape, shape, strict=True)])


def _gates(a: jax.Array, hidden: int, to: int) -> jax.Array:
    """[..., 4·hidden] → [..., 4·to]: each gate's columns cut or padded to ``to``."""
    a = a.reshape(*a.shape[:-1], 4, hidden)
    a = a[..., :to] if to < hidden else _pad_to(a, (*a.shape[:-1], to))
    return a.reshape(*a.shape[:-2], 4 * to)


class _Layout:
    """The kernel's padded shapes for T steps, B rows and H units."""

    def __init__(self, steps: int, batch: int, hidden: int):
        self.steps, self.batch, self.hidden = steps, batch, hidden
        self.T, self.H = padded_size(steps, 1), padded_size(hidden)
        self.B = -(-batch // BLOCK_ROWS) * BLOCK_ROWS

    def pad(self, a: jax.Array, gates: bool = False) -> jax.Array:
        """A time-major [T, B, n] (or [B, n]) array of n = 4H (``gates``) or H columns on the
        kernel's shapes, padded with zeros: padded rows are padded steps (mask 0), padded units
        have no weights."""
        if gates:
            a = _gates(a, self.hidden, self.H)
        sizes = {3: (self.T, self.B), 2: (self.B,)}[a.ndim]
        return _pad_to(a, (*sizes, 4 * self.H if gates else self.H))

    def weights(self, U: jax.Array, dtype) -> jax.Array:
        """U [H, 4H] as the kernel's [Hp, 4Hp], in the products' ``dtype``."""
        return operand(_pad_to(_gates(U, self.hidden, self.H), (self.H, 4 * self.H)), dtype)

    def masks(self, mask, recurrent_mask, reverse: bool) -> tuple[jax.Array, jax.Array]:
        """On the kernel's shapes, in its order of steps: the step mask [T, B, 1] (1.0 at real
        steps; None: every step) and the recurrent dropout mask [B, H] (None: ones)."""
        steps = jnp.ones((self.steps, self.batch, 1)) if mask is None else mask.astype(jnp.float32)
        (steps,) = _time_order(reverse, steps)
        ones = jnp.ones((self.batch, self.hidden))
        dropout = ones if recurrent_mask is None else recurrent_mask
        return _pad_to(steps, (self.T, self.B, 1)), self.pad(dropout)

    def cut(self, a: jax.Array, gates: bool = False) -> jax.Array:
        """The real part of a padded [T, B, n] or [B, n] array."""
        a = a[: self.steps, : self.batch] if a.ndim == 3 else a[: self.batch]
        return _gates(a, self.H, self.hidden) if gates else a[..., : self.hidden]

    def specs(self, *widths):
        """Block specs: a width n gives [T, R, n] blocks, (n,) [R, n], "U" the whole [Hp, 4Hp]
        and "Ut" [4Hp, Hp]."""
        whole = {"U": (self.H, 4 * self.H), "Ut": (4 * self.H, self.H)}
        specs = []
        for w in widths:
            if w in whole:
                specs.append(pl.BlockSpec(whole[w], lambda b: (0, 0)))
            elif isinstance(w, tuple):
                specs.append(pl.BlockSpec((BLOCK_ROWS, w[0]), lambda b: (b, 0)))
            else:
                specs.append(pl.BlockSpec((self.T, BLOCK_ROWS, w), lambda b: (0, b, 0)))
        return specs

    def shapes(self, *widths):
        """Output shapes, widths as in ``specs``."""
        return [
            jax.ShapeDtypeStruct(
                (self.B, w[0]) if isinstance(w, tuple) else (self.T, self.B, w), jnp.float32
            )
            for w in widths
        ]


def _time_order(reverse: bool, *arrays):
    """The arrays [T, ...] in the order the kernel runs them (flipped for ``reverse``)."""
    return [jnp.flip(a, 0) if reverse else a for a in arrays]


def forward(
    xw, U, state: LSTMState, mask, recurrent_mask, *, reverse: bool, save: bool, matmul_dtype=None
):
    """The loop over the projected inputs xw = x·W + b [T, B, 4H] (time-major, float32), with
    U [H, 4H], the initial (c, h) [B, H], ``mask`` [T, B, 1] (None: all real) and the recurrent
    dropout mask [B, H] (or None). Returns the final state, the outputs [T, B, H] and, when
    ``save``, (a [T, B, 4H], c_prev, h_prev [T, B, H]) for ``backward``."""
    steps, batch, hidden = xw.shape[0], xw.shape[1], U.shape[0]
    lay = _Layout(steps, batch, hidden)
    mm_dtype = matmul_dtype or jnp.float32
    m, r = lay.masks(mask, recurrent_mask, reverse)
    (xw,) = _time_order(reverse, xw)
    args = (
        lay.pad(xw, gates=True),
        lay.weights(U, mm_dtype),
        r,
        lay.pad(state.c),
        lay.pad(state.h),
        m,
    )
    outs = (lay.H, (lay.H,), (lay.H,)) + ((4 * lay.H, lay.H, lay.H) if save else ())
    kernel = functools.partial(_forward_kernel, mm_dtype, steps, lay.H, save)
    in_specs = lay.specs(4 * lay.H, "U", (lay.H,), (lay.H,), (lay.H,), 1)
    results = _call(
        kernel, (lay.B // BLOCK_ROWS,), in_specs, lay.specs(*outs), lay.shapes(*outs), *args
    )
    outputs, c, h = results[:3]
    (outputs,) = _time_order(reverse, lay.cut(outputs))
    final = LSTMState(lay.cut(c), lay.cut(h))
    if not save:
        return final, outputs, None
    a, c_prev, h_prev = results[3:]
    saved = _time_order(reverse, lay.cut(a, gates=True), lay.cut(c_prev), lay.cut(h_prev))
    return final, outputs, tuple(saved)


def backward(
    saved,
    U,
    mask,
    recurrent_mask,
    d_final: LSTMState,
    d_outputs,
    *,
    reverse: bool,
    matmul_dtype=None,
):
    """The backward of ``forward`` from its ``saved`` values and the gradients of the final
    state and of the outputs [T, B, H] (or None). Returns dz [T, B, 4H] (the gradients of the
    pre-activations, for the weight gradients after the loop) and the initial state's dh0, dc0
    [B, H]."""
    a, c_prev, _ = saved
    steps, batch, hidden = c_prev.shape
    lay = _Layout(steps, batch, hidden)
    mm_dtype = matmul_dtype or jnp.float32
    m, r = lay.masks(mask, recurrent_mask, reverse)
    dout = jnp.zeros_like(c_prev) if d_outputs is None else d_outputs
    a, c_prev, dout = _time_order(reverse, a, c_prev, dout)
    Ut = lay.weights(U, mm_dtype).T
    args = (
        lay.pad(a, gates=True), lay.pad(c_prev), lay.pad(dout), m, Ut, r,
        lay.pad(d_final.h), lay.pad(d_final.c),
    )  # fmt: skip
    kernel = functools.partial(_backward_kernel, mm_dtype, steps, lay.H)
    in_specs = lay.specs(4 * lay.H, lay.H, lay.H, 1, "Ut", (lay.H,), (lay.H,), (lay.H,))
    outs = (4 * lay.H, (lay.H,), (lay.H,))
    dz, dh0, dc0 = _call(
        kernel, (lay.B // BLOCK_ROWS,), in_specs, lay.specs(*outs), lay.shapes(*outs), *args
    )
    (dz,) = _time_order(reverse, lay.cut(dz, gates=True))
    return dz, lay.cut(dh0), lay.cut(dc0)
