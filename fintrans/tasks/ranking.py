"""Ranking and retrieval: pointwise click/conversion prediction and list-wise candidate ranking.

`ranking_pointwise` (CTR/CVR): the model returns one logit per label.
  Batch: label float|int[B, ...] in {0, 1} (soft labels in [0, 1] allowed; `label_key` option),
  optional `label_mask` bool[B, ...] (e.g. padded impressions), and `valid` bool[B] on evaluation.
  Outputs: logits with the label's shape (a trailing size-1 axis is dropped).
  Metrics: loss (binary log-loss from logits), accuracy (logit > 0), mean_probability and
  positive_rate (derived: calibration = their ratio), and auc exact over the evaluation set.

  AUC over the whole set, not a mean of per-batch AUCs: every batch adds its examples to two fixed
  histograms over sigmoid(logit) (positives, negatives; `num_bins` equal bins on [0, 1]) carried as
  array metric sums, and `derived` computes AUC from the summed histograms, counting a positive and
  a negative in the same bin as half a correctly ordered pair. Only same-bin pairs can be wrong, so
  |auc - exact AUC| <= auc_error_bound = 0.5 * sum_b pos_b * neg_b / (P * N) (also reported; it is
  about 0.5 / num_bins when scores spread evenly). Pairs with exactly equal scores count half in the
  exact AUC too (sklearn's convention). Rare events (a 1% click rate) crowd into the first
  probability bins and loosen the bound; `logit_range=R` bins the logit instead, num_bins equal bins
  on [-R, R] with values outside sharing the end bins, which resolves small probabilities finely.

`ranking_listwise` (retrieval, next-item recommendation): the model scores C candidates per example.
  Batch: relevance float|int[B, C] >= 0 (graded or binary; > 0 means relevant; `relevance_key`
  option), optional candidate_mask bool[B, C] (padded candidates), candidate_ids int[B, C] (item ids;
  enables de-duplication), history_ids int[B, H] with history_mask bool[B, H] or negative ids as
  padding (needed by repeats="exclude"), candidate_log_q float[B, C] (log of each candidate's sampling
  probability, for the sampled-softmax correction below), valid bool[B].
  Outputs: scores float[B, C], finite.
  Metrics: loss, ndcg@k, recall@k (relevant candidates in the top k / all relevant candidates; =
  HitRate@k when each example has one relevant item), mrr, over examples with at least one relevant
  candidate; means are exact over batches (sums and counts).

  Repeated items. A candidate list may hold the same item several times (sampled negatives that
  collide with the positive, an item listed once per past interaction). Each item is counted once:
  its copies merge into one candidate whose score is the best-scored copy's (where a recommender that
  shows each item once would place it) and whose relevance is the largest of the copies' (an item is
  relevant if any copy is; the maximum, not the sum, so listing it twice adds no gain). Without this,
  one relevant item listed twice would count as two hits in Recall and two gains in DCG.
  Items already in the user's history: `repeats="count"` (default) keeps them as candidates and
  targets, as PISA does (a user re-listening to a track they heard before is a relevant target);
  `repeats="exclude"` removes them from both the ranking and the relevance (the convention of
  "recommend something new" evaluations).

  Ties. Equal scores are ranked in random order and every metric is its expectation over that
  order (closed forms, no sampling), so a constant scorer gets chance-level metrics rather than
  perfect ones. For NDCG this is sklearn.metrics.ndcg_score's tie-averaged DCG.

  Losses (`loss` option), over the same distinct candidates the metrics see:
  "softmax" — cross-entropy of the softmax over candidates against relevance normalised to sum 1
  (sampled softmax when the candidates are a positive plus sampled negatives; with
  batch["candidate_log_q"] the scores minus log q enter the loss, the logQ correction of Yi et al. 2019
  that removes the bias of popularity-sampled negatives; metrics use the raw scores);
  "bpr" — mean over pairs with rel_i > rel_j of -log sigmoid(s_i - s_j) (O(C^2) per example);
  "logloss" — binary log-loss of every candidate against relevance > 0.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fintrans.models.config import ConfigError
from fintrans.tasks.base import TASKS, BatchError, Task, check_keys, example_weights, weighted

# ---------------------------------------------------------------------------------------------- pointwise


def score_histograms(logits: jax.Array, labels: jax.Array, weights: jax.Array, num_bins: int,
                     logit_range: float | None = None):
    """(positives, negatives) weighted counts per bin; each float32[num_bins]. Bins split sigmoid(logits)
    on [0, 1] equally, or with logit_range R the logits on [-R, R]. A soft label y adds y to the positives
    and 1 - y to the negatives."""
    logits = logits.astype(jnp.float32).ravel()
    if logit_range is None:
        position = jax.nn.sigmoid(logits)
    else:
        position = (logits + logit_range) / (2.0 * logit_range)
    bins = jnp.clip(jnp.floor(position * num_bins).astype(jnp.int32), 0, num_bins - 1)
    y, w = labels.astype(jnp.float32).ravel(), weights.astype(jnp.float32).ravel()
    empty = jnp.zeros((num_bins,), jnp.float32)
    return empty.at[bins].add(w * y), empty.at[bins].add(w * (1.0 - y))


def auc_from_histograms(positives, negatives) -> tuple[float, float]:
    """(AUC, bound on its error against the exact AUC) from score histograms; any positive scaling of
    either histogram gives the same result. nan when one class is absent."""
    pos, neg = np.asarray(positives, np.float64), np.asarray(negatives, np.float64)
    total = pos.sum() * neg.sum()
    if total <= 0:
        return float("nan"), float("nan")
    neg_below = np.cumsum(neg) - neg
    auc = float(np.sum(pos * (neg_below + 0.5 * neg)) / total)
    return auc, float(0.5 * np.sum(pos * neg) / total)


def _pointwise_logits(outputs, labels, task: str):
    if outputs.shape == labels.shape + (1,):
        outputs = outputs[..., 0]
    if outputs.shape != labels.shape:
        raise ValueError(f"{task}: logits {outputs.shape} do not match labels {labels.shape}")
    return outputs.astype(jnp.float32)


class PointwiseRanking(Task):
    """Binary click/conversion prediction with log-loss, accuracy, calibration and exact AUC (see module doc)."""

    name = "ranking_pointwise"

    def __init__(self, *, label_key: str = "label", mask_key: str = "label_mask", num_bins: int = 2048,
                 logit_range: float | None = None):
        if not isinstance(num_bins, int) or num_bins < 2:
            raise ConfigError(f"{self.name}: num_bins must be an integer >= 2, got {num_bins!r}")
        if logit_range is not None and not logit_range > 0:
            raise ConfigError(f"{self.name}: logit_range must be > 0 or None, got {logit_range!r}")
        self.label_key, self.mask_key, self.num_bins = label_key, mask_key, num_bins
        self.logit_range = None if logit_range is None else float(logit_range)

    def check_batch(self, batch) -> None:
        if self.label_key not in batch:
            raise BatchError(f"{self.name} batch has no label {self.label_key!r} (got {sorted(batch)})")
        labels = np.asarray(batch[self.label_key])
        if labels.ndim < 1:
            raise BatchError(f"{self.name} batch[{self.label_key!r}] must be [batch, ...], got a scalar")
        if labels.size and (labels.min() < 0 or labels.max() > 1):
            raise BatchError(f"{self.name} batch[{self.label_key!r}] must lie in [0, 1], got values in "
                             f"[{labels.min()}, {labels.max()}]")
        if self.mask_key in batch:
            check_keys(self.name, batch, {self.mask_key: (labels.ndim, "bool")})
            if np.shape(batch[self.mask_key]) != labels.shape:
                raise BatchError(f"{self.name} batch[{self.mask_key!r}] {np.shape(batch[self.mask_key])} must have "
                                 f"the label's shape {labels.shape}")
        check_keys(self.name, batch, {})  # every array agrees on the batch size

    def weights(self, batch, labels):
        w = example_weights(batch, labels.shape[0]).reshape((-1,) + (1,) * (labels.ndim - 1))
        w = jnp.broadcast_to(w, labels.shape)
        return w * batch[self.mask_key].astype(jnp.float32) if self.mask_key in batch else w

    def loss_from_outputs(self, logits, batch):
        """(mean loss, metric sums) for logits shaped like the labels."""
        labels = batch[self.label_key].astype(jnp.float32)
        logits = _pointwise_logits(logits, labels, self.name)
        w = self.weights(batch, labels)
        loss_sum, count = weighted(optax.sigmoid_binary_cross_entropy(logits, labels), w)
        pos, neg = score_histograms(logits, labels, w, self.num_bins, self.logit_range)
        correct = ((logits > 0) == (labels > 0.5)).astype(jnp.float32)
        metrics = {"loss": (loss_sum, count), "accuracy": weighted(correct, w),
                   "mean_probability": weighted(jax.nn.sigmoid(logits), w), "positive_rate": weighted(labels, w),
                   "auc_positives": (pos, count), "auc_negatives": (neg, count)}
        return loss_sum / jnp.maximum(count, 1.0), metrics

    def derived(self, summary):
        out = {}
        if "auc_positives" in summary and "auc_negatives" in summary:
            out["auc"], out["auc_error_bound"] = auc_from_histograms(summary["auc_positives"],
                                                                     summary["auc_negatives"])
        if summary.get("positive_rate", 0) > 0:
            out["calibration"] = summary["mean_probability"] / summary["positive_rate"]
        return out

    def sample(self, run, params, print_fn):
        """Predicted probability against the label for the first test examples, and the batch's AUC."""
        n = _num_examples(run)
        logits, batch = run.predict(params, run.first_batch("test"))
        labels = np.asarray(batch[self.label_key], np.float32)
        probability = 1.0 / (1.0 + np.exp(-_pointwise_logits(np.asarray(logits), labels, self.name)))
        w = np.asarray(self.weights(batch, labels))
        pos, neg = score_histograms(jnp.asarray(logits).reshape(labels.shape), labels, w, self.num_bins,
                                    self.logit_range)
        auc, _ = auc_from_histograms(pos, neg)
        rows = np.flatnonzero(np.asarray(batch.get("valid", np.ones(len(labels), bool))))[:n]
        print_fn(f"\n--- first test batch: AUC {auc:.4f}; predicted probability / label ---")
        for i in rows:
            print_fn(f"{np.array2string(probability[i], precision=3)} / {labels[i]}")
        return {"auc": auc, "probability": probability[rows].tolist(), "label": labels[rows].tolist()}


