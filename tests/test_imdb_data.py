"""flaxlstm.data.imdb: tokeniser, vocabulary, padding, and (with the shared TFDS copy
of IMDB) reading, encoding and the cache. Reading tests use the first few hundred reviews."""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
from shared_data import DATA_DIR, needs_data

from flaxlstm.data import imdb
from flaxlstm.data.batches import split_point
from flaxlstm.data.imdb import pad_sequences
from flaxlstm.data.movies import movie_slice_order, name_groups
from flaxlstm.data.vocabulary import OOV, PAD, START, Vocabulary, padding_mask, tokenize

FEW = 300  # reviews per split in the reading tests


# ----------------------------------------------------------------------------- tokeniser


def test_tokenize_lowercases_removes_line_breaks_and_splits_punctuation():
    text = b"Great FILM!<br /><br />I didn't like the end... (really)"
    assert tokenize(text) == [
        "great", "film", "!", "i", "didn't", "like", "the", "end", ".", ".", ".",
        "(", "really", ")",
    ]  # fmt: skip
    assert tokenize("Café, naïve") == ["café", ",", "naïve"]
    assert tokenize("") == []


# ----------------------------------------------------------------------------- vocabulary


def test_vocabulary_ids_reserve_pad_start_oov_and_rank_by_frequency():
    tokenized = [["b", "a", "b", "c"], ["b", "a", "d"], ["c"]]  # b 3, a 2, c 2, d 1
    vocab = Vocabulary.fit(tokenized, size=6)
    assert (PAD, START, OOV) == (0, 1, 2)
    assert vocab.words == ("b", "a", "c")  # a before c: ties are broken alphabetically
    assert vocab.size == 6
    (ids,) = vocab.encode(["B a, d!"])
    assert ids.dtype == np.int32
    assert ids.tolist() == [START, 3, 4, OOV, OOV, OOV]  # b a , d !
    assert all(ids.max() < vocab.size for ids in vocab.encode(["a b c d e f"]))
    assert vocab.decode([0, 0, 1, 3, 2]) == "<start> b <oov>"
    assert [s.tolist() for s in vocab.encode(["", "c"])] == [[START], [START, 5]]


def test_vocabulary_smaller_than_requested_and_too_small():
    assert Vocabulary.fit([["x", "y"]], size=100).size == 5
    with pytest.raises(ValueError, match="at least 3"):
        Vocabulary.fit([["x"]], size=2)


def test_vocabulary_save_load_round_trip(tmp_path):
    vocab = Vocabulary(["the", "film", "don't", "café"])
    path = tmp_path / "vocabulary.json"
    vocab.save(path)
    assert os.listdir(tmp_path) == ["vocabulary.json"]  # the temporary file was renamed
    loaded = Vocabulary.load(path)
    assert loaded.words == vocab.words
    texts = ["The café film, don't!"]
    assert [a.tolist() for a in loaded.encode(texts)] == [a.tolist() for a in vocab.encode(texts)]


def test_vocabulary_from_another_tokenizer_version_is_refused(tmp_path):
    path = tmp_path / "vocabulary.json"
    path.write_text('{"tokenizer_version": -1, "words": ["a"]}')
    with pytest.raises(ValueError, match="tokenizer version"):
        Vocabulary.load(path)


# ----------------------------------------------------------------------------- padding


def test_pad_sequences_matches_keras():
    # The cases of Keras's own pad_sequences tests.
    a = [[1], [1, 2], [1, 2, 3]]
    ids, lengths = pad_sequences(a, maxlen=3, padding="pre")
    assert ids.tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3]]
    assert ids.dtype == np.int32 and lengths.tolist() == [1, 2, 3]
    ids, _ = pad_sequences(a, maxlen=3, padding="post")
    assert ids.tolist() == [[1, 0, 0], [1, 2, 0], [1, 2, 3]]
    ids, lengths = pad_sequences(a, maxlen=2, truncating="pre")
    assert ids.tolist() == [[0, 1], [1, 2], [2, 3]] and lengths.tolist() == [1, 2, 2]
    ids, _ = pad_sequences(a, maxlen=2, truncating="post")
    assert ids.tolist() == [[0, 1], [1, 2], [1, 2]]
    ids, _ = pad_sequences(a, maxlen=2, padding="post", truncating="post")
    assert ids.tolist() == [[1, 0], [1, 2], [1, 2]]
    ids, lengths = pad_sequences(a)  # maxlen: the longest
    assert ids.shape == (3, 3) and lengths.tolist() == [1, 2, 3]


