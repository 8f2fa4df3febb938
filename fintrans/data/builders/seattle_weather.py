"""`seattle_weather`: daily Seattle weather 2012-01-01..2015-12-31 (1,461 days) from the `vega_datasets` wheel
(vega_datasets/_data/seattle-weather.csv, NOAA via the Vega project), a non-financial multivariate series.

Channels: precipitation (mm), temp_max and temp_min (degrees C), wind (m/s). The file's categorical
`weather` column (sun, rain, fog, ...) is left out: it is a label derived from the same day, not a
measurement. Of the multivariate series shipped in wheels here (statsmodels macrodata 203 quarters,
sktime Uschange 187 quarters and Longley 16 years) it has by far the most rows.

Chronological 70/10/20 train/validation/test split (1,022 / 147 / 292 days) and the reader of
fintrans.data.builders.series: channels standardised with the train split's mean and std only (also in
the prepared dataset's metadata as train_mean / train_std), sliding (input_len, horizon) windows.
"""
from __future__ import annotations

import csv
import functools
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

from fintrans.data.builders import register
from fintrans.data.builders.base import packaged_file
from fintrans.data.builders.series import SeriesBuilder, read_windows
from fintrans.data.fitted import FittedCache
from fintrans.data.spec import DatasetSpec, Loaded

CHANNELS = ("precipitation", "temp_max", "temp_min", "wind")


@functools.lru_cache(maxsize=1)
def daily_table() -> tuple[np.ndarray, np.ndarray]:
    """(dates 'YYYY-MM-DD', float64 [days, 4]) in date order."""
    path = packaged_file("vega_datasets", "_data", "seattle-weather.csv", dataset="seattle_weather")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    dates = np.asarray([r["date"].replace("/", "-") for r in rows])
    values = np.asarray([[float(r[c]) for c in CHANNELS] for r in rows])
    order = np.argsort(dates, kind="stable")
    return dates[order], values[order]


class SeattleWeather(SeriesBuilder, skip_registration=True):
    name = "seattle_weather"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    DESCRIPTION = ("Daily Seattle weather 2012-2015 (1,461 days) from vega_datasets: precipitation, "
                   "temp_max, temp_min, wind. Chronological 70/10/20 train/validation/test split.")
    CHANNELS = CHANNELS
    table = staticmethod(daily_table)


def read(records: Mapping[str, list[dict[str, Any]]], fields: Mapping[str, int],
         metadata: Mapping[str, Any], fitted: FittedCache) -> Loaded:
    del fitted  # nothing fitted
    return read_windows("seattle_weather", records, input_len=fields["input_len"], horizon=fields["horizon"],
                        channels=CHANNELS, metadata=metadata)


SPEC = register(DatasetSpec(name="seattle_weather", builder=SeattleWeather,
                   fields={"input_len": (1, "days of history per window"),
                           "horizon": (1, "days to forecast per window")},
                   read=read))
