"""The LSTM's time loop in C for the CPU (flaxlstm/_lstm_cpu.c), called from jitted code.

    available()                                        is the compiled loop installed?
    has_bfloat16()                                     can it take bfloat16 products?
    forward(x, W, U, b, c0, h0, mask, rmask, reverse, save, bf16, outputs)
        → a, c_prev, h_prev, outputs, (c_n, h_n)
    backward(saved, x, W, U, mask, rmask, dh_n, dc_n, d_outputs, reverse, bf16)
        → dx, dW, dU, db, dh0, dc0, d_rmask

On the CPU, XLA runs a ``jax.lax.scan`` step by step and pays a fixed cost for every operation
of its body at every step: at the seeds' sizes that, not arithmetic, is most of the time. The
C loop runs every step in one call, the batch rows split over the CPU's cores, each step one
product [x_t, h]·[W; U] + b over the rows that are real at that step (padded ones keep their
state without being computed), and the backward sums the weight gradients as it goes.
``recurrent.lstm_scan`` takes it for the standard cell in float32 on the CPU
(``loop="auto"``), and for bfloat16 products (``matmul_dtype``) where the CPU multiplies
bfloat16 itself (AVX512-BF16; built with ``-march=native``): operands rounded to bfloat16 as the
scan rounds them, float32 accumulation, state and gates.

XLA calls the loop through its FFI (flaxlstm/_lstm_cpu_ffi.cc), on its own buffers, in
place. The library is built with the package (setup.py; optional: where it cannot be compiled,
``available()`` is False and every loop runs on ``jax.lax.scan``). Shapes: time-major, T steps,
B rows, H units; gates [i, f, g, o] along 4H, as flaxlstm/cell.py lays them out.
"""

from __future__ import annotations

import ctypes
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np


def _load() -> ctypes.CDLL | None:
    """Load the compiled library and register its two FFI handlers with XLA."""
    spec = importlib.util.find_spec("flaxlstm._lstm_cpu")
    if spec is None or not spec.origin:
        return None
    try:
        library = ctypes.CDLL(spec.origin)
    except OSError:
        return None
    for name in ("LstmForward", "LstmBackward"):
        handler = jax.ffi.pycapsule(getattr(library, name))
        jax.ffi.register_ffi_target(f"flaxlstm_{name}", handler, platform="cpu")
    return library


_LIBRARY = _load()


def available() -> bool:
    """Whether the compiled loop is installed (``flaxlstm._lstm_cpu``)."""
    return _LIBRARY is not None


def has_bfloat16() -> bool:
    """Whether the compiled loop can take bfloat16 products: built for a CPU with AVX512-BF16."""
    return _LIBRARY is not None and bool(_LIBRARY.lstm_has_bf16())


def _call(name: str, shapes, *arrays, reverse: bool, mask, rmask, bf16: bool):
    """XLA's call of the handler ``name`` on float32 ``arrays``, then ``mask`` (the scan's
    [T, B, 1] booleans, True at real steps; None: every step is real) and the recurrent
    dropout mask ``rmask`` [B, H] (None: none), with outputs of ``shapes``; ``bf16``: the
    products on bfloat16 operands. The loop reads the mask as [T, B] float32, 1 at real
    steps."""
    if bf16 and not has_bfloat16():
        raise ValueError("the C loop cannot take bfloat16 products on this CPU (no AVX512-BF16)")
    results = tuple(jax.ShapeDtypeStruct(shape, jnp.float32) for shape in shapes)
    call = jax.ffi.ffi_call(f"flaxlstm_{name}", results, vmap_method="sequential")
    empty = jnp.zeros((0,), jnp.float32)  # an unread placeholder for a missing mask
    has_mask, has_rmask = mask is not None, rmask is not None
    mask = mask[..., 0].astype(jnp.float32) if has_mask else empty
    rmask = empty if rmask is None else rmask
    flags = dict(has_mask=np.int32(has_mask), has_rmask=np.int32(has_rmask), bf16=np.int32(bf16))
    return call(*arrays, mask, rmask, reverse=np.int32(reverse), **flags)


def forward(x, W, U, b, c0, h0, mask, rmask, reverse: bool, save=True, bf16=False, outputs=True):
    """The loop's forward pass.

    Args:
      x: the inputs [T, B, F]; W [F, 4H], U [H, 4H], b [4H]; c0, h0: the start state [B, H].
      mask: [T, B, 1] booleans, True at real steps (padded ones keep the state and output 0);
        None: every step is real.
      rmask: the recurrent dropout mask [B, H] that multiplies h where it enters h·U (the
        same at every step), or None.
      reverse: run from the last step to the first (every array stays in time order).
      save: also return what the backward needs (else None): writing it costs time.
      bf16: the products on bfloat16 operands (``has_bfloat16()`` only), float32 elsewhere.
      outputs: write the outputs (else None): only the final state is wanted.
    Returns:
      the activated gates a [T, B, 4H], the state each step started from c_prev and h_prev
      [T, B, H] (or None), the outputs [T, B, H] (or None) and the final state (c, h) [B, H]
      each.
    """
    time, batch, _ = x.shape
    hidden = U.shape[0]
    gates = 4 * hidden
    steps = time if save else 0
    shapes = [(steps, batch, gates), (steps, batch, hidden), (steps, batch, hidden)]
    shapes += [(time if outputs else 0, batch, hidden), (batch, hidden), (batch, hidden)]
    arrays = (x, W, U, b, c0, h0)
    *saved, out, c_n, h_n = _call(
        "LstmForward", shapes, *arrays, reverse=reverse, mask=mask, rmask=rmask, bf16=bf16
    )
    return (*(saved if save else [None] * 3), out if outputs else None, (c_n, h_n))


def backward(saved, x, W, U, mask, rmask, dh_n, dc_n, d_outputs, reverse: bool, bf16: bool = False):
    """The loop's backward pass, from what ``forward`` saved (a, c_prev, h_prev), its inputs
    x [T, B, F], W, U, mask and rmask, the final state's gradients dh_n, dc_n [B, H] and the
    outputs' d_outputs [T, B, H] (None: the forward wrote none), with cell.lstm_step_backward's
    math step by step. Returns dx [T, B, F], dW, dU, db, the start state's dh0, dc0 [B, H] and
    rmask's gradient [B, H] (None without one). The weight gradients are summed inside the
    loop: the per-step dz [T, B, 4H] is never stored. ``bf16`` as ``forward``'s."""
    time, batch, features = x.shape
    hidden = U.shape[0]
    shapes = [(time, batch, features), W.shape, U.shape, (4 * hidden,)] + [(batch, hidden)] * 2
    shapes.append((0,) if rmask is None else (batch, hidden))
    if d_outputs is None:  # an empty placeholder: the loop adds nothing
        d_outputs = jnp.zeros((0, batch, hidden), jnp.float32)
    arrays = (*saved, x, W, U, dh_n, dc_n, d_outputs)
    grads = _call(
        "LstmBackward", shapes, *arrays, reverse=reverse, mask=mask, rmask=rmask, bf16=bf16
    )
    return (*grads[:-1], None if rmask is None else grads[-1])
