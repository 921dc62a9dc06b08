"""The language model's train step with the full and with the sampled softmax, timed in one
process at IMDB's word-level shape (medians of several steps; the ratio is what to compare).

    python experiments/lm_softmax_speed.py [--vocab 20000] [--embedding 256] [--hidden 512]
        [--batch 64] [--bptt 50] [--samples 0,1024] [--repeats 8] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import numpy as np
from flax import nnx

from flaxlstm.data.text import Chunk
from flaxlstm.files import save_json
from flaxlstm.models import LanguageModel
from flaxlstm.recipes import Recipe
from flaxlstm.training import lm
from flaxlstm.training.loop import create_train_state


def step_seconds(args, samples: int) -> list[float]:
    """Seconds of each of ``args.repeats`` train steps (after two to compile and warm up)."""
    model = LanguageModel(args.vocab, args.embedding, args.hidden, rngs=nnx.Rngs(0))
    tx = Recipe(2e-3).optimizer(1000)
    graphdef, state = create_train_state(model, tx)
    carry = lm.zero_carry(model, args.batch)
    rng = np.random.default_rng(0)
    shape = (args.batch, args.bptt)
    chunk = Chunk(
        rng.integers(3, args.vocab, shape, dtype=np.int32),
        rng.integers(3, args.vocab, shape, dtype=np.int32),
        np.full(args.batch, args.bptt, np.int32),
        np.zeros(args.batch, bool),
    )
    times = []
    for _ in range(args.repeats + 2):
        start = time.perf_counter()
        state, carry, sums = lm.lm_train_step(
            state, carry, chunk, jax.random.key(0), graphdef=graphdef, tx=tx, samples=samples
        )
        sums.block_until_ready()
        times.append(time.perf_counter() - start)
    return times[2:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (
        ("vocab", 20000), ("embedding", 256), ("hidden", 512), ("batch", 64), ("bptt", 50),
        ("repeats", 8),
    ):  # fmt: skip
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--samples", default="0,1024", help="comma-separated; 0: full softmax")
    parser.add_argument("--out", help="write the results here as JSON")
    args = parser.parse_args()
    results = {"machine": platform.processor() or platform.machine(), **vars(args)}
    for samples in map(int, args.samples.split(",")):
        median = float(np.median(step_seconds(args, samples)))
        tokens = args.batch * args.bptt / median
        results[f"samples_{samples}"] = {"step_ms": median * 1e3, "tokens_per_second": tokens}
        print(f"samples {samples}: {median * 1e3:.0f} ms per step, {tokens:.0f} tokens/s")
    if args.out:
        save_json(args.out, results)


if __name__ == "__main__":
    main()
