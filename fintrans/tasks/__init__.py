"""Task families, looked up by name: `build(config.task, config.task_options) -> Task`.

One module per family (lm, classification, forecasting, segmentation, ...), each registering its
Task subclass in `TASKS`; see fintrans.tasks.base for the interface.
"""
from __future__ import annotations

from fintrans.tasks.base import (TASKS, BatchError, Metrics, Task, accumulate, build, example_weights, scalars,
                                 summarize, weighted)


def names() -> tuple[str, ...]:
    return TASKS.names()


__all__ = ["TASKS", "BatchError", "Metrics", "Task", "accumulate", "build", "example_weights", "names", "scalars",
           "summarize", "weighted"]
