"""In-memory random-access sources (grain's `__len__` + `__getitem__` protocol) of per-example dicts.

The prepared datasets are small (at most a few MB), so loading decodes every record once and the
pipeline indexes numpy arrays; decoding tfds records per access would cost ~0.3 ms each, every epoch.
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np


class ArraySource:
    """Example i = {key: array[i]} over arrays that share their leading dimension."""

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        lengths = {k: len(v) for k, v in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"arrays must share their leading dimension; got {lengths}")
        self.arrays = dict(arrays)
        self._len = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {k: v[index] for k, v in self.arrays.items()}


class WindowSource:
    """Example i = make(series[start_i : start_i + length]) for start_i = first + i * stride.

    Windows are cut on access (not materialised): overlapping forecasting windows would otherwise
    multiply the series' memory by the window length.
    """

    def __init__(self, series: np.ndarray, *, length: int, stride: int, first: int, count: int,
                 make: Callable[[np.ndarray], dict[str, np.ndarray]]):
        if count < 0 or (count and first + (count - 1) * stride + length > len(series)):
            raise ValueError(f"{count} windows of {length} from {first} (stride {stride}) overrun a series of "
                             f"{len(series)}")
        self.series, self.length, self.stride, self.first, self.count = series, length, stride, first, count
        self._make = make

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < self.count:
            raise IndexError(f"window {index} out of range [0, {self.count})")
        start = self.first + index * self.stride
        return self._make(self.series[start:start + self.length])
