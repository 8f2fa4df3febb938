"""Sequence-recommendation baselines that no one here wrote the method of: popularity, repeat-last-item,
and the `implicit` package's matrix factorisation (ALS) and item-kNN (cosine, BM25).

Every scorer returns float scores[B, num_items] over the whole catalogue, item ids 1..num_items-1 (id 0 is
padding and scores -inf), so they are ranked by the same metric code as the models
(fintrans.tasks.ranking.ranking_metrics through `catalogue_metrics`). Histories are int[B, H] with
`mask` bool[B, H] marking real entries, oldest first.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import threadpoolctl


def item_counts(histories: np.ndarray, mask: np.ndarray, num_items: int) -> np.ndarray:
    """float64[num_items]: how often each item occurs in the real entries of `histories`."""
    return np.bincount(histories[mask].ravel(), minlength=num_items).astype(np.float64)[:num_items]


def popularity(counts: np.ndarray, batch: int) -> np.ndarray:
    """Every user gets the training counts as scores (the most-popular list)."""
    scores = np.broadcast_to(counts.astype(np.float64), (batch, counts.size)).copy()
    scores[:, 0] = -np.inf
    return scores


def repeat_last(histories: np.ndarray, mask: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The user's own items, most recent first, then the rest by popularity: the last item scores highest.

    An item seen in the history scores 1 + (its last position's recency rank) above every unseen item, whose
    score is its popularity squashed into [0, 1)."""
    b, h = histories.shape
    scores = popularity(counts / (counts.max() + 1.0), b)
    rows = np.repeat(np.arange(b), h)
    # Writing positions oldest to newest leaves each item's newest position: later writes win in numpy.
    recency = np.broadcast_to(np.arange(1, h + 1, dtype=np.float64), (b, h))
    keep = mask.ravel()
    scores[rows[keep], histories.ravel()[keep]] = 1.0 + recency.ravel()[keep]
    return scores


def user_item_matrix(histories: np.ndarray, mask: np.ndarray, num_items: int) -> sp.csr_matrix:
    """csr float32[B, num_items] of interaction counts (the input `implicit` fits on)."""
    b, h = histories.shape
    rows = np.repeat(np.arange(b), h)[mask.ravel()]
    cols = histories.ravel()[mask.ravel()]
    m = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=(b, num_items))
    m.sum_duplicates()
    return m


def fit_implicit(kind: str, train: sp.csr_matrix, *, factors: int = 64, regularization: float = 0.05,
                 iterations: int = 15, neighbours: int = 100, seed: int = 0):
    """A fitted `implicit` model: kind 'als' (AlternatingLeastSquares), 'item_knn' (CosineRecommender) or
    'bm25' (BM25Recommender). One thread, so runs are reproducible and leave the other core free."""
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.nearest_neighbours import BM25Recommender, CosineRecommender
    makers = {
        "als": lambda: AlternatingLeastSquares(factors=factors, regularization=regularization,
                                               iterations=iterations, random_state=seed, num_threads=1),
        "item_knn": lambda: CosineRecommender(K=neighbours, num_threads=1),
        "bm25": lambda: BM25Recommender(K=neighbours, num_threads=1),
    }
    if kind not in makers:
        raise ValueError(f"unknown implicit baseline {kind!r}; choose from {', '.join(makers)}")
    # OpenBLAS's own threads slow ALS down (implicit checks for them when the model is made); the kNN
    # models' internal conversion of their reweighted matrix warns that it is not CSR, implicit's own doing.
    with threadpoolctl.threadpool_limits(1, "blas"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Method expects CSR input")
        model = makers[kind]()
        model.fit(train.tocsr(), show_progress=False)
    return model


def implicit_scores(model, histories: sp.csr_matrix) -> np.ndarray:
    """scores[B, num_items] of every item for users given by their interaction rows (users need not be the
    fitted ones: ALS solves each user's factors from the row, the kNN models sum item similarities)."""
    b, n = histories.shape
    ids, scores = model.recommend(np.arange(b), histories, N=n, recalculate_user=True,
                                  filter_already_liked_items=False)
    out = np.full((b, n), -np.inf)
    np.put_along_axis(out, ids, scores, axis=1)
    out[:, 0] = -np.inf
    return out


def catalogue_metrics(scores: np.ndarray, targets: np.ndarray, histories: np.ndarray, mask: np.ndarray, *,
                      repeats: str = "exclude", ks=(10,), chunk: int = 256) -> dict[str, np.ndarray]:
    """Per-user {"ndcg@k", "recall@k", "mrr"} of full-catalogue scores against one target item each, with
    the ranking task's conventions (ties in expectation; repeats='exclude' drops the user's history items
    from the ranking, 'count' keeps them). Users whose target is excluded are left out (returned mask 'has')."""
    import jax.numpy as jnp
    from fintrans.tasks.ranking import candidate_set, ranking_metrics
    b, n = scores.shape
    ids = np.broadcast_to(np.arange(n), (chunk, n))
    parts = []
    for s in range(0, b, chunk):
        e = min(s + chunk, b)
        sc = np.where(np.isfinite(scores[s:e]), scores[s:e], np.finfo(np.float32).min)
        relevance = np.zeros((e - s, n), np.float32)
        relevance[np.arange(e - s), targets[s:e]] = 1.0
        batch = {"relevance": jnp.asarray(relevance), "candidate_mask": jnp.asarray(np.arange(n)[None] > 0)
                 .repeat(e - s, 0), "candidate_ids": jnp.asarray(ids[:e - s]),
                 "history_ids": jnp.asarray(np.where(mask[s:e], histories[s:e], -1)),
                 "history_mask": jnp.asarray(mask[s:e])}
        valid, rel = candidate_set(jnp.asarray(sc, jnp.float32), batch, repeats=repeats)
        metrics, has = ranking_metrics(jnp.asarray(sc, jnp.float32), rel, valid, ks)
        parts.append({**{k: np.asarray(v) for k, v in metrics.items()}, "has": np.asarray(has)})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
