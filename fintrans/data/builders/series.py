"""What the multivariate forecasting datasets (sp500, stocks, seattle_weather) share: the chronological
split, training-split statistics, the builder of one record per day, and the reader that standardises the
series and cuts forecasting windows.

The rules are sp500's (LTSF-Linear's): chronological 70/10/20 train/validation/test days; every channel
standardised with the TRAIN split's mean and std (ddof=0) only; sliding windows (stride 1) whose
targets lie inside one split, a validation/test window taking its inputs from the last input_len days
before the split, so no target day of a split is lost.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from fintrans.data.builders.base import OfflineBuilder
from fintrans.data.errors import DataConfigError, DatasetCorruptError
from fintrans.data.sources import WindowSource
from fintrans.data.spec import Loaded

SPLITS = OfflineBuilder.SPLITS
__all__ = ["SPLITS", "SeriesBuilder", "naive_last_value_errors", "read_windows", "split_bounds", "train_stats"]


def split_bounds(num_days: int) -> dict[str, tuple[int, int]]:
    """LTSF-Linear's chronological 70/10/20 day ranges [start, end): train = int(0.7 N), test = int(0.2 N),
    validation = the rest."""
    num_train, num_test = int(num_days * 0.7), int(num_days * 0.2)
    num_val = num_days - num_train - num_test
    return {"train": (0, num_train), "validation": (num_train, num_train + num_val),
            "test": (num_train + num_val, num_days)}


def train_stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) per channel of the training split's values [days, channels], float64, ddof=0."""
    values = np.asarray(values, np.float64)
    return values.mean(axis=0), values.std(axis=0)


class SeriesBuilder(OfflineBuilder, skip_registration=True):
    """One record {'date', 'values'} per day of `table()`, split by `split_bounds`, in date order.

    Subclasses set name, VERSION, RELEASE_NOTES, DESCRIPTION, CHANNELS and `table` (a function returning
    dates 'YYYY-MM-DD' and float64 values [days, channels]); RECORD_DTYPE is how the values are stored.
    With STATS_IN_METADATA the train split's mean/std go into the metadata too (as train_mean / train_std),
    so forecasts can be de-normalised without loading the records."""
    DESCRIPTION = ""
    CHANNELS: tuple[str, ...] = ()
    RECORD_DTYPE = np.float32
    STATS_IN_METADATA = True
    table: Callable[[], tuple[np.ndarray, np.ndarray]]

    @classmethod
    def train_values(cls) -> np.ndarray:
        """The train split's values as the records hold them, float64 [days, channels]."""
        dates, values = cls.table()
        start, end = split_bounds(len(dates))["train"]
        return values[start:end].astype(cls.RECORD_DTYPE).astype(np.float64)

    def _info(self) -> tfds.core.DatasetInfo:
        metadata = {"channels": list(self.CHANNELS)}
        if self.STATS_IN_METADATA:
            mean, std = train_stats(self.train_values())
            metadata.update(train_mean=mean.tolist(), train_std=std.tolist())
        return tfds.core.DatasetInfo(
            builder=self, description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict({
                "date": tfds.features.Text(),
                "values": tfds.features.Tensor(shape=(len(self.CHANNELS),), dtype=self.RECORD_DTYPE),
            }),
            disable_shuffling=True,  # one record per day, in date order
            metadata=tfds.core.MetadataDict(**metadata),
        )

    def _generate_examples(self, split: str):
        dates, values = type(self).table()
        start, end = split_bounds(len(dates))[split]
        for i in range(start, end):
            yield i, {"date": dates[i], "values": values[i].astype(self.RECORD_DTYPE)}


