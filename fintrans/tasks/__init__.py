"""Task families: batch spec, loss and metrics (pure functions), looked up by name.

A task module provides `name`, `check_batch(batch)`, `loss_and_metrics(outputs, batch)` ->
(scalar loss, {metric: (sum, count)}) and `derived(summary)` for metrics computed from means.
"""
from __future__ import annotations

from types import ModuleType

from fintrans.tasks import classification, forecasting, lm, segmentation
from fintrans.tasks.base import BatchError, accumulate, summarize

_TASKS = {m.name: m for m in (lm, classification, forecasting, segmentation)}


def names() -> tuple[str, ...]:
    return tuple(sorted(_TASKS))


def get(name: str) -> ModuleType:
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(_TASKS)}")
    return _TASKS[name]


__all__ = ["BatchError", "accumulate", "get", "names", "summarize"]