def test_pad_sequences_edge_cases():
    ids, lengths = pad_sequences([[], [5, 6]], maxlen=3, padding="post")
    assert ids.tolist() == [[0, 0, 0], [5, 6, 0]] and lengths.tolist() == [0, 2]
    ids, lengths = pad_sequences([[5, 6]], maxlen=0)
    assert ids.shape == (1, 0) and lengths.tolist() == [0]
    assert pad_sequences([], maxlen=4)[0].shape == (0, 4)
    with pytest.raises(ValueError, match="padding"):
        pad_sequences([[1]], maxlen=2, padding="middle")
    with pytest.raises(ValueError, match="truncating"):
        pad_sequences([[1]], maxlen=2, truncating="both")


def test_padding_mask_marks_real_tokens():
    ids, lengths = pad_sequences([[1, 7], [1, 2, 9]], maxlen=4)
    mask = padding_mask(ids)
    assert mask.dtype == bool
    assert mask.tolist() == [[False, False, True, True], [False, True, True, True]]
    assert (mask.sum(axis=1) == lengths).all()


# ----------------------------------------------------------------------------- reading


def test_missing_data_dir_is_one_clear_error(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        imdb.read_split("train", missing)


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None, reason="TF installed")
def test_download_without_tensorflow_says_what_to_install(tmp_path):
    with pytest.raises(ImportError, match=r"flaxlstm\[prepare\]"):
        imdb.read_split("train", tmp_path, download=True)


@needs_data
def test_read_split_gives_texts_and_labels():
    texts, labels = imdb.read_split("train", DATA_DIR, limit=20)
    assert len(texts) == 20 and isinstance(texts[0], bytes)
    assert labels.shape == (20,) and labels.dtype == np.int32
    assert set(labels.tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="bogus"):
        imdb.read_split("bogus", DATA_DIR)


@pytest.fixture
def few_reviews(monkeypatch):
    """Make the encoders read only the first FEW reviews of each split; count the reads."""
    reads = []
    read = imdb.read_split

    def read_few(split, data_dir=None, **kwargs):
        reads.append(split)
        return read(split, data_dir, **{**kwargs, "limit": FEW})

    monkeypatch.setattr(imdb, "read_split", read_few)
    return reads


@needs_data
def test_vocabulary_is_fit_on_the_train_split_only(few_reviews, tmp_path):
    vocab, splits = imdb.encode_imdb(20_000, data_dir=DATA_DIR, cache_dir=tmp_path)
    train_texts, _ = imdb.read_split("train", DATA_DIR)
    test_texts, _ = imdb.read_split("test", DATA_DIR)
    train_words = {word for text in train_texts for word in tokenize(text)}
    test_only = {word for text in test_texts for word in tokenize(text)} - train_words
    assert test_only and not test_only & set(vocab.words)
    assert set(vocab.words) == train_words  # 20,000 > the words of FEW reviews
    assert set(vocab.words[:2]) == {"the", "."}
    assert len(splits["train"].sequences) == len(splits["test"].labels) == FEW
    assert all(s[0] == START for s in splits["test"].sequences)
    assert any((s == OOV).any() for s in splits["test"].sequences)


