"""Ranking tasks: exact AUC over batches against sklearn, NDCG@k / Recall@k / MRR against a brute-force
numpy reference (ties averaged over every tie-breaking order, masks, duplicate items, history)."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import ndcg_score, roc_auc_score

from fintrans.models.config import ConfigError
from fintrans.tasks import ranking
from fintrans.tasks.base import BatchError, accumulate, build, summarize
from task_cases import FakeRun

KS = (1, 3, 5)


def _apply(outputs):
    return lambda params, batch, rng=None: outputs


def _evaluate(task, pairs):
    """summarize + derived over batches, each (outputs, batch), with one jitted metric function."""
    fn = jax.jit(lambda out, b: task.loss_and_metrics(_apply(out), None, b, None, train=False)[1])
    total = None
    for out, batch in pairs:
        total = accumulate(total, jax.device_get(fn(out, batch)))
    summary = summarize(total)
    return {**summary, **task.derived(summary)}


# ------------------------------------------------------------------------------------------- pointwise


def test_auc_exact_over_batches_against_sklearn():
    rng = np.random.default_rng(0)
    task = ranking.PointwiseRanking(num_bins=1024)
    labels = (rng.random(900) < 0.3).astype(np.float32)
    logits = (rng.normal(size=900) + 1.5 * labels).astype(np.float32)
    pairs = []
    for start in range(0, 900, 256):  # 4 batches, the last padded to 256 rows and weighted out
        lab, lg = labels[start:start + 256], logits[start:start + 256]
        pad = 256 - len(lab)
        batch = {"label": np.r_[lab, np.ones(pad, np.float32)], "valid": np.r_[np.ones(len(lab), bool),
                                                                               np.zeros(pad, bool)]}
        pairs.append((np.r_[lg, np.full(pad, 9.0, np.float32)], batch))
    got = _evaluate(task, pairs)
    exact = roc_auc_score(labels, logits)
    assert 0 < got["auc_error_bound"] < 2e-3
    assert abs(got["auc"] - exact) <= got["auc_error_bound"] + 1e-9
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    np.testing.assert_allclose(got["loss"], np.mean(-labels * np.log(p) - (1 - labels) * np.log(1 - p)), rtol=1e-5)
    np.testing.assert_allclose(got["accuracy"], np.mean((logits > 0) == (labels > 0.5)), rtol=1e-6)
    np.testing.assert_allclose(got["calibration"], p.mean() / labels.mean(), rtol=1e-5)


def test_logit_bins_resolve_rare_events():
    # A 1% click rate: predicted probabilities crowd the first probability bins, not the logit bins.
    rng = np.random.default_rng(8)
    labels = (rng.random(20000) < 0.01).astype(np.float32)
    logits = (rng.normal(size=20000) - 5.0 + 1.0 * labels).astype(np.float32)
    batch = {"label": labels}
    exact = roc_auc_score(labels, logits)
    bounds = {}
    for logit_range in (None, 12.0):
        got = _evaluate(ranking.PointwiseRanking(num_bins=1024, logit_range=logit_range), [(logits, batch)])
        assert abs(got["auc"] - exact) <= got["auc_error_bound"] + 1e-9
        bounds[logit_range] = got["auc_error_bound"]
    assert bounds[12.0] < 0.25 * bounds[None]  # about 0.0024 against 0.011 here


def test_auc_histogram_ties_and_bound():
    # Coarse bins: pairs sharing a bin count half; the bound is the share of such pairs / 2.
    pos, neg = np.array([0, 2, 1, 0]), np.array([1, 1, 0, 0])
    auc, bound = ranking.auc_from_histograms(pos, neg)
    assert auc == pytest.approx((2 * 1 + 2 * 0.5 + 1 * 2) / 6)
    assert bound == pytest.approx(0.5 * 2 / 6)
    assert np.isnan(ranking.auc_from_histograms(pos, np.zeros(4))[0])


def test_pointwise_label_mask_and_key():
    task = ranking.PointwiseRanking(label_key="click", num_bins=16)
    batch = {"click": np.array([[1, 0], [0, 1]], np.float32), "label_mask": np.array([[True, False], [True, True]])}
    logits = np.array([[2.0, -50.0], [-1.0, 3.0]], np.float32)[..., None]  # trailing axis of 1 is accepted
    loss, metrics = task.loss_and_metrics(_apply(logits), None, batch, None, train=True)
    real = np.array([2.0, -1.0, 3.0]), np.array([1.0, 0.0, 1.0])
    expected = np.mean(np.log1p(np.exp(-real[0])) * real[1] + np.log1p(np.exp(real[0])) * (1 - real[1]))
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["loss"][1]) == 3.0


def test_pointwise_bad_batches():
    task = ranking.PointwiseRanking()
    with pytest.raises(BatchError, match="no label 'label'"):
        task.check_batch({"click": np.zeros(3)})
    with pytest.raises(BatchError, match=r"\[0, 1\]"):
        task.check_batch({"label": np.array([0.0, 2.0])})
    with pytest.raises(ConfigError, match="num_bins"):
        ranking.PointwiseRanking(num_bins=1)
    with pytest.raises(ConfigError, match="logit_range"):
        ranking.PointwiseRanking(logit_range=0)
    with pytest.raises(ValueError, match="do not match"):
        task.loss_from_outputs(jnp.zeros((3, 2)), {"label": jnp.zeros(3)})


# ------------------------------------------------------------------------------------------- list-wise


def _reference_row(scores, relevance, mask, ids, history, repeats, ks):
    """Plain python: the metrics of one example averaged over every order of tied scores, or None if it
    has no relevant candidate."""
    keep = [c for c in range(len(scores)) if mask[c] and not (repeats == "exclude" and ids[c] in history)]
    items = {}
    for c in keep:  # one entry per item id: best score (lowest index on ties), largest relevance
        key = ids[c] if ids is not None else ("index", c)
        best = items.get(key)
        if best is None or scores[c] > best[0]:
            items[key] = (scores[c], max(relevance[c], best[1] if best else 0.0))
        else:
            items[key] = (best[0], max(best[1], relevance[c]))
    s = np.array([v[0] for v in items.values()])
    rel = np.array([v[1] for v in items.values()])
    if not (rel > 0).any():
        return None
    ideal = np.sort(rel)[::-1]
    disc = 1 / np.log2(np.arange(2, len(s) + 2))
    totals = {f"ndcg@{k}": 0.0 for k in ks} | {f"recall@{k}": 0.0 for k in ks} | {"mrr": 0.0}
    orders = list(itertools.permutations(range(len(s))))
    for tiebreak in orders:
        ranked = sorted(range(len(s)), key=lambda i: (-s[i], tiebreak[i]))
        r = rel[ranked]
        for k in ks:
            totals[f"ndcg@{k}"] += np.sum(r[:k] * disc[:k]) / np.sum(ideal[:k] * disc[:k])
            totals[f"recall@{k}"] += np.sum(r[:k] > 0) / np.sum(rel > 0)
        totals["mrr"] += 1 / (1 + np.flatnonzero(r > 0)[0])
    return {k: v / len(orders) for k, v in totals.items()}


def _listwise_case(rng, b=24, c=6, h=3):
    """Scores from a few values (many ties), graded relevance, padded candidates, repeated ids, and
    histories that overlap the candidates."""
    batch = {"relevance": (rng.random((b, c)) < 0.35) * rng.integers(1, 3, (b, c)).astype(np.float32),
             "candidate_mask": rng.random((b, c)) < 0.85,
             "candidate_ids": rng.integers(0, 5, (b, c)).astype(np.int32),
             "history_ids": np.where(rng.random((b, h)) < 0.8, rng.integers(0, 5, (b, h)), -1).astype(np.int32)}
    scores = rng.integers(0, 3, (b, c)).astype(np.float32)
    return scores, batch


@pytest.mark.parametrize("repeats", ["count", "exclude"])
def test_listwise_metrics_against_bruteforce(repeats):
    rng = np.random.default_rng(1)
    task = ranking.ListwiseRanking(ks=KS, repeats=repeats)
    scores, batch = _listwise_case(rng)
    values, has = jax.jit(lambda s, b: ranking.ranking_metrics(
        s, *reversed(ranking.candidate_set(s, b, repeats=repeats)), KS))(scores, batch)
    checked = 0
    for i in range(len(scores)):
        history = {x for x in batch["history_ids"][i] if x >= 0}
        ref = _reference_row(scores[i], batch["relevance"][i], batch["candidate_mask"][i],
                             batch["candidate_ids"][i], history, repeats, KS)
        assert bool(has[i]) == (ref is not None)
        if ref is not None:
            checked += 1
            for key, value in ref.items():
                assert float(values[key][i]) == pytest.approx(value, abs=1e-5), (i, key)
    assert checked >= 10
    task.check_batch(batch)


def test_ndcg_matches_sklearn_with_ties():
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 4, (16, 9)).astype(np.float32)
    relevance = rng.integers(0, 4, (16, 9)).astype(np.float32)
    relevance[:, 0] = 1.0  # every row has a relevant item
    valid = jnp.ones(scores.shape, bool)
    for k in (1, 4, 9):
        values, _ = ranking.ranking_metrics(jnp.asarray(scores), jnp.asarray(relevance), valid, (k,))
        for i in range(len(scores)):
            expected = ndcg_score(relevance[i:i + 1], scores[i:i + 1], k=k)
            assert float(values[f"ndcg@{k}"][i]) == pytest.approx(expected, abs=1e-5)


def test_constant_scores_give_chance_level():
    c, k = 8, 3
    relevance = jnp.zeros((1, c)).at[0, 5].set(1.0)
    values, _ = ranking.ranking_metrics(jnp.zeros((1, c)), relevance, jnp.ones((1, c), bool), (k,))
    assert float(values[f"recall@{k}"][0]) == pytest.approx(k / c)
    assert float(values["mrr"][0]) == pytest.approx(np.mean(1 / np.arange(1, c + 1)))


def test_repeated_items_count_once():
    # Item 7 is the relevant target listed twice; it must count as one hit, at its best copy's rank.
    batch = {"relevance": np.array([[1.0, 0.0, 1.0, 0.0]], np.float32),
             "candidate_ids": np.array([[7, 3, 7, 4]], np.int32)}
    scores = np.array([[0.1, 0.5, 0.9, 0.2]], np.float32)
    valid, rel = ranking.candidate_set(jnp.asarray(scores), batch)
    assert np.asarray(valid).tolist() == [[False, True, True, True]]  # the best-scored copy of 7 stays
    values, _ = ranking.ranking_metrics(jnp.asarray(scores), rel, valid, (1, 2))
    assert float(values["recall@1"][0]) == 1.0 and float(values["ndcg@2"][0]) == pytest.approx(1.0)
    # Relevance merges: a relevant low-scored copy makes the kept high-scored copy relevant.
    batch["relevance"] = np.array([[1.0, 0.0, 0.0, 0.0]], np.float32)
    _, rel = ranking.candidate_set(jnp.asarray(scores), batch)
    assert np.asarray(rel).tolist() == [[0.0, 0.0, 1.0, 0.0]]


def test_repeats_exclude_drops_history_items():
    # The user already heard item 3 (scored first). count: it is a relevant repeat at rank 1.
    # exclude: it leaves the ranking, and item 4 moves up to rank 1.
    batch = {"relevance": np.array([[1.0, 0.0, 1.0]], np.float32), "candidate_ids": np.array([[3, 5, 4]], np.int32),
             "history_ids": np.array([[3, -1]], np.int32)}
    scores = np.array([[0.9, 0.1, 0.5]], np.float32)
    out = {}
    for repeats in ("count", "exclude"):
        task = ranking.ListwiseRanking(ks=(1,), repeats=repeats)
        out[repeats] = task.loss_and_metrics(_apply(scores), None, batch, None, train=False)[1]
    assert float(out["count"]["recall@1"][0]) == 0.5 and float(out["count"]["mrr"][0]) == 1.0
    assert float(out["exclude"]["recall@1"][0]) == 1.0 and float(out["exclude"]["mrr"][0]) == 1.0
    # history_mask marks padding explicitly, so id 0 can be a real item
    batch["history_ids"] = np.array([[0, 3]], np.int32)
    batch["history_mask"] = np.array([[True, False]])
    valid, _ = ranking.candidate_set(jnp.asarray(scores), batch, repeats="exclude")
    assert np.asarray(valid).all()


def test_listwise_metrics_exact_over_batches():
    rng = np.random.default_rng(3)
    scores, batch = _listwise_case(rng, b=30)
    scores = scores + rng.normal(size=scores.shape).astype(np.float32)  # no ties
    task = ranking.ListwiseRanking(ks=KS)
    whole = _evaluate(task, [(scores, batch)])
    pairs = []
    for rows in (slice(0, 8), slice(8, 16), slice(16, 24), slice(24, 30)):
        part = {k: v[rows] for k, v in batch.items()}
        n = len(part["relevance"])
        pad = 8 - n
        part = {k: np.concatenate([v, v[:pad]]) for k, v in part.items()}  # padding rows copy real ones
        part["valid"] = np.arange(8) < n
        pairs.append((np.concatenate([scores[rows], scores[rows][:pad]]), part))
    split = _evaluate(task, pairs)
    assert set(split) == set(whole) and {"ndcg@5", "recall@3", "mrr", "loss"} <= set(whole)
    for key in whole:
        assert split[key] == pytest.approx(whole[key], rel=1e-5), key


def test_listwise_losses_against_numpy():
    rng = np.random.default_rng(4)
    scores = rng.normal(size=(5, 6)).astype(np.float32)
    relevance = (rng.random((5, 6)) < 0.4) * rng.integers(1, 3, (5, 6)).astype(np.float32)
    relevance[:, 0] = 1.0
    valid = rng.random((5, 6)) < 0.8
    valid[:, 0] = True
    for i in range(5):
        s, r = scores[i][valid[i]].astype(np.float64), relevance[i][valid[i]]
        log_p = s - np.log(np.exp(s).sum())
        softmax = -np.sum(r / r.sum() * log_p)
        pairs = [(a, b) for a in range(len(s)) for b in range(len(s)) if r[a] > r[b]]
        bpr = np.mean([np.log1p(np.exp(-(s[a] - s[b]))) for a, b in pairs]) if pairs else 0.0
        y = (r > 0).astype(np.float64)
        logloss = np.mean(np.log1p(np.exp(-s)) * y + np.log1p(np.exp(s)) * (1 - y))
        for fn, expected in ((ranking.softmax_loss, softmax), (ranking.bpr_loss, bpr),
                             (ranking.logloss_loss, logloss)):
            got, has = fn(jnp.asarray(scores), jnp.asarray(np.where(valid, relevance, 0)), jnp.asarray(valid))
            assert bool(has[i]) and float(got[i]) == pytest.approx(expected, rel=1e-5), fn.__name__
    # gradients reach the scores of valid candidates only
    grad = jax.grad(lambda s: ranking.softmax_loss(s, jnp.asarray(relevance), jnp.asarray(valid))[0].sum())(
        jnp.asarray(scores))
    assert np.all(np.asarray(grad)[~valid] == 0) and np.all(np.asarray(grad)[valid] != 0)


def test_listwise_options_and_batch_errors():
    with pytest.raises(ConfigError, match="loss must be one of"):
        ranking.ListwiseRanking(loss="hinge")
    with pytest.raises(ConfigError, match="ks must be"):
        ranking.ListwiseRanking(ks=(0,))
    with pytest.raises(ConfigError, match=r"\['kss'\]"):  # the unknown option is named
        build("ranking_listwise", {"kss": (1,)})
    task = ranking.ListwiseRanking(repeats="exclude")
    ok = {"relevance": np.zeros((2, 3)), "candidate_ids": np.zeros((2, 3), np.int32)}
    with pytest.raises(BatchError, match="history_ids"):
        task.check_batch(ok)
    with pytest.raises(BatchError, match="shape"):
        ranking.ListwiseRanking().check_batch({"relevance": np.zeros((2, 3)), "candidate_mask": np.ones((2, 4), bool)})
    with pytest.raises(BatchError, match=">= 0"):
        ranking.ListwiseRanking().check_batch({"relevance": -np.ones((2, 3))})
    with pytest.raises(ValueError, match="do not match relevance"):
        ranking.ListwiseRanking().loss_from_outputs(jnp.zeros((2, 4)), {"relevance": jnp.zeros((2, 3))})


# --------------------------------------------------------------------------------------------- samples


def test_pointwise_sample():
    rng = np.random.default_rng(5)
    labels = (rng.random(64) < 0.5).astype(np.float32)
    logits = (rng.normal(size=64) + labels).astype(np.float32)
    lines = []
    run = FakeRun(lambda p, b: logits, {"label": labels}, num_examples=3)
    out = ranking.PointwiseRanking().sample(run, None, lines.append)
    assert abs(out["auc"] - roc_auc_score(labels, logits)) < 2e-3
    np.testing.assert_allclose(out["probability"], 1 / (1 + np.exp(-logits[:3])), rtol=1e-5)
    assert out["label"] == labels[:3].tolist() and len(lines) == 4


def test_listwise_sample_shows_distinct_top_items():
    batch = {"relevance": np.array([[0, 1, 0, 0], [1, 0, 0, 0]], np.float32),
             "candidate_ids": np.array([[5, 6, 5, 7], [1, 2, 3, 4]], np.int32), "valid": np.array([True, False])}
    scores = np.array([[3.0, 2.0, 4.0, 1.0], [0.0, 1.0, 2.0, 3.0]], np.float32)
    lines = []
    out = ranking.ListwiseRanking(ks=(3,)).sample(FakeRun(lambda p, b: scores, batch), None, lines.append)
    (example,) = out["examples"]  # the padding row is not shown
    assert example["items"] == [5, 6, 7] and example["relevant"] == [False, True, False]
    assert example["ndcg@3"] == pytest.approx(1 / np.log2(3))
    assert "5:4.000 6:2.000* 7:1.000" in lines[-1]


@pytest.mark.parametrize("loss", sorted(ranking.LISTWISE_LOSSES))
def test_listwise_gradients_reach_only_the_ranked_candidates(loss):
    rng = np.random.default_rng(6)
    scores, batch = _listwise_case(rng, b=8)
    scores = scores + rng.normal(size=scores.shape).astype(np.float32)
    task = ranking.ListwiseRanking(loss=loss, repeats="exclude")
    grad = np.asarray(jax.jit(jax.grad(lambda s: task.loss_from_outputs(s, batch)[0]))(scores))
    valid, _ = ranking.candidate_set(jnp.asarray(scores), batch, repeats="exclude")
    valid = np.asarray(valid)
    assert np.all(np.isfinite(grad)) and np.all(grad[~valid] == 0) and np.any(grad[valid] != 0)


def test_sampled_softmax_log_q_correction():
    rng = np.random.default_rng(7)
    scores = rng.normal(size=(4, 5)).astype(np.float32)
    batch = {"relevance": np.eye(5, dtype=np.float32)[:4], "candidate_log_q": np.log(rng.dirichlet(np.ones(5), 4))}
    task = ranking.ListwiseRanking(ks=(1,))
    task.check_batch(batch)
    loss, metrics = task.loss_from_outputs(jnp.asarray(scores), batch)
    expected = ranking.softmax_loss(jnp.asarray(scores - batch["candidate_log_q"]), jnp.asarray(batch["relevance"]),
                                    jnp.ones((4, 5), bool))[0].mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    plain = task.loss_from_outputs(jnp.asarray(scores), {"relevance": batch["relevance"]})[1]
    assert float(metrics["mrr"][0]) == float(plain["mrr"][0])  # the ranking itself uses the raw scores
