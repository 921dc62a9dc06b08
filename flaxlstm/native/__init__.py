"""The LSTM's time loop in C for the CPU (_lstm_cpu.c beside this file), called from jitted code.

Its functions::

    available()                                        can the compiled loop run here?
    why_not()                                          if not, why (None when it can)
    instruction_set()                                  the instruction set it runs on
    instruction_sets()                                 every set this CPU runs, lowest first
    using(name)                                        (a context) run it on a lower set
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
bfloat16 itself (AVX512-BF16): operands rounded to bfloat16 as the scan rounds them, float32
accumulation, state and gates.

Instruction sets (``INSTRUCTION_SETS``): the library is compiled for every x86-64 CPU, with
its steps compiled again for AVX2 + FMA ("avx2": 8-float vectors, 6-row product tiles) and
AVX-512 ("avx512": 16-float vectors, 8-row tiles; "avx512bf16" adds the bfloat16 products).
The best set the CPU runs is chosen when this module is loaded; the environment variable
``FLAXLSTM_NATIVE_ISA`` forces a lower one (to compare or test the paths on one machine), and
asking for one the CPU cannot run is refused in one line. A CPU without AVX2 + FMA, another
platform than x86-64 Linux, or a package installed without a C compiler runs every loop on
``jax.lax.scan``; ``why_not()`` says which.

XLA calls the loop through its FFI (_lstm_cpu_ffi.cc), on its own buffers, in
place; the instruction set is an attribute of each call, fixed when the call is traced, so a
forward and its backward always run on the same one. Shapes: time-major, T steps, B rows, H
units; gates [i, f, g, o] along 4H, as flaxlstm/cell.py lays them out.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import importlib.util
import os
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np

# The loop's instruction sets, lowest first; each runs only on CPUs that run the ones before.
INSTRUCTION_SETS = ("avx2", "avx512", "avx512bf16")
ENVIRONMENT_VARIABLE = "FLAXLSTM_NATIVE_ISA"


def _load() -> tuple[ctypes.CDLL | None, str | None]:
    """The compiled library with its two FFI handlers registered with XLA, or None and why
    not."""
    machine = platform.machine().lower()
    if sys.platform != "linux" or machine not in ("x86_64", "amd64"):
        return None, f"it is built for x86-64 Linux only, not {sys.platform} on {machine}"
    spec = importlib.util.find_spec("flaxlstm.native._lstm_cpu")
    if spec is None or not spec.origin:
        return None, "flaxlstm.native._lstm_cpu was not built at install (setup.py needs gcc)"
    try:
        library = ctypes.CDLL(spec.origin)
    except OSError as error:
        return None, f"flaxlstm.native._lstm_cpu does not load: {error}"
    library.lstm_jaxlib.restype = ctypes.c_char_p
    if library.lstm_best_isa() == 0:
        return None, "the CPU has no AVX2 + FMA"
    try:
        for name in ("LstmForward", "LstmBackward"):
            handler = jax.ffi.pycapsule(getattr(library, name))
            jax.ffi.register_ffi_target(f"flaxlstm_{name}", handler, platform="cpu")
    except Exception as error:  # XLA refuses handlers built with an FFI header it cannot take
        built, ours = library.lstm_jaxlib().decode(), importlib.metadata.version("jaxlib")
        return None, (
            f"jaxlib {ours} refuses its XLA FFI handlers, compiled with jaxlib {built}'s header"
            f" ({error}); reinstall flaxlstm with this jaxlib"
        )
    return library, None


_LIBRARY, _WHY_NOT = _load()
_BEST = INSTRUCTION_SETS[_LIBRARY.lstm_best_isa() - 1] if _LIBRARY is not None else None
_using: list[str] = []  # the sets ``using`` blocks chose, innermost last


def available() -> bool:
    """Whether the compiled loop can run here (``why_not()`` says why not)."""
    return _LIBRARY is not None


def why_not() -> str | None:
    """Why the compiled loop cannot run here (not x86-64 Linux, not built at install, no AVX2
    + FMA, a jaxlib that refuses it), found once when this module is loaded; None when it
    can."""
    return _WHY_NOT


def instruction_sets() -> tuple[str, ...]:
    """The instruction sets the loop can run on this CPU, lowest first (none without it)."""
    if _BEST is None:
        return ()
    return INSTRUCTION_SETS[: INSTRUCTION_SETS.index(_BEST) + 1]


def _check(name: str, where: str) -> str:
    if name not in INSTRUCTION_SETS:
        raise ValueError(f"{where} must be one of {', '.join(INSTRUCTION_SETS)}, got {name!r}")
    if name not in instruction_sets():
        runs = ", ".join(instruction_sets()) or f"none: {_WHY_NOT}"
        raise ValueError(f"{where}={name} cannot run on this CPU (it runs {runs})")
    return name


def instruction_set() -> str | None:
    """The instruction set the loop runs on: the innermost ``using`` block's, else
    ``$FLAXLSTM_NATIVE_ISA`` (a lower one than the CPU's best, checked here), else the best
    this CPU runs; None where the loop cannot run."""
    if _using:
        return _using[-1]
    forced = os.environ.get(ENVIRONMENT_VARIABLE)
    if forced and _BEST is not None:
        return _check(forced, ENVIRONMENT_VARIABLE)
    return _BEST


@contextlib.contextmanager
def using(name: str):
    """Run the loop on the instruction set ``name`` (one this CPU runs) in the traces made
    inside the block: for tests and benchmarks that compare the sets in one process. Already
    compiled functions keep the set they were traced with."""
    _using.append(_check(name, "the instruction set"))
    try:
        yield
    finally:
        _using.pop()


def has_bfloat16() -> bool:
    """Whether the loop can take bfloat16 products: it runs on "avx512bf16"."""
    return instruction_set() == "avx512bf16"


def _call(name: str, shapes, *arrays, reverse: bool, mask, rmask, bf16: bool, isa: str):
    """XLA's call of the handler ``name`` on float32 ``arrays``, then ``mask`` (the scan's
    [T, B, 1] booleans, True at real steps; None: every step is real) and the recurrent
    dropout mask ``rmask`` [B, H] (None: none), with outputs of ``shapes``; ``bf16``: the
    products on bfloat16 operands; ``isa``: the instruction set. The loop reads the mask as
    [T, B] float32, 1 at real steps."""
    _check(isa, "the instruction set")
    if bf16 and isa != "avx512bf16":
        raise ValueError(f"the C loop takes bfloat16 products on avx512bf16 only, not {isa}")
    results = tuple(jax.ShapeDtypeStruct(shape, jnp.float32) for shape in shapes)
    call = jax.ffi.ffi_call(f"flaxlstm_{name}", results, vmap_method="sequential")
    empty = jnp.zeros((0,), jnp.float32)  # an unread placeholder for a missing mask
    has_mask, has_rmask = mask is not None, rmask is not None
    mask = mask[..., 0].astype(jnp.float32) if has_mask else empty
    rmask = empty if rmask is None else rmask
    flags = dict(has_mask=np.int32(has_mask), has_rmask=np.int32(has_rmask), bf16=np.int32(bf16))
    code = np.int32(INSTRUCTION_SETS.index(isa) + 1)  # _lstm_cpu.c's ISA_AVX2, ...
    return call(*arrays, mask, rmask, reverse=np.int32(reverse), isa=code, **flags)


def forward(
    x, W, U, b, c0, h0, mask, rmask, reverse: bool, save=True, bf16=False, outputs=True, isa=None
):
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
      isa: the instruction set (None: ``instruction_set()``); the backward runs on the same
        one (``lstm_scan`` fixes it when it traces both).
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
    isa = isa or instruction_set()
    *saved, out, c_n, h_n = _call(
        "LstmForward", shapes, *arrays, reverse=reverse, mask=mask, rmask=rmask, bf16=bf16, isa=isa
    )
    return (*(saved if save else [None] * 3), out if outputs else None, (c_n, h_n))


def backward(
    saved, x, W, U, mask, rmask, dh_n, dc_n, d_outputs, reverse: bool, bf16=False, isa=None
):
    """The loop's backward pass, from what ``forward`` saved (a, c_prev, h_prev), its inputs
    x [T, B, F], W, U, mask and rmask, the final state's gradients dh_n, dc_n [B, H] and the
    outputs' d_outputs [T, B, H] (None: the forward wrote none), with cell.lstm_step_backward's
    math step by step. Returns dx [T, B, F], dW, dU, db, the start state's dh0, dc0 [B, H] and
    rmask's gradient [B, H] (None without one). The weight gradients are summed inside the
    loop: the per-step dz [T, B, 4H] is never stored. ``bf16`` and ``isa`` as ``forward``'s
    (the same as the forward ran with)."""
    time, batch, features = x.shape
    hidden = U.shape[0]
    shapes = [(time, batch, features), W.shape, U.shape, (4 * hidden,)] + [(batch, hidden)] * 2
    shapes.append((0,) if rmask is None else (batch, hidden))
    if d_outputs is None:  # an empty placeholder: the loop adds nothing
        d_outputs = jnp.zeros((0, batch, hidden), jnp.float32)
    arrays = (*saved, x, W, U, dh_n, dc_n, d_outputs)
    isa = isa or instruction_set()
    grads = _call(
        "LstmBackward", shapes, *arrays, reverse=reverse, mask=mask, rmask=rmask, bf16=bf16, isa=isa
    )
    return (*grads[:-1], None if rmask is None else grads[-1])
