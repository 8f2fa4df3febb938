"""Stand-in for the Task interface of fintrans/tasks/base.py (being written on another branch).

The new task families (ranking, multitask, contrastive, diffusion) import `Task`, `Metrics`,
`summarize`, `accumulate`, `build` and `task_class` from here; when the branches merge, this module
re-exports base.py's versions instead (`task_class` becomes `fintrans.tasks.TASKS.get`).

    class Task:
        name: str
        check_batch(batch) -> None                         # host-side check; raises BatchError
        loss_and_metrics(apply_fn, params, batch, rng, *, train) -> (loss, Metrics)
        loss_from_outputs(outputs, batch) -> (loss, Metrics)   # the single-forward-pass case
        derived(summary) -> dict                           # metrics computed from accumulated means
        sample(run, params, print_fn) -> dict              # what a finished run shows

`apply_fn(params, batch, *, rng=None, **model_kwargs) -> outputs` is built by the trainer; a task
may call it several times per loss (two contrastive views, noise levels).
Metrics are {name: (sum, count)}; sums may be arrays (histograms), and `summarize` divides elementwise.
Bad options raise ConfigError, bad batches BatchError.
"""
from __future__ import annotations

import importlib
from typing import Any, Mapping

import jax
import numpy as np

from fintrans.models.config import ConfigError
from fintrans.tasks.base import BatchError, check_keys, example_weights, weighted

Metrics = dict[str, tuple[jax.Array, jax.Array]]


class Task:
    """A task family: the batch it expects, its loss (owning the model's forward passes) and metrics.
    Single-pass tasks implement `loss_from_outputs`; the default `loss_and_metrics` runs the model once
    with the step's rng unchanged (as base.py's Task does)."""

    name: str = ""

    def check_batch(self, batch: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def loss_and_metrics(self, apply_fn, params, batch, rng, *, train: bool) -> tuple[jax.Array, Metrics]:
        return self.loss_from_outputs(apply_fn(params, batch, rng=rng), batch)

    def loss_from_outputs(self, outputs, batch) -> tuple[jax.Array, Metrics]:
        raise NotImplementedError

    def derived(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def sample(self, run, params, print_fn) -> dict[str, Any]:
        raise NotImplementedError


def summarize(sums: Mapping[str, tuple[Any, Any]]) -> dict[str, Any]:
    """Means of accumulated (sum, count): a float for scalar sums, an array for array sums."""
    out = {}
    for key, (s, c) in sums.items():
        mean = np.asarray(s, np.float64) / max(float(c), 1e-12)
        out[key] = float(mean) if mean.ndim == 0 else mean
    return out


def accumulate(total: Metrics | None, new: Metrics) -> Metrics:
    if total is None:
        return dict(new)
    return {k: (total[k][0] + s, total[k][1] + c) for k, (s, c) in new.items()}


# The families on this branch; after the merge the registry fintrans.tasks.TASKS holds every task.
_FAMILY_MODULES = ("fintrans.tasks.ranking", "fintrans.tasks.contrastive", "fintrans.tasks.diffusion",
                   "fintrans.tasks.multitask")


def task_class(name: str) -> type[Task]:
    """The Task subclass registered under `name` (stand-in for fintrans.tasks.TASKS.get)."""
    classes: dict[str, type[Task]] = {}
    for module in _FAMILY_MODULES:
        classes.update(importlib.import_module(module).TASK_CLASSES)
    if name not in classes:
        raise ConfigError(f"unknown task {name!r}; registered: {sorted(classes)}")
    return classes[name]


def build(name: str, options: Mapping[str, Any] | None = None) -> Task:
    """Task `name` built from its options (stand-in for fintrans.tasks.build)."""
    cls = task_class(name)
    try:
        return cls(**dict(options or {}))
    except TypeError as e:  # an unknown keyword: name the task and its options
        raise ConfigError(f"task {name!r}: bad options {sorted(options or {})}: {e}") from e


__all__ = ["BatchError", "Metrics", "Task", "accumulate", "build", "check_keys", "example_weights",
           "summarize", "task_class", "weighted"]
