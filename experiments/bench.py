"""Ablations of flaxlstm's speed work, timed in one process, interleaved (docs/PERFORMANCE.md).

    python experiments/bench.py [--shape seed003] [--repeats 7] [--cpus 1]
                                [--variants flaxlstm,in-loop,after-loop,autodiff,torch]

Every variant trains benchmarks/bench.py's model (Embedding → LSTM → Dense, BCE, Adam) with one
option of ``flaxlstm.LSTM`` set:

  flaxlstm    as shipped
  in-loop     weight gradients always summed inside the backward loop
              (``accumulate_above_bytes=0``)
  after-loop  weight gradients always formed after the loop, one product over all steps
              (``accumulate_above_bytes=1 << 62``)
  autodiff    jax autodiff of the plain scan instead of the hand-written backward
              (``hand_written_backward=False``)

Any name of ``benchmarks.runners.RUNNERS`` (flax, keras, torch, ...) may be added as a
reference. The former ``original`` variant (autodiff with the input projection as first
written, ``einsum("btf,fg->tbg")``) replaced a private function of flaxlstm and is gone; its
numbers are in docs/PERFORMANCE.md's history.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks

from benchmarks.bench import SHAPES, make_data, time_interleaved  # noqa: E402
from benchmarks.runners import RUNNERS, flaxlstm_runner  # noqa: E402

VARIANTS = {  # options of flaxlstm.LSTM
    "flaxlstm": {},
    "in-loop": dict(accumulate_above_bytes=0),
    "after-loop": dict(accumulate_above_bytes=1 << 62),
    "autodiff": dict(hand_written_backward=False),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="seed003", choices=list(SHAPES))
    parser.add_argument("--variants", default="flaxlstm,in-loop,after-loop,autodiff")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per timing")
    parser.add_argument("--cpus", type=int, help="run on this many CPUs")
    args = parser.parse_args(argv)
    if args.cpus:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cpus])
    shape = SHAPES[args.shape]
    ids, labels = make_data(shape)
    runners = [
        flaxlstm_runner(shape, ids, labels, name=name, **VARIANTS[name])
        if name in VARIANTS
        else RUNNERS[name](shape, ids, labels)
        for name in args.variants.split(",")
    ]
    times = time_interleaved(runners, args.repeats, args.budget)
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
