"""The train-step benchmark (benchmarks/, outside the installed package) runs end to end on a
tiny shape, and the installed package imports neither of the frameworks it compares with."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks

import jax  # noqa: E402
import pytest  # noqa: E402

from benchmarks import bench, loop_costs, runners  # noqa: E402

TINY = dict(batch=2, time=3, embed=4, hidden=5, vocab=7)


def test_bench_runs_and_writes_json(tmp_path, monkeypatch, capsys):
    """The benchmark end to end on a tiny shape (timings are not checked)."""
    monkeypatch.setitem(bench.SHAPES, "tiny", TINY)
    out = tmp_path / "bench.json"
    peers = "flax,flaxlstm-autodiff,flaxlstm-unroll8,cudnn"
    argv = ["--shapes", "tiny", "--peers", peers, "--repeats", "1"]
    assert bench.main(argv + ["--budget", "0", "--no-rss", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    names = ["flaxlstm", "flax", "flaxlstm-autodiff", "flaxlstm-unroll8"]
    if jax.default_backend() == "gpu":
        names.append("cudnn")
    else:
        assert "cudnn: needs a GPU (cuDNN), skipped" in capsys.readouterr().out
    assert [r["name"] for r in rows] == names
    assert rows[0]["ratio"] == 1.0 and all(r["step_ms"] > 0 for r in rows)
    if jax.default_backend() == "cpu":  # the FLOP floor: 3 · 2·B·T·(E + H)·4H at numpy's rate
        floor = rows[0]["floor_ms"]
        assert bench.step_flops(TINY) == 3 * 2 * 2 * 3 * (4 + 5) * 20
        assert floor > 0 and rows[1]["floor_ratio"] == pytest.approx(rows[1]["step_ms"] / floor)


def test_peak_memory_comes_from_a_fresh_process():
    """benchmarks/bench.py run as its own ``--memory-child``: peak resident and GPU memory."""
    rss_mib, gpu_mib = bench.peak_memory_mib(TINY, "flaxlstm", 1)
    assert rss_mib > 0
    assert gpu_mib > 0 if jax.default_backend() == "gpu" else gpu_mib is None


def test_bench_refuses_unknown_names():
    with pytest.raises(SystemExit):
        bench.main(["--shapes", "huge"])
    with pytest.raises(SystemExit):
        bench.main(["--shapes", "64x100x0x256"])


def test_a_shape_can_be_given_as_its_sizes():
    assert bench.shape_of("64x100x128x256") == dict(
        batch=64, time=100, embed=128, hidden=256, vocab=5000
    )
    assert bench.shape_of("seed003") is bench.SHAPES["seed003"]


def test_the_ablation_runners_build_their_layer_with_the_option():
    ids, labels = bench.make_data(TINY)
    forced = runners.RUNNERS["flaxlstm-bf16-scan"](TINY, ids, labels)  # reports its path
    assert (forced.path, forced.model.lstm.loop) == ("scan", "scan")
    autodiff = runners.RUNNERS["flaxlstm-autodiff"](TINY, ids, labels)
    assert autodiff.name == "flaxlstm-autodiff"
    assert autodiff.model.lstm.hand_written_backward is False
    assert runners.flaxlstm_runner(TINY, ids, labels).model.lstm.hand_written_backward is True


def test_loop_costs_prints_every_piece(capsys):
    loop_costs.main(["--batch", "2", "--hidden", "3", "--features", "2", "--steps", "4"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "B 2, H 3, F 2, T 4; h·U is 0.00 MFLOP" and len(lines) == 9
    assert all("µs per step" in line for line in lines[1:])
