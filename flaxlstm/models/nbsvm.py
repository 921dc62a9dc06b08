"""NBSVM-bigrams (Wang & Manning 2012, "Baselines and bigrams"), with the paper's published
hyperparameters: binary unigram + bigram indicators x ∈ {0, 1}^V; the log-count ratio
r = log((p / ‖p‖₁) / (q / ‖q‖₁)) with p = α + Σ_{y=1} x, q = α + Σ_{y=0} x, α = 1; an
L2-regularised, squared-hinge linear SVM (C = 1, scikit-learn's LinearSVC) on the scaled
features r ∘ x; its weights interpolated as w′ = (1 − β) w̄ + β w, w̄ = ‖w‖₁ / V, β = 0.25.
The classifier is sign(w′ · (r ∘ x) + b). ``models.Nbsvm`` makes it a member of
``--model best``; experiments/nbsvm.py runs it alone on scikit-learn's exact n-grams.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from scipy import sparse
from sklearn.svm import LinearSVC

ALPHA, C, BETA = 1.0, 1.0, 0.25


def log_count_ratio(x: sparse.csr_matrix, y: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """r [V] = log((p / ‖p‖₁) / (q / ‖q‖₁)), p and q the smoothed feature counts of the
    positive (y = 1) and negative (y = 0) examples of the binary features x [N, V]."""
    p = alpha + np.asarray(x[y == 1].sum(axis=0)).ravel()
    q = alpha + np.asarray(x[y == 0].sum(axis=0)).ravel()
    return np.log((p / p.sum()) / (q / q.sum()))


def fit_nbsvm(x: sparse.csr_matrix, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(r [V], interpolated weights w′ [V], bias b): the classifier sign(w′ · (r ∘ x) + b)."""
    if set(np.unique(y)) != {0, 1}:
        raise ValueError(f"NBSVM needs labels of both classes 0 and 1, got {np.unique(y)}")
    r = log_count_ratio(x, y)
    # (random_state: the solver visits examples in a random order; fixed, a fit repeats. Over
    # seeds 0–2 the validation slice's margins differed by under 1e-6.)
    svm = LinearSVC(C=C, loss="squared_hinge", dual=True, max_iter=10_000, random_state=0)
    svm.fit(x.multiply(r).tocsr(), y)
    w = svm.coef_.ravel()
    return r, (1 - BETA) * np.abs(w).mean() + BETA * w, float(svm.intercept_[0])


def indicator_matrix(
    ids: np.ndarray,
    lengths: np.ndarray,
    rows: Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]],
    features: int,
    batch_size: int = 500,
) -> sparse.csr_matrix:
    """The binary features x [N, features] of post-padded ids [N, T] (``lengths`` [N] real
    tokens): ``rows(ids [B, T], mask [B, T])`` → (feature rows [B, K], which count [B, K]),
    each feature once per review (``models.distinct_ngrams``), run in batches."""
    rows = jax.jit(rows)
    steps = np.arange(ids.shape[1])
    indices, indptr = [], [np.zeros(1, np.int64)]
    for start in range(0, len(ids), batch_size):
        batch = jnp.asarray(ids[start : start + batch_size])
        mask = jnp.asarray(steps[None] < lengths[start : start + batch_size, None])
        grams, real = (np.asarray(a) for a in rows(batch, mask))
        indices.append(grams[real])
        indptr.append(indptr[-1][-1] + np.cumsum(real.sum(axis=1)))
    indices = np.concatenate(indices)
    data = np.ones(len(indices), np.float32)
    return sparse.csr_matrix((data, indices, np.concatenate(indptr)), (len(ids), features))
