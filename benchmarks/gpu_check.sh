#!/usr/bin/env bash
# The GPU check of the time loop in one Pallas kernel (loop="pallas", flaxlstm/pallas.py), whole
# in under 6 minutes on one H100. From the repository root, on a machine with one NVIDIA GPU and
# JAX's CUDA plugin (no registry needed: flaxlstm goes over the packages already there):
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]          (default docs/bench)
#
# 1. tests/test_pallas.py on the GPU: the kernels compiled by Triton, not interpreted, equal to
#    the scan on outputs, states and every gradient (full float32 products: tests/conftest.py).
# 2. benchmarks/bench.py at seed003, seed002 and large: the Pallas kernel (float32, bfloat16
#    products) against PyTorch's nn.LSTM (cuDNN), jax.experimental.rnn (cuDNN through JAX) and
#    the scan with unroll 1 and 8; forward + backward + Adam step medians. Twice: float32 with
#    TF32 products on both sides (PyTorch's cuDNN default), and full float32 on both sides.
# Writes OUT_DIR/CARD-DATE-tf32.json and OUT_DIR/CARD-DATE-float32.json (CARD: h100, h200, ...). GPU_CHECK_SHAPES replaces
# the shapes (a tiny one proves the script on a CPU, where the kernel is interpreted).
set -uo pipefail
out=${1:-docs/bench}
day=$(date +%Y-%m-%d)
shapes=${GPU_CHECK_SHAPES:-seed003,seed002,large}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 ||
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # (the C loop is the CPU's; not needed)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no GPU"
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | grep -o '[A-Z][0-9]\{2,3\}' | head -1)
card=$(echo "${card:-cpu}" | tr 'A-Z' 'a-z')
python -c "import jax, flaxlstm; print('jax', jax.__version__, jax.devices())" || exit 1
status=0
timeout 120 python -m pytest -q -o addopts="" -p no:cacheprovider tests/test_pallas.py || status=1
# flaxlstm itself (loop="auto") runs the scan on a GPU: the kernel is not taken until timed.
timeout 130 python benchmarks/bench.py --shapes "$shapes" --precision tf32 \
    --peers torch,cudnn,flaxlstm-pallas,flaxlstm-bf16-pallas,flaxlstm-unroll8 \
    --repeats 5 --budget 0.2 --no-rss --json "$out/$card-$day-tf32.json" || status=1
timeout 90 python benchmarks/bench.py --shapes "$shapes" --precision highest \
    --peers torch,cudnn,flaxlstm-pallas --repeats 5 --budget 0.2 --no-rss \
    --json "$out/$card-$day-float32.json" || status=1
exit $status
