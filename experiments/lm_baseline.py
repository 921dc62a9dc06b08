"""A count-based baseline for ``flaxlstm train lm --imdb``: an nltk.lm n-gram model fitted on the
same training reviews, with the same vocabulary, scored on the same validation tokens.

    python experiments/lm_baseline.py --level char --out runs/results/cpu/lm/ngram-char.json
    python experiments/lm_baseline.py --level word --out runs/results/cpu/lm/ngram-word.json
    python experiments/lm_baseline.py --level char --run-dir runs/lm-imdb-char --out FILE.json

(``--data-dir`` or $TFDS_DATA_DIR: where TFDS's imdb_reviews is.) On a shared CPU, one core,
the first takes 7 to 11 minutes and 6.3 GB (order 7: 1.776 bits per character), the second
2 minutes and 3 GB (order 3: perplexity 135.6), with all 73,500 training and 1,500 validation
reviews. ``--run-dir`` also scores that LSTM run on the same reviews (``evaluate_lm``).

The data are those of the LSTM run: ``imdb_texts(0.02)``'s training and validation reviews,
tokenised at ``--level`` and mapped through the run's vocabulary (fitted on all the training
reviews as ``flaxlstm train lm`` fits it, or read from ``--run-dir``). A token outside it
becomes ``<UNK>``, the class the LSTM predicts as OOV (id 2); each review starts with
order − 1 ``<s>`` (the LSTM's START) and every token after them is predicted: exactly the
targets of ``flaxlstm.training.lm.evaluate_lm``. There is no end-of-review token: the LSTM has none.

The n-grams are counted with ``collections.Counter`` and stored into nltk's ``NgramCounter``
(whose own ``update`` takes about 3 µs per n-gram in Python: 25 minutes for the characters);
the probabilities are nltk.lm's. Every vocabulary token is counted once more as a unigram, so
the interpolation's unigram floor gives each a nonzero probability (they sum to 1 over the
vocabulary and ``<UNK>``). Kneser-Ney is not used: nltk's recomputes continuation counts by
walking every stored n-gram of the next order at each query (60 to 230 ms per token with 2,000
to 20,000 training reviews): weeks for the validation set. Of the interpolated smoothings that
run, Witten-Bell is best for characters and absolute discounting (0.75) for words.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from collections import Counter

from nltk.lm import (
    AbsoluteDiscountingInterpolated,
    KneserNeyInterpolated,
    NgramCounter,
    WittenBellInterpolated,
)
from nltk.lm import Vocabulary as NltkVocabulary

from flaxlstm.data.text import imdb_texts
from flaxlstm.data.vocabulary import TOKENIZERS, Vocabulary
from flaxlstm.files import save_json

PAD, UNK = "<s>", "<UNK>"  # the LSTM's START and OOV (nltk's own unknown label)
SMOOTHINGS = {
    "witten-bell": WittenBellInterpolated,
    "absolute-discounting": AbsoluteDiscountingInterpolated,  # discount 0.75
    "kneser-ney": KneserNeyInterpolated,  # discount 0.1 (nltk's default)
}
DEFAULTS = {
    "char": {"order": 7, "vocab_size": 256, "smoothing": "witten-bell"},
    "word": {"order": 3, "vocab_size": 20000, "smoothing": "absolute-discounting"},
}


def lm_vocabulary(level: str, vocab_size: int, texts: list[bytes], run_dir: str | None):
    """The LSTM run's vocabulary: read from ``run_dir``, else fitted as the CLI fits it."""
    if run_dir:
        vocabulary = Vocabulary.load(f"{run_dir}/vocabulary.json")
        if vocabulary.level != level:
            raise SystemExit(f"{run_dir} is a {vocabulary.level}-level run, not {level}")
        return vocabulary
    return Vocabulary.fit(map(TOKENIZERS[level], texts), vocab_size, level)


def documents(texts: list[bytes], vocabulary: Vocabulary) -> list[list[str]]:
    """Each review as its list of tokens (str), ``<UNK>`` for those outside ``vocabulary``
    (``ngrams`` adds the ``<s>``). The tokens are the vocabulary's own str objects, so the
    counted tuples share them."""
    canonical = {word: word for word in vocabulary.words}
    tokenize = TOKENIZERS[vocabulary.level]
    return [[canonical.get(token, UNK) for token in tokenize(text)] for text in texts]


def ngrams(tokens: list[str], order: int, n: int):
    """The n-grams (tuples of n ≤ order tokens) that end at each token of ``tokens``, read
    after order − 1 ``<s>``: len(tokens) of them, contexts reaching into the padding."""
    padded = [PAD] * (order - 1) + tokens
    return zip(*(padded[order - n + j :] for j in range(n)), strict=False)


def count(docs: list[list[str]], order: int, vocabulary: NltkVocabulary) -> NgramCounter:
    """nltk's counts of every n-gram (n = 1..order) ending at a token of ``docs``, plus one
    unigram count for every token of ``vocabulary`` (none is then given probability 0)."""
    counts = NgramCounter()
    counts.unigrams.update(word for word in vocabulary if word != PAD)
    for n in range(1, order + 1):
        grams = Counter()
        for tokens in docs:
            grams.update(ngrams(tokens, order, n))
        if n == 1:
            counts.unigrams.update({gram[0]: c for gram, c in grams.items()})
            continue
        table = counts[n]  # context (n − 1 tokens) → FreqDist of the next token
        for gram, c in grams.items():
            table[gram[:-1]][gram[-1]] = c
    return counts


