"""An IMDB training epoch with length-bucketed batches against one padded to maxlen.

    python experiments/bucket_speed.py [--reviews 6400] [--repeats 3]

Trains seed 003's `simple` model on the first N training reviews (its settings: vocabulary
5000, maxlen 500, batch 64) both ways, interleaved in one process, after compiling every shape
once; prints the median seconds per pass and their ratio.
"""

import argparse
import time

import jax
import numpy as np
import optax
from flax import nnx

from flaxlstm.data.batches import Batch, batches
from flaxlstm.data.imdb import load_imdb
from flaxlstm.models import MODELS
from flaxlstm.training.fit import train_step
from flaxlstm.training.loop import create_train_state

TX = optax.adam(1e-3)  # one object: the optimizer is a static argument of the jitted step


def one_pass(model, data, bucket_width):
    graphdef, state = create_train_state(model, TX)
    order = np.random.default_rng(0).permutation(len(data.inputs))
    start = time.perf_counter()
    for batch in batches(data, 64, order, bucket_width=bucket_width):
        state, sums = train_step(state, batch, graphdef=graphdef, tx=TX)
    jax.block_until_ready(sums)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reviews", type=int, default=6400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bucket-width", type=int, default=50)
    args = parser.parse_args()
    imdb = load_imdb(5000, 500)
    ids, lengths, labels = (a[: args.reviews] for a in imdb.train)
    data = Batch(ids, labels, lengths)
    model = MODELS["simple"](rngs=nnx.Rngs(0))
    width = args.bucket_width
    bucketed = f"bucketed (width {width})"
    one_pass(model, data, width)  # compile every shape once
    one_pass(model, data, None)
    times = {bucketed: [], "padded to 500": []}
    for _ in range(args.repeats):
        times[bucketed].append(one_pass(model, data, width))
        times["padded to 500"].append(one_pass(model, data, None))
    medians = {name: float(np.median(t)) for name, t in times.items()}
    for name, t in times.items():
        print(
            f"{name}: median {medians[name]:.1f} s per pass of {args.reviews} reviews"
            f" (runs: {', '.join(f'{x:.1f}' for x in t)})"
        )
    print(f"speed-up: {medians['padded to 500'] / medians[bucketed]:.2f}x")


if __name__ == "__main__":
    main()