# ---------------------------------------------------------------------------------------------- list-wise


def history_membership(candidate_ids, history_ids, history_mask) -> jax.Array:
    """bool[B, C]: candidate c of example b is among b's real history items. O(C log H)."""
    h = history_ids.shape[-1]
    # Sort each history by id, a real entry before a padding entry of the same id, so the first match
    # that searchsorted finds is real whenever any is.
    order = jnp.lexsort(((~history_mask).astype(jnp.int32), history_ids), axis=-1)
    ids = jnp.take_along_axis(history_ids, order, -1)
    real = jnp.take_along_axis(history_mask, order, -1)
    pos = jax.vmap(lambda a, v: jnp.searchsorted(a, v, side="left"))(ids, candidate_ids)
    at = jnp.clip(pos, 0, h - 1)
    return (pos < h) & (jnp.take_along_axis(ids, at, -1) == candidate_ids) & jnp.take_along_axis(real, at, -1)


def dedupe_candidates(scores, candidate_ids, valid, relevance):
    """Merge the valid copies of each item: (valid, relevance) where only the best-scored copy (the first
    in index order on a score tie) stays valid, carrying the largest relevance of its copies."""
    b, c = scores.shape
    index = jnp.broadcast_to(jnp.arange(c), (b, c))
    # Valid first, then by id, best score first, then index: each item's copies are one run whose head
    # is the copy to keep.
    order = jnp.lexsort((index, -jax.lax.stop_gradient(scores), candidate_ids, (~valid).astype(jnp.int32)),
                        axis=-1)
    ids, real = jnp.take_along_axis(candidate_ids, order, -1), jnp.take_along_axis(valid, order, -1)
    rel = jnp.take_along_axis(relevance, order, -1)
    new_item = jnp.concatenate([jnp.ones((b, 1), bool), ids[:, 1:] != ids[:, :-1]], -1)
    head = real & new_item  # invalid entries sort last, so a run never spans valid and invalid ones
    group = jnp.clip(jnp.cumsum(head, -1) - 1, 0, c - 1)
    merged = jax.vmap(lambda r, g: jax.ops.segment_max(r, g, num_segments=c))(jnp.where(real, rel, -jnp.inf), group)
    rel = jnp.take_along_axis(merged, group, -1)
    inverse = jnp.argsort(order, axis=-1)
    keep = jnp.take_along_axis(head, inverse, -1)
    return keep, jnp.where(keep, jnp.take_along_axis(rel, inverse, -1), 0.0)