def bits(model, docs: list[list[str]]) -> tuple[float, int, int]:
    """(−log2 p summed over every token of ``docs``, tokens, tokens given probability 0)."""
    order, total, tokens, zeros = model.order, 0.0, 0, 0
    for doc in docs:
        for gram in ngrams(doc, order, order):
            score = model.logscore(gram[-1], gram[:-1])
            if math.isinf(score):
                zeros += 1
            else:
                total -= score
            tokens += 1
    return total, tokens, zeros


def check_run(run_dir: str) -> None:
    """Refuse an LSTM run that held out other reviews (``--limit``, ``--validation-split``):
    its training reviews could then hold this script's validation reviews."""
    try:
        with open(f"{run_dir}/metrics.json", encoding="utf-8") as f:
            options = json.load(f)["options"]
    except FileNotFoundError:
        print(f"{run_dir} has no metrics.json (unfinished?): its data split is not checked")
        return
    if not options["imdb"] or options["validation_split"] != 0.02 or options["limit"]:
        raise SystemExit(f"{run_dir} was not trained with --imdb --validation-split 0.02")


def lstm_scores(run_dir: str, texts: list[bytes]) -> dict:
    """The LSTM run's ``evaluate_lm`` on ``texts``: loss (nats), perplexity, bits per token."""
    from flaxlstm.training.lm import evaluate_lm  # JAX: imported only when an LSTM is compared
    from flaxlstm.training.runs import load_lm_run

    run = load_lm_run(run_dir)
    start = time.perf_counter()
    scores = evaluate_lm(run.model, run.vocabulary.encode(texts), batch_size=64, bptt=100)
    seconds = round(time.perf_counter() - start, 1)
    scores = {name: float(value) for name, value in scores.items()} | {"tokens": scores["tokens"]}
    return {"run_dir": run_dir, **scores, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--level", choices=("char", "word"), required=True)
    parser.add_argument("--order", type=int, help="n-gram order (default 7 char, 3 word)")
    parser.add_argument("--vocab-size", type=int, help="as train lm's; ignored with --run-dir")
    parser.add_argument(
        "--smoothing", choices=SMOOTHINGS, help="default: witten-bell char, absolute-d. word"
    )
    parser.add_argument("--train-reviews", type=int, help="the first N (default: all 73,500)")
    parser.add_argument("--validation-reviews", type=int, default=1500, help="the first N")
    parser.add_argument("--data-dir", default=None, help="TFDS data directory")
    parser.add_argument("--run-dir", help="also score this `train lm --imdb` run's LSTM")
    parser.add_argument("--out", required=True, help="the JSON file to write")
    args = parser.parse_args()
    order = args.order or DEFAULTS[args.level]["order"]
    vocab_size = args.vocab_size or DEFAULTS[args.level]["vocab_size"]
    smoothing = args.smoothing or DEFAULTS[args.level]["smoothing"]

    if args.run_dir:
        check_run(args.run_dir)
    texts, held = imdb_texts(0.02, args.data_dir)
    held = held[: args.validation_reviews]
    vocabulary = lm_vocabulary(args.level, vocab_size, texts, args.run_dir)
    train_docs = documents(texts[: args.train_reviews], vocabulary)
    nltk_vocabulary = NltkVocabulary([*vocabulary.words, PAD], unk_label=UNK)

    start = time.perf_counter()
    counts = count(train_docs, order, nltk_vocabulary)
    model = SMOOTHINGS[smoothing](order, vocabulary=nltk_vocabulary, counter=counts)
    if hasattr(model.estimator, "_gamma"):  # a function of the context and the fixed counts:
        model.estimator._gamma = functools.cache(model.estimator._gamma)  # 12x faster (words)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    total, tokens, zeros = bits(model, documents(held, vocabulary))
    score_seconds = time.perf_counter() - start

    per_token = total / tokens if not zeros else math.inf
    if zeros:
        print(f"{zeros} of {tokens} validation tokens have probability 0: infinite bits")
    result = {
        "level": args.level,
        "order": order,
        "smoothing": f"nltk.lm.{SMOOTHINGS[smoothing].__name__}",
        "vocab_size": vocabulary.size,
        "train_reviews": len(train_docs),
        "train_tokens": sum(map(len, train_docs)),
        "validation_reviews": len(held),
        "validation_tokens": tokens,
        "zero_probability_tokens": zeros,
        "bits": per_token,
        "perplexity": 2.0**per_token,
        "fit_seconds": round(fit_seconds, 1),
        "score_seconds": round(score_seconds, 1),
    }
    if args.run_dir:
        result["lstm"] = lstm_scores(args.run_dir, held)
        if result["lstm"]["tokens"] != tokens:
            raise SystemExit(f"the LSTM scored {result['lstm']['tokens']} tokens, not {tokens}")
    save_json(args.out, result)
    print(result)


if __name__ == "__main__":
    main()
