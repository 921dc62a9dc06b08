"""fit's train step on 1 device against the same step split over N devices of the same CPU.

    python benchmarks/devices.py [--devices 2] [--shape seed003] [--repeats 5] [--steps 10]

(from the repository root). Each repetition starts one fresh process per device count, in
turn (XLA fixes its CPU devices when it starts: ``--xla_force_host_platform_device_count``),
that builds the model of ``benchmarks/bench.py``'s shape (Embedding → LSTM → Dense, the C
loop where ``loop="auto"`` takes it), places one batch of random ids as ``fit`` does
(``processes.data_parallel``: rows split over the devices, parameters replicated), runs
``fit``'s ``train_step`` twice to compile and warm up, then times ``--steps`` steps. Reported:
the median step time over the repetitions per device count, steps per second, and the ratio
to 1 device. On one CPU the devices share its cores (each device's C loop takes its share:
``flaxlstm.native``), so this measures what splitting costs or saves, not more hardware.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

STEP = """
import json, sys, time
import jax, numpy as np, optax
from flax import nnx
from benchmarks.bench import shape_of
from flaxlstm.data.batches import Batch
from flaxlstm.layers import LSTM, Embedding
from flaxlstm.training import fit as supervised
from flaxlstm.training.loop import create_train_state
from flaxlstm.training.processes import data_parallel, global_arrays

shape, steps = shape_of(sys.argv[1]), int(sys.argv[2])


class Model(nnx.Module):
    def __init__(self, rngs):
        self.embed = Embedding(shape["vocab"], shape["embed"], rngs=rngs)
        self.lstm = LSTM(shape["embed"], shape["hidden"], rngs=rngs)
        self.head = nnx.Linear(shape["hidden"], 1, rngs=rngs)

    def __call__(self, ids, lengths=None):
        return self.head(self.lstm(self.embed(ids), lengths))[..., 0]


rng = np.random.default_rng(0)
B, T = shape["batch"], shape["time"]
batch = Batch(
    rng.integers(1, shape["vocab"], (B, T)).astype(np.int32),
    rng.integers(0, 2, B).astype(np.float32), None, np.ones(B, np.float32),
)
rows, replicated = data_parallel()
tx = optax.adam(1e-3)
graphdef, state = create_train_state(Model(nnx.Rngs(0)), tx)
state, batch = global_arrays(state, replicated), global_arrays(batch, rows)
loss = supervised.get_loss("binary_crossentropy")
for _ in range(2):
    state, sums = supervised.train_step(state, batch, graphdef=graphdef, tx=tx, loss=loss)
jax.block_until_ready(sums)
start = time.perf_counter()
for _ in range(steps):
    state, sums = supervised.train_step(state, batch, graphdef=graphdef, tx=tx, loss=loss)
jax.block_until_ready(sums)
print(json.dumps({"devices": len(jax.devices()), "step_s": (time.perf_counter() - start) / steps}))
"""


def one_run(devices: int, shape: str, steps: int) -> float:
    """The mean step time (seconds) of one fresh process with ``devices`` CPU devices."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    done = subprocess.run(
        [sys.executable, "-c", STEP, shape, str(steps)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])["step_s"]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=2, help="the split to time against 1")
    parser.add_argument("--shape", default="seed003", help="of benchmarks/bench.py's SHAPES")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per process")
    args = parser.parse_args(argv)
    times: dict[int, list[float]] = {1: [], args.devices: []}
    for _ in range(args.repeats):
        for devices in times:  # interleaved: the machine's load falls on both alike
            times[devices].append(one_run(devices, args.shape, args.steps))
    base = statistics.median(times[1])
    report = {"shape": args.shape, "repeats": args.repeats, "steps": args.steps}
    for devices, runs in times.items():
        median = statistics.median(runs)
        report[f"{devices}_devices"] = {
            "median_step_ms": round(1e3 * median, 2),
            "steps_per_s": round(1 / median, 2),
            "vs_1_device": round(base / median, 3),
        }
        print(f"{devices} device(s): {1e3 * median:.1f} ms/step, {1 / median:.2f} steps/s, "
              f"{base / median:.2f}x 1 device")  # fmt: skip
    return report


if __name__ == "__main__":
    main()
