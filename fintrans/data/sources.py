"""Random-access sources of examples, gathered a whole batch at a time (`take(indices)`).

MappedSource streams: example i = make(records[i]) over a storage.RecordSource, decoded on access
(~0.1 ms a record), so a split never sits in memory; the image, text and sequence datasets use it.
ArraySource and WindowSource hold arrays: WindowSource cuts forecasting / language-model windows that
span records of one series, which needs the whole split (a few MB here); `take` gathers a batch with
one fancy-indexing call per array.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

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

    def take(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[indices] for k, v in self.arrays.items()}

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {k: v[index] for k, v in self.arrays.items()}


class WindowSource:
    """Example i = make(series[start_i : start_i + length]) for start_i = first + i * stride.

    Windows are cut on access (not materialised): overlapping forecasting windows would otherwise
    multiply the series' memory by the window length. `make` maps windows [B, length, ...] to a dict
    of batched arrays.
    """

    def __init__(self, series: np.ndarray, *, length: int, stride: int, first: int, count: int,
                 make: Callable[[np.ndarray], dict[str, np.ndarray]]):
        if count < 0 or (count and first + (count - 1) * stride + length > len(series)):
            raise ValueError(f"{count} windows of {length} from {first} (stride {stride}) overrun a series of "
                             f"{len(series)}")
        self.series, self.length, self.stride, self.first, self.count = series, length, stride, first, count
        self._make = make
        self._offsets = np.arange(length)

    def __len__(self) -> int:
        return self.count

    def take(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        indices = np.asarray(indices)
        if indices.size and (indices.min() < 0 or indices.max() >= self.count):
            raise IndexError(f"window index out of range [0, {self.count})")
        starts = self.first + indices * self.stride
        return self._make(self.series[starts[:, None] + self._offsets])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {k: v[0] for k, v in self.take(np.asarray([index])).items()}


class MappedSource:
    """Example i = make(records[i]): a lazy per-record map (nothing is decoded before it is read).

    `make` returns a dict of fixed-shape arrays; `take` stacks a batch of them.
    """

    def __init__(self, records: Sequence[Mapping[str, Any]], make: Callable[[Mapping[str, Any]], dict[str, Any]]):
        self.records, self._make = records, make

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self._make(self.records[int(index)]).items()}

    def take(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        indices = [int(i) for i in np.asarray(indices).reshape(-1)]
        records = (self.records.__getitems__(indices) if hasattr(self.records, "__getitems__")
                   else [self.records[i] for i in indices])
        examples = [{k: np.asarray(v) for k, v in self._make(r).items()} for r in records]
        if not examples:  # an empty batch still has the example's keys and shapes (from example 0)
            if not len(self):
                raise IndexError("take from an empty source")
            first = self[0]
            return {k: np.zeros((0,) + v.shape, v.dtype) for k, v in first.items()}
        return {k: np.stack([e[k] for e in examples]) for k in examples[0]}
