"""Text as token ids, for every data set here (IMDB's reviews, language-model text):
tokenisers, the ``Vocabulary`` and the special ids.

The ids follow ``keras.datasets.imdb``: ``PAD`` 0 pads, ``START`` 1 starts every text, ``OOV``
2 stands for a token outside the vocabulary, and the tokens take 3, 4, ... (``FIRST_WORD``) by
falling frequency. A vocabulary of size N (Keras's ``num_words``) uses the ids [0, N).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import chain
from pathlib import Path
from typing import Literal

import numpy as np

from flaxlstm.files import atomic_write

PAD, START, OOV = 0, 1, 2
FIRST_WORD = 3  # the id of the most frequent word; ids below it are reserved

# ----------------------------------------------------------------------------- tokenising

TOKENIZER_VERSION = 1  # part of every cache key: bump it whenever ``tokenize`` changes

# A word is a run of letters/digits, keeping inner apostrophes ("don't", "walken's"); every
# other non-space character (punctuation, symbols) is a token of its own.
_TOKEN = re.compile(r"\w+(?:'\w+)*|[^\w\s]")


def tokenize(text: str | bytes) -> list[str]:
    """Lower-case tokens of one review, ``<br />`` line breaks removed and punctuation split
    off: ``b"Great!<br />Don't"`` → ``["great", "!", "don't"]``."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if not isinstance(text, str):
        raise TypeError(f"a text must be str or bytes, got {type(text).__name__}")
    return _TOKEN.findall(text.lower().replace("<br />", " "))


def tokenize_chars(text: str | bytes) -> list[str]:
    """The characters of one text, case kept, each ``<br />`` a line break: ``b"Hi!<br />"``
    → ``["H", "i", "!", "\\n"]`` (for character-level language models)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if not isinstance(text, str):
        raise TypeError(f"a text must be str or bytes, got {type(text).__name__}")
    return list(text.replace("<br />", "\n"))


TOKENIZERS = {"word": tokenize, "char": tokenize_chars}


# ----------------------------------------------------------------------------- vocabulary


class _WordIds(dict):
    """word → id, with the out-of-vocabulary id for unknown words (lookups stay in C)."""

    def __missing__(self, word: str) -> int:
        return OOV


class Vocabulary:
    """The ``len(words) + 3`` token ids: PAD 0, START 1, OOV 2, then ``words[i]`` is id i + 3.

    ``size`` is the embedding's row count: every id it produces is < size. ``level`` says what
    a token is: ``"word"`` (``tokenize``) or ``"char"`` (``tokenize_chars``, for language
    models); its "words" are then characters.
    """

    def __init__(self, words: Sequence[str], level: Literal["word", "char"] = "word"):
        if level not in TOKENIZERS:
            raise ValueError(f"level must be one of {sorted(TOKENIZERS)}, got {level!r}")
        self.level = level
        self.words = tuple(words)
        self.ids = _WordIds((word, FIRST_WORD + i) for i, word in enumerate(self.words))
        if len(self.ids) != len(self.words):
            raise ValueError("vocabulary words must be distinct")

    @property
    def size(self) -> int:
        return FIRST_WORD + len(self.words)

    @classmethod
    def fit(
        cls, tokenized: Iterable[Sequence[str]], size: int, level: Literal["word", "char"] = "word"
    ) -> Vocabulary:
        """The ``size − 3`` most frequent tokens of ``tokenized`` (ties broken alphabetically,
        so the vocabulary does not depend on the order of the reviews)."""
        if size < FIRST_WORD:
            raise ValueError(f"vocabulary size must be at least {FIRST_WORD}, got {size}")
        counts = Counter(chain.from_iterable(tokenized))
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return cls([word for word, _ in ranked[: size - FIRST_WORD]], level)

    def encode_tokens(self, tokenized: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Each review's ids [1 + its length] int32, starting with START."""
        lengths = np.fromiter(map(len, tokenized), np.int64, len(tokenized))
        flat = np.fromiter(
            map(self.ids.__getitem__, chain.from_iterable(tokenized)), np.int32, lengths.sum()
        )
        # START before each review's first token, in one pass over the flat ids.
        starts = np.cumsum(lengths) - lengths
        flat = np.insert(flat, starts, START)
        return np.split(flat, np.cumsum(lengths + 1)[:-1]) if len(tokenized) else []

    def encode(self, texts: Sequence[str | bytes]) -> list[np.ndarray]:
        """``tokenize`` then ``encode_tokens``: each review's ids [1 + its token count] int32."""
        if isinstance(texts, str | bytes):
            raise TypeError("texts must be a list of texts, got a single one: encode([text])")
        return self.encode_tokens([TOKENIZERS[self.level](text) for text in texts])

    def decode(self, ids: Iterable[int]) -> str:
        """The words of ``ids`` joined by spaces (characters: as they are), without padding
        (for reading, not parsing)."""
        names = {START: "<start>", OOV: "<oov>"}
        return ("" if self.level == "char" else " ").join(
            names.get(i) or self.words[i - FIRST_WORD] for i in map(int, ids) if i != PAD
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary as JSON, atomically (readers never see half a file)."""
        data = {
            "tokenizer_version": TOKENIZER_VERSION,
            "level": self.level,
            "words": list(self.words),
        }
        atomic_write(path, lambda f: f.write(json.dumps(data).encode("utf-8")))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        """The vocabulary saved at ``path``; a one-line ValueError for a file that is not one."""
        try:
            data = json.loads(Path(path).read_text("utf-8"))
        except ValueError as error:  # not UTF-8, or not JSON
            raise ValueError(f"{path} is not a vocabulary file: {error}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} is not a vocabulary file (a JSON object with its words)")
        if data.get("tokenizer_version") != TOKENIZER_VERSION:
            raise ValueError(
                f"{path} was built by tokenizer version {data.get('tokenizer_version')}, this is"
                f" version {TOKENIZER_VERSION}: rebuild the vocabulary"
            )
        words = data.get("words")
        if not isinstance(words, list) or not all(isinstance(word, str) for word in words):
            raise ValueError(f"{path} is not a vocabulary file (its words are not a list of str)")
        level = data.get("level", "word")  # files written before character vocabularies
        if level not in TOKENIZERS:
            raise ValueError(f"{path} names an unknown level {level!r}")
        return cls(words, level)


def padding_mask(ids: np.ndarray) -> np.ndarray:
    """[N, T] booleans, True at real tokens: every id but PAD (works on jax arrays too)."""
    return ids != PAD
