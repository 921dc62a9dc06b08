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
from jax.custom_batching import custom_vmap
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

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


def _threads() -> int:
    """The most threads one call of the loop takes: the CPUs this process may run on, shared
    by the CPU devices XLA runs here (``--xla_force_host_platform_device_count``), each of
    which runs its own call at the same time."""
    return max(1, len(os.sched_getaffinity(0)) // len(jax.local_devices(backend="cpu")))


def _varying(array) -> set:
    """The mesh axes along which ``array`` differs between devices inside ``shard_map``."""
    kind = jax.typeof(array)
    return set(getattr(getattr(kind, "mat", None), "varying", None) or getattr(kind, "vma", ()))


def _typed(results, operands):
    """The handler's ``results`` as ``shard_map`` must see them (XLA's custom call does not
    say it): differing between devices wherever one of the operands differs."""
    varying = tuple(set().union(*map(_varying, operands)))
    return [jax.lax.pcast(r, varying, to="varying") for r in results] if varying else results


def summed_like(primals, grads):
    """``grads`` (a pytree like ``primals``, None for none) each summed over the devices where
    it differs and its primal does not, as autodiff sums the gradient of a value that every
    device of ``shard_map`` uses (a weight, a start state) and a ``custom_vjp`` must; outside
    ``shard_map``, ``grads`` as they are."""

    def summed(primal, grad):
        extra = tuple(_varying(grad) - _varying(primal)) if grad is not None else ()
        return jax.lax.psum(grad, extra) if extra else grad

    return jax.tree.map(summed, primals, grads, is_leaf=lambda leaf: leaf is None)


def _rows_spec(arg_shapes, arg_rows, mesh):
    """The mesh axes that split the batch rows of the loop's first array (its sharding's entry
    at its batch axis ``arg_rows[0]``), or None: not split, or not evenly (then every device
    takes every row)."""
    first, axis = arg_shapes[0], arg_rows[0]
    spec = tuple(first.sharding.spec) + (None,) * len(first.shape)
    rows = spec[axis]
    names = (rows,) if isinstance(rows, str) else tuple(rows or ())
    devices = int(np.prod([mesh.shape[name] for name in names]))
    return rows if names and first.shape[axis] % devices == 0 else None


def _sharding_rule(arg_ndims, arg_rows, result_ndims, result_rows) -> tuple[str, list[str]]:
    """Shardy's rule for ``_sharded_rows``: the factor ``b`` at every batch axis, and a factor
    of its own, which must stay whole, at every other axis ("t b f, k0 k1, ... -> ...")."""
    whole = []

    def named(ndims, rows):
        def factor(d, axis):
            if d == axis:
                return "b"
            whole.append(f"k{len(whole)}")
            return whole[-1]

        return ", ".join(
            " ".join(factor(d, axis) for d in range(ndim))
            for ndim, axis in zip(ndims, rows, strict=True)
        )

    return f"{named(arg_ndims, arg_rows)} -> {named(result_ndims, result_rows)}", whole


def _sharded_rows(handler, ndims, rows):
    """``handler`` (arrays → results, of ``ndims`` = (the arrays' ranks, the results'), their
    batch rows along the axes ``rows`` = (one per array, one per result; None: no batch axis))
    as XLA's SPMD partitioner may split it over devices: each device runs it on its own rows
    with the weights whole, and a result with no batch axis (the weight gradients: sums over
    the rows) is each device's sum, added across the devices once (one all-reduce). Time,
    features and units stay whole: a device's loop runs every step of its rows. Under
    ``shard_map`` it runs on the rows it is given; under ``jax.vmap`` once per example
    (``vmap_method="sequential"``)."""
    arg_rows, result_rows = rows

    @custom_partitioning
    def run(*arrays):
        return tuple(handler(*arrays))

    def partition(mesh, arg_shapes, result_shapes):
        split = _rows_spec(arg_shapes, arg_rows, mesh)

        def along(shape, axis):
            spec = [split if d == axis else None for d in range(len(shape.shape))]
            return NamedSharding(mesh, PartitionSpec(*spec))

        def lower(*arrays):
            results = handler(*arrays)
            return tuple(
                jax.lax.psum(r, split) if axis is None and split is not None else r
                for r, axis in zip(results, result_rows, strict=True)
            )

        results = tuple(map(along, result_shapes, result_rows))
        return mesh, lower, results, tuple(map(along, arg_shapes, arg_rows))

    rule, whole = _sharding_rule(ndims[0], arg_rows, ndims[1], result_rows)
    run.def_partition(
        partition,
        infer_sharding_from_operands=lambda *args: partition(*args)[2],  # without Shardy
        sharding_rule=rule,
        need_replication_factors=tuple(whole),
    )

    @custom_vmap
    def mapped(*arrays):
        return run(*arrays)

    @mapped.def_vmap
    def _(axis_size, batched, *arrays):
        in_axes = [0 if b else None for b in batched]
        return tuple(jax.vmap(handler, in_axes=in_axes)(*arrays)), (True,) * len(result_rows)

    return mapped


def _call(name: str, shapes, *arrays, reverse: bool, mask, rmask, bf16: bool, isa: str, rows):
    """XLA's call of the handler ``name`` on float32 ``arrays``, then ``mask`` (the scan's
    [T, B, 1] booleans, True at real steps; None: every step is real) and the recurrent
    dropout mask ``rmask`` [B, H] (None: none), with outputs of ``shapes(B)`` (B: the rows
    the call is given); ``bf16``: the products on bfloat16 operands; ``isa``: the instruction
    set; ``rows``: the batch axis of each of ``arrays`` and of each result (None: none), by
    which the call splits over devices (``_sharded_rows``). The loop reads the mask as
    [T, B] float32, 1 at real steps."""
    _check(isa, "the instruction set")
    if bf16 and isa != "avx512bf16":
        raise ValueError(f"the C loop takes bfloat16 products on avx512bf16 only, not {isa}")
    empty = jnp.zeros((0,), jnp.float32)  # an unread placeholder for a missing mask
    has_mask, has_rmask = mask is not None, rmask is not None
    mask = mask[..., 0].astype(jnp.float32) if has_mask else empty
    rmask = empty if rmask is None else rmask
    attributes = dict(
        reverse=np.int32(reverse), has_mask=np.int32(has_mask), has_rmask=np.int32(has_rmask),
        bf16=np.int32(bf16), isa=np.int32(INSTRUCTION_SETS.index(isa) + 1),  # _lstm_cpu.c's
        threads=np.int32(_threads()),
    )  # fmt: skip

    def handler(*operands):
        results = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes(operands[0].shape[1])]
        call = jax.ffi.ffi_call(f"flaxlstm_{name}", results, vmap_method="sequential")
        return _typed(call(*operands, **attributes), operands)

    rows = ((*rows[0], 1 if has_mask else None, 0 if has_rmask else None), rows[1])
    arrays = (*arrays, mask, rmask)
    ndims = ([a.ndim for a in arrays], [len(s) for s in shapes(arrays[0].shape[1])])
    return _sharded_rows(handler, ndims, rows)(*arrays)


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
    time, hidden = x.shape[0], U.shape[0]
    steps = time if save else 0

    def shapes(batch):  # a, c_prev, h_prev, outputs [T, B, ...]; c_n, h_n [B, H]
        saved = [(steps, batch, 4 * hidden)] + [(steps, batch, hidden)] * 2
        return saved + [(time if outputs else 0, batch, hidden)] + [(batch, hidden)] * 2

    rows = ((1, None, None, None, 0, 0), (1, 1, 1, 1, 0, 0))  # the batch axis of each
    arrays, isa = (x, W, U, b, c0, h0), isa or instruction_set()
    *saved, out, c_n, h_n = _call(
        "LstmForward", shapes, *arrays, reverse=reverse, mask=mask, rmask=rmask, bf16=bf16,
        isa=isa, rows=rows,
    )  # fmt: skip
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

    def shapes(batch):  # dx [T, B, F]; dW, dU, db: summed over the rows; dh0, dc0, d_rmask [B, H]
        grads = [(time, batch, features), W.shape, U.shape, (4 * hidden,)] + [(batch, hidden)] * 2
        return grads + [(0,) if rmask is None else (batch, hidden)]

    if d_outputs is None:  # an empty placeholder: the loop adds nothing
        d_outputs = jnp.zeros((0, batch, hidden), jnp.float32)
    rows = (
        (1, 1, 1, 1, None, None, 0, 0, 1),
        (1, None, None, None, 0, 0, None if rmask is None else 0),
    )
    arrays, isa = (*saved, x, W, U, dh_n, dc_n, d_outputs), isa or instruction_set()
    grads = _call(
        "LstmBackward", shapes, *arrays, reverse=reverse, mask=mask, rmask=rmask, bf16=bf16,
        isa=isa, rows=rows,
    )  # fmt: skip
    return (*grads[:-1], None if rmask is None else grads[-1])
