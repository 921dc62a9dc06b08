"""Ctrl-C (SIGINT) and a scheduler's SIGTERM during training: the step under way finishes,
the run is checkpointed at that exact step, and ``TrainingInterrupted`` says where it stopped.

While ``deferred_signals`` is active the two signals only record that they came, so that a
second Ctrl-C while a checkpoint is being written cannot cut it in half; the training loop
asks ``received()`` after every step.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """Training stopped on ``signum`` after saving its state; ``exit_status`` is the shell's
    convention for a process ended by that signal (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.exit_status = 128 + signum


@contextlib.contextmanager
def deferred_signals() -> Iterator[Callable[[], int | None]]:
    """Within it, SIGINT and SIGTERM are recorded instead of acted on; yields ``received()``,
    the first signal that came (or None). The previous handlers come back on exit. Outside
    the main thread (where Python cannot handle signals) it records nothing."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    for signum in SIGNALS:
        signal.signal(signum, lambda signum, frame: received.append(signum))
    try:
        yield lambda: received[0] if received else None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