def candidate_set(scores, batch, *, relevance_key: str = "relevance", repeats: str = "count"):
    """(valid bool[B, C], relevance float[B, C]) of the distinct candidates to rank (see module doc)."""
    relevance = batch[relevance_key].astype(jnp.float32)
    valid = batch["candidate_mask"].astype(bool) if "candidate_mask" in batch else jnp.ones(relevance.shape, bool)
    ids = batch.get("candidate_ids")
    if repeats == "exclude":
        if ids is None or "history_ids" not in batch:
            raise BatchError("repeats='exclude' needs batch['candidate_ids'] and batch['history_ids']")
        history = batch["history_ids"]
        history_mask = batch["history_mask"].astype(bool) if "history_mask" in batch else history >= 0
        valid = valid & ~history_membership(ids, history, history_mask)
    if ids is not None:
        valid, relevance = dedupe_candidates(scores, ids, valid, relevance)
    return valid, jnp.where(valid, relevance, 0.0)


def _rank_counts(scores, valid):
    """(greater, tied) float[B, C]: how many valid candidates score above / equal to each candidate
    (tied includes itself). Under a random order of ties its rank is uniform on greater + 1 .. greater + tied."""
    n_valid = valid.sum(-1, keepdims=True)
    ascending = jnp.sort(jnp.where(valid, scores, jnp.inf), axis=-1)  # invalid ones last, never counted
    left = jax.vmap(lambda a, v: jnp.searchsorted(a, v, side="left"))(ascending, scores)
    right = jax.vmap(lambda a, v: jnp.searchsorted(a, v, side="right"))(ascending, scores)
    return (n_valid - right).astype(jnp.float32), (right - left).astype(jnp.float32)


