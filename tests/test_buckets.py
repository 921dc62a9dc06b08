"""Length-bucketed batches: every example once, few shapes, and the same loss as full padding."""

import numpy as np
import pytest
from flax import nnx

from flaxlstm.data.batches import Batch, batches
from flaxlstm.models import MODELS
from flaxlstm.training.fit import evaluate, fit


def post_padded(lengths, maxlen):
    """Random ids of a 50-word vocabulary, post-padded, and alternating labels."""
    rng = np.random.default_rng(0)
    lengths = np.minimum(lengths, maxlen).astype(np.int32)
    ids = np.where(
        np.arange(maxlen) < lengths[:, None], rng.integers(3, 50, (len(lengths), maxlen)), 0
    )
    return ids.astype(np.int32), lengths, (np.arange(len(lengths)) % 2).astype(np.int32)


def test_buckets_cover_every_example_once_with_few_shapes():
    ids, lengths, _ = post_padded(np.random.default_rng(1).integers(1, 700, 1000), 500)
    index = np.arange(1000)  # labels: the example's index, to see which came out
    data = Batch(ids, index, lengths)
    order = np.random.default_rng(2).permutation(1000)
    out = list(batches(data, 32, order, bucket_width=50, rng=np.random.default_rng(3)))
    real = np.concatenate([b.labels[b.weights > 0] for b in out])
    assert sorted(real.tolist()) == list(range(1000))  # every example once, at weight 1
    assert sum((b.weights == 0).any() for b in out) == 1  # one topped-up batch
    assert len({b.inputs.shape for b in out}) <= 500 // 50
    for b in out:
        width = b.inputs.shape[1]
        assert width % 50 == 0 and b.lengths.max() <= width < b.lengths.max() + 50
        np.testing.assert_array_equal(b.inputs, ids[b.labels, :width])


def test_buckets_shuffle_with_the_generator():
    ids, lengths, _ = post_padded(np.random.default_rng(4).integers(1, 120, 200), 100)
    data = Batch(ids, np.arange(200), lengths)

    def order(seed):
        rng = np.random.default_rng(seed)
        return [
            b.labels.tolist()
            for b in batches(data, 16, rng.permutation(200), bucket_width=25, rng=rng)
        ]

    assert order(0) == order(0)
    assert order(0) != order(1)


@pytest.fixture(scope="module")
def small_model():
    return MODELS["simple"](vocab_size=50, embedding_dim=8, hidden=8, rngs=nnx.Rngs(0))


def test_bucketed_loss_equals_the_fully_padded_loss(small_model):
    ids, lengths, labels = post_padded(np.random.default_rng(5).integers(1, 60, 40), 60)
    full = evaluate(small_model, ids, labels, lengths=lengths, batch_size=8)
    cut = evaluate(small_model, ids, labels, lengths=lengths, batch_size=8, bucket_width=16)
    np.testing.assert_allclose(cut["loss"], full["loss"], rtol=1e-6)
    assert cut["accuracy"] == full["accuracy"]


def test_bucket_width_needs_lengths(small_model):
    ids, lengths, labels = post_padded(np.full(4, 5), 8)
    with pytest.raises(ValueError, match="bucket_width needs lengths"):
        evaluate(small_model, ids, labels, bucket_width=4)
    with pytest.raises(ValueError, match=r"bucket_width must be an integer >= 0 \(0: no bu"):
        evaluate(small_model, ids, labels, lengths=lengths, bucket_width=-1)


def test_bucket_width_0_means_no_buckets_as_on_the_command_line(small_model):
    """``flaxlstm train imdb --bucket-width 0`` pads every batch to the full length (tasks.py
    passes None); so does ``bucket_width=0`` in ``batches``, ``evaluate`` (no lengths needed)
    and ``fit``: the same batches, in the same order, as without buckets, so the same history."""
    ids, lengths, labels = post_padded(np.random.default_rng(6).integers(1, 30, 24), 30)
    data = Batch(ids, labels, lengths)
    rng = lambda: np.random.default_rng(7)  # noqa: E731
    none = list(batches(data, 8, np.arange(24)[::-1], rng=rng()))
    zero = list(batches(data, 8, np.arange(24)[::-1], bucket_width=0, rng=rng()))
    for a, b in zip(none, zero, strict=True):
        assert a.inputs.shape == (8, 30)
        np.testing.assert_array_equal(a.inputs, b.inputs)
    assert evaluate(small_model, ids, labels, bucket_width=0) == evaluate(small_model, ids, labels)
    histories = [
        fit(nnx.clone(small_model), ids, labels, lengths=lengths, batch_size=8, bucket_width=w,
            quiet=True)
        for w in (0, None, 10)
    ]  # fmt: skip
    assert histories[0] == histories[1] != histories[2]
