"""Movie slices of IMDB's training reviews: a validation slice that, as the test split, shares
no movie with the reviews a model trains on (``flaxlstm train imdb --validation-slice
movies``). IMDB keeps no movie ids; ``name_groups`` finds the reviews of one movie by the rare
names they share, and ``movie_slice_order`` holds out whole groups.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from flaxlstm.data.batches import split_point

# A capitalised word after a lower-case letter or a comma: a name, not a sentence's start.
NAME = re.compile(r"[a-z,;:]\s+([A-Z][a-z]+)")


def name_groups(texts: Sequence[bytes], shared: int = 3, max_reviews: int = 30) -> np.ndarray:
    """A group id per review [N], the index of the group's first review: reviews are joined
    (transitively) when they share at least ``shared`` rare names (``NAME`` words in 2 to
    ``max_reviews`` of the reviews). IMDB keeps no movie ids, but reviews of one movie name
    its people: a group is about one movie."""
    names = [set(NAME.findall(t.decode("utf-8", "replace").replace("<br />", " "))) for t in texts]
    counts = Counter(word for found in names for word in found)
    holders: dict[str, list[int]] = {}  # rare name → the reviews that hold it
    for i, found in enumerate(names):
        for word in found:
            if 2 <= counts[word] <= max_reviews:
                holders.setdefault(word, []).append(i)
    pairs = Counter(
        (a, b) for held in holders.values() for k, a in enumerate(held) for b in held[k + 1 :]
    )
    parent = np.arange(len(texts))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for (a, b), n in pairs.items():
        if n >= shared:
            parent[root(a)] = root(b)
    roots = np.array([root(i) for i in range(len(texts))], dtype=np.int64)
    # A group's id is its first review: the same in every process (the roots depend on the
    # order Python's salted string hashes give the sets of names).
    first = np.full(len(texts), len(texts), dtype=np.int64)
    np.minimum.at(first, roots, np.arange(len(texts)))
    return first[roots]


def movie_slice_order(
    texts: Sequence[bytes], labels: np.ndarray, validation_split: float, seed: int = 0
) -> np.ndarray:
    """A permutation [N] of the reviews whose last ``validation_split`` (``split_point``'s
    count) is a movie slice: whole ``name_groups`` of two or more reviews, drawn in a random
    order (``seed``) while their positive and negative ``labels`` [N] fit in half the slice
    each, topped up with ungrouped reviews of the label that is short. The reviews before it
    keep their order. So a model validated on the slice has seen no review of its movies, as
    on the test split, as far as the names tell, and the slice's labels are balanced."""
    labels = np.asarray(labels)
    wanted = len(texts) - split_point(len(texts), validation_split)
    groups = name_groups(texts)
    ids, index, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    positives = np.bincount(index, weights=labels == 1).astype(int)  # per group
    room = np.array([wanted - wanted // 2, wanted // 2])  # negatives, positives still wanted
    held = np.zeros(len(texts), bool)
    rng = np.random.default_rng(seed)
    for g in rng.permutation(np.flatnonzero(sizes > 1)):
        need = np.array([sizes[g] - positives[g], positives[g]])
        if (need <= room).all():
            held[index == g] = True
            room -= need
    for label in (0, 1):  # top up with ungrouped reviews
        single = np.flatnonzero((sizes[index] == 1) & (labels == label))
        held[rng.permutation(single)[: room[label]]] = True
    return np.concatenate([np.flatnonzero(~held), np.flatnonzero(held)])