def _expected_reciprocal_rank(scores, relevant, valid):
    """E[1 / rank of the first relevant candidate] over random orders of tied scores.
    The best relevant score ties t candidates, r of them relevant, with g valid candidates above (none
    relevant). The first relevant of the tie group sits at g + X, P(X = x) = prod_{j<x-1} (t-r-j)/(t-j)
    * r/(t-x+1) (the first x-1 drawn are not relevant, the x-th is)."""
    c = scores.shape[-1]
    top = jnp.max(jnp.where(relevant, scores, -jnp.inf), -1, keepdims=True)
    g = jnp.sum(valid & (scores > top), -1, keepdims=True).astype(jnp.float32)
    t = jnp.sum(valid & (scores == top), -1, keepdims=True).astype(jnp.float32)
    r = jnp.sum(relevant & (scores == top), -1, keepdims=True).astype(jnp.float32)
    j = jnp.arange(c, dtype=jnp.float32)
    not_relevant = jnp.where(j < t - r, (t - r - j) / jnp.maximum(t - j, 1.0), 0.0)
    first_x_minus_1 = jnp.concatenate([jnp.ones_like(t), jnp.cumprod(not_relevant, -1)[:, :-1]], -1)
    x = j + 1.0
    p = jnp.where(x <= t - r + 1, first_x_minus_1 * r / jnp.maximum(t - x + 1.0, 1.0), 0.0)
    return jnp.sum(p / (g + x), -1)


def ranking_metrics(scores, relevance, valid, ks: Sequence[int], gain: str = "linear"):
    """({"ndcg@k", "recall@k", "mrr": float[B]}, has_relevant bool[B]); rows without a relevant valid
    candidate hold 0 and must be weighted out with has_relevant. Expected values over random orders
    of ties."""
    scores = jax.lax.stop_gradient(scores).astype(jnp.float32)
    c = scores.shape[-1]
    relevance = jnp.where(valid, relevance.astype(jnp.float32), 0.0)
    relevant = valid & (relevance > 0)
    gains = relevance if gain == "linear" else jnp.exp2(relevance) - 1.0
    greater, tied = _rank_counts(scores, valid)
    safe_tied = jnp.maximum(tied, 1.0)
    n_relevant = relevant.sum(-1)
    has = n_relevant > 0
    ideal = -jnp.sort(-gains, axis=-1)
    position = jnp.arange(1, c + 1, dtype=jnp.float32)
    out = {}
    for k in ks:
        discount = jnp.where(position <= k, 1.0 / jnp.log2(position + 1.0), 0.0)
        prefix = jnp.concatenate([jnp.zeros(1), jnp.cumsum(discount)])  # prefix[n] = sum of discounts 1..n
        lo, hi = greater.astype(jnp.int32), (greater + tied).astype(jnp.int32)
        expected_discount = (prefix[hi] - prefix[lo]) / safe_tied
        dcg = jnp.sum(jnp.where(valid, gains * expected_discount, 0.0), -1)
        idcg = jnp.sum(ideal * discount, -1)
        out[f"ndcg@{k}"] = jnp.where(has, dcg / jnp.where(idcg > 0, idcg, 1.0), 0.0)
        in_top_k = jnp.clip(k - greater, 0.0, tied) / safe_tied
        out[f"recall@{k}"] = jnp.sum(jnp.where(relevant, in_top_k, 0.0), -1) / jnp.maximum(n_relevant, 1)
    out["mrr"] = jnp.where(has, _expected_reciprocal_rank(scores, relevant, valid), 0.0)
    return out, has


