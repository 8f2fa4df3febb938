"""Grain pipeline: a random-access source of examples -> host-local batches, with checkpointable state.

One global stream of examples is defined for all processes (shuffled per epoch from `seed`; padded at
the end for evaluation) and cut into global batches of `batch_size`; process p takes rows
[p * b, (p + 1) * b) of every global batch (b = batch_size // process_count). So the processes' shards
are disjoint, every process yields the same number of batches (no collective waits on a missing
evaluation batch), and concatenating the processes' batches in process order gives exactly the
batch a single process would see with the same seed.

The returned iterator is grain's own `DatasetIterator`: `get_state()` / `set_state()` and orbax via
grain's handler work unchanged (see fintrans.data's docstring for the orbax code).
"""
from __future__ import annotations

import math
import sys
from typing import Any, Sequence

import grain
import numpy as np

from fintrans.data.errors import DataConfigError

# The sources are in memory: one background thread batching ahead is plenty and keeps the GIL calm.
_READ_OPTIONS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)


class _ProcessRows:
    """Local example j of process p -> its row of the global stream (plus 'valid' when evaluating)."""

    def __init__(self, examples: grain.MapDataset, *, global_batch: int, local_batch: int, process_index: int,
                 num_real: int | None):
        self.examples, self.global_batch, self.local_batch = examples, global_batch, local_batch
        self.offset = process_index * local_batch
        self.num_real = num_real  # evaluation: rows >= num_real are padding

    def __call__(self, j: int) -> dict[str, Any]:
        batch, row = divmod(j, self.local_batch)
        g = batch * self.global_batch + self.offset + row
        if self.num_real is None:
            return self.examples[g]
        valid = g < self.num_real
        # Padding repeats a real example (not zeros) so that models never see an all-masked row
        # (softmax over nothing is NaN, and NaN * 0 is still NaN in a masked mean).
        example = dict(self.examples[g if valid else 0])
        example["valid"] = np.bool_(valid)
        return example


def check_batching(batch_size: Any, process_index: Any, process_count: Any) -> int:
    """Validates the batching arguments; returns the per-process batch size."""
    for name, value in (("batch_size", batch_size), ("process_count", process_count)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise DataConfigError(f"{name} must be a positive integer; got {value!r}")
    if (not isinstance(process_index, (int, np.integer)) or isinstance(process_index, bool)
            or not 0 <= process_index < process_count):
        raise DataConfigError(f"process_index must be an integer in [0, {process_count}); got {process_index!r}")
    if batch_size % process_count:
        raise DataConfigError(f"batch_size {batch_size} (global) is not divisible by process_count {process_count}; "
                              f"each process takes batch_size // process_count examples")
    return int(batch_size // process_count)


def make_iterator(source: Sequence[dict[str, np.ndarray]], *, batch_size: int, shuffle: bool, seed: int,
                  num_epochs: int | None, process_index: int, process_count: int,
                  description: str = "split") -> grain.DatasetIterator:
    """Batches of dicts of numpy arrays for this process; see the module docstring for the layout.

    num_epochs=None: repeat forever (training). num_epochs=1: evaluation, every example exactly once,
    the last batch padded to full size and every batch carrying 'valid'. num_epochs=k>1: k training
    epochs; the incomplete last global batch is dropped.
    """
    local_batch = check_batching(batch_size, process_index, process_count)
    if num_epochs is not None and (not isinstance(num_epochs, (int, np.integer)) or isinstance(num_epochs, bool)
                                   or num_epochs < 1):
        raise DataConfigError(f"num_epochs must be None (forever) or a positive integer; got {num_epochs!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise DataConfigError(f"seed must be an integer in [0, 2**32); got {seed!r}")
    n = len(source)
    examples = grain.MapDataset.source(source)
    if shuffle:
        # grain reshuffles with seed + epoch when indexed past one epoch: a fresh order every epoch.
        examples = examples.shuffle(seed=int(seed))
    if num_epochs == 1:
        num_batches, num_real = math.ceil(n / batch_size), n
    else:
        if n == 0:
            raise DataConfigError(f"{description} has no examples to train on")
        total = sys.maxsize if num_epochs is None else n * num_epochs
        num_batches, num_real = total // batch_size, None
        if num_batches == 0:
            raise DataConfigError(f"{description} has {n} examples x {num_epochs} epochs, fewer than one global "
                                  f"batch of {batch_size}")
    rows = _ProcessRows(examples, global_batch=batch_size, local_batch=local_batch,
                        process_index=int(process_index), num_real=num_real)
    local = grain.MapDataset.range(num_batches * local_batch).map(rows)
    return iter(local.batch(local_batch, drop_remainder=True).to_iter_dataset(_READ_OPTIONS))
