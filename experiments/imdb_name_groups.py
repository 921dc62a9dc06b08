"""Do the training reviews that share a movie share a label? IMDB's train split holds up to 30
reviews of each movie (its test split other movies), but TFDS keeps no movie ids. Reviews of
one movie name the same people, so this groups (``flaxlstm.data.movies.name_groups``) the
training reviews that share at least
``--shared`` rare capitalised words (a word after a lower-case letter or a comma, in 2 to
``--max-reviews`` reviews: names, not sentence starts) and compares how often a group's
reviews agree on the label with groups of the same sizes drawn at random.

    python experiments/imdb_name_groups.py [--shared 3] [--max-reviews 30]

It also says how much of `--validation-split 0.1 --validation-slice movies` (which groups
with the defaults) is whole groups.

Why: docs/IMDB-BEST.md's validation slice (the last 10 % of the train split) shares movies
with the reviews a model trains on; if a movie's reviews agree, a model that remembers names
scores better there than on the test split's other movies.
"""

from __future__ import annotations

import argparse

import numpy as np

from flaxlstm.data.batches import split_point
from flaxlstm.data.imdb import read_split
from flaxlstm.data.movies import movie_slice_order, name_groups


def agreement(groups: np.ndarray, labels: np.ndarray) -> float:
    """The mean over groups of 3 to 60 reviews of the share of their majority label."""
    shares = [
        max(m := labels[groups == g].mean(), 1 - m)
        for g, n in zip(*np.unique(groups, return_counts=True), strict=True)
        if 3 <= n <= 60
    ]
    return float(np.mean(shares))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=int, default=3, help="rare names two reviews share")
    parser.add_argument("--max-reviews", type=int, default=30, help="reviews a rare name is in")
    parser.add_argument("--data-dir", default=None, help="TFDS data directory")
    args = parser.parse_args()
    texts, labels = read_split("train", args.data_dir)
    groups = name_groups(texts, args.shared, args.max_reviews)
    sizes = np.unique(groups, return_counts=True)[1]
    rng = np.random.default_rng(0)
    shuffled = [agreement(groups, rng.permutation(labels)) for _ in range(20)]
    print(f"{(sizes > 1).sum()} groups hold {sizes[sizes > 1].sum()} of {len(texts)} reviews"
          f" (largest {sizes.max()}); groups of 3 to 60 reviews agree on the label"
          f" {agreement(groups, labels):.3f} of the time, the same groups with shuffled labels"
          f" {np.mean(shuffled):.3f} ± {np.std(shuffled):.3f}")  # fmt: skip
    held = movie_slice_order(texts, labels, 0.1)[split_point(len(texts), 0.1) :]
    grouped = np.isin(groups[held], np.unique(groups)[sizes > 1]).sum()
    print(f"`--validation-slice movies` (the default groups): {grouped} of its {len(held)}"
          f" reviews in groups, {labels[held].sum()} positive")  # fmt: skip


if __name__ == "__main__":
    main()