def softmax_loss(scores, relevance, valid):
    """(loss float[B], has_term bool[B]): cross-entropy of softmax over valid candidates against the
    relevance distribution."""
    target = jnp.where(valid & (relevance > 0), relevance, 0.0)
    total = target.sum(-1, keepdims=True)
    has = total[:, 0] > 0
    log_p = jax.nn.log_softmax(jnp.where(valid, scores.astype(jnp.float32), -1e9), -1)
    return -jnp.sum(target / jnp.where(total > 0, total, 1.0) * log_p, -1), has


def bpr_loss(scores, relevance, valid):
    """(loss float[B], has_term bool[B]): mean over valid pairs with rel_i > rel_j of -log sigmoid(s_i - s_j)."""
    s = scores.astype(jnp.float32)
    pairs = valid[:, :, None] & valid[:, None, :] & (relevance[:, :, None] > relevance[:, None, :])
    per_pair = -jax.nn.log_sigmoid(s[:, :, None] - s[:, None, :])
    n = pairs.sum((1, 2))
    return jnp.sum(jnp.where(pairs, per_pair, 0.0), (1, 2)) / jnp.maximum(n, 1), n > 0


def logloss_loss(scores, relevance, valid):
    """(loss float[B], has_term bool[B]): mean binary log-loss of valid candidates against relevance > 0."""
    per = optax.sigmoid_binary_cross_entropy(scores.astype(jnp.float32), (relevance > 0).astype(jnp.float32))
    n = valid.sum(-1)
    return jnp.sum(jnp.where(valid, per, 0.0), -1) / jnp.maximum(n, 1), n > 0


LISTWISE_LOSSES = {"softmax": softmax_loss, "bpr": bpr_loss, "logloss": logloss_loss}
_REPEATS = ("count", "exclude")
_GAINS = ("linear", "exponential")


