"""flaxlstm: a hand-written LSTM in JAX and Flax NNX, scanned with ``jax.lax.scan``."""

from flaxlstm.cell import Gates, LSTMState, Trace, activate, lstm_step, unit_forget_bias
from flaxlstm.layers import (
    LSTM,
    Bidirectional,
    Embedding,
    PerStep,
    check_token_ids,
    load_torch_weights,
)
from flaxlstm.recurrent import lstm_scan, make_mask

__all__ = [
    "LSTM",
    "Bidirectional",
    "Embedding",
    "Gates",
    "LSTMState",
    "PerStep",
    "Trace",
    "activate",
    "check_token_ids",
    "load_torch_weights",
    "lstm_scan",
    "lstm_step",
    "make_mask",
    "unit_forget_bias",
]
__version__ = "0.1.0"
