"""Shapelet discovery for ShapeFormer (Le et al., KDD'24; authors' code `xuanmay2701/shapeformer`,
`Shapelet/auto_pisd.py`, `shapelet_discovery.py`), fitted on a TRAINING split only. numpy, deterministic.

1. Candidates by perceptually important points (PIPs), per training series and channel: start with the
   two end points; repeatedly add the point farthest (perpendicular distance, with the time index
   z-normalised as the authors do) from the line joining its two neighbouring PIPs. Each new PIP at
   sorted position i adds the candidate subsequences [pip[i-1], pip[i+1]], [pip[i-2], pip[i]] and
   [pip[i], pip[i+2]] (where they exist). The number of PIPs is max(5, int(pip_fraction * length)).
2. Each candidate is scored by how well its best-match distance to every training series (within
   `window` steps of the candidate's own position, on the same channel) separates its class from the
   others: the best information gain of a threshold split, one class against the rest.
   The distance is the complexity-invariant one the authors use:
       d = min_p ||s - x[p:p+L]|| * max(CI_s, CI_x) / min(CI_s, CI_x),  CI(z) = sqrt(sum diff(z)^2 + 1e-3).
3. Per class the `per_class` highest-gain candidates are kept (ties go to the shorter candidate, then
   the earlier series, channel and start; exact duplicates dropped). Candidates longer than half
   their series are skipped.

`score_candidates` does the scoring (the expensive part; ~10 s for BasicMotions' 32 training series),
`select` the choice per class; `discover(series, labels, ...)` = both, and returns a `Shapelets` record of fixed-size arrays (values padded to the
longest shapelet, with lengths) that ShapeFormer takes as a config field (`Shapelets.as_config()`).
The UEA datasets run this when loaded with the data config field `shapelets` (fintrans.data.builders.uea:
fitted on the train split, cached beside the dataset, exposed as info['shapelets']).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

CI_EPS = 1e-3
# The discovery code's version: the UEA builders cache discovered shapelets under it (fitted.FittedCache),
# so bump it whenever a change here changes which shapelets are found.
CODE_VERSION = 1


def pip_order(ts: np.ndarray, num_pips: int) -> list[int]:
    """Indices of the first `num_pips` perceptually important points of a 1-D series, in the order
    they are chosen (the two end points first). Ties go to the earliest index."""
    ts = np.asarray(ts, np.float64)
    n = len(ts)
    num_pips = min(num_pips, n)
    t = np.arange(n, dtype=np.float64)
    x = (t - t.mean()) / t.std() if n > 1 else t  # scipy.stats.zscore of the index, as the authors
    chosen = [0, n - 1] if n > 1 else [0]
    pips = sorted(chosen)
    remaining = np.ones(n, bool)
    remaining[chosen] = False
    while len(chosen) < num_pips:
        idx = np.flatnonzero(remaining)
        right = np.searchsorted(pips, idx)  # pips[right] is the first PIP after idx
        p2, p3 = np.asarray(pips)[right], np.asarray(pips)[right - 1]
        a = (ts[p2] - ts[p3]) / (x[p2] - x[p3])
        c = ts[p2] - x[p2] * a
        dist = np.abs(-ts[idx] + a * x[idx] + c) / np.sqrt(a ** 2 + 1)
        best = int(idx[np.argmax(dist)])
        chosen.append(best)
        pips = sorted(chosen)
        remaining[best] = False
    return chosen


def pip_candidates(ts: np.ndarray, pip_fraction: float = 0.2) -> list[tuple[int, int]]:
    """Candidate (start, end) subsequences of a 1-D series from its PIPs (end exclusive of nothing:
    the authors' [pip_a, pip_b] index pairs, the subsequence being ts[start:end])."""
    n = len(ts)
    num = min(n, max(5, int(pip_fraction * n)))
    order = pip_order(ts, num)
    out = []
    for k in range(2, len(order)):
        pips = sorted(order[:k + 1])
        i = pips.index(order[k])
        out.append((pips[i - 1], pips[i + 1]))
        if i > 1:
            out.append((pips[i - 2], pips[i]))
        if i < len(pips) - 2:
            out.append((pips[i], pips[i + 2]))
    return out


def complexity(z: np.ndarray) -> np.ndarray:
    """CI over the last axis: sqrt(sum of squared successive differences + 1e-3)."""
    return np.sqrt(np.sum(np.diff(z, axis=-1) ** 2, axis=-1) + CI_EPS)


def best_match(shapelet: np.ndarray, series: np.ndarray, lo: int = 0, hi: int | None = None) -> tuple[float, int]:
    """(distance, position) of the best CI-weighted Euclidean match of `shapelet` among the windows
    series[p:p+L] with lo <= p and p + L <= hi (hi defaults to len(series)). (inf, -1) if none fits."""
    s = np.asarray(shapelet, np.float64)
    z = np.asarray(series, np.float64)
    L = len(s)
    hi = len(z) if hi is None else min(hi, len(z))
    lo = max(lo, 0)
    if hi - lo < L:
        return np.inf, -1
    win = np.lib.stride_tricks.sliding_window_view(z[lo:hi], L)  # [P, L]
    d = np.sqrt(np.sum((win - s) ** 2, axis=1))
    ci_s, ci_w = complexity(s), complexity(win)
    d = d * np.maximum(ci_s, ci_w) / np.minimum(ci_s, ci_w)
    p = int(np.argmin(d))
    return float(d[p]), lo + p


def _entropy(pos: np.ndarray, total: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(total > 0, pos / np.maximum(total, 1), 0.0)
        h = -(np.where(p > 0, p * np.log2(np.where(p > 0, p, 1)), 0) +
              np.where(p < 1, (1 - p) * np.log2(np.where(p < 1, 1 - p, 1)), 0))
    return h


def info_gain(distances: np.ndarray, is_class: np.ndarray) -> float:
    """Best information gain of a threshold split of `distances` for the binary target `is_class`."""
    order = np.argsort(distances, kind="stable")
    d, y = np.asarray(distances)[order], np.asarray(is_class, bool)[order]
    n, npos = len(y), y.sum()
    base = _entropy(np.array(npos, float), np.array(n, float))
    cum = np.cumsum(y)[:-1].astype(float)  # class members among the first k+1
    k = np.arange(1, n, dtype=float)
    split_ok = d[1:] > d[:-1]  # thresholds only between distinct distances
    if not split_ok.any():
        return 0.0
    left = _entropy(cum, k)
    right = _entropy(npos - cum, n - k)
    gain = base - (k / n) * left - ((n - k) / n) * right
    return float(np.max(np.where(split_ok, gain, -np.inf)))


@dataclasses.dataclass(frozen=True)
class Shapelets:
    values: np.ndarray  # float32 [S, max_len], zero beyond each length
    lengths: np.ndarray  # int [S]
    channels: np.ndarray  # int [S]
    starts: np.ndarray  # int [S]: position in its source series
    classes: np.ndarray  # int [S]
    gains: np.ndarray  # float [S]: information gain (the authors' initial shapelet weight)

    def as_config(self) -> dict:
        """ShapeFormer config fields (plain nested tuples, so configs stay serialisable)."""
        return {"shapelets": tuple(tuple(float(v) for v in row[:n]) for row, n in zip(self.values, self.lengths)),
                "shapelet_channels": tuple(int(c) for c in self.channels),
                "shapelet_starts": tuple(int(s) for s in self.starts),
                "shapelet_weights": tuple(round(float(g), 6) for g in self.gains)}


def _match_all(s: np.ndarray, X: np.ndarray, lengths: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """best_match distances of shapelet `s` to every row of X [N, T] (valid prefixes `lengths`), all at once."""
    L, T = len(s), X.shape[1]
    lo, hi = max(lo, 0), min(hi, T)
    out = np.full(len(X), np.inf)
    if hi - lo < L:
        return out
    win = np.lib.stride_tricks.sliding_window_view(X[:, lo:hi], L, axis=1)  # [N, P, L]
    d = np.sqrt(np.sum((win - s) ** 2, axis=-1))
    ci_s, ci_w = complexity(s), complexity(win)
    d = d * np.maximum(ci_s, ci_w) / np.minimum(ci_s, ci_w)
    fits = lo + np.arange(win.shape[1])[None, :] + L <= np.minimum(lengths, hi)[:, None]
    return np.min(np.where(fits, d, np.inf), axis=1)


@dataclasses.dataclass(frozen=True)
class Candidates:
    """Every scored PIP candidate of a training split: rows (gain, length, series, channel, start, class),
    best first within each class, plus the series they came from."""
    rows: tuple
    series: tuple


def score_candidates(series: Sequence[np.ndarray], labels: np.ndarray, *, window: int = 20,
                     pip_fraction: float = 0.2, min_len: int = 3, max_len_fraction: float = 0.5) -> Candidates:
    """Scores the PIP candidates of every training series and channel (the expensive half of `discover`).
    `series`: float [length_i, channels] each (valid steps only); `labels`: int [N]. Candidates longer
    than max_len_fraction of their series are skipped (the spans of the first PIPs cover most of the
    series and are not local shapes). Order within a class: higher gain, then shorter, then earlier
    series, channel and start."""
    series = [np.asarray(s, np.float64) for s in series]
    labels = np.asarray(labels)
    if len(series) != len(labels) or not series:
        raise ValueError(f"shapelets: {len(series)} series and {len(labels)} labels")
    channels = series[0].shape[1]
    if any(s.ndim != 2 or s.shape[1] != channels for s in series):
        raise ValueError("shapelets: every series must be [length, channels] with the same channels")
    lengths = np.array([len(s) for s in series])
    X = np.zeros((len(series), lengths.max(), channels))
    for i, s in enumerate(series):
        X[i, :len(s)] = s
    rows = []
    for cls in np.unique(labels):
        scored = []
        for r in np.flatnonzero(labels == cls):
            for c in range(channels):
                ts = series[r][:, c]
                for start, end in sorted(set(pip_candidates(ts, pip_fraction))):
                    if end - start < min_len or end - start > max(min_len, max_len_fraction * len(ts)):
                        continue
                    dists = _match_all(ts[start:end], X[:, :, c], lengths, start - window, end + window)
                    dists[r] = 0.0
                    finite = np.isfinite(dists)
                    dists = np.where(finite, dists, (dists[finite].max() if finite.any() else 0.0) + 1.0)
                    scored.append((info_gain(dists, labels == cls), end - start, int(r), c, start, int(cls)))
        scored.sort(key=lambda t: (-round(t[0], 9), t[1], t[2], t[3], t[4]))
        rows.extend(scored)
    return Candidates(rows=tuple(rows), series=tuple(series))


def select(candidates: Candidates, per_class: int) -> Shapelets:
    """The `per_class` best candidates of each class (exact duplicates on a channel dropped)."""
    series = candidates.series
    picked, seen, count = [], set(), {}
    for gain, n, r, c, start, cls in candidates.rows:
        if count.get(cls, 0) >= per_class:
            continue
        key = (c, tuple(np.round(series[r][start:start + n, c], 6)))
        if key in seen:
            continue
        seen.add(key)
        picked.append((gain, r, c, start, start + n, cls))
        count[cls] = count.get(cls, 0) + 1
    if not picked:
        raise ValueError("shapelets: no candidate of at least min_len steps; lower min_len or pip_fraction")
    max_len = max(p[4] - p[3] for p in picked)
    values = np.zeros((len(picked), max_len), np.float32)
    for i, (_, r, c, start, end, _) in enumerate(picked):
        values[i, :end - start] = series[r][start:end, c]
    return Shapelets(values=values, lengths=np.array([p[4] - p[3] for p in picked]),
                     channels=np.array([p[2] for p in picked]), starts=np.array([p[3] for p in picked]),
                     classes=np.array([p[5] for p in picked]), gains=np.array([p[0] for p in picked]))


def discover(series: Sequence[np.ndarray], labels: np.ndarray, *, per_class: int = 2, **kwargs) -> Shapelets:
    """Shapelets of a training split: `select(score_candidates(series, labels, **kwargs), per_class)`."""
    return select(score_candidates(series, labels, **kwargs), per_class)
