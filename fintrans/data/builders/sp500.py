"""`sp500`: daily S&P 500 prices 1999-2018 shipped in the `arch` wheel (arch.data.sp500), for forecasting.

One record per trading day. Chronological 70/10/20 train/validation/test split with LTSF-Linear's sizes
(train = int(0.7 N), test = int(0.2 N), validation = the rest), and the reader of
fintrans.data.builders.series: every channel standardised with the train split's mean and std only,
sliding windows (stride 1) whose targets lie inside one split; a validation/test window may take its
inputs from the last input_len days of the previous split, as LTSF-Linear's data loader does, so no
target day of a split is lost.
"""
from __future__ import annotations

import csv
import datetime
import functools
import gzip
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

from fintrans.data.builders import register
from fintrans.data.builders.base import packaged_file
from fintrans.data.builders.series import SeriesBuilder, read_windows
from fintrans.data.fitted import FittedCache
from fintrans.data.spec import DatasetSpec, Loaded

CHANNELS = ("open", "high", "low", "close", "adj_close", "log_volume")
_COLUMNS = ("Open", "High", "Low", "Close", "Adj Close")


@functools.lru_cache(maxsize=1)
def daily_table() -> tuple[np.ndarray, np.ndarray]:
    """(dates as 'YYYY-MM-DD' strings, float64 [days, channels]) in date order, as arch.data.sp500.load()."""
    with gzip.open(packaged_file("arch", "data", "sp500", "sp500.csv.gz", dataset="sp500"), "rt", newline="") as f:
        rows = list(csv.DictReader(f))
    dates = [datetime.datetime.strptime(r["Date"], "%m/%d/%Y").date().isoformat() for r in rows]
    values = np.asarray([[float(r[c]) for c in _COLUMNS] + [np.log(float(r["Volume"]))] for r in rows])
    order = np.argsort(dates, kind="stable")
    return np.asarray(dates)[order], values[order]


class Sp500(SeriesBuilder, skip_registration=True):
    name = "sp500"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    DESCRIPTION = ("Daily S&P 500 index 1999-01-04..2018-12-31 (5,031 trading days) from the arch package "
                   "(arch.data.sp500): open, high, low, close, adjusted close (equal to close for the index) "
                   "and log(volume). Chronological 70/10/20 train/validation/test split (LTSF-Linear).")
    CHANNELS = CHANNELS
    RECORD_DTYPE = np.float64
    STATS_IN_METADATA = False  # version 1.0.0 was prepared without them
    table = staticmethod(daily_table)


def read(records: Mapping[str, list[dict[str, Any]]], fields: Mapping[str, int],
         metadata: Mapping[str, Any], fitted: FittedCache) -> Loaded:
    del fitted  # nothing fitted
    return read_windows("sp500", records, input_len=fields["input_len"], horizon=fields["horizon"],
                        channels=CHANNELS, metadata=metadata)


SPEC = register(DatasetSpec(name="sp500", builder=Sp500,
                   fields={"input_len": (1, "days of history per window"),
                           "horizon": (1, "days to forecast per window")},
                   read=read))
