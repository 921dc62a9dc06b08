"""Text for language models: documents of token ids, laid out in chunks for truncated
backpropagation through time (TBPTT).

A document is an int32 id array that starts with START (``vocabulary.Vocabulary.encode``); a
language model reads ``ids[:-1]`` and predicts ``ids[1:]``, so a document of n ids gives n − 1
steps. ``layout`` deals the documents to B rows (each to the row with the fewest chunks so far)
and every row reads its documents one after another in chunks of ``bptt`` steps. A document
always begins at a chunk's first step: the model's state is reset there (``Chunk.resets``) and
carried from each chunk into the row's next one otherwise. A document's last chunk is padded
(``Chunk.lengths`` counts its real steps), and so are the chunks of rows that have run out of
documents (0 real steps: the state passes through).

A long text with no documents inside (``flaxlstm train lm --text``) is cut into B contiguous
pieces (``pieces``), one per row, as PyTorch's word_language_model batchifies its corpus, each
starting with START.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from flaxlstm.checks import check_positive_int
from flaxlstm.data.imdb import read_split
from flaxlstm.data.vocabulary import PAD, START


class Chunk(NamedTuple):
    """``bptt`` steps of B rows. inputs, targets: [B, T] int32 ids (targets are the next ids);
    lengths: [B] int32, the real steps (padding after them); resets: [B] bool, True where a
    document starts at the chunk's first step (the carried state is zeroed first)."""

    inputs: np.ndarray
    targets: np.ndarray
    lengths: np.ndarray
    resets: np.ndarray


class Layout(NamedTuple):
    """Which part of which document each row reads in each chunk: ``documents`` [C, B] (the
    document's index, −1 where the row has run out) and ``parts`` [C, B] (its k-th chunk)."""

    documents: np.ndarray
    parts: np.ndarray


def steps_of(documents: Sequence[np.ndarray]) -> np.ndarray:
    """[D] the steps (predicted tokens) of each document: its length − 1."""
    return np.fromiter((len(d) - 1 for d in documents), np.int64, len(documents))


def layout(steps: np.ndarray, rows: int, bptt: int) -> Layout:
    """The chunks of documents with ``steps`` [D] (taken in this order) over ``rows`` rows."""
    check_positive_int("rows", rows)
    check_positive_int("bptt", bptt)
    if np.any(steps < 1):
        raise ValueError("every document needs at least 2 tokens (one step to predict)")
    loads = [(0, row) for row in range(rows)]  # (chunks so far, row): the lightest row first
    plan: list[list[tuple[int, int]]] = [[] for _ in range(rows)]
    for document, n in enumerate(steps):
        load, row = heapq.heappop(loads)
        parts = -(-int(n) // bptt)
        plan[row] += [(document, k) for k in range(parts)]
        heapq.heappush(loads, (load + parts, row))
    chunks = max(len(p) for p in plan)
    documents = np.full((chunks, rows), -1, np.int64)
    parts = np.zeros((chunks, rows), np.int64)
    for row, reads in enumerate(plan):
        if reads:
            documents[: len(reads), row], parts[: len(reads), row] = np.array(reads).T
    return Layout(documents, parts)


def chunk_at(documents: Sequence[np.ndarray], plan: Layout, c: int, bptt: int) -> Chunk:
    """The ``c``-th chunk of ``plan`` over ``documents``."""
    rows = plan.documents.shape[1]
    inputs = np.full((rows, bptt), PAD, np.int32)
    targets = np.full((rows, bptt), PAD, np.int32)
    lengths = np.zeros(rows, np.int32)
    for row, (d, k) in enumerate(zip(plan.documents[c], plan.parts[c], strict=True)):
        if d < 0:
            continue
        piece = documents[d][k * bptt : (k + 1) * bptt + 1]
        n = len(piece) - 1
        inputs[row, :n], targets[row, :n], lengths[row] = piece[:-1], piece[1:], n
    return Chunk(inputs, targets, lengths, plan.parts[c] == 0)


def chunks(
    documents: Sequence[np.ndarray], rows: int, bptt: int, order: np.ndarray | None = None
) -> Iterator[Chunk]:
    """Every chunk of ``documents`` (taken in ``order``) over ``rows`` rows, in order."""
    if order is not None:
        documents = [documents[i] for i in order]
    plan = layout(steps_of(documents), rows, bptt)
    for c in range(len(plan.documents)):
        yield chunk_at(documents, plan, c, bptt)


def pieces(ids: np.ndarray, rows: int) -> list[np.ndarray]:
    """One long stream of ids [N] (START first, as ``Vocabulary.encode`` gives it) cut into
    ``rows`` contiguous documents of (nearly) equal length, one for each row, each starting
    with START as every document does (so that a model generating after START has seen it
    begin text); the ids where two pieces meet are never predicted across."""
    check_positive_int("rows", rows)
    ids = np.asarray(ids, np.int32)
    body = ids[1:] if len(ids) and ids[0] == START else ids
    if len(body) < rows:
        raise ValueError(
            f"the text has {len(body)} tokens: too few for {rows} rows of at least 1 token"
            " (a smaller --batch-size, or a longer text)"
        )
    return [
        np.concatenate([[START], piece]).astype(np.int32) for piece in np.array_split(body, rows)
    ]


# ----------------------------------------------------------------------------- the texts

LM_SPLITS = ("train", "unsupervised")  # IMDB's 75,000 training reviews; never "test"


def imdb_texts(
    validation_split: float, data_dir=None, limit: int | None = None
) -> tuple[list[bytes], list[bytes]]:
    """IMDB's ``train`` and ``unsupervised`` reviews (all 75,000, or the first ``limit`` of
    them), split into (training, validation): the validation reviews are a fixed draw (the
    same for every seed) of ``validation_split`` of them."""
    texts: list[bytes] = []
    for split in LM_SPLITS:
        texts += read_split(split, data_dir, limit=None if limit is None else limit - len(texts))[0]
        if limit is not None and len(texts) >= limit:
            break
    order = np.random.default_rng(0).permutation(len(texts))
    held = max(1, int(len(texts) * validation_split))
    if held >= len(texts):
        raise ValueError(f"validation_split {validation_split} leaves no reviews to train on")
    return [texts[i] for i in order[:-held]], [texts[i] for i in order[-held:]]


def text_file(path: str | os.PathLike, validation_split: float) -> tuple[str, str]:
    """A UTF-8 text file split into (training, validation) text: the validation text is its
    last ``validation_split``, from the start of a line."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as error:
        message = f"{path} is not UTF-8 text: {error.reason} at byte {error.start}"
        raise ValueError(message) from None
    at = int(len(text) * (1 - validation_split))
    cut = text.rfind("\n", 0, at) + 1 or at
    if not text[:cut].strip() or not text[cut:].strip():
        raise ValueError(
            f"{path} is too short to hold out {validation_split} of it for validation"
            f" ({len(text)} characters)"
        )
    return text[:cut], text[cut:]
