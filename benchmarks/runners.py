"""The implementations the benchmark times, each ready to run one train step.

Every runner is ``runner(shape, ids, labels) -> Runner``: it builds the model Embedding(V → E)
→ LSTM(E → H, last step) → Dense(H → 1) for ``shape`` (a dict of batch B, time T, embed E,
hidden H, vocab V), with binary cross-entropy on the logits and Adam, for token ids [B, T]
(int32) and labels [B] (float32 0/1), and compiles its train step. Keras and PyTorch are
imported only by their own runners.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

LEARNING_RATE = 1e-3


@dataclass
class Runner:
    """One implementation ready to train: ``step()`` runs one train step and waits for it."""

    name: str
    step: Callable[[], None]
    compile_s: float
    xla_bytes: int | None = None
    model: object = None  # the NNX module it trains, where there is one
    path: str | None = None  # flaxlstm: the C loop's instruction set, or "scan"


# ------------------------------------------------------------------------------- JAX


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


def jax_runner(name: str, loss_fn, params, *args) -> Runner:
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


def nnx_runner(name: str, model, ids, labels, lengths=None) -> Runner:
    """``jax_runner`` for an NNX model that maps ids [B, T] (and lengths [B]) to logits [B]."""
    import optax
    from flax import nnx

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(params, ids, labels, *lengths):
        logits = nnx.merge(graphdef, params, rest)(ids, *lengths)
        return optax.sigmoid_binary_cross_entropy(logits, labels).mean()

    extra = () if lengths is None else (lengths,)
    runner = jax_runner(name, loss_fn, params, ids, labels, *extra)
    runner.model = model
    return runner


def flaxlstm_runner(
    shape: dict,
    ids,
    labels,
    name: str = "flaxlstm",
    with_lengths: bool = False,
    isa: str | None = None,
    **lstm_options,
) -> Runner:
    """flaxlstm: Embedding → ``flaxlstm.LSTM(..., **lstm_options)`` → Linear; with
    ``with_lengths`` the layer is given lengths [B] (all T), so its masked code path runs;
    ``isa``: the C loop's instruction set (``flaxlstm.native.using``; None: the CPU's best)."""
    import contextlib

    from flax import nnx

    import flaxlstm
    from flaxlstm import native
    from flaxlstm.recurrent import chosen_loop

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.embed = flaxlstm.Embedding(shape["vocab"], shape["embed"], rngs=rngs)
            self.lstm = flaxlstm.LSTM(shape["embed"], shape["hidden"], **lstm_options, rngs=rngs)
            self.head = nnx.Linear(shape["hidden"], 1, rngs=rngs)

        def __call__(self, ids, lengths=None):
            return self.head(self.lstm(self.embed(ids), lengths))[..., 0]

    lengths = np.full(ids.shape[0], ids.shape[1], np.int32) if with_lengths else None
    with native.using(isa) if isa else contextlib.nullcontext():  # while the step is traced
        runner = nnx_runner(name, Model(nnx.Rngs(0)), ids, labels, lengths)
        lstm = runner.model.lstm
        sizes = (shape["batch"], shape["embed"], shape["hidden"])
        runner.path = chosen_loop(lstm.loop, lstm.dtype, *sizes) or "scan"
    return runner


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

    return nnx_runner("flax", Model(nnx.Rngs(0)), ids, labels)


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

    return jax_runner("cudnn", loss_fn, params, ids, labels)


# ------------------------------------------------------------------------------- other frameworks


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


def _flaxlstm(name: str, **options) -> Callable[..., Runner]:
    return functools.partial(flaxlstm_runner, name=name, **options)


RUNNERS = {
    "flaxlstm": flaxlstm_runner,
    "flaxlstm-autodiff": _flaxlstm("flaxlstm-autodiff", hand_written_backward=False),
    "flaxlstm-lengths": _flaxlstm("flaxlstm-lengths", with_lengths=True),
    "flaxlstm-unroll8": _flaxlstm("flaxlstm-unroll8", unroll=8),
    "flaxlstm-bf16": _flaxlstm("flaxlstm-bf16", dtype="bfloat16"),
    "flaxlstm-scan": _flaxlstm("flaxlstm-scan", loop="scan"),
    "flaxlstm-avx2": _flaxlstm("flaxlstm-avx2", isa="avx2", loop="native"),
    "flaxlstm-avx512": _flaxlstm("flaxlstm-avx512", isa="avx512", loop="native"),
    "flaxlstm-bf16-native": _flaxlstm("flaxlstm-bf16-native", dtype="bfloat16", loop="native"),
    "flaxlstm-bf16-scan": _flaxlstm("flaxlstm-bf16-scan", dtype="bfloat16", loop="scan"),
    "flaxlstm-pallas": _flaxlstm("flaxlstm-pallas", loop="pallas"),
    "flaxlstm-bf16-pallas": _flaxlstm("flaxlstm-bf16-pallas", dtype="bfloat16", loop="pallas"),
    "flax": flax_runner,
    "keras": keras_runner,
    "torch": torch_runner,
    "cudnn": cudnn_runner,
}
NEEDS = {"keras": "keras", "torch": "torch"}
# The runners that force the C loop on one instruction set.
FORCED_ISA = {"flaxlstm-avx2": "avx2", "flaxlstm-avx512": "avx512"}
FORCED_ISA["flaxlstm-bf16-native"] = "avx512bf16"


def available(name: str) -> str | None:
    """None when ``name`` can run here, else why not."""
    if name == "cudnn":
        import jax

        return None if jax.default_backend() == "gpu" else "needs a GPU (cuDNN), skipped"
    if isa := FORCED_ISA.get(name):
        from flaxlstm import native

        return None if isa in native.instruction_sets() else f"the C loop cannot run {isa} here"
    module = NEEDS.get(name)
    if module is None or importlib.util.find_spec(module) is not None:
        return None
    return "not installed, skipped (pip install 'flaxlstm[bench]')"
