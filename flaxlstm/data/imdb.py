"""IMDB reviews, from text to padded token ids: read (TFDS) → tokenise → vocabulary → encode →
cache → pad → batch.

The ids follow ``keras.datasets.imdb``: 0 pads, 1 starts every review, 2 stands for a word
outside the vocabulary, and the words take 3, 4, ... by falling frequency in the *train* split.
A vocabulary of size N (Keras's ``num_words``) uses the ids [0, N), so it holds N − 3 words.
(Keras also leaves 3 unused and starts its words at 4; here the most frequent word is 3.)

Shapes: N reviews, T = ``maxlen`` padded steps. Length-bucketed batches:
``flaxlstm.data.batches``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from flaxlstm._moved import moved_attribute
from flaxlstm.checks import check_positive_int
from flaxlstm.data.vocabulary import (  # noqa: F401 (PAD ... padding_mask: their old home)
    FIRST_WORD,
    OOV,
    PAD,
    START,
    TOKENIZER_VERSION,
    TOKENIZERS,
    Vocabulary,
    padding_mask,
    tokenize,
    tokenize_chars,
)
from flaxlstm.files import atomic_write

SPLITS = ("train", "test")

# ----------------------------------------------------------------------------- reading (TFDS)

_PREPARED = "imdb_reviews/plain_text/*/dataset_info.json"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The TFDS data directory: ``data_dir``, else ``$TFDS_DATA_DIR``, else TFDS's own default
    ``~/tensorflow_datasets``, made absolute."""
    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return Path(data_dir).expanduser().resolve()