@needs_data
def test_cache_round_trip_and_corrupt_cache_rebuild(few_reviews, tmp_path):
    first = imdb.load_imdb(500, 100, data_dir=DATA_DIR, cache_dir=tmp_path)
    assert few_reviews == ["train", "test"]
    (cache_file,) = tmp_path.iterdir()  # one file, no temporary ones left behind
    assert cache_file.suffix == ".npz"

    again = imdb.load_imdb(500, 100, data_dir=DATA_DIR, cache_dir=tmp_path)
    assert few_reviews == ["train", "test"]  # read from the cache, not the data
    assert again.vocabulary.words == first.vocabulary.words
    for a, b in zip(first[:2], again[:2], strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))

    data = cache_file.read_bytes()
    cache_file.write_bytes(data[: len(data) // 2])  # a truncated file
    rebuilt = imdb.load_imdb(500, 100, data_dir=DATA_DIR, cache_dir=tmp_path)
    assert few_reviews == ["train", "test"] * 2
    assert np.array_equal(rebuilt.train.ids, first.train.ids)
    damaged = bytearray(cache_file.read_bytes())
    damaged[len(damaged) // 3] ^= 0xFF  # a flipped byte inside the stored ids: CRC mismatch
    cache_file.write_bytes(bytes(damaged))
    imdb.load_imdb(500, 100, data_dir=DATA_DIR, cache_dir=tmp_path)
    assert few_reviews == ["train", "test"] * 3
    imdb.load_imdb(600, 100, data_dir=DATA_DIR, cache_dir=tmp_path)  # another key: a new file
    assert len(list(tmp_path.iterdir())) == 2


@needs_data
def test_load_imdb_shapes_and_padding(few_reviews, tmp_path):
    data = imdb.load_imdb(1000, 80, data_dir=DATA_DIR, cache_dir=tmp_path)
    for split in (data.train, data.test):
        assert split.ids.shape == (FEW, 80) and split.ids.dtype == np.int32
        assert split.lengths.shape == split.labels.shape == (FEW,)
        assert split.ids.max() < 1000 and split.lengths.max() == 80
        assert (padding_mask(split.ids).sum(axis=1) == split.lengths).all()
    short = data.train.lengths < 80
    assert (data.train.ids[short, 0] == START).all()  # post-padded: the start id comes first
    pre = imdb.load_imdb(1000, 80, padding="pre", data_dir=DATA_DIR, cache_dir=tmp_path)
    assert (pre.train.ids[:, -1] != PAD).all()
    assert (pre.train.lengths == data.train.lengths).all()


@needs_data
def test_cache_inside_the_data_dir_is_refused(tmp_path):
    with pytest.raises(ValueError, match="outside"):
        imdb.encode_imdb(100, data_dir=DATA_DIR, cache_dir=DATA_DIR / "cache")


def test_cache_key_changes_with_its_parts(tmp_path):
    key = functools.partial(imdb.cache_path, cache_dir=tmp_path)
    paths = {key(5000, Path("/a")), key(2000, Path("/a")), key(5000, Path("/b"))}
    assert len(paths) == 3
    assert f"tok{imdb.TOKENIZER_VERSION}" in key(5000, Path("/a")).name


def _review(*names: str) -> bytes:
    return ("It starred " + ", and ".join(names) + ", who was fine.").encode()


def test_name_groups_join_reviews_that_share_enough_rare_names():
    texts = [
        _review("Xavi", "Yola", "Zeno"),  # 0, 1, 2: one movie (three shared names)
        _review("Xavi", "Yola", "Zeno", "Quin"),
        _review("Yola", "Zeno", "Quin", "Rolf"),  # shares Yola, Zeno, Quin with 1
        _review("Abel", "Bram"),  # 3, 4: only two names shared
        _review("Abel", "Bram", "Cruz"),
        _review("Dora"),  # a name nobody else uses
    ]
    groups = name_groups(texts, shared=3, max_reviews=30)
    assert groups[0] == groups[1] == groups[2]
    assert len(set(groups[3:]) | {groups[0]}) == 4  # 3, 4 and 5 alone
    # A group's id is its first review, whatever order the sets of names iterate in (Python
    # salts string hashes per process), so a movie slice is the same in every run.
    assert list(groups) == [0, 0, 0, 3, 4, 5]
    assert name_groups(texts, shared=2)[3] == name_groups(texts, shared=2)[4]
    # A name in more than max_reviews reviews is no one movie's: it joins nothing.
    assert len(set(name_groups(texts, shared=3, max_reviews=2)[:3])) > 1
    # A capitalised word that starts a sentence is not a name.
    assert len(set(name_groups([b"Xavi Yola Zeno.", b"Xavi Yola Zeno."]))) == 2


def test_movie_slice_holds_whole_groups_and_balanced_labels():
    names = ["Xavi", "Yola", "Zeno", "Quin", "Rolf", "Abel", "Bram", "Cruz"]
    texts, labels = [], []
    for g in range(4):  # 4 movies of 3 reviews each, a label per movie
        texts += [_review(*(n + "abcd"[g] for n in names[g : g + 3]))] * 3
        labels += [g % 2] * 3
    texts += [_review("Solo")] * 28  # 28 ungrouped reviews (one name: too few to join)
    labels += [i % 2 for i in range(28)]
    labels = np.array(labels)
    order = movie_slice_order(texts, labels, 0.25)
    assert sorted(order) == list(range(40))
    held = order[split_point(40, 0.25) :]
    assert len(held) == 10 and labels[held].sum() == 5  # balanced
    groups = name_groups(texts)
    assert not set(groups[held]) & set(groups[order[:30]])  # no movie on both sides
    assert (np.bincount(groups[held]) == 3).sum() >= 2  # whole groups first, then singles
    kept = order[:30]
    assert list(kept) == sorted(kept)  # the rest keep their order
