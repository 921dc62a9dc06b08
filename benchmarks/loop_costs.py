"""What one step of a ``jax.lax.scan`` costs on this machine, piece by piece.

    python benchmarks/loop_costs.py [--batch 64] [--hidden 100] [--features 32] [--steps 500]

Prints µs per step (median of several runs) of: an empty body; one tanh over [B, 4H]; the
recurrent product h·U [B, H] × [H, 4H] inside the loop, against the same product by numpy
outside any loop; and flaxlstm's LSTM layer forward and forward + backward (its hand-written
backward), so that a step's time can be set against its parts; and a bidirectional layer's
forward + backward as two scans (flaxlstm's) or as one scan over both directions (timed in
turn). Defaults: seed 003's shape.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from flaxlstm.recurrent import lstm_scan


def median_seconds(fn, *args, repeats: int = 7) -> float:
    """The median wall time of ``fn(*args)`` after one call to compile it."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def interleaved_medians(fns: dict, *args, repeats: int = 7) -> dict[str, float]:
    """The median wall time of each of ``fns`` on ``args``, timed in turn, one call of each
    per round, so that the machine's drift falls on all alike."""
    for fn in fns.values():
        jax.block_until_ready(fn(*args))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) for name, values in times.items()}


def loop(body, carry, steps: int):
    """A jitted scan of ``body(carry) -> carry`` over ``steps`` steps."""
    return jax.jit(lambda c: jax.lax.scan(lambda c, _: (body(c), None), c, None, length=steps)[0])


def two_scans(W, U, b, x):
    """A bidirectional layer as flaxlstm.Bidirectional runs it, each direction with its own
    weights (W [2, F, 4H], U [2, H, 4H], b [2, 4H]): a forward and a reversed scan → outputs
    [B, T, 2H]."""
    forward = lstm_scan(W[0], U[0], b[0], x)[1]
    backward = lstm_scan(W[1], U[1], b[1], x, reverse=True)[1]
    return jnp.concatenate([forward, backward], axis=-1)


def one_scan(W, U, b, x):
    """The same as one loop (a lead): the backward direction reads x flipped in time,
    and jax.vmap runs the two directions as one scan whose step multiplies [2, B, H] by
    [2, H, 4H] (a batched product: the weights differ)."""
    xs = jnp.stack([x, jnp.flip(x, axis=1)])
    outputs = jax.vmap(lambda W, U, b, x: lstm_scan(W, U, b, x)[1])(W, U, b, xs)
    return jnp.concatenate([outputs[0], jnp.flip(outputs[1], axis=1)], axis=-1)


BIDIRECTIONAL = {"two scans": two_scans, "one vmapped scan": one_scan}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=100)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args(argv)
    B, H, F, T = args.batch, args.hidden, args.features, args.steps
    keys = jax.random.split(jax.random.key(0), 3)
    U = jax.random.normal(keys[0], (H, 4 * H)) * 0.05
    W = jax.random.normal(keys[1], (F, 4 * H)) * 0.05
    x = jax.random.normal(keys[2], (B, T, F))
    h, wide = jnp.ones((B, H)), jnp.ones((B, 4 * H))
    flops = 2 * B * H * 4 * H
    per_step = {
        "empty body (h + 1)": median_seconds(loop(lambda c: c + 1.0, h, T), h) / T,
        "tanh over [B, 4H]": median_seconds(loop(jnp.tanh, wide, T), wide) / T,
        "h·U in the loop": median_seconds(loop(lambda c: (c @ U)[:, :H], h, T), h) / T,
    }
    h_np, U_np = np.asarray(h), np.asarray(U)
    start = time.perf_counter()
    for _ in range(200):
        h_np @ U_np
    per_step["h·U by numpy, no loop"] = (time.perf_counter() - start) / 200
    bias = jnp.zeros(4 * H)
    forward = jax.jit(lambda W, U, x: lstm_scan(W, U, bias, x)[1].sum())
    both = jax.jit(jax.grad(lambda W, U, x: lstm_scan(W, U, bias, x)[1].sum(), argnums=(0, 1, 2)))
    per_step["LSTM layer forward"] = median_seconds(forward, W, U, x) / T
    per_step["LSTM layer forward + backward"] = median_seconds(both, W, U, x) / T
    grads = {
        name: jax.jit(jax.grad(partial(lambda f, *args: f(*args).sum(), f), (0, 1, 3)))
        for name, f in BIDIRECTIONAL.items()
    }
    W2, U2, b2 = jnp.stack([W, -W]), jnp.stack([U, -U]), jnp.zeros((2, 4 * H))
    for name, seconds in interleaved_medians(grads, W2, U2, b2, x).items():
        per_step[f"both directions, {name}, f + b"] = seconds / T
    print(f"B {B}, H {H}, F {F}, T {T}; h·U is {flops / 1e6:.2f} MFLOP")
    for name, seconds in per_step.items():
        rate = f" ({flops / seconds / 1e9:.0f} GFLOP/s)" if "h·U" in name else ""
        print(f"{name:32s} {seconds * 1e6:8.1f} µs per step{rate}")


if __name__ == "__main__":
    main()
