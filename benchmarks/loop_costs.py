"""What one step of a ``jax.lax.scan`` costs on this machine, piece by piece (issue 17).

    python benchmarks/loop_costs.py [--batch 64] [--hidden 100] [--features 32] [--steps 500]

Prints µs per step (median of several runs) of: an empty body; one tanh over [B, 4H]; the
recurrent product h·U [B, H] × [H, 4H] inside the loop, against the same product by numpy
outside any loop; and flaxlstm's LSTM layer forward and forward + backward (its hand-written
backward), so that a step's time can be set against its parts. Defaults: seed 003's shape.
"""

from __future__ import annotations

import argparse
import time

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


def loop(body, carry, steps: int):
    """A jitted scan of ``body(carry) -> carry`` over ``steps`` steps."""
    return jax.jit(lambda c: jax.lax.scan(lambda c, _: (body(c), None), c, None, length=steps)[0])


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
    print(f"B {B}, H {H}, F {F}, T {T}; h·U is {flops / 1e6:.2f} MFLOP")
    for name, seconds in per_step.items():
        rate = f" ({flops / seconds / 1e9:.0f} GFLOP/s)" if "h·U" in name else ""
        print(f"{name:32s} {seconds * 1e6:8.1f} µs per step{rate}")


if __name__ == "__main__":
    main()
