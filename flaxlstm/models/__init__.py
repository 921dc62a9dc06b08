"""The models: every one returns logits (or values); flaxlstm.train turns them into losses and
probabilities.

    synthetic.py  the synthetic tasks' models (seeds 000, 001, adding, first-token classes)
    sentiment.py  the IMDB classifiers built from a seed's settings (MODELS), summary
    ngrams.py     the n-gram members: NgramLinear, BigramBag, Nbsvm
    nbsvm.py      NBSVM-bigrams fitted with scikit-learn (the extra flaxlstm[ngrams])
    language.py   language models, and the classifier fine-tuned from one (LmClassifier)
"""

from flaxlstm.models.language import LanguageModel, LmClassifier, language_model_layers
from flaxlstm.models.ngrams import (
    NBSVM_BUCKETS,
    BigramBag,
    Nbsvm,
    NgramLinear,
    distinct_ngrams,
    word_pairs,
)
from flaxlstm.models.sentiment import (
    MODELS,
    SEED_002,
    SEED_003,
    SETTINGS,
    MaxPool1D,
    SentimentClassifier,
    Settings,
    count_params,
    keras_embedding_init,
    max_mean_pool,
    summary,
)
from flaxlstm.models.synthetic import AddingModel, CumsumModel, ParityModel, TokenClassifier

__all__ = [
    "MODELS",
    "NBSVM_BUCKETS",
    "SEED_002",
    "SEED_003",
    "SETTINGS",
    "AddingModel",
    "BigramBag",
    "CumsumModel",
    "LanguageModel",
    "LmClassifier",
    "MaxPool1D",
    "Nbsvm",
    "NgramLinear",
    "ParityModel",
    "SentimentClassifier",
    "Settings",
    "TokenClassifier",
    "count_params",
    "distinct_ngrams",
    "keras_embedding_init",
    "language_model_layers",
    "max_mean_pool",
    "summary",
    "word_pairs",
]
