"""Errors a user of fintrans.data can cause; each message names the problem and the fix."""
from __future__ import annotations


class DataConfigError(ValueError):
    """Unknown dataset, unknown/missing/bad config field, bad split or batch arguments."""


class DatasetNotPreparedError(FileNotFoundError):
    """The data_dir (or the dataset inside it) is missing and `prepare` is False."""


class DatasetCorruptError(RuntimeError):
    """A prepared dataset's files cannot be read back (truncated, garbage, missing shard)."""
