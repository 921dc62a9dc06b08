"""Train-step benchmark: flaxlstm against the LSTMs of Flax, Keras 3 (JAX) and PyTorch.

    python -m flaxlstm.bench [--shapes seed003,seed002,large] [--repeats 7]
                             [--peers flax,keras,torch,cudnn] [--json out.json]

Every implementation trains the same model, Embedding(V → E) → LSTM(E → H, last step) →
Dense(H → 1), with binary cross-entropy on the logits and Adam (learning rate 1e-3), on random
token ids of full length T (no padding). All of them run in this one process, after warm-up,
interleaved: each repetition times every implementation once, in turn, so load from other
work on the machine falls on all of them alike; medians over the repetitions are reported.

Reported per implementation: the median train-step time (forward, backward, Adam update),
tokens per second (B·T / step), the compile time (the first call for PyTorch, which compiles
nothing), XLA's memory plan of the compiled step (arguments + outputs + temporaries − aliased;
JAX only), the peak resident memory of a fresh process that builds the model and runs
``--rss-steps`` steps (``--no-rss`` skips it), and each one's step time as a ratio to
flaxlstm's. Peers that are not installed are skipped with a note (``pip install
"flaxlstm[bench]"``).

On a GPU every JAX implementation runs on JAX's default device, PyTorch on ``cuda`` (its
``nn.LSTM`` then calls cuDNN), and ``cudnn`` is ``jax.experimental.rnn.lstm`` (cuDNN through
JAX; GPU only, skipped elsewhere). Each step waits for its device (``block_until_ready`` /
``torch.cuda.synchronize``), and the peak device memory of the fresh process is reported too.

Extra implementations for ablations: ``flaxlstm-autodiff`` (the same model with the hand-written
backward of the time loop turned off, i.e. jax autodiff of the scan) and ``flaxlstm-lengths``
(flaxlstm given ``lengths``, so the masked code path runs; every length is T) and
``flaxlstm-unroll8`` (the time loop unrolled 8 steps per iteration).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SHAPES = {
    # name: batch B, time T, embedding E, hidden H, vocabulary V
    "seed003": dict(batch=64, time=500, embed=32, hidden=100, vocab=5000),
    "seed002": dict(batch=32, time=80, embed=128, hidden=128, vocab=2000),
    "large": dict(batch=128, time=200, embed=256, hidden=512, vocab=10000),
}
PEERS = ("flax", "keras", "torch", "cudnn")
EXTRA = ("flaxlstm-autodiff", "flaxlstm-lengths", "flaxlstm-unroll8")
LEARNING_RATE = 1e-3
# Environment variables that change the timings; recorded with the results.
ENVIRONMENT = ("XLA_FLAGS", "GLIBC_TUNABLES", "OMP_NUM_THREADS", "LD_PRELOAD", "KERAS_BACKEND")


@dataclass
class Runner:
    """One implementation ready to train: ``step()`` runs one train step and waits for it."""

    name: str
    step: Callable[[], None]
    compile_s: float
    xla_bytes: int | None = None


# ------------------------------------------------------------------------------- data


def make_data(shape: dict, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random token ids [B, T] (int32) and labels [B] (float32 0/1)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, shape["vocab"], (shape["batch"], shape["time"]), dtype=np.int32)
    labels = rng.integers(0, 2, shape["batch"]).astype(np.float32)
    return ids, labels


# ------------------------------------------------------------------------------- JAX peers


def _xla_bytes(compiled) -> int | None:
    """Arguments + outputs + temporaries − aliased (donated) bytes of XLA's memory plan."""
    try:
        m = compiled.memory_analysis()
        return int(
            m.argument_size_in_bytes
            + m.output_size_in_bytes
            + m.temp_size_in_bytes
            - m.alias_size_in_bytes
        )
    except Exception:  # not every backend or version reports it
        return None


def _jax_runner(name: str, loss_fn, params, *args) -> Runner:
    """A jitted, donated Adam train step of ``loss_fn(params, *args)`` (a scalar)."""
    import jax
    import optax

    tx = optax.adam(LEARNING_RATE)
    carry = (params, tx.init(params))
    args = tuple(jax.numpy.asarray(a) for a in args)

    def train_step(carry, *args):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, *args)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    start = time.perf_counter()
    compiled = jax.jit(train_step, donate_argnums=0).lower(carry, *args).compile()
    compile_s = time.perf_counter() - start
    state = [carry]

    def step():
        state[0], loss = compiled(state[0], *args)
        loss.block_until_ready()

    return Runner(name, step, compile_s, _xla_bytes(compiled))


