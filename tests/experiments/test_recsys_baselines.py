"""The sequence-recommendation baselines: each ranks what its method says it ranks."""
import numpy as np
import pytest

from experiments import recsys_baselines as rb


def _two_taste_groups(seed=0, users=60, items=41):
    """Users 0..29 interact with items 1..20, users 30..59 with items 21..40 (10 each, random)."""
    rng = np.random.default_rng(seed)
    hist = np.zeros((users, 10), np.int64)
    for u in range(users):
        lo = 1 if u < users // 2 else 21
        hist[u] = rng.choice(np.arange(lo, lo + 20), 10, replace=False)
    return hist, np.ones_like(hist, bool), items


def test_popularity_orders_by_counts_and_never_scores_padding():
    hist = np.array([[1, 2, 2, 3], [2, 3, 3, 3]])
    mask = np.array([[True, True, True, False], [True, True, True, True]])
    counts = rb.item_counts(hist, mask, 5)
    np.testing.assert_array_equal(counts, [0, 1, 3, 3, 0])  # the masked 3 is not counted
    scores = rb.popularity(counts, 2)
    assert np.isneginf(scores[:, 0]).all() and (scores[:, 2] == scores[:, 3]).all() and (scores[:, 1] > scores[:, 4]).all()


def test_repeat_last_puts_the_users_items_first_newest_first():
    hist = np.array([[4, 2, 4, 0], [1, 1, 3, 2]])
    mask = np.array([[True, True, True, False], [True, True, True, True]])
    counts = np.array([0, 100, 1, 1, 1, 50.0])
    scores = rb.repeat_last(hist, mask, counts)
    order = np.argsort(-scores, axis=1)
    np.testing.assert_array_equal(order[0, :2], [4, 2])  # 4 was seen last (position 3), then 2
    assert order[0, 2] == 1  # then the most popular unseen item
    np.testing.assert_array_equal(order[1, :3], [2, 3, 1])


@pytest.mark.parametrize("kind", ["als", "item_knn", "bm25"])
def test_implicit_baselines_rank_the_users_taste_group_first(kind):
    hist, mask, items = _two_taste_groups()
    train = rb.user_item_matrix(hist, mask, items)
    model = rb.fit_implicit(kind, train, factors=8, iterations=10, neighbours=20)
    scores = rb.implicit_scores(model, train)
    assert scores.shape == (60, items) and np.isneginf(scores[:, 0]).all()
    own = np.where(np.arange(60)[:, None] < 30, np.arange(items) <= 20, np.arange(items) > 20)[:, :]
    own[:, 0] = False
    seen = train.toarray() > 0
    # Every unseen item of the user's own group outscores the other group's items on average.
    mean_own = np.nanmean(np.where(own & ~seen, scores, np.nan), 1)
    mean_other = np.nanmean(np.where(~own & (np.arange(items) > 0), scores, np.nan), 1)
    assert (mean_own > mean_other).mean() > 0.9


def test_catalogue_metrics_follow_the_rank_of_the_target_and_exclude_history():
    scores = np.array([[-np.inf, 5.0, 4.0, 3.0, 2.0], [-np.inf, 5.0, 4.0, 3.0, 2.0]])
    targets = np.array([3, 3])
    hist = np.array([[1, 0], [4, 0]])
    mask = np.array([[True, False], [True, False]])
    m = rb.catalogue_metrics(scores, targets, hist, mask, repeats="exclude", ks=(1, 10))
    # User 0: item 1 is excluded, so the target is 2nd; user 1: excluding item 4 leaves it 3rd.
    np.testing.assert_allclose(m["mrr"], [1 / 2, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose(m["ndcg@10"], [1 / np.log2(3), 1 / np.log2(4)], rtol=1e-6)
    np.testing.assert_array_equal(m["recall@1"], [0, 0])
    counted = rb.catalogue_metrics(scores, targets, hist, mask, repeats="count", ks=(1,))
    np.testing.assert_allclose(counted["mrr"], [1 / 3, 1 / 3], rtol=1e-6)
