"""NBSVM-bigrams (Wang & Manning 2012, "Baselines and bigrams"), the non-LSTM row of
docs/RESULTS.md's IMDB ladder, in the project's harness: the same TFDS splits and the same
tokenizer as ``flaxlstm train imdb`` (``flaxlstm.data.imdb.tokenize``), no vocabulary cut.

    python experiments/nbsvm.py --out runs/results/cpu/nbsvm/nbsvm-bigrams.json

(``--data-dir`` or $TFDS_DATA_DIR: where TFDS's imdb_reviews is.) With ``--validation-split
0.1`` it trains on the first 90 % of the training reviews and scores the last 10 % instead of
the test split: the slice on which ``experiments/imdb_best.py`` chooses the LSTM, so that the
two show how far the slice's accuracy is from the test split's for a model other than the
LSTM.

The model and its hyperparameters are the paper's (``flaxlstm.models.nbsvm``; nothing is tuned, so
no validation slice is needed); the paper reports 91.22% test accuracy on IMDB.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from sklearn.feature_extraction.text import CountVectorizer

from flaxlstm.data.batches import split_point
from flaxlstm.data.imdb import read_split
from flaxlstm.data.movies import movie_slice_order
from flaxlstm.data.vocabulary import tokenize
from flaxlstm.models.nbsvm import fit_nbsvm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="TFDS data directory")
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument(
        "--validation-split", type=float, default=0.0,
        help="score this last fraction of the training reviews (trained on the rest), not the"
        " test split",
    )  # fmt: skip
    parser.add_argument(
        "--validation-slice", choices=("last", "movies"), default="last",
        help="which training reviews --validation-split scores, as `flaxlstm train imdb`'s",
    )  # fmt: skip
    args = parser.parse_args()
    if not 0 <= args.validation_split < 1:
        parser.error(f"--validation-split must be in [0, 1), got {args.validation_split}")
    start = time.perf_counter()
    train_texts, train_y = read_split("train", args.data_dir)
    if args.validation_split:  # the last fraction, as `flaxlstm train imdb --validation-split`
        if args.validation_slice == "movies":
            order = movie_slice_order(train_texts, train_y, args.validation_split)
            train_texts, train_y = [train_texts[i] for i in order], train_y[order]
        n = split_point(len(train_y), args.validation_split)
        test_texts, test_y = train_texts[n:], train_y[n:]
        train_texts, train_y = train_texts[:n], train_y[:n]
    else:
        test_texts, test_y = read_split("test", args.data_dir)
    features = CountVectorizer(
        tokenizer=tokenize, lowercase=False, token_pattern=None, ngram_range=(1, 2), binary=True
    )
    x_train = features.fit_transform(t.decode("utf-8") for t in train_texts)
    x_test = features.transform(t.decode("utf-8") for t in test_texts)
    r, w, b = fit_nbsvm(x_train, train_y)
    predicted = (x_test.multiply(r).tocsr() @ w + b) > 0
    result = {
        "model": "NBSVM-bigrams (Wang & Manning 2012): alpha 1, C 1, beta 0.25",
        "features": int(x_train.shape[1]),
        "train_reviews": len(train_y),
        "scored": f"the {args.validation_slice} {args.validation_split:g} of the training reviews"
        if args.validation_split
        else "the test split",
        "test_reviews": len(test_y),
        "test_accuracy": float((predicted == (test_y == 1)).mean()),
        "seconds": round(time.perf_counter() - start, 1),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