def _nnx_runner(name: str, model, ids, labels, lengths=None) -> Runner:
    """``_jax_runner`` for an NNX model that maps ids [B, T] (and lengths) to logits [B]."""
    import optax
    from flax import nnx

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(params, ids, labels, *lengths):
        logits = nnx.merge(graphdef, params, rest)(ids, *lengths)
        return optax.sigmoid_binary_cross_entropy(logits, labels).mean()

    extra = () if lengths is None else (lengths,)
    return _jax_runner(name, loss_fn, params, ids, labels, *extra)


@contextlib.contextmanager
def switched(settings: dict):
    """Set module attributes of ``flaxlstm.recurrent`` (``HAND_WRITTEN_BACKWARD``, ...) for
    the duration: they are read while a step is traced."""
    from flaxlstm import recurrent

    saved = {name: getattr(recurrent, name) for name in settings}
    for name, value in settings.items():
        setattr(recurrent, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(recurrent, name, value)


def flaxlstm_runner(shape: dict, ids, labels, variant: str = "flaxlstm") -> Runner:
    """flaxlstm: Embedding → flaxlstm.LSTM → Linear; ``variant`` picks an ablation."""
    from flax import nnx

    import flaxlstm

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.embed = flaxlstm.Embedding(shape["vocab"], shape["embed"], rngs=rngs)
            self.lstm = flaxlstm.LSTM(shape["embed"], shape["hidden"], unroll=unroll, rngs=rngs)
            self.head = nnx.Linear(shape["hidden"], 1, rngs=rngs)

        def __call__(self, ids, lengths=None):
            return self.head(self.lstm(self.embed(ids), lengths))[..., 0]

    lengths = np.full(ids.shape[0], ids.shape[1], np.int32) if variant.endswith("lengths") else None
    unroll = 8 if variant == "flaxlstm-unroll8" else 1
    autodiff = {"HAND_WRITTEN_BACKWARD": False} if variant == "flaxlstm-autodiff" else {}
    with switched(autodiff):
        return _nnx_runner(variant, Model(nnx.Rngs(0)), ids, labels, lengths)


def flax_runner(shape: dict, ids, labels) -> Runner:
    """Flax's own LSTM: ``nnx.RNN(nnx.OptimizedLSTMCell)``, its final carry's h."""
    import jax.numpy as jnp
    from flax import nnx

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(shape["vocab"], shape["embed"], rngs=rngs)
            cell = nnx.OptimizedLSTMCell(shape["embed"], shape["hidden"], rngs=rngs)
            self.rnn = nnx.RNN(cell, return_carry=True)
            self.head = nnx.Linear(shape["hidden"], 1, rngs=rngs)

        def __call__(self, ids):
            zeros = jnp.zeros((ids.shape[0], shape["hidden"]))
            (_, h), _ = self.rnn(self.embed(ids), initial_carry=(zeros, zeros))
            return self.head(h)[..., 0]

    return _nnx_runner("flax", Model(nnx.Rngs(0)), ids, labels)


def keras_runner(shape: dict, ids, labels) -> Runner:
    """Keras 3 on JAX: ``keras.layers.LSTM``, trained with ``train_on_batch``."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    if keras.backend.backend() != "jax":
        raise RuntimeError(f"Keras runs on {keras.backend.backend()}, not jax (KERAS_BACKEND)")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((shape["time"],), dtype="int32"),
            keras.layers.Embedding(shape["vocab"], shape["embed"]),
            keras.layers.LSTM(shape["hidden"]),
            keras.layers.Dense(1),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    start = time.perf_counter()
    model.train_on_batch(ids, labels)  # traces and compiles Keras's jitted train step
    compile_s = time.perf_counter() - start

    def step():
        model.train_on_batch(ids, labels)  # returns the loss as a Python float: synchronous

    return Runner("keras", step, compile_s)


def torch_runner(shape: dict, ids, labels) -> Runner:
    """PyTorch: ``nn.Embedding`` → ``nn.LSTM(batch_first=True)`` → ``nn.Linear``, on ``cuda``
    (cuDNN's LSTM) when PyTorch sees a GPU, else on the CPU."""
    import torch

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(shape["vocab"], shape["embed"])
            self.lstm = torch.nn.LSTM(shape["embed"], shape["hidden"], batch_first=True)
            self.head = torch.nn.Linear(shape["hidden"], 1)

        def forward(self, ids):
            _, (h, _) = self.lstm(self.embed(ids))
            return self.head(h[-1])[:, 0]

    model = Model().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    ids_t = torch.from_numpy(ids).long().to(device)
    labels_t = torch.from_numpy(labels).to(device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(ids_t), labels_t)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    step()  # PyTorch compiles nothing: this is its first (cold) step
    return Runner("torch", step, time.perf_counter() - start)


def cudnn_runner(shape: dict, ids, labels) -> Runner:
    """``jax.experimental.rnn.lstm``: cuDNN's LSTM called from JAX (GPU only), with an
    embedding table and a dense head of plain arrays, trained like the NNX models."""
    import jax
    import jax.numpy as jnp
    import optax
    from jax.experimental import rnn

    E, H = shape["embed"], shape["hidden"]
    keys = jax.random.split(jax.random.key(0), 3)
    params = dict(
        embed=jax.random.normal(keys[0], (shape["vocab"], E)) * 0.05,
        lstm=rnn.init_lstm_weight(keys[1], E, H, num_layers=1, bidirectional=False),
        head=jax.random.normal(keys[2], (H,)) / np.sqrt(H),
    )
    lengths = jnp.full(ids.shape[0], ids.shape[1], jnp.int32)

    def loss_fn(params, ids, labels):
        x = params["embed"][ids]
        zeros = jnp.zeros((1, ids.shape[0], H))
        _, h, _ = rnn.lstm(x, zeros, zeros, params["lstm"], lengths, E, H, 1, 0.0, False)
        return optax.sigmoid_binary_cross_entropy(h[0] @ params["head"], labels).mean()

    return _jax_runner("cudnn", loss_fn, params, ids, labels)


RUNNERS = {
    "flaxlstm": flaxlstm_runner,
    "flaxlstm-autodiff": functools.partial(flaxlstm_runner, variant="flaxlstm-autodiff"),
    "flaxlstm-lengths": functools.partial(flaxlstm_runner, variant="flaxlstm-lengths"),
    "flaxlstm-unroll8": functools.partial(flaxlstm_runner, variant="flaxlstm-unroll8"),
    "flax": flax_runner,
    "keras": keras_runner,
    "torch": torch_runner,
    "cudnn": cudnn_runner,
}
NEEDS = {"keras": "keras", "torch": "torch"}


def available(name: str) -> str | None:
    """None when ``name`` can run here, else why not."""
    if name == "cudnn":
        import jax

        return None if jax.default_backend() == "gpu" else "needs a GPU (cuDNN), skipped"
    module = NEEDS.get(name)
    if module is None or importlib.util.find_spec(module) is not None:
        return None
    return "not installed, skipped (pip install 'flaxlstm[bench]')"


# ------------------------------------------------------------------------------- timing


def time_steps(runner: Runner, budget_s: float) -> float:
    """Seconds per step, over as many steps as fit in about ``budget_s`` (at least one)."""
    start = time.perf_counter()
    runner.step()
    one = time.perf_counter() - start
    n = max(1, int(budget_s / max(one, 1e-6)))
    start = time.perf_counter()
    for _ in range(n):
        runner.step()
    return (time.perf_counter() - start) / n


def peak_memory_mib(shape_name: str, name: str, steps: int) -> tuple[float | None, float | None]:
    """Peak resident memory and peak GPU memory (MiB; None on the CPU) of a fresh process that
    builds ``name`` and trains ``steps``.

    Resident memory is VmHWM in /proc/self/status: unlike getrusage's ru_maxrss, it starts
    afresh at exec and does not inherit this (large) process's peak. GPU memory is the
    framework allocator's peak (JAX's ``peak_bytes_in_use``, PyTorch's
    ``max_memory_allocated``); JAX's allocator reserves more than that up front.
    """
    code = f"from flaxlstm import bench; bench._memory_child({shape_name!r}, {name!r}, {steps})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        print(f"  (peak memory of {name} not measured: {done.stderr.strip().splitlines()[-1:]})")
        return None, None
    rss_kib, device_bytes = done.stdout.split()[-2:]
    return int(rss_kib) / 1024, (int(device_bytes) / 2**20 if int(device_bytes) >= 0 else None)


def _memory_child(shape_name: str, name: str, steps: int) -> None:
    shape = SHAPES[shape_name]
    runner = RUNNERS[name](shape, *make_data(shape))
    for _ in range(steps):
        runner.step()
    device_bytes = -1
    if name == "torch":
        import torch

        if torch.cuda.is_available():
            device_bytes = torch.cuda.max_memory_allocated()
    else:
        import jax

        stats = jax.local_devices()[0].memory_stats() if jax.default_backend() == "gpu" else None
        device_bytes = (stats or {}).get("peak_bytes_in_use", -1)
    with open("/proc/self/status") as f:
        rss = next(line.split()[1] for line in f if line.startswith("VmHWM:"))  # KiB
    print(rss, device_bytes)


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


def run_shape(shape_name: str, names: list[str], repeats: int, budget_s: float) -> list[dict]:
    shape = SHAPES[shape_name]
    ids, labels = make_data(shape)
    runners = []
    for name in names:
        runner = RUNNERS[name](shape, ids, labels)
        runner.step()  # warm-up: caches, allocator, thread pools
        runners.append(runner)
        print(f"  {name}: compiled in {runner.compile_s:.2f} s", flush=True)
    times = {r.name: [] for r in runners}
    for rep in range(repeats):
        order = runners if rep % 2 == 0 else runners[::-1]  # alternate who goes first
        for runner in order:
            times[runner.name].append(time_steps(runner, budget_s))
    tokens = shape["batch"] * shape["time"]
    rows = []
    for runner in runners:
        median = statistics.median(times[runner.name])
        rows.append(
            dict(
                shape=shape_name,
                name=runner.name,
                step_ms=1e3 * median,
                step_ms_all=[1e3 * t for t in times[runner.name]],
                tokens_per_s=tokens / median,
                compile_s=runner.compile_s,
                xla_mib=None if runner.xla_bytes is None else runner.xla_bytes / 2**20,
            )
        )
    base = rows[0]["step_ms"]
    for row in rows:
        row["ratio"] = row["step_ms"] / base
    return rows


def table(rows: list[dict]) -> str:
    head = (
        "| implementation | step ms (median) | min–max ms | tokens/s | compile s "
        "| XLA plan MiB | peak RSS MiB | peak GPU MiB | × flaxlstm |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        fmt = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
        lines.append(
            f"| {r['name']} | {r['step_ms']:.1f} | {min(r['step_ms_all']):.1f}–"
            f"{max(r['step_ms_all']):.1f} | {r['tokens_per_s']:,.0f} | {r['compile_s']:.2f} "
            f"| {fmt(r['xla_mib'], '.1f')} | {fmt(r.get('rss_mib'), '.0f')} "
            f"| {fmt(r.get('gpu_mib'), '.0f')} | {r['ratio']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flaxlstm bench", description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="seed003,seed002,large", help=f"of {list(SHAPES)}")
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
    args = parser.parse_args(argv)
    if args.cpus:  # before any backend starts its thread pools; RSS children inherit it
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cpus])
    shapes = [s for s in args.shapes.split(",") if s]
    peers = [p for p in args.peers.split(",") if p]
    for name in shapes + peers:
        if name not in SHAPES and name not in RUNNERS:
            parser.error(f"unknown shape or peer {name!r}")
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
    command = "python -m flaxlstm.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    results = []
    for shape_name in shapes:
        print(f"\n{shape_name}: {SHAPES[shape_name]}", flush=True)
        rows = run_shape(shape_name, names, args.repeats, args.budget)
        if not args.no_rss:
            for row in rows:
                row["rss_mib"], row["gpu_mib"] = peak_memory_mib(
                    shape_name, row["name"], args.rss_steps
                )
        print(table(rows), flush=True)
        results.extend(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(command=command, **info, results=results), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
