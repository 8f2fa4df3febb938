"""Grain pipeline: a random-access source -> host-local batches, with checkpointable state.

One global stream of examples is defined for all processes: epoch e is the permutation
`np.random.default_rng([seed, e]).permutation(n)` (or 0..n-1 unshuffled), epochs follow each other,
and evaluation appends padding after the single epoch. The stream is cut into global batches of
`batch_size`; process p takes rows [p * b, (p + 1) * b) of every global batch (b = batch_size //
process_count). So the processes' shards are disjoint, every process yields the same number of
batches (no collective waits on a missing evaluation batch), and concatenating the processes'
batches in process order gives exactly the batch one process would see with the same seed.

Grain carries the iteration: `MapDataset.range(num_batches).map(make_batch)` -> `to_iter_dataset`, so
batch k is a pure function of k, the iterator's state is just the next k, and the returned object
is grain's own `DatasetIterator` (`get_state` / `set_state`, orbax through grain's handler). Batches
are gathered with vectorised numpy indexing rather than grain's per-example shuffle/batch, which
costs ~150 us per example here (its index_shuffle alone ~80 us).

Training batches may be augmented (fintrans.data.augment): `augment(batch, rngs)` gets one generator per
row, `np.random.default_rng([seed, epoch, index])` for example `index` in epoch `epoch`, so an augmented
batch is still a pure function of k and a restored iterator state reproduces it.
"""
from __future__ import annotations

import math
import sys
import threading
from typing import Any, Callable, Protocol, Sequence

import grain
import numpy as np

from fintrans.data.errors import DataConfigError

# One background thread batching ahead keeps the GIL calm on small hosts (in-memory sources need no more;
# a streaming source decodes ~10k records/s per thread, ahead of the models trained here).
_READ_OPTIONS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)

Augment = Callable[[dict[str, np.ndarray], Sequence[np.random.Generator]], dict[str, np.ndarray]]


class BatchSource(Protocol):
    def __len__(self) -> int: ...
    def take(self, indices: np.ndarray) -> dict[str, np.ndarray]: ...


class _MakeBatch:
    """Local batch k of one process: its rows of the global stream, gathered from the source."""

    def __init__(self, source: BatchSource, *, global_batch: int, local_batch: int, process_index: int,
                 shuffle: bool, seed: int, evaluation: bool, augment: Augment | None = None):
        self.source, self.n = source, len(source)
        self.global_batch, self.local_batch = global_batch, local_batch
        self.rows = process_index * local_batch + np.arange(local_batch, dtype=np.int64)
        self.shuffle, self.seed, self.evaluation, self.augment = shuffle, seed, evaluation, augment
        self._orders: dict[int, np.ndarray] = {}  # a few recent epochs' permutations
        self._lock = threading.Lock()

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        with self._lock:
            if epoch not in self._orders:
                if len(self._orders) >= 4:
                    self._orders.pop(min(self._orders))
                self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            return self._orders[epoch]

    def __call__(self, k: int) -> dict[str, Any]:
        positions = int(k) * self.global_batch + self.rows  # in the global stream
        if self.evaluation:
            valid = positions < self.n
            # Padding repeats a real example (not zeros) so that models never see an all-masked row
            # (softmax over nothing is NaN, and NaN * 0 is still NaN in a masked mean).
            batch = self.source.take(self.order(0)[np.where(valid, positions, 0)])
            batch["valid"] = valid
            return batch
        epochs, within = np.divmod(positions, self.n)
        indices = np.empty_like(positions)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            indices[here] = self.order(int(epoch))[within[here]]
        batch = self.source.take(indices)
        if self.augment is not None:
            rngs = [np.random.default_rng([self.seed, int(e), int(i)]) for e, i in zip(epochs, indices)]
            batch = self.augment(batch, rngs)
        return batch


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_batching(batch_size: Any, process_index: Any, process_count: Any) -> int:
    """Validates the batching arguments; returns the per-process batch size."""
    for name, value in (("batch_size", batch_size), ("process_count", process_count)):
        if not _is_int(value) or value < 1:
            raise DataConfigError(f"{name} must be a positive integer; got {value!r}")
    if not _is_int(process_index) or not 0 <= process_index < process_count:
        raise DataConfigError(f"process_index must be an integer in [0, {process_count}); got {process_index!r}")
    if batch_size % process_count:
        raise DataConfigError(f"batch_size {batch_size} (global) is not divisible by process_count {process_count}; "
                              f"each process takes batch_size // process_count examples")
    return int(batch_size // process_count)


def make_iterator(source: BatchSource, *, batch_size: int, shuffle: bool, seed: int, num_epochs: int | None,
                  process_index: int, process_count: int, description: str = "split",
                  augment: Augment | None = None) -> grain.DatasetIterator:
    """Batches of dicts of numpy arrays for this process; see the module docstring for the layout.

    num_epochs=None: repeat forever (training). num_epochs=1: evaluation, every example exactly once,
    the last batch padded to full size and every batch carrying 'valid'. num_epochs=k>1: k training
    epochs; the incomplete last global batch is dropped. `augment` (training only; see the module
    docstring) transforms every training batch; evaluation batches are never augmented.
    """
    local_batch = check_batching(batch_size, process_index, process_count)
    if num_epochs is not None and (not _is_int(num_epochs) or num_epochs < 1):
        raise DataConfigError(f"num_epochs must be None (forever) or a positive integer; got {num_epochs!r}")
    if not _is_int(seed) or not 0 <= seed < 2**32:
        raise DataConfigError(f"seed must be an integer in [0, 2**32); got {seed!r}")
    n = len(source)
    evaluation = num_epochs == 1
    if evaluation:
        num_batches = math.ceil(n / batch_size)
    else:
        if n == 0:
            raise DataConfigError(f"{description} has no examples to train on")
        total = sys.maxsize if num_epochs is None else n * num_epochs
        num_batches = total // batch_size
        if num_batches == 0:
            raise DataConfigError(f"{description} has {n} examples x {num_epochs} epochs, fewer than one global "
                                  f"batch of {batch_size}")
    make_batch = _MakeBatch(source, global_batch=batch_size, local_batch=local_batch,
                            process_index=int(process_index), shuffle=shuffle, seed=int(seed), evaluation=evaluation,
                            augment=None if evaluation else augment)
    return iter(grain.MapDataset.range(num_batches).map(make_batch).to_iter_dataset(_READ_OPTIONS))