def _metadata_stats(name: str, metadata: Mapping[str, Any], mean: np.ndarray, std: np.ndarray) -> None:
    """Where the prepared dataset's metadata records the statistics too, they must agree with its records."""
    if "train_mean" not in metadata and "train_std" not in metadata:
        return
    stored = [np.asarray(metadata.get(k, ()), np.float64) for k in ("train_mean", "train_std")]
    if any(s.shape != mean.shape or not np.allclose(s, m, rtol=1e-9, atol=1e-12)
           for s, m in zip(stored, (mean, std))):
        raise DatasetCorruptError(f"{name}: the normalisation statistics in the prepared dataset's metadata do not "
                                  f"match its train records; delete the prepared dataset and prepare it again")


def read_windows(name: str, records: Mapping[str, list[dict[str, Any]]], *, input_len: int, horizon: int,
                 channels: Sequence[str], metadata: Mapping[str, Any],
                 select: Sequence[int] | None = None, extra_info: Mapping[str, Any] | None = None) -> Loaded:
    """Records {'date', 'values'} per split -> forecasting windows of the standardised series.

    `select` keeps those channels (in that order) after checking the statistics of all of them.
    Examples: {'inputs': float32[input_len, C], 'targets': float32[horizon, C]}. info holds the
    channel names, the train mean/std to de-normalise forecasts (x * std + mean), every split's dates
    and first_target (window i of a split forecasts dates[split][first_target[split] + i:][:horizon]).
    """
    dates = {s: np.asarray([r["date"].decode() if isinstance(r["date"], bytes) else r["date"]
                            for r in records[s]]) for s in SPLITS}
    empty = [s for s in SPLITS if not len(dates[s])]
    if empty:
        raise DatasetCorruptError(f"{name}: split(s) {empty} hold no records; delete the prepared dataset and "
                                  f"prepare it again")
    values = np.concatenate([np.stack([r["values"] for r in records[s]]) for s in SPLITS]).astype(np.float64)
    all_dates = np.concatenate([dates[s] for s in SPLITS])
    if not np.all(all_dates[1:] > all_dates[:-1]):
        raise DatasetCorruptError(f"{name} records are not in strictly increasing date order; delete the prepared "
                                  f"dataset and prepare it again")
    num_train = len(dates["train"])
    mean, std = train_stats(values[:num_train])
    _metadata_stats(name, metadata, mean, std)
    select = list(range(len(channels))) if select is None else list(select)
    mean, std, values = mean[select], std[select], values[:, select]
    series = ((values - mean) / std).astype(np.float32)

    def make(windows: np.ndarray) -> dict[str, np.ndarray]:
        return {"inputs": windows[:, :input_len], "targets": windows[:, input_len:]}

    sources, first_target, start = {}, {}, 0
    for split in SPLITS:
        end = start + len(dates[split])
        t0 = max(start, input_len)  # first target day (global index)
        count = end - horizon - t0 + 1
        if count < 1:
            raise DataConfigError(
                f"{name}: input_len={input_len} + horizon={horizon} leaves no window in split {split!r} "
                f"({end - start} days); use a shorter input_len or horizon")
        sources[split] = WindowSource(series, length=input_len + horizon, stride=1, first=t0 - input_len,
                                      count=count, make=make)
        first_target[split] = t0 - start
        start = end
    info = {
        "channels": [channels[i] for i in select], "num_channels": len(select), "input_len": input_len,
        "horizon": horizon, "mean": mean.astype(np.float32), "std": std.astype(np.float32),
        "dates": dates, "first_target": first_target, **(extra_info or {}),
    }
    return Loaded(sources=sources, info=info)


def naive_last_value_errors(source) -> dict[str, float]:
    """MSE and MAE of the naive forecast (every horizon step = the window's last input step) over a split's
    windows, in the normalised units the models are scored in: the floor every forecaster is compared to."""
    sq = ab = count = 0.0
    for start in range(0, len(source), 4096):
        batch = source.take(np.arange(start, min(start + 4096, len(source))))
        err = batch["targets"].astype(np.float64) - batch["inputs"][:, -1:].astype(np.float64)
        sq, ab, count = sq + np.square(err).sum(), ab + np.abs(err).sum(), count + err.size
    return {"mse": sq / count, "mae": ab / count}