def read_split(
    split: str,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = False,
    limit: int | None = None,
) -> tuple[list[bytes], np.ndarray]:
    """The reviews of one split, all or the first ``limit``: their texts (UTF-8 bytes) and
    labels [N] int32 (1 = positive).

    Reads a directory prepared by ``tfds.builder("imdb_reviews").download_and_prepare()`` in the
    array_record format, without TensorFlow. With ``download`` and no prepared copy, TFDS
    downloads and prepares one, which needs TensorFlow (``pip install "flaxlstm[prepare]"``).
    """
    import tensorflow_datasets as tfds  # slow to import; only readers of the text need it

    directory = resolve_data_dir(data_dir)
    if not any(directory.glob(_PREPARED)):
        if not download:
            raise FileNotFoundError(
                f"no prepared imdb_reviews in {directory}: pass data_dir or set TFDS_DATA_DIR to"
                " a TFDS data directory that holds it, or download it (download=True)"
            )
        if importlib.util.find_spec("tensorflow") is None:
            raise ImportError(
                f"downloading IMDB into {directory} needs TensorFlow:"
                ' pip install "flaxlstm[prepare]"'
            )
    try:
        source = tfds.data_source(
            "imdb_reviews", split=split, data_dir=str(directory), download=download
        )
    except (ValueError, NotImplementedError, OSError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        message = f"cannot read imdb_reviews {split!r} from {directory}: {first_line}"
        raise ValueError(message) from None
    # One bulk read: about 20x faster than indexing the records one by one.
    count = len(source) if limit is None else min(limit, len(source))
    records = source.__getitems__(range(count))
    texts = [record["text"] for record in records]
    labels = np.fromiter((record["label"] for record in records), np.int32, len(records))
    return texts, labels


# ----------------------------------------------------------------------------- encoding + cache


class Encoded(NamedTuple):
    """One split, encoded and not yet padded: N id arrays of any length, labels [N] int32."""

    sequences: list[np.ndarray]
    labels: np.ndarray


def default_cache_dir() -> Path:
    """``$FLAXLSTM_CACHE_DIR``, else ``$XDG_CACHE_HOME/flaxlstm``, else ``~/.cache/flaxlstm``."""
    if os.environ.get("FLAXLSTM_CACHE_DIR"):
        return Path(os.environ["FLAXLSTM_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "flaxlstm"


def cache_path(
    vocab_size: int,
    data_dir: Path,
    cache_dir: Path,
    limit: int | None = None,
    vocabulary: Vocabulary | None = None,
) -> Path:
    """The cache file of one vocabulary size (or given vocabulary), data directory, tokenizer
    version and limit."""
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    first = "" if limit is None else f"-first{limit}"
    if vocabulary is not None:
        words = hashlib.sha256("\n".join(vocabulary.words).encode()).hexdigest()[:12]
        first += f"-words{words}"
    return cache_dir / f"imdb-tok{TOKENIZER_VERSION}-vocab{vocab_size}{first}-{digest}.npz"


def _check_sides(padding: Side, truncating: Side) -> None:
    """Raise a one-line ValueError unless ``padding`` and ``truncating`` are "pre" or "post"."""
    for name, side in (("padding", padding), ("truncating", truncating)):
        if side not in ("pre", "post"):
            raise ValueError(f'{name} must be "pre" or "post", got {side!r}')


def _check_options(
    vocab_size: int,
    limit: int | None = None,
    vocabulary: Vocabulary | None = None,
    maxlen: int = 1,
    padding: Side = "pre",
    truncating: Side = "pre",
) -> None:
    """Raise a one-line ValueError for a bad option of ``load_imdb`` or ``encode_imdb``,
    before anything is read."""
    if not isinstance(vocab_size, int) or vocab_size < FIRST_WORD:
        raise ValueError(f"vocab_size must be an integer ≥ {FIRST_WORD}, got {vocab_size!r}")
    if vocabulary is not None and (vocabulary.level, vocabulary.size) != ("word", vocab_size):
        raise ValueError(
            f"a given vocabulary must be word-level of size vocab_size={vocab_size}, got a"
            f" {vocabulary.level}-level one of size {vocabulary.size}"
        )
    _check_sides(padding, truncating)
    check_positive_int("maxlen", maxlen)
    check_positive_int("limit", limit, optional=True)


def encode_imdb(
    vocab_size: int,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = False,
    limit: int | None = None,
    vocabulary: Vocabulary | None = None,
) -> tuple[Vocabulary, dict[str, Encoded]]:
    """The vocabulary fit on the train split and both labelled splits encoded with it (the
    first ``limit`` reviews of each split only, when given: a quick try). A given word-level
    ``vocabulary`` (e.g. a language model's) is used instead of fitting one; ``vocab_size``
    must then be its size.

    Read from the cache when a sound cache file exists (under a second); otherwise built (10 to
    20 seconds on two cores) and cached. A cache file that cannot be read is rebuilt.
    """
    _check_options(vocab_size, limit, vocabulary)
    return _encoded(vocab_size, data_dir, cache_dir, download, limit, vocabulary)


def _encoded(
    vocab_size: int, data_dir, cache_dir, download: bool, limit: int | None, vocabulary
) -> tuple[Vocabulary, dict[str, Encoded]]:
    """``encode_imdb`` with checked options."""
    data_dir = resolve_data_dir(data_dir)
    cache_dir = Path(cache_dir or default_cache_dir()).expanduser().resolve()
    if cache_dir.is_relative_to(data_dir):
        raise ValueError(f"the cache directory {cache_dir} must lie outside the data {data_dir}")
    path = cache_path(vocab_size, data_dir, cache_dir, limit, vocabulary)
    cached = _read_cache(path)
    if cached is not None:
        return cached
    texts, labels = {}, {}
    for split in SPLITS:
        texts[split], labels[split] = read_split(split, data_dir, download=download, limit=limit)
    tokenized = {split: [tokenize(text) for text in texts[split]] for split in SPLITS}
    vocabulary = vocabulary or Vocabulary.fit(tokenized["train"], vocab_size)
    splits = {
        split: Encoded(vocabulary.encode_tokens(tokenized[split]), labels[split])
        for split in SPLITS
    }
    cache_dir.mkdir(parents=True, exist_ok=True)
    _write_cache(path, vocabulary, splits)
    return vocabulary, splits


def _write_cache(path: Path, vocabulary: Vocabulary, splits: dict[str, Encoded]) -> None:
    # Ragged sequences are stored flat with their end offsets: no pickles in the file.
    arrays = {"words": np.array(vocabulary.words, dtype=str)}
    for split, (sequences, labels) in splits.items():
        arrays[f"{split}_flat"] = np.concatenate(sequences) if sequences else np.zeros(0, np.int32)
        arrays[f"{split}_ends"] = np.cumsum([len(s) for s in sequences], dtype=np.int64)
        arrays[f"{split}_labels"] = labels
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _read_cache(path: Path) -> tuple[Vocabulary, dict[str, Encoded]] | None:
    """The cached encoding, or None when the file is missing or damaged (then it is rebuilt)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            # Reading every member in full makes zipfile check its CRC: damage raises here.
            arrays = {key: f[key] for key in f.files}
        vocabulary = Vocabulary(arrays["words"].tolist())
        splits = {}
        for split in SPLITS:
            flat, ends = arrays[f"{split}_flat"], arrays[f"{split}_ends"]
            labels = arrays[f"{split}_labels"]
            if len(ends) != len(labels) or (len(ends) and ends[-1] != len(flat)):
                return None
            splits[split] = Encoded(np.split(flat, ends[:-1]) if len(ends) else [], labels)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    return vocabulary, splits


# ----------------------------------------------------------------------------- padding

Side = Literal["pre", "post"]


def pad_sequences(
    sequences: Sequence[Sequence[int]],
    maxlen: int | None = None,
    padding: Side = "pre",
    truncating: Side = "pre",
) -> tuple[np.ndarray, np.ndarray]:
    """Keras's ``pad_sequences``: ids [N, maxlen] int32 padded with 0, and lengths [N] int32,
    the real tokens left in each row after truncation.

    ``maxlen`` defaults to the longest sequence. ``truncating="pre"`` drops the start of a long
    sequence (keeps its end), ``"post"`` its end. ``padding="pre"`` puts the zeros first (then
    pass ``padding_mask(ids)`` to the models), ``"post"`` last (then ``lengths`` will do).
    """
    _check_sides(padding, truncating)
    if not isinstance(sequences, Iterable) or isinstance(sequences, str | bytes):
        raise TypeError(f"sequences must be a list of id sequences, got {type(sequences).__name__}")
    sequences = [_token_ids(row, sequence) for row, sequence in enumerate(sequences)]
    if maxlen is None:
        maxlen = max(map(len, sequences), default=0)
    if not isinstance(maxlen, int | np.integer) or maxlen < 0:
        raise ValueError(f"maxlen must be a non-negative integer, got {maxlen!r}")
    ids, lengths = _padded(sequences, maxlen, padding, truncating)
    if ids.size and ids.min() < 0:
        raise ValueError(f"token ids must be non-negative, got {ids.min()}")
    return ids, lengths


def _padded(
    sequences: list[np.ndarray], maxlen: int, padding: Side, truncating: Side
) -> tuple[np.ndarray, np.ndarray]:
    """``pad_sequences`` of checked integer ``sequences``."""
    ids = np.full((len(sequences), maxlen), PAD, np.int32)
    lengths = np.zeros(len(sequences), np.int32)
    for row, sequence in enumerate(sequences):
        n = min(len(sequence), maxlen)
        kept = sequence[len(sequence) - n :] if truncating == "pre" else sequence[:n]
        lengths[row] = n
        if padding == "pre":
            ids[row, maxlen - n :] = kept
        else:
            ids[row, :n] = kept
    return ids, lengths


def _token_ids(row: int, sequence) -> np.ndarray:
    """One of ``pad_sequences``'s sequences as integer ids in [0, 2³¹), or a one-line error
    naming it (numpy would truncate floats and wrap large ids silently)."""
    ids = np.asarray(sequence)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise TypeError(
            f"sequences[{row}] must be a list of integer token ids, got {ids.dtype} {ids.shape}"
        )
    # Wider ids would wrap when copied into int32: check them here (int32 ones: once padded).
    wide = not np.can_cast(ids.dtype, np.int32)
    if ids.size and wide and (ids.min() < 0 or ids.max() > np.iinfo(np.int32).max):
        raise ValueError(
            f"token ids must lie in [0, 2**31), sequences[{row}] holds {ids.min()} to {ids.max()}"
        )
    return ids


# ----------------------------------------------------------------------------- loading


class Split(NamedTuple):
    """One labelled split: ids [N, maxlen] int32, lengths [N] int32, labels [N] int32."""

    ids: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray


class Imdb(NamedTuple):
    train: Split
    test: Split
    vocabulary: Vocabulary


def load_imdb(
    vocab_size: int = 5000,
    maxlen: int = 500,
    *,
    padding: Side = "post",
    truncating: Side = "pre",
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = False,
    limit: int | None = None,
    vocabulary: Vocabulary | None = None,
) -> Imdb:
    """IMDB's train and test splits (25,000 reviews each), encoded with the train split's
    ``vocab_size`` ids and padded to ``maxlen``, as Keras's ``imdb.load_data(num_words)`` then
    ``pad_sequences(maxlen)``; or with a given word-level ``vocabulary`` of ``vocab_size`` ids
    (a language model's, ``encode_imdb``).

    Padding goes after the tokens by default so that ``lengths`` describe them and batches can
    be cut to buckets; the models mask padding either way, so its side does not change results
    of the LSTM models. Truncation keeps each review's end, as in the seeds.

    Raises FileNotFoundError when ``data_dir`` holds no prepared copy (and not ``download``),
    and a one-line ValueError for a bad option, before anything is read.
    """
    _check_options(vocab_size, limit, vocabulary, maxlen, padding, truncating)
    vocabulary, splits = _encoded(vocab_size, data_dir, cache_dir, download, limit, vocabulary)
    padded = {
        split: Split(*_padded(encoded.sequences, maxlen, padding, truncating), encoded.labels)
        for split, encoded in splits.items()
    }
    return Imdb(padded["train"], padded["test"], vocabulary)


def __getattr__(name: str):
    """The names that moved to flaxlstm.data.movies (flaxlstm/_moved.py)."""
    return moved_attribute(__name__, name)
