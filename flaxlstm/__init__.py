"""flaxlstm: a hand-written LSTM in JAX and Flax NNX, scanned with ``jax.lax.scan``."""

from flaxlstm import _moved
from flaxlstm.cell import (
    Gates,
    LSTMState,
    Trace,
    activate,
    activate_all,
    cell_update,
    lstm_step,
    unit_forget_bias,
)
from flaxlstm.checks import check_token_ids
from flaxlstm.interop.keras import from_keras
from flaxlstm.interop.torch import load_torch_weights
from flaxlstm.layers import (
    LSTM,
    Bidirectional,
    Embedding,
    PerStep,
    capture_intermediates,
)
from flaxlstm.recurrent import lstm_scan, make_mask, scan_cell
from flaxlstm.stacked import StackedLSTM

__all__ = [
    "LSTM",
    "Bidirectional",
    "Embedding",
    "Gates",
    "LSTMState",
    "PerStep",
    "StackedLSTM",
    "Trace",
    "activate",
    "activate_all",
    "capture_intermediates",
    "cell_update",
    "check_token_ids",
    "from_keras",
    "load_torch_weights",
    "lstm_scan",
    "lstm_step",
    "make_mask",
    "scan_cell",
    "unit_forget_bias",
]
__version__ = "0.1.0"
_moved.install()  # the old import paths of moved modules (flaxlstm._moved.MOVED)
