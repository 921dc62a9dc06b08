"""The C loop split over devices: on 2 and 4 devices of one CPU (XLA's forced host devices, in a
subprocess, since the device count is fixed when JAX starts) the compiled train step of ``fit``
calls the loop on each device's rows, with nothing of the LSTM's inputs gathered, and the
results equal one device's; under ``shard_map`` the loop runs on the rows it is given."""

import os
import subprocess
import sys

import pytest

from flaxlstm import native

pytestmark = pytest.mark.skipif(not native.available(), reason=f"no C loop: {native.why_not()}")

SCRIPT = """
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import PartitionSpec as P

from flaxlstm.data.batches import Batch
from flaxlstm.layers import LSTM, set_loop
from flaxlstm.models import ParityModel
from flaxlstm.training import fit as supervised
from flaxlstm.training.loop import create_train_state
from flaxlstm.training.processes import data_parallel, global_arrays

assert len(jax.devices()) == 4, jax.devices()
rng = np.random.default_rng(0)
ids = rng.integers(1, 20, (96, 9)).astype(np.int32)
lengths = rng.integers(1, 10, 96).astype(np.int32)
labels = rng.integers(0, 2, 96).astype(np.float32)


def model():
    m = ParityModel(20, 8, 16, rngs=nnx.Rngs(0))
    set_loop(m, "native")
    return m


# The compiled train step: the loop on B / devices rows, no all-gather anywhere.
for n in (2, 4):
    rows, replicated = data_parallel(jax.devices()[:n])
    tx = optax.adam(1e-2)
    graphdef, state = create_train_state(model(), tx)
    batch = Batch(ids[:16], labels[:16], lengths[:16], np.ones(16, np.float32))
    batch = global_arrays(batch, rows)
    lowered = supervised.train_step.lower(
        global_arrays(state, replicated), batch, graphdef=graphdef, tx=tx,
        loss=supervised.get_loss("binary_crossentropy"),
    )
    hlo = lowered.compile().as_text()
    call = r"= \\(f32\\[(\\d+),(\\d+),\\d+\\].*custom_call_target=.(flaxlstm_\\w+)"
    calls = re.findall(call, hlo)
    print(n, "calls", sorted({(name, int(b)) for t, b, name in calls}))
    print(n, "all-gathers", hlo.count("all-gather("), "all-reduces", hlo.count("all-reduce("))

# fit on 1, 2 and 4 devices: the same history and parameters.
results = []
for n in (1, 2, 4):
    m = model()
    history = supervised.fit(
        m, ids, labels, lengths=lengths, epochs=2, batch_size=16, quiet=True,
        devices=jax.devices()[:n], optimizer=optax.adam(1e-2),
    )
    results.append((history["loss"], [np.asarray(a) for a in jax.tree.leaves(nnx.state(m))]))
for loss, leaves in results[1:]:
    np.testing.assert_allclose(loss, results[0][0], rtol=1e-5)
    for a, b in zip(leaves, results[0][1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
print("fit equal on 1, 2, 4 devices")

# shard_map: each device's rows through the loop, the weight gradients summed over devices.
layer = LSTM(8, 16, loop="native", rngs=nnx.Rngs(1))
x = jnp.asarray(rng.normal(size=(16, 9, 8)), jnp.float32)
graphdef, params = nnx.split(layer)


def loss(params, x, lengths):
    return jnp.sum(nnx.merge(graphdef, params)(x, lengths) ** 2)


mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
per_device = jax.shard_map(
    jax.grad(loss),
    mesh=mesh, in_specs=(P(), P("data"), P("data")), out_specs=P(),
)
whole, split = jax.grad(loss)(params, x, lengths[:16]), jax.jit(per_device)(params, x, lengths[:16])
for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(split), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
text = jax.jit(per_device).lower(params, x, lengths[:16]).compile().as_text()
print("shard_map rows", sorted(set(re.findall(r"= \\(f32\\[\\d+,(\\d+),\\d+\\].*flaxlstm_", text))))
"""


@pytest.fixture(scope="module")
def printed() -> str:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("devices", [2, 4])
def test_each_device_runs_the_loop_on_its_own_rows_with_nothing_gathered(printed, devices):
    rows = 16 // devices
    calls = f"{devices} calls [('flaxlstm_LstmBackward', {rows}), ('flaxlstm_LstmForward', {rows})]"
    assert calls in printed
    # the gradients' one all-reduce per tree (XLA combines them), none gathered
    assert f"{devices} all-gathers 0" in printed


def test_fit_on_several_devices_equals_one_device(printed):
    assert "fit equal on 1, 2, 4 devices" in printed


def test_under_shard_map_the_loop_runs_on_the_rows_it_is_given(printed):
    assert "shard_map rows ['4']" in printed
