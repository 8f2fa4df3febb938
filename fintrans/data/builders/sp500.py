"""`sp500`: daily S&P 500 prices 1999-2018 shipped in the `arch` wheel (arch.data.sp500), for forecasting.

One record per trading day. Chronological 70/10/20 train/validation/test split with LTSF-Linear's sizes
(train = int(0.7 N), test = int(0.2 N), validation = the rest). The reader standardises every channel
with the train split's mean and std only, and cuts sliding windows (stride 1) whose targets lie inside
one split; a validation/test window may take its inputs from the last input_len days of the previous
split, as LTSF-Linear's data loader does, so no target day of a split is lost.
"""
from __future__ import annotations

import csv
import datetime
import functools
import gzip
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

from fintrans.data.errors import DataConfigError, DatasetCorruptError
from fintrans.data.builders.base import OfflineBuilder, packaged_file
from fintrans.data.sources import WindowSource
from fintrans.data.spec import DatasetSpec, Loaded

CHANNELS = ("open", "high", "low", "close", "adj_close", "log_volume")
_COLUMNS = ("Open", "High", "Low", "Close", "Adj Close")
SPLITS = OfflineBuilder.SPLITS


@functools.lru_cache(maxsize=1)
def daily_table() -> tuple[np.ndarray, np.ndarray]:
    """(dates as 'YYYY-MM-DD' strings, float64 [days, channels]) in date order, as arch.data.sp500.load()."""
    with gzip.open(packaged_file("arch", "data", "sp500", "sp500.csv.gz", dataset="sp500"), "rt", newline="") as f:
        rows = list(csv.DictReader(f))
    dates = [datetime.datetime.strptime(r["Date"], "%m/%d/%Y").date().isoformat() for r in rows]
    values = np.asarray([[float(r[c]) for c in _COLUMNS] + [np.log(float(r["Volume"]))] for r in rows])
    order = np.argsort(dates, kind="stable")
    return np.asarray(dates)[order], values[order]


def split_bounds(num_days: int) -> dict[str, tuple[int, int]]:
    """LTSF-Linear's chronological 70/10/20 day ranges [start, end)."""
    num_train, num_test = int(num_days * 0.7), int(num_days * 0.2)
    num_val = num_days - num_train - num_test
    return {"train": (0, num_train), "validation": (num_train, num_train + num_val),
            "test": (num_train + num_val, num_days)}


class Sp500(OfflineBuilder, skip_registration=True):
    name = "sp500"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=("Daily S&P 500 index 1999-01-04..2018-12-31 (5,031 trading days) from the arch package "
                         "(arch.data.sp500): open, high, low, close, adjusted close (equal to close for the index) "
                         "and log(volume). Chronological 70/10/20 train/validation/test split (LTSF-Linear)."),
            features=tfds.features.FeaturesDict({
                "date": tfds.features.Text(),
                "values": tfds.features.Tensor(shape=(len(CHANNELS),), dtype=np.float64),
            }),
            disable_shuffling=True,  # one record per day, in date order
            metadata=tfds.core.MetadataDict(channels=list(CHANNELS)),
        )

    def _generate_examples(self, split: str):
        dates, values = daily_table()
        start, end = split_bounds(len(dates))[split]
        for i in range(start, end):
            yield i, {"date": dates[i], "values": values[i]}


def read(records: Mapping[str, list[dict[str, Any]]], fields: Mapping[str, int],
         metadata: Mapping[str, Any]) -> Loaded:
    del metadata
    input_len, horizon = fields["input_len"], fields["horizon"]
    dates = {s: np.asarray([r["date"].decode() for r in records[s]]) for s in SPLITS}
    values = np.concatenate([np.stack([r["values"] for r in records[s]]) for s in SPLITS])
    all_dates = np.concatenate([dates[s] for s in SPLITS])
    if not np.all(all_dates[1:] > all_dates[:-1]):
        raise DatasetCorruptError("sp500 records are not in strictly increasing date order; delete the prepared "
                                  "dataset and prepare it again")
    num_train = len(dates["train"])
    mean = values[:num_train].mean(axis=0)
    std = values[:num_train].std(axis=0)  # ddof=0, like sklearn's StandardScaler in LTSF-Linear
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
                f"sp500: input_len={input_len} + horizon={horizon} leaves no window in split {split!r} "
                f"({end - start} days); use a shorter input_len or horizon")
        sources[split] = WindowSource(series, length=input_len + horizon, stride=1, first=t0 - input_len,
                                      count=count, make=make)
        first_target[split] = t0 - start
        start = end
    info = {
        "channels": list(CHANNELS), "num_channels": len(CHANNELS), "input_len": input_len, "horizon": horizon,
        "mean": mean.astype(np.float32), "std": std.astype(np.float32),
        "dates": dates,
        # window i of a split forecasts dates[split][first_target[split] + i : ... + horizon]
        "first_target": first_target,
    }
    return Loaded(sources=sources, info=info)


SPEC = DatasetSpec(name="sp500", builder=Sp500,
                   fields={"input_len": (1, "days of history per window"),
                           "horizon": (1, "days to forecast per window")},
                   read=read)
