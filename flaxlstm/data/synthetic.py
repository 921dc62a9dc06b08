"""The seeds' synthetic sequence tasks, drawn from seeded numpy generators.

``seed`` is anything ``numpy.random.default_rng`` accepts (an int, or a list of ints such as
``[seed, 1]`` for an independent second stream).
"""

from __future__ import annotations

import numpy as np


def cumsum_sequences(n_sequences: int, n_steps: int = 10, *, seed) -> tuple[np.ndarray, np.ndarray]:
    """Seed 001's task: ``n_steps`` uniform numbers in [0, 1) per sequence, and at every step
    the label 1 once their running sum has reached ``n_steps / 4`` (0 before).

    Returns:
      x [N, T, 1] float32 and y [N, T] int32.
    """
    x = np.random.default_rng(seed).random((n_sequences, n_steps))
    y = (np.cumsum(x, axis=1) >= n_steps / 4).astype(np.int32)
    return x[..., None].astype(np.float32), y


def parity_sequences(
    n_sequences: int, n_steps: int = 10, vocabulary: int = 100, *, seed
) -> tuple[np.ndarray, np.ndarray]:
    """Seed 000's task: ``n_steps`` integers in [0, vocabulary) per sequence, labelled 1 when
    their sum is odd (the XOR of the numbers' parities).

    Returns:
      x [N, T] int32 token ids and y [N] int32.
    """
    x = np.random.default_rng(seed).integers(0, vocabulary, (n_sequences, n_steps), np.int32)
    return x, (x.sum(axis=1) % 2).astype(np.int32)


def parity_prefixes(x: np.ndarray, *, seed) -> tuple[np.ndarray, np.ndarray]:
    """Variable-length training data from parity sequences ``x`` [N, T]: a random length in
    [1, T] per sequence and the parity of that prefix alone (the rest is padding).

    Trained on these, the model sees sequences of one, two, ... numbers, so it learns the parity
    of one number, then how to carry it; on full-length sequences alone it stays at chance
    (docs/SYNTHETIC.md).

    Returns:
      lengths [N] int32 and y [N] int32.
    """
    n, t = x.shape
    lengths = np.random.default_rng(seed).integers(1, t + 1, n).astype(np.int32)
    prefix_sums = np.where(np.arange(t) < lengths[:, None], x, 0).sum(axis=1)
    return lengths, (prefix_sums % 2).astype(np.int32)


def adding_sequences(
    n_sequences: int, n_steps: int = 200, *, seed
) -> tuple[np.ndarray, np.ndarray]:
    """The adding problem (Hochreiter & Schmidhuber 1997): per step a uniform number in [0, 1)
    and a marker; exactly two steps are marked, one in each half of the sequence, and the
    target is the sum of their two numbers. Always answering 1.0 scores a mean squared error
    of 1/6 (the variance of a sum of two uniforms).

    Returns:
      x [N, T, 2] float32 (number, marker) and y [N] float32.
    """
    rng = np.random.default_rng(seed)
    values = rng.random((n_sequences, n_steps))
    half = n_steps // 2
    first = rng.integers(0, half, n_sequences)
    second = rng.integers(half, n_steps, n_sequences)
    markers = np.zeros((n_sequences, n_steps))
    rows = np.arange(n_sequences)
    markers[rows, first] = markers[rows, second] = 1
    y = values[rows, first] + values[rows, second]
    return np.stack([values, markers], axis=-1).astype(np.float32), y.astype(np.float32)


def first_token_sequences(
    n_sequences: int, n_steps: int = 20, classes: int = 4, vocabulary: int = 20, *, seed
) -> tuple[np.ndarray, np.ndarray]:
    """A multi-class memory task: the first token is a class token in [0, classes), the rest
    are random tokens of [0, vocabulary) (class tokens among them as distractors); the label
    is the first token's class. Chance is 1 / classes.

    Returns:
      x [N, T] int32 token ids and y [N] int32 class ids.
    """
    rng = np.random.default_rng(seed)
    x = rng.integers(0, vocabulary, (n_sequences, n_steps), dtype=np.int32)
    x[:, 0] = rng.integers(0, classes, n_sequences)
    return x, x[:, 0].copy()
