"""Correlation feature selection (Bui et al., 2025, "Transformer Encoder and Multi-features Time2Vec for
Financial Prediction", docs/papers.md): forecast a target stock from the peers whose series
correlate with it, chosen on the TRAINING split only so that nothing about later prices leaks into the
choice of inputs.

    sel = select_correlated(train_values, target=0, threshold=0.6)      # train_values float[days, channels]
    sel.indices        # selected channels in their original order, the target always among them
    sel.correlations   # Pearson correlation of every channel with the target (float64[channels])

`on='prices'` correlates the raw series (the paper's reading: companies of one industry move together);
`on='returns'` correlates daily log returns, which removes the common trend that makes any two rising
prices look correlated. The `stocks` dataset applies this with `on='prices'` (its `min_corr_pct` field).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from fintrans.data.errors import DataConfigError

ON = ("prices", "returns")


@dataclasses.dataclass(frozen=True)
class Selection:
    indices: tuple[int, ...]  # selected channels, original order; includes the target
    correlations: np.ndarray  # float64[channels]: each channel's correlation with the target (target: 1)
    target: int
    threshold: float
    on: str

    @property
    def target_position(self) -> int:
        """Where the target sits among the selected channels."""
        return self.indices.index(self.target)

    def names(self, channels: Sequence[str]) -> list[str]:
        return [channels[i] for i in self.indices]


def correlations(values: np.ndarray, target: int, *, on: str = "prices") -> np.ndarray:
    """Pearson correlation of every column of values [time, channels] with column `target`."""
    values = np.asarray(values, np.float64)
    if values.ndim != 2:
        raise DataConfigError(f"correlation feature selection: values must be [time, channels]; got shape "
                              f"{values.shape}")
    if on not in ON:
        raise DataConfigError(f"correlation feature selection: on={on!r}; choose from {ON}")
    if not 0 <= target < values.shape[1]:
        raise DataConfigError(f"correlation feature selection: target={target} is not a channel index in "
                              f"[0, {values.shape[1]})")
    if on == "returns":
        if np.any(values <= 0):
            raise DataConfigError("correlation feature selection: on='returns' needs positive prices (log returns)")
        values = np.diff(np.log(values), axis=0)
    if len(values) < 3:
        raise DataConfigError(f"correlation feature selection: {len(values)} time steps are too few to correlate")
    centred = values - values.mean(axis=0)
    norms = np.sqrt((centred ** 2).sum(axis=0))
    if np.any(norms == 0):
        raise DataConfigError(f"correlation feature selection: constant channel(s) "
                              f"{np.flatnonzero(norms == 0).tolist()} have no correlation")
    return centred.T @ centred[:, target] / (norms * norms[target])


def select_correlated(train_values: np.ndarray, target: int, *, threshold: float = 0.5, on: str = "prices",
                      max_features: int | None = None) -> Selection:
    """The target plus every channel whose |correlation| with it on the training values is >= threshold.

    max_features caps the selection (target included) at the most correlated channels. Pass the
    training split only: the selection is a fitted preprocessing step, like the normalisation statistics.
    """
    if not 0.0 <= threshold <= 1.0:
        raise DataConfigError(f"correlation feature selection: threshold={threshold} must lie in [0, 1]")
    if max_features is not None and (not isinstance(max_features, int) or max_features < 1):
        raise DataConfigError(f"correlation feature selection: max_features={max_features!r} must be a positive "
                              f"integer or None")
    corr = correlations(train_values, target, on=on)
    strength = np.abs(corr)
    strength[target] = np.inf  # the target is always kept, and first in line
    keep = [int(i) for i in np.argsort(-strength, kind="stable") if strength[i] >= threshold]
    if max_features is not None:
        keep = keep[:max_features]
    return Selection(indices=tuple(sorted(keep)), correlations=corr, target=int(target), threshold=float(threshold),
                     on=on)