class ListwiseRanking(Task):
    """Candidate ranking: NDCG@k, Recall@k, MRR with repeated items and ties handled (see module doc)."""

    name = "ranking_listwise"

    def __init__(self, *, ks: Sequence[int] = (1, 5, 10), loss: str = "softmax", repeats: str = "count",
                 gain: str = "linear", relevance_key: str = "relevance"):
        ks = tuple(ks)
        if not ks or not all(isinstance(k, (int, np.integer)) and k >= 1 for k in ks):
            raise ConfigError(f"{self.name}: ks must be a non-empty tuple of positive integers, got {ks!r}")
        for option, value, choices in (("loss", loss, tuple(LISTWISE_LOSSES)), ("repeats", repeats, _REPEATS),
                                       ("gain", gain, _GAINS)):
            if value not in choices:
                raise ConfigError(f"{self.name}: {option} must be one of {choices}, got {value!r}")
        self.ks, self.loss, self.repeats, self.gain = tuple(int(k) for k in ks), loss, repeats, gain
        self.relevance_key = relevance_key

    def check_batch(self, batch) -> None:
        spec = {self.relevance_key: (2, "any")}
        optional = {"candidate_mask": (2, "bool"), "candidate_ids": (2, "int"), "history_ids": (2, "int"),
                    "history_mask": (2, "bool"), "candidate_log_q": (2, "float")}
        spec.update({k: v for k, v in optional.items() if k in batch})
        if self.repeats == "exclude":
            spec.update({"candidate_ids": (2, "int"), "history_ids": (2, "int")})
        check_keys(self.name, batch, spec)
        shape = np.shape(batch[self.relevance_key])
        for key in ("candidate_mask", "candidate_ids", "candidate_log_q"):
            if key in batch and np.shape(batch[key]) != shape:
                raise BatchError(f"{self.name} batch[{key!r}] {np.shape(batch[key])} must have the relevance's "
                                 f"shape {shape} [batch, candidates]")
        if "history_mask" in batch and np.shape(batch["history_mask"]) != np.shape(batch.get("history_ids")):
            raise BatchError(f"{self.name} batch['history_mask'] {np.shape(batch['history_mask'])} must have "
                             f"history_ids' shape {np.shape(batch.get('history_ids'))}")
        relevance = np.asarray(batch[self.relevance_key])
        if relevance.size and relevance.min() < 0:
            raise BatchError(f"{self.name} batch[{self.relevance_key!r}] must be >= 0, got {relevance.min()}")

    def loss_from_outputs(self, scores, batch):
        """(mean loss, metric sums) for candidate scores [B, C]."""
        relevance = batch[self.relevance_key]
        if scores.shape != relevance.shape:
            raise ValueError(f"{self.name}: scores {scores.shape} do not match relevance {relevance.shape} "
                             "[batch, candidates]")
        valid, relevance = candidate_set(scores, batch, relevance_key=self.relevance_key, repeats=self.repeats)
        w = example_weights(batch, scores.shape[0])
        loss_scores = scores
        if self.loss == "softmax" and "candidate_log_q" in batch:
            loss_scores = scores.astype(jnp.float32) - batch["candidate_log_q"].astype(jnp.float32)
        row_loss, has_term = LISTWISE_LOSSES[self.loss](loss_scores, relevance, valid)
        loss_sum, count = weighted(jnp.where(has_term, row_loss, 0.0), w * has_term)
        values, has_relevant = ranking_metrics(scores, relevance, valid, self.ks, self.gain)
        metrics = {"loss": (loss_sum, count)}
        metrics.update({k: weighted(v, w * has_relevant) for k, v in values.items()})
        return loss_sum / jnp.maximum(count, 1.0), metrics

    def derived(self, summary):
        return {}

    def sample(self, run, params, print_fn):
        """The top candidates of the first test examples (relevant ones starred) and their NDCG."""
        n, k = _num_examples(run), min(max(self.ks), 10)
        scores, batch = run.predict(params, run.first_batch("test"))
        scores = np.asarray(scores, np.float32)
        jbatch = {key: jnp.asarray(v) for key, v in batch.items()}
        valid, relevance = (np.asarray(x) for x in candidate_set(jnp.asarray(scores), jbatch,
                                                                   relevance_key=self.relevance_key,
                                                                   repeats=self.repeats))
        values, _ = ranking_metrics(jnp.asarray(scores), jnp.asarray(relevance), jnp.asarray(valid), (k,), self.gain)
        ids = np.asarray(batch["candidate_ids"]) if "candidate_ids" in batch else None
        rows = np.flatnonzero(np.asarray(batch.get("valid", np.ones(len(scores), bool))))[:n]
        print_fn(f"\n--- first test examples: top {k} candidates (item:score, * relevant) ---")
        shown = []
        for i in rows:
            top = [c for c in np.argsort(-np.where(valid[i], scores[i], -np.inf), kind="stable")[:k] if valid[i, c]]
            items = [int(ids[i, c]) if ids is not None else int(c) for c in top]
            text = " ".join(f"{item}:{scores[i, c]:.3f}{'*' if relevance[i, c] > 0 else ''}"
                            for item, c in zip(items, top))
            print_fn(f"example {i} ndcg@{k}={float(values[f'ndcg@{k}'][i]):.3f}  {text}")
            shown.append({"items": items, "relevant": [bool(relevance[i, c] > 0) for c in top],
                          f"ndcg@{k}": float(values[f"ndcg@{k}"][i])})
        return {"examples": shown}


def _num_examples(run) -> int:
    sample = getattr(run.config, "sample", None)
    return int(getattr(sample, "num_examples", 4) or 4)


TASKS.register(PointwiseRanking.name, PointwiseRanking)
TASKS.register(ListwiseRanking.name, ListwiseRanking)
