"""Every setting in one place: each task's options and the IMDB models.

Frozen dataclasses and nothing else. The ``flaxlstm`` command builds its options from their
fields (name, default, ``help``, ``choices`` and a parser of the text in each field's
metadata: ``flaxlstm.cli.add_options``), so a default changed here changes the command too;
library users build them directly, e.g. ``CumsumConfig(hidden=50, epochs=5)``. The training
recipe they make (``.recipe``) is a ``flaxlstm.recipes.Recipe``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Literal

from flaxlstm import recipes
from flaxlstm._moved import moved_attribute
from flaxlstm.checks import require_ngrams
from flaxlstm.options import (
    batch_size_option,
    clip_norm_option,
    epochs_option,
    fraction,
    hidden_option,
    learning_rate_option,
    loop_option,
    non_negative_float,
    non_negative_int,
    option,
    out_option,
    positive_float,
    positive_int,
    schedule_option,
    sequences_option,
)

# ----------------------------------------------------------------------------- the tasks


@dataclass(frozen=True)
class RecipeOptions:
    """A ``Recipe``'s settings as a command's options (its defaults are ``Recipe``'s)."""

    learning_rate: float = learning_rate_option(recipes.Recipe.learning_rate)
    lr_schedule: Literal["constant", "cosine"] = schedule_option(recipes.Recipe.lr_schedule)
    clip_norm: float = clip_norm_option(recipes.Recipe.clip_norm)

    @property
    def recipe(self) -> recipes.Recipe:
        return recipes.Recipe(self.learning_rate, self.lr_schedule, self.clip_norm)


@dataclass(frozen=True)
class JobOptions:
    """One process of a job of several (``jax.distributed``; ``flaxlstm.training.processes.
    join_job``): all three, or none (one process, or a SLURM / Open MPI job found by itself)."""

    coordinator: str | None = option(None, "HOST:PORT where process 0 coordinates the job", str)
    num_processes: int | None = option(None, "the processes of the job", positive_int)
    process_id: int | None = option(None, "this process's number, 0 .. N-1", non_negative_int)


@dataclass(frozen=True)
class RunConfig(RecipeOptions, JobOptions):
    """What every ``flaxlstm train`` task shares: the recipe, validation, checkpoints."""

    validation_split: float = option(0.1, "held out of train", fraction)
    patience: int | None = option(
        None, "stop after N epochs without a lower val_loss", positive_int
    )
    restore_best: bool = option(True, "keep the epoch of lowest val_loss, not the last")
    checkpoint_every: int | None = option(None, "also checkpoint every N steps", positive_int)
    resume: bool = option(False, "continue from DIR/checkpoints")
    seed: int = option(0, "of the data, initialisation and order", int)
    loop: str = loop_option()
    out: str | None = out_option(None)
    quiet: bool = option(False, "print nothing")


@dataclass(frozen=True)
class CumsumConfig(RunConfig):
    """Seed 001: a per-step label, whether the running sum of uniform numbers is ≥ T/4."""

    epochs: int = epochs_option(20)
    batch_size: int = batch_size_option(32)
    hidden: int = hidden_option(20)
    samples: int = sequences_option(10_000)
    test_samples: int = sequences_option(1000, "held-out")
    steps: int = option(10, "sequence length", positive_int)
    out: str = out_option("runs/cumsum")


@dataclass(frozen=True)
class ParityConfig(RunConfig):
    """Seed 000: is the sum of 10 integers in [0, 100) odd."""

    learning_rate: float = learning_rate_option(1e-2)
    epochs: int = epochs_option(5)
    batch_size: int = batch_size_option(32)
    hidden: int = hidden_option(64)
    samples: int = sequences_option(20_000)
    test_samples: int = sequences_option(10_000, "held-out")
    embedding: int = option(16, "embedding size", positive_int)
    train_lengths: Literal["random", "full"] = option(
        "random",
        "random: train on prefixes of random length 1..10, each labelled by its own parity;"
        " full: on the whole 10-number sequences only",
        choices=("random", "full"),
    )
    out: str = out_option("runs/parity")


@dataclass(frozen=True)
class AddingConfig(RunConfig):
    """The adding problem (Hochreiter & Schmidhuber 1997): the sum of the two marked numbers
    of a long sequence, trained with mean squared error."""

    learning_rate: float = learning_rate_option(1e-2)
    lr_schedule: Literal["constant", "cosine"] = schedule_option("cosine")
    clip_norm: float = clip_norm_option(1.0)
    epochs: int = epochs_option(8)
    batch_size: int = batch_size_option(32)
    hidden: int = hidden_option(64)
    samples: int = sequences_option(20_000)
    test_samples: int = sequences_option(2000, "held-out")
    steps: int = option(200, "sequence length T", positive_int)
    out: str = out_option("runs/adding")


@dataclass(frozen=True)
class ImdbModelConfig:
    """One of the seeds' IMDB models: its data, layers and training length."""

    vocab_size: int  # ids < vocab_size, 3 of them reserved (flaxlstm.data.imdb)
    maxlen: int
    embedding_dim: int
    batch_size: int
    epochs: int
    hidden: int = 100
    dropout: float = 0.0  # the Dropout layers after the embedding and after the LSTM
    lstm_dropout: float = 0.0  # the LSTM's own input dropout
    recurrent_dropout: float = 0.0
    bidirectional: bool = False
    conv_filters: int = 0  # > 0: Conv1D(filters, 3) → MaxPool1D(2) before the LSTM
    word_dropout: float = 0.0  # drops whole token vectors after the embedding
    pooling: str = "last"  # the head reads h after the last step, or "max-mean" over steps
    bigrams: int = 0  # > 0: a bag of this many hashed bigram rows beside the LSTM
    ngrams: int = 0  # > 0: a linear model of this many unigram and bigram indicators
    nbsvm: float = 0.0  # > 0: NBSVM's margin, times this, joins the logits at evaluation

    @property
    def layers(self) -> dict:
        """The ``SentimentClassifier`` arguments besides the vocabulary size."""
        names = ("embedding_dim", "hidden", "dropout", "lstm_dropout", "recurrent_dropout")
        names += ("bidirectional", "conv_filters", "word_dropout", "pooling", "bigrams")
        names += ("ngrams", "nbsvm")
        return {name: getattr(self, name) for name in names}


SEED_003 = dict(vocab_size=5000, maxlen=500, embedding_dim=32, batch_size=64, epochs=3)
SEED_002 = dict(vocab_size=2000, maxlen=80, embedding_dim=128, batch_size=32, epochs=15)
IMDB_MODELS: dict[str, ImdbModelConfig] = {
    "simple": ImdbModelConfig(**SEED_003),
    "dropout": ImdbModelConfig(**SEED_003, dropout=0.2),
    "lstm-dropout": ImdbModelConfig(**SEED_003, lstm_dropout=0.2, recurrent_dropout=0.2),
    "bilstm": ImdbModelConfig(
        **SEED_003, lstm_dropout=0.2, recurrent_dropout=0.2, bidirectional=True
    ),
    "cnn-lstm": ImdbModelConfig(**SEED_003, conv_filters=32),
    "seed002": ImdbModelConfig(**SEED_002, hidden=128, lstm_dropout=0.2, recurrent_dropout=0.2),
    # The best supervised LSTM, chosen on a validation slice of the training reviews
    # (docs/IMDB-BEST.md): bilstm with max and mean pooling, more words, whole reviews,
    # regularised.
    "bilstm-big": ImdbModelConfig(
        **(SEED_003 | dict(vocab_size=20000, maxlen=800, embedding_dim=64, epochs=4)),
        lstm_dropout=0.2,
        recurrent_dropout=0.2,
        bidirectional=True,
        pooling="max-mean",
        dropout=0.3,
        word_dropout=0.1,
    ),  # fmt: skip
}
# bilstm-big whose logit adds that of a linear model of the review's words and word pairs
# (2^21 weights), trained together.
IMDB_MODELS["bilstm-ngrams"] = dataclasses.replace(IMDB_MODELS["bilstm-big"], ngrams=2**21)
# The best supervised model, chosen on the same slice: an ensemble of bilstm-ngrams and
# NBSVM-bigrams fitted apart, the network's logit plus 8 × NBSVM's margin (weights 1 to 32 all
# scored 91.80–92.56 % there, 8 the most; docs/IMDB-BEST.md).
IMDB_MODELS["best"] = dataclasses.replace(IMDB_MODELS["bilstm-ngrams"], nbsvm=8.0)


# The seed's layer settings that ``flaxlstm train imdb`` options override.
IMDB_LAYER_OPTIONS = (
    "embedding_dim", "hidden", "dropout", "word_dropout", "pooling", "bigrams", "ngrams", "nbsvm"
)  # fmt: skip


@dataclass(frozen=True)
class ImdbConfig(RunConfig):
    """Seeds 002/003: IMDB sentiment. Unset sizes come from the model's seed; no validation
    split by default (the seeds train on all 25,000 training reviews); ``IMDB_RECIPE``."""

    learning_rate: float = learning_rate_option(recipes.IMDB_RECIPE.learning_rate)
    lr_schedule: Literal["constant", "cosine"] = schedule_option(recipes.IMDB_RECIPE.lr_schedule)
    clip_norm: float = clip_norm_option(recipes.IMDB_RECIPE.clip_norm)
    validation_split: float = option(0.0, "held out of train", fraction)
    model: str = option(
        "simple", "one of the seeds' models, or best", choices=tuple(sorted(IMDB_MODELS))
    )
    epochs: int | None = option(None, "default: the model's seed's", positive_int)
    batch_size: int | None = option(None, "default: the model's seed's", positive_int)
    maxlen: int | None = option(None, "tokens kept per review; default: the seed's", positive_int)
    vocab_size: int | None = option(
        None, "most frequent words kept; default: the seed's", positive_int
    )
    embedding_dim: int | None = option(
        None, "embedding features; default: the seed's", positive_int
    )
    hidden: int | None = option(None, "LSTM units per direction; default: the seed's", positive_int)
    dropout: float | None = option(
        None, "after the embedding and before the head; default: the seed's", fraction
    )
    word_dropout: float | None = option(
        None, "drop whole token vectors after the embedding; default: the seed's", fraction
    )
    pooling: str | None = option(
        None,
        "what the head reads: h after the last step, or the max and mean over the steps;"
        " default: the seed's",
        choices=("last", "max-mean"),
    )
    bigrams: int | None = option(
        None,
        "rows of a fastText-style bag of hashed bigrams beside the LSTM (0: none; default: the"
        " seed's, 0)",
        non_negative_int,
    )
    ngrams: int | None = option(
        None,
        "weights of a linear model of the review's words and hashed word pairs whose logit"
        " adds to the LSTM's (0: none; default: the seed's, 0)",
        non_negative_int,
    )
    nbsvm: float | None = option(
        None,
        "an ensemble with NBSVM-bigrams (Wang & Manning 2012), fitted before the network"
        " trains: its margin times this joins the logits at evaluation (0: none; default: the"
        " seed's, 0; best's, 8; with --init-from too, default 0)",
        non_negative_float,
    )
    bucket_width: int = option(50, "batch by length (0: pad all to maxlen)", non_negative_int)
    validation_slice: str = option(
        "last",
        "which training reviews --validation-split holds out: the last ones (Keras's), or"
        " 'movies': whole groups of reviews that name the same people, about one movie each, so"
        " that, as on the test split, no movie is on both sides (data.movies.movie_slice_order)",
        choices=("last", "movies"),
    )
    test: bool = option(
        True,
        "score the test split after every epoch and at the end (--no-test: a run that chooses"
        " a model on --validation-split; its metrics.json holds the validation scores)",
    )
    dtype: str = option(
        "float32",
        "the LSTM's matrix products: float32, or bfloat16 (mixed precision: float32 state)",
        choices=("float32", "bfloat16"),
    )
    data_dir: str | None = option(None, "TFDS data directory (default: $TFDS_DATA_DIR)", str)
    cache_dir: str | None = option(
        None, "where encoded reviews are cached (default: ~/.cache/flaxlstm)", str
    )
    limit: int | None = option(
        None, "use the first N reviews of each split (a quick try)", positive_int
    )
    init_from: str | None = option(
        None,
        "fine-tune a classifier made of this word-level 'train lm' run's embedding and LSTM"
        " (its vocabulary; concat pooling and a new head: models.LmClassifier); --model then"
        " only gives the default epochs, batch size and maxlen",
        str,
    )
    pretrained_lr_scale: float = option(
        1.0,
        "with --init-from: the pretrained layers learn at this fraction of the rate",
        positive_float,
    )

    def resolved(self) -> ImdbConfig:
        """This config with every unset size and layer setting taken from the model's seed
        (with ``init_from`` the layers are the language model's, but for ``dropout`` and
        ``nbsvm``)."""
        if not (self.test or self.validation_split):
            raise ValueError("--no-test needs --validation-split: a run must score something")
        seed = IMDB_MODELS[self.model]
        names = ("epochs", "batch_size", "maxlen", "vocab_size")
        layers = IMDB_LAYER_OPTIONS
        if self.init_from is not None:
            given = [
                name for name in (*layers, "dtype") if getattr(self, name) not in (None, "float32")
            ]
            if [name for name in given if name not in ("dropout", "nbsvm")]:
                flags = ", ".join("--" + name.replace("_", "-") for name in given)
                raise ValueError(
                    f"--init-from takes the language model's layers: leave out {flags}"
                )
            layers = ()
        filled = {
            k: getattr(seed, k) if getattr(self, k) is None else getattr(self, k)
            for k in (*names, *layers)
        }
        if filled.get("nbsvm") or self.nbsvm:
            require_ngrams()
        return dataclasses.replace(self, out=self.out or f"runs/imdb-{self.model}", **filled)

    @property
    def layers(self) -> dict:
        """The layer settings a run's config.json records (``runs.imdb_model`` reads them)."""
        return {name: getattr(self, name) for name in IMDB_LAYER_OPTIONS}

    @property
    def recipe(self) -> recipes.Recipe:
        if self.init_from is None:
            return super().recipe
        scales = tuple((name, self.pretrained_lr_scale) for name in recipes.LM_PRETRAINED_LAYERS)
        return recipes.LayerRates(self.learning_rate, self.lr_schedule, self.clip_norm, scales)


@dataclass(frozen=True)
class LmConfig(RecipeOptions, JobOptions):
    """``flaxlstm train lm``: a language model on a text file or on IMDB's 75,000 training
    reviews (``train`` + ``unsupervised``, never ``test``), trained chunk by chunk with the
    state carried over (``flaxlstm.training.lm``). Unset sizes depend on ``level``."""

    learning_rate: float = learning_rate_option(2e-3)
    lr_schedule: Literal["constant", "cosine"] = schedule_option("cosine")
    clip_norm: float = clip_norm_option(1.0)
    text: str | None = option(None, "train on this UTF-8 text file", str)
    imdb: bool = option(False, "train on IMDB's train + unsupervised reviews")
    level: str = option("char", "what a token is", choices=("char", "word"))
    vocab_size: int | None = option(
        None, "tokens kept (by frequency; default 256 characters, 20000 words)", positive_int
    )
    embedding: int = option(64, "embedding features", positive_int)
    hidden: int = hidden_option(512)
    layers: int = option(1, "stacked LSTM layers", positive_int)
    tie: bool = option(False, "tie the output layer to the embedding")
    dropout: float = option(0.0, "on embeddings, between layers and on outputs", fraction)
    samples: int | None = option(
        None,
        "sampled-softmax classes per step (0: full softmax; default: 1024 for vocabularies of"
        " more than 4096 tokens, else 0)",
        non_negative_int,
    )
    bptt: int = option(100, "steps per chunk (backpropagation through time)", positive_int)
    batch_size: int = batch_size_option(64, "rows read side by side")
    epochs: int = epochs_option(1)
    max_steps: int | None = option(None, "stop after N steps", positive_int)
    eval_every: int | None = option(
        None, "also validate every N steps (always after each epoch)", positive_int
    )
    checkpoint_every: int | None = option(200, "also checkpoint every N steps", positive_int)
    validation_split: float = option(
        0.02, "held out of the text (the end) or of the reviews (a fixed draw)", fraction
    )
    limit: int | None = option(None, "use the first N of the 75,000 reviews", positive_int)
    data_dir: str | None = option(None, "TFDS data directory (default: $TFDS_DATA_DIR)", str)
    resume: bool = option(False, "continue from DIR/checkpoints")
    init_from: str | None = option(
        None,
        "start from the newest model of this 'train lm' run (another pass, a new schedule): its"
        " vocabulary and sizes are kept, so --level, --vocab-size, --embedding, --hidden,"
        " --layers and --tie are taken from it",
        str,
    )
    grow: int = option(
        0,
        "with --init-from: stack N new LSTM layers on the source's (they and the output layer"
        " start afresh; the embedding and the source's layers are loaded)",
        int,
    )
    seed: int = option(0, "of the initialisation, order and samples", int)
    loop: str = loop_option()
    out: str | None = out_option(None)
    quiet: bool = option(False, "print nothing")

    def resolved(self) -> LmConfig:
        """This config checked, every unset option filled in for its ``level``."""
        if (self.text is None) == (not self.imdb):
            raise ValueError("give one of --text FILE or --imdb")
        if self.limit is not None and not self.imdb:
            raise ValueError("--limit applies to --imdb")
        if not self.validation_split:
            raise ValueError("a language model needs validation: --validation-split > 0")
        if self.grow < 0 or (self.grow and self.init_from is None):
            raise ValueError("--grow N stacks N >= 0 new layers on an --init-from run's")
        words = self.level == "word"
        source = "imdb" if self.imdb else os.path.splitext(os.path.basename(self.text))[0]
        return dataclasses.replace(
            self,
            vocab_size=self.vocab_size or (20000 if words else 256),
            out=self.out or f"runs/lm-{source}-{self.level}",
        )


@dataclass(frozen=True)
class InspectCumsumConfig:
    """``flaxlstm inspect cumsum``: a cumsum model trained in seconds (fewer sequences than
    the seed's, at a larger learning rate; about 99.5% of steps right), then drawn."""

    samples: int = sequences_option(4000)
    epochs: int = option(10, "passes over them", positive_int)
    hidden: int = hidden_option(20)
    learning_rate: float = learning_rate_option(1e-2)
    seed: int = option(0, "of the data, initialisation and order", int)
    sequence: int = option(0, "which held-out sequence to draw", int)
    out: str = option("runs/inspect-cumsum", "directory for the PNGs", str)


def __getattr__(name: str):
    """The names that moved to flaxlstm.recipes (flaxlstm/_moved.py)."""
    return moved_attribute(__name__, name)
