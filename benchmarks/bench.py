"""Train-step benchmark: flaxlstm against the LSTMs of Flax, Keras 3 (JAX) and PyTorch.

    python benchmarks/bench.py [--shapes seed003,seed002,large,64x100x128x256] [--repeats 7]
                               [--peers flax,keras,torch,cudnn] [--json out.json]

(from the repository root; ``python -m benchmarks.bench`` works too). Every implementation
(benchmarks/runners.py) trains the same model, Embedding(V → E) → LSTM(E → H, last step) →
Dense(H → 1), with binary cross-entropy on the logits and Adam (learning rate 1e-3), on random
token ids of full length T (no padding). All of them run in this one process, after warm-up,
interleaved: each repetition times every implementation once, in turn, so load from other
work on the machine falls on all of them alike; medians over the repetitions are reported.

Reported per implementation: the median train-step time (forward, backward, Adam update),
tokens per second (B·T / step), the compile time (the first call for PyTorch, which compiles
nothing), XLA's memory plan of the compiled step (arguments + outputs + temporaries − aliased;
JAX only), the peak resident memory of a fresh process that builds the model and runs
``--rss-steps`` steps (``--no-rss`` skips it), and each one's step time as a ratio to
flaxlstm's. On the CPU also the FLOP floor: the step's matrix products (the LSTM's forward
[B·T, E + H]·[E + H, 4H] and the backward's two of that size; the rest of the step is small
next to them) at the float32 rate numpy's matrix product reaches in the same run at
2048 × 2048 × 2048, and each step time as a multiple of it. Peers that are not installed are
skipped with a note (``pip install "flaxlstm[bench]"``).

On a GPU every JAX implementation runs on JAX's default device, PyTorch on ``cuda`` (its
``nn.LSTM`` then calls cuDNN), and ``cudnn`` is ``jax.experimental.rnn.lstm`` (cuDNN through
JAX; GPU only, skipped elsewhere). Each step waits for its device (``block_until_ready`` /
``torch.cuda.synchronize``), and the peak device memory of the fresh process is reported too.

Extra implementations for ablations: ``flaxlstm-autodiff`` (the same model built with
``LSTM(..., hand_written_backward=False)``, i.e. jax autodiff of the scan),
``flaxlstm-lengths`` (flaxlstm given ``lengths``, so the masked code path runs; every length
is T), ``flaxlstm-unroll8`` (``LSTM(..., unroll=8)``: 8 time steps per loop iteration),
``flaxlstm-bf16`` (bfloat16 products), ``flaxlstm-scan`` (``LSTM(..., loop="scan")``: the
steps on ``jax.lax.scan``, where ``flaxlstm`` runs them in C on the CPU, flaxlstm/native/),
``flaxlstm-avx2`` and ``flaxlstm-avx512`` (the C loop on that instruction set, where the CPU
runs it, at every shape: ``loop="native"``), ``flaxlstm-bf16-native`` and
``flaxlstm-bf16-scan`` (bfloat16 products in the C loop, where the CPU has AVX512-BF16, or on
the scan, at every shape), ``flaxlstm-pallas`` and ``flaxlstm-bf16-pallas`` (the whole loop in
one Pallas kernel per direction, ``loop="pallas"``: compiled on a CUDA GPU, interpreted, and
slow, elsewhere).

``--precision`` sets float32 matrix products alike on both sides: ``tf32`` (JAX's GPU default,
and PyTorch's for cuDNN's LSTM) or ``highest`` (full float32: JAX's
``jax_default_matmul_precision``, and TF32 off in PyTorch's matmuls and cuDNN); unset, each
library keeps its own default. The table names the path each flaxlstm row ran,
``flaxlstm[avx512bf16]``, ``flaxlstm-scan[scan]``: the C loop's instruction set
(``FLAXLSTM_NATIVE_ISA`` forces a lower one for every row) or the scan.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks

from benchmarks.runners import RUNNERS, Runner, available  # noqa: E402

SHAPES = {
    # name: batch B, time T, embedding E, hidden H, vocabulary V
    "seed003": dict(batch=64, time=500, embed=32, hidden=100, vocab=5000),
    "seed002": dict(batch=32, time=80, embed=128, hidden=128, vocab=2000),
    "large": dict(batch=128, time=200, embed=256, hidden=512, vocab=10000),
}
# Any other shape: B x T x E x H, e.g. "64x100x128x256" (vocabulary 5000).
SIZES = ("batch", "time", "embed", "hidden")


def shape_of(name: str) -> dict:
    """The shape called ``name`` in ``SHAPES``, or given as B x T x E x H; a ValueError else."""
    if name in SHAPES:
        return SHAPES[name]
    sizes = name.split("x")
    if len(sizes) != len(SIZES) or not all(s.isdigit() and int(s) > 0 for s in sizes):
        raise ValueError(f"unknown shape {name!r}: one of {list(SHAPES)} or BxTxExH")
    return dict(zip(SIZES, map(int, sizes), strict=True), vocab=5000)


def _is_shape(name: str) -> bool:
    try:
        return bool(shape_of(name))
    except ValueError:
        return False


PEERS = ("flax", "keras", "torch", "cudnn")
EXTRA = ("flaxlstm-autodiff", "flaxlstm-lengths", "flaxlstm-unroll8", "flaxlstm-bf16")
EXTRA += ("flaxlstm-scan", "flaxlstm-avx2", "flaxlstm-avx512")
EXTRA += ("flaxlstm-bf16-native", "flaxlstm-bf16-scan", "flaxlstm-pallas", "flaxlstm-bf16-pallas")
# Environment variables that change the timings; recorded with the results.
ENVIRONMENT = ("XLA_FLAGS", "GLIBC_TUNABLES", "OMP_NUM_THREADS", "LD_PRELOAD", "KERAS_BACKEND")
ENVIRONMENT += ("FLAXLSTM_NATIVE_ISA", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
ENVIRONMENT += ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
ENVIRONMENT += ("JAX_DEFAULT_MATMUL_PRECISION",)


def make_data(shape: dict, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random token ids [B, T] (int32) and labels [B] (float32 0/1)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, shape["vocab"], (shape["batch"], shape["time"]), dtype=np.int32)
    labels = rng.integers(0, 2, shape["batch"]).astype(np.float32)
    return ids, labels


# ------------------------------------------------------------------------------- timing


def time_steps(step: Callable[[], None], budget_s: float) -> float:
    """Seconds per ``step()``, over as many steps as fit in about ``budget_s`` (at least one)."""
    start = time.perf_counter()
    step()
    one = time.perf_counter() - start
    n = max(1, int(budget_s / max(one, 1e-6)))
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n


def time_interleaved(
    runners: list[Runner], repeats: int, budget_s: float
) -> dict[str, list[float]]:
    """Seconds per step of each runner (by name), ``repeats`` timings each: after one warm-up
    step each (caches, allocator, thread pools), every repetition times every runner in turn,
    alternating who goes first."""
    for runner in runners:
        runner.step()
    times = {r.name: [] for r in runners}
    for rep in range(repeats):
        for runner in runners if rep % 2 == 0 else runners[::-1]:
            times[runner.name].append(time_steps(runner.step, budget_s))
    return times


# ------------------------------------------------------------------------------- peak memory


def peak_memory_mib(shape: dict, name: str, steps: int) -> tuple[float | None, float | None]:
    """Peak resident memory and peak GPU memory (MiB; None on the CPU) of a fresh process that
    builds ``name`` for ``shape`` and trains ``steps`` (this file run with ``--memory-child``).

    Resident memory is VmHWM in /proc/self/status: unlike getrusage's ru_maxrss, it starts
    afresh at exec and does not inherit this (large) process's peak. GPU memory is the
    framework allocator's peak (JAX's ``peak_bytes_in_use``, PyTorch's
    ``max_memory_allocated``); JAX's allocator reserves more than that up front.
    """
    child = [sys.executable, __file__, "--memory-child", json.dumps(shape), name, str(steps)]
    done = subprocess.run(child, capture_output=True, text=True)
    if done.returncode:
        print(f"  (peak memory of {name} not measured: {done.stderr.strip().splitlines()[-1:]})")
        return None, None
    rss_kib, device_bytes = done.stdout.split()[-2:]
    return int(rss_kib) / 1024, (int(device_bytes) / 2**20 if int(device_bytes) >= 0 else None)


def memory_child(shape: dict, name: str, steps: int) -> None:
    """Build ``name``, train ``steps`` and print this process's peak resident KiB and the GPU
    allocator's peak bytes (-1 without a GPU). Whichever it builds, it imports flaxlstm (so jax
    and flax) first, so that the resident peaks compare alike."""
    import jax

    import flaxlstm  # noqa: F401

    runner = RUNNERS[name](shape, *make_data(shape))
    for _ in range(steps):
        runner.step()
    if name == "torch":
        import torch

        device_bytes = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else -1
    else:
        stats = jax.local_devices()[0].memory_stats() if jax.default_backend() == "gpu" else None
        device_bytes = (stats or {}).get("peak_bytes_in_use", -1)
    with open("/proc/self/status") as f:
        rss = next(line.split()[1] for line in f if line.startswith("VmHWM:"))  # KiB
    print(rss, device_bytes)


# ------------------------------------------------------------------------------- report


def versions() -> dict[str, str]:
    """Installed versions, read from the package metadata (importing Keras would pick a
    backend)."""
    found = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "flax", "optax", "keras", "torch", "numpy"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    import jax

    gpus = [d.device_kind for d in jax.devices() if d.platform == "gpu"]
    return f"{model}, {os.cpu_count()} logical CPUs" + "".join(f", {g}" for g in gpus)


def step_flops(shape: dict) -> float:
    """The train step's matrix-product FLOPs: 2·B·T·(E + H)·4H forward, twice that backward."""
    B, T, E, H = (shape[k] for k in ("batch", "time", "embed", "hidden"))
    return 3 * 2 * B * T * (E + H) * 4 * H


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """numpy's float32 matrix product n × n × n on this machine, now: the best of ``repeats``,
    GFLOP/s."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    best = min(time_steps(lambda: a @ a, budget_s=0) for _ in range(repeats))  # after a warm-up
    return 2 * n**3 / best / 1e9


def run_shape(
    shape_name: str, names: list[str], repeats: int, budget_s: float, gflops: float | None = None
) -> list[dict]:
    shape = shape_of(shape_name)
    ids, labels = make_data(shape)
    runners = []
    for name in names:
        runners.append(RUNNERS[name](shape, ids, labels))
        print(f"  {name}: compiled in {runners[-1].compile_s:.2f} s", flush=True)
    times = time_interleaved(runners, repeats, budget_s)
    tokens = shape["batch"] * shape["time"]
    rows = []
    for runner in runners:
        median = statistics.median(times[runner.name])
        rows.append(
            dict(
                shape=shape_name,
                name=runner.name,
                path=runner.path,
                step_ms=1e3 * median,
                step_ms_all=[1e3 * t for t in times[runner.name]],
                tokens_per_s=tokens / median,
                compile_s=runner.compile_s,
                xla_mib=None if runner.xla_bytes is None else runner.xla_bytes / 2**20,
            )
        )
    base = rows[0]["step_ms"]
    floor_ms = None if gflops is None else 1e3 * step_flops(shape) / (gflops * 1e9)
    for row in rows:
        row["ratio"] = row["step_ms"] / base
        row["floor_ms"] = floor_ms
        row["floor_ratio"] = None if floor_ms is None else row["step_ms"] / floor_ms
    return rows


def table(rows: list[dict]) -> str:
    head = (
        "| implementation | step ms (median) | min–max ms | tokens/s | compile s "
        "| XLA plan MiB | peak RSS MiB | peak GPU MiB | × flaxlstm | × FLOP floor |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        fmt = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
        lines.append(
            f"| {r['name']}{'[' + r['path'] + ']' if r.get('path') else ''} "
            f"| {r['step_ms']:.1f} | {min(r['step_ms_all']):.1f}–"
            f"{max(r['step_ms_all']):.1f} | {r['tokens_per_s']:,.0f} | {r['compile_s']:.2f} "
            f"| {fmt(r['xla_mib'], '.1f')} | {fmt(r.get('rss_mib'), '.0f')} "
            f"| {fmt(r.get('gpu_mib'), '.0f')} | {r['ratio']:.2f} "
            f"| {fmt(r.get('floor_ratio'), '.2f')} |"
        )
    return "\n".join(lines)


def set_precision(precision: str) -> None:
    """float32 matrix products with TF32 (``tf32``) or in full float32 (``highest``), in JAX
    and in PyTorch alike (its fresh memory processes inherit it through the environment)."""
    import jax

    jax.config.update(
        "jax_default_matmul_precision", "tensorfloat32" if precision == "tf32" else "highest"
    )
    os.environ["JAX_DEFAULT_MATMUL_PRECISION"] = jax.config.jax_default_matmul_precision
    try:
        import torch
    except ImportError:
        return
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/bench.py", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--shapes", default="seed003,seed002,large", help=f"of {list(SHAPES)}, or BxTxExH"
    )
    parser.add_argument(
        "--peers", default=",".join(PEERS), help=f"of {list(PEERS + EXTRA)}; '' for none"
    )
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repetitions")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per timing")
    parser.add_argument("--rss-steps", type=int, default=3)
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    parser.add_argument(
        "--cpus", type=int, help="run on this many CPUs (sets the affinity of this process)"
    )
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument(
        "--precision", choices=("tf32", "highest"), help="float32 products on both sides"
    )
    # The fresh process of peak_memory_mib: SHAPE (JSON) NAME STEPS.
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        shape, name, steps = args.memory_child
        memory_child(json.loads(shape), name, int(steps))
        return 0
    if args.precision:
        set_precision(args.precision)
    if args.cpus:  # before any backend starts its thread pools; RSS children inherit it
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cpus])
    shapes = [s for s in args.shapes.split(",") if s]
    peers = [p for p in args.peers.split(",") if p]
    for name in shapes + peers:
        if name not in RUNNERS and not _is_shape(name):
            parser.error(f"unknown shape or peer {name!r} (a shape: {list(SHAPES)} or BxTxExH)")
    names = ["flaxlstm"]
    for peer in peers:
        if why := available(peer):
            print(f"{peer}: {why}")
        elif peer not in names:
            names.append(peer)
    env = {k: v for k, v in os.environ.items() if k in ENVIRONMENT or k.startswith("MALLOC_")}
    info = dict(machine=machine(), versions=versions(), environment=env)
    info["cpus_used"] = len(os.sched_getaffinity(0))
    print(f"{info['machine']}, running on {info['cpus_used']};", end=" ")
    print(", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    if env:
        print("environment: " + " ".join(f"{k}={v}" for k, v in env.items()))
    command = "python benchmarks/bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    import jax

    if jax.default_backend() == "cpu":
        info["matmul_gflops"] = matmul_gflops()
        print(f"numpy float32 matrix product, 2048³: {info['matmul_gflops']:.0f} GFLOP/s")
    results = []
    for shape_name in shapes:
        print(f"\n{shape_name}: {shape_of(shape_name)}", flush=True)
        floor = info.get("matmul_gflops")
        rows = run_shape(shape_name, names, args.repeats, args.budget, floor)
        if floor:
            flops = step_flops(shape_of(shape_name))
            print(f"FLOP floor: {rows[0]['floor_ms']:.1f} ms ({flops:.3g} FLOP)")
        if not args.no_rss:
            for row in rows:
                row["rss_mib"], row["gpu_mib"] = peak_memory_mib(
                    shape_of(shape_name), row["name"], args.rss_steps
                )
        print(table(rows), flush=True)
        results.extend(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(command=command, **info, results=results), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
