"""`stocks`: daily closing prices of four correlated technology stocks and two US indices, for forecasting.

Channels (one per series, in this order): AAPL, GOOG, IBM, MSFT split- and dividend-adjusted closes from
the `bokeh_sampledata` wheel (Quandl WIKI prices, public domain; bokeh_sampledata/_data/stocks.csv.gz),
and the S&P 500 and NASDAQ Composite closes from the `arch` wheel (arch/data/{sp500,nasdaq}). The six
series are aligned on their common trading days, 2004-08-19 (GOOG's listing) .. 2013-03-01 (the end of
bokeh's data): 2,148 days. bokeh's fifth ticker, FB, starts in 2012 and is left out.

Chronological 70/10/20 train/validation/test split (1,503 / 216 / 429 days) and the reader of
fintrans.data.builders.series: every channel standardised with the train split's mean and std only
(also stored in the prepared dataset's metadata as train_mean / train_std, for all six channels, so
forecasts can be de-normalised without loading), sliding (input_len, horizon) windows per split.

Config fields: input_len, horizon, and the correlation feature selection of the Time2Vec paper
(fintrans.data.feature_selection): `target` (channel index, 0 = AAPL) and `min_corr_pct`: keep the
channels whose train-split price correlation with the target is at least min_corr_pct / 100 in absolute
value (0 keeps all six; the target is always kept). info['channels'] names the kept channels and
info['target_position'] the target's place among them.
"""
from __future__ import annotations

import csv
import datetime
import functools
import gzip
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

from fintrans.data import feature_selection
from fintrans.data.builders import register
from fintrans.data.builders.base import packaged_file
from fintrans.data.builders.series import SeriesBuilder, read_windows
from fintrans.data.errors import DataConfigError
from fintrans.data.fitted import FittedCache
from fintrans.data.spec import DatasetSpec, Loaded

TICKERS = ("AAPL", "GOOG", "IBM", "MSFT")
INDICES = ("sp500", "nasdaq")
CHANNELS = TICKERS + INDICES


def _index_closes(name: str) -> dict[str, float]:
    path = packaged_file("arch", "data", name, f"{name}.csv.gz", dataset="stocks")
    with gzip.open(path, "rt", newline="") as f:
        return {datetime.datetime.strptime(r["Date"], "%m/%d/%Y").date().isoformat(): float(r["Adj Close"])
                for r in csv.DictReader(f)}


@functools.lru_cache(maxsize=1)
def daily_table() -> tuple[np.ndarray, np.ndarray]:
    """(dates 'YYYY-MM-DD', float64 [days, 6] closes in CHANNELS order) on the series' common days."""
    closes: dict[str, dict[str, float]] = {t: {} for t in TICKERS}
    path = packaged_file("bokeh_sampledata", "_data", "stocks.csv.gz", dataset="stocks")
    with gzip.open(path, "rt", newline="") as f:
        for r in csv.DictReader(f):
            if r["Ticker"] in closes:
                closes[r["Ticker"]][r["Date"]] = float(r["Adj Close"])
    for name in INDICES:
        closes[name] = _index_closes(name)
    dates = sorted(set.intersection(*(set(closes[c]) for c in CHANNELS)))
    return np.asarray(dates), np.asarray([[closes[c][d] for c in CHANNELS] for d in dates])


def _check_selection(target: int, min_corr_pct: int) -> None:
    if target >= len(CHANNELS):
        raise DataConfigError(f"stocks: target={target} is not a channel index; channels are "
                              f"{dict(enumerate(CHANNELS))}")
    if min_corr_pct > 100:
        raise DataConfigError(f"stocks: min_corr_pct={min_corr_pct} must be a percentage in [0, 100]")


def selection(target: int, min_corr_pct: int, train_values: np.ndarray | None = None) -> feature_selection.Selection:
    """The channels the dataset keeps for (target, min_corr_pct), fitted on the train split's prices.

    Configs call this (without train_values: read from the wheel) to size a model before loading.
    """
    _check_selection(target, min_corr_pct)
    values = Stocks.train_values() if train_values is None else train_values
    return feature_selection.select_correlated(values, target, threshold=min_corr_pct / 100, on="prices")


class Stocks(SeriesBuilder, skip_registration=True):
    name = "stocks"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    DESCRIPTION = ("Daily closes 2004-08-19..2013-03-01 (2,148 common trading days) of AAPL, GOOG, IBM, MSFT "
                   "(adjusted, bokeh_sampledata) and the S&P 500 and NASDAQ Composite (arch). "
                   "Chronological 70/10/20 train/validation/test split.")
    CHANNELS = CHANNELS
    table = staticmethod(daily_table)


def read(records: Mapping[str, list[dict[str, Any]]], fields: Mapping[str, int],
         metadata: Mapping[str, Any], fitted: FittedCache) -> Loaded:
    target, pct = fields["target"], fields["min_corr_pct"]
    _check_selection(target, pct)

    def fit() -> dict:
        sel = selection(target, pct, np.stack([r["values"] for r in records["train"]]))
        return {"indices": list(sel.indices), "correlations": sel.correlations.tolist()}

    # a fitted artefact (cached beside the dataset) like the shapelets, though cheap to recompute
    sel = fitted.get("correlation_selection", {"target": target, "min_corr_pct": pct, "on": "prices"}, fit)
    indices, correlations = tuple(sel["indices"]), np.asarray(sel["correlations"])
    return read_windows("stocks", records, input_len=fields["input_len"], horizon=fields["horizon"],
                        channels=CHANNELS, metadata=metadata, select=indices,
                        extra_info={"target": CHANNELS[target], "target_position": indices.index(target),
                                    "correlations": dict(zip(CHANNELS, correlations.round(4).tolist()))})


SPEC = register(DatasetSpec(name="stocks", builder=Stocks,
                   fields={"input_len": (1, "days of history per window"),
                           "horizon": (1, "days to forecast per window"),
                           "target": (0, f"index of the target stock in {list(CHANNELS)}"),
                           "min_corr_pct": (0, "keep channels whose |train-split price correlation| with the "
                                               "target is >= this percentage (0: all)")},
                   read=read))
