"""What the kernel loops cannot do, each said in one line: ``lstm_scan(..., loop=...)`` with the
C loop (flaxlstm/native/: ``loop="native"``, and ``"auto"`` where it takes it) or the Pallas
kernel (flaxlstm/pallas.py: ``loop="pallas"``).

- A second derivative (``jax.grad`` of ``jax.grad``, a Hessian, a gradient penalty): their
  backward pass is a hand-written kernel, which JAX cannot differentiate again.
- ``jax.export`` of the C loop: its steps are a call into flaxlstm's compiled library on this
  machine, which a serialized artifact cannot carry. (The Pallas kernel exports.)

``loop="scan"`` does both (its backward is jax code). Without this module JAX would say
"Differentiation rule for 'custom_partitioning' not implemented" or "Linearization failed to
produce known values", or list the library's custom call targets, none of which names the way
out. ``guard`` passes the loop's inputs through an identity (a primitive that adds nothing to
the compiled program) whose derivative and whose lowering for export raise these errors.
"""

from __future__ import annotations

import jax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

_guard_p = Primitive("flaxlstm_kernel_loop")  # params: loop, "pallas" or an instruction set
_guard_p.multiple_results = True
_guard_p.def_impl(lambda *arrays, loop: arrays)
_guard_p.def_abstract_eval(lambda *avals, loop: avals)


def _name(loop: str) -> str:
    """The loop in words, from ``opt.native``: "pallas" or the C loop's instruction set."""
    if loop == "pallas":
        return 'the Pallas kernel (loop="pallas")'
    return 'the C loop (loop="native", or "auto" on the CPU)'


def _second_derivative(primals, tangents, *, loop: str):
    """The identity's jvp, asked for only where a derivative reaches a kernel loop's forward
    or backward inside a derivative (the first one runs them on values: jax.custom_vjp)."""
    raise ValueError(
        f"{_name(loop)} cannot be differentiated twice (jax.grad of jax.grad, a Hessian, a"
        ' gradient penalty): its backward is a hand-written kernel; loop="scan" does it'
    )


def _batched(arrays, dims, *, loop: str):
    return _guard_p.bind(*arrays, loop=loop), dims


def _lower(ctx, *arrays, loop: str):
    """No operation: the arrays as they are; refused when lowering for ``jax.export``."""
    if ctx.module_context.lowering_parameters.for_export and loop != "pallas":
        raise ValueError(
            f"{_name(loop)} cannot be exported (jax.export): its steps call flaxlstm's compiled"
            ' library on this machine; build the layer with loop="scan" to export it'
        )
    return arrays


ad.primitive_jvps[_guard_p] = _second_derivative
batching.primitive_batchers[_guard_p] = _batched
mlir.register_lowering(_guard_p, _lower)


def guard(loop: str, tree):
    """``tree`` (a pytree of the arrays a kernel loop reads: inputs, weights, state, or in the
    backward what it saved and the incoming gradients) unchanged, through the identity whose
    derivative and export raise the errors above; ``loop``: "pallas" or an instruction set of
    the C loop (``recurrent._Options.native``)."""
    leaves, treedef = jax.tree.flatten(tree)
    return jax.tree.unflatten(treedef, _guard_p.bind(*leaves, loop=loop))
