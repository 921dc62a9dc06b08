"""Ablations of flaxlstm's speed work, timed in one process, interleaved (docs/PERFORMANCE.md).

    python experiments/bench.py [--shape seed003] [--repeats 7] [--cpus 1]
                                [--variants flaxlstm,in-loop,after-loop,autodiff,original,torch]

Every variant trains ``flaxlstm.bench``'s model (Embedding → LSTM → Dense, BCE, Adam) with one
switch of flaxlstm/recurrent.py changed while its train step is traced:

  flaxlstm    as shipped
  in-loop     weight gradients always summed inside the backward loop
  after-loop  weight gradients always formed after the loop, one product over all steps
  autodiff    jax autodiff of the plain scan instead of the hand-written backward
  original    autodiff, and the input projection as first written: einsum("btf,fg->tbg")

Any name of ``flaxlstm.bench.RUNNERS`` (flax, keras, torch, ...) may be added as a reference.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import jax.numpy as jnp

from flaxlstm import bench


def _original_projection(W, b, x):
    return jnp.einsum("btf,fg->tbg", x, W) + b


SWITCHES = {
    "flaxlstm": {},
    "in-loop": {"ACCUMULATE_ABOVE_BYTES": 0},
    "after-loop": {"ACCUMULATE_ABOVE_BYTES": 1 << 62},
    "autodiff": {"HAND_WRITTEN_BACKWARD": False},
    "original": {"HAND_WRITTEN_BACKWARD": False, "_project_all": _original_projection},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="seed003", choices=list(bench.SHAPES))
    parser.add_argument("--variants", default="flaxlstm,in-loop,after-loop,autodiff,original")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per timing")
    parser.add_argument("--cpus", type=int, help="run on this many CPUs")
    args = parser.parse_args(argv)
    if args.cpus:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cpus])
    shape = bench.SHAPES[args.shape]
    ids, labels = bench.make_data(shape)
    runners = []
    for name in args.variants.split(","):
        if name in SWITCHES:
            with bench.switched(SWITCHES[name]):
                runner = bench.flaxlstm_runner(shape, ids, labels)
            runner.name = name
        else:
            runner = bench.RUNNERS[name](shape, ids, labels)
        runner.step()
        runners.append(runner)
    times = {r.name: [] for r in runners}
    for rep in range(args.repeats):
        for runner in runners if rep % 2 == 0 else runners[::-1]:
            times[runner.name].append(bench.time_steps(runner, args.budget))
    print(f"{args.shape} {shape}, {len(os.sched_getaffinity(0))} CPU(s), {args.repeats} repeats")
    print("| variant | step ms (median) | min–max ms | × first | XLA plan MiB |")
    print("|---|---|---|---|---|")
    base = statistics.median(times[runners[0].name])
    for r in runners:
        t = times[r.name]
        mib = "–" if r.xla_bytes is None else f"{r.xla_bytes / 2**20:.0f}"
        print(
            f"| {r.name} | {1e3 * statistics.median(t):.1f} | {1e3 * min(t):.1f}–"
            f"{1e3 * max(t):.1f} | {statistics.median(t) / base:.2f} | {mib} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
