"""Multi-task heads: one model returns {head: outputs}; each head is scored by its own task.

Options: heads = {head: {"task": registered task name, "weight": float (default 1.0),
"options": {that task's options, e.g. its label_key}}}, for example
    {"ctr": {"task": "ranking_pointwise", "options": {"label_key": "click"}},
     "cvr": {"task": "ranking_pointwise", "weight": 0.5, "options": {"label_key": "conversion"}}}
Batch: the union of the heads' batches (each head reads its own label key).
Loss: sum over heads of weight * head loss. Metrics: every head's metrics as "head/metric"; `derived`
adds each head's derived metrics (also prefixed) and "loss", the weighted sum of the heads' mean
losses over the whole evaluation set.

The model runs once per step: a head whose task calls apply_fn with the step's own batch and rng
gets its part of that one call's outputs. A head task that calls the model on something else (two
contrastive views, a noised input) gets a fresh call of the whole model, from which its head is taken.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp

from fintrans.models.config import ConfigError
from fintrans.tasks.base import TASKS, Task, build


class _HeadApply:
    """apply_fn for one head: the shared call's outputs for the shared inputs, else a new call."""

    def __init__(self, apply_fn, head: str, shared_batch, shared_rng, shared_outputs, heads: list[str]):
        self.apply_fn, self.head, self.heads = apply_fn, head, heads
        self.shared = (shared_batch, shared_rng, shared_outputs)

    def __call__(self, params, batch, *, rng=None, **model_kwargs):
        shared_batch, shared_rng, shared_outputs = self.shared
        if batch is shared_batch and rng is shared_rng and not model_kwargs:
            return shared_outputs[self.head]
        return _select(self.apply_fn(params, batch, rng=rng, **model_kwargs), self.head, self.heads)


def _select(outputs, head: str, heads: list[str]):
    if not isinstance(outputs, Mapping):
        raise ValueError(f"multitask: the model must return a dict of head outputs {heads}, got "
                         f"{type(outputs).__name__}")
    if head not in outputs:
        raise ValueError(f"multitask: the model's outputs have no head {head!r}; it returned {sorted(outputs)}, "
                         f"the task's heads are {heads}")
    return outputs[head]


class MultiTask(Task):
    """Weighted sum of per-head task losses (see module doc)."""

    name = "multitask"

    def __init__(self, *, heads: Mapping[str, Mapping[str, Any]]):
        if not heads:
            raise ConfigError("multitask: `heads` must name at least one head: {head: {'task': ..., 'weight': ...}}")
        self.tasks: dict[str, Task] = {}
        self.weights: dict[str, float] = {}
        for head, spec in heads.items():
            unknown = set(spec) - {"task", "weight", "options"}
            if "task" not in spec or unknown:
                raise ConfigError(f"multitask head {head!r}: needs 'task' and may have 'weight', 'options'; got "
                                 f"{sorted(spec)}")
            if spec["task"] == self.name:
                raise ConfigError(f"multitask head {head!r}: heads cannot be multitask themselves")
            if "/" in head:
                raise ConfigError(f"multitask head {head!r}: '/' separates head and metric names")
            self.tasks[head] = build(spec["task"], spec.get("options"))
            self.weights[head] = float(spec.get("weight", 1.0))

    @property
    def heads(self) -> list[str]:
        return list(self.tasks)

    def check_batch(self, batch) -> None:
        for task in self.tasks.values():
            task.check_batch(batch)

    def loss_and_metrics(self, apply_fn, params, batch, rng, *, train: bool):
        outputs = apply_fn(params, batch, rng=rng)
        for head in self.heads:
            _select(outputs, head, self.heads)
        total, metrics = jnp.zeros((), jnp.float32), {}
        for head, task in self.tasks.items():
            head_apply = _HeadApply(apply_fn, head, batch, rng, outputs, self.heads)
            loss, head_metrics = task.loss_and_metrics(head_apply, params, batch, rng, train=train)
            total = total + self.weights[head] * loss
            metrics.update({f"{head}/{k}": v for k, v in head_metrics.items()})
        # The mean of per-batch totals, for loops that read metrics["loss"]; `derived` replaces it with
        # the exact weighted sum of the heads' means over all batches.
        metrics["loss"] = (total, jnp.ones((), jnp.float32))
        return total, metrics

    def _head_summary(self, summary, head: str) -> dict[str, Any]:
        prefix = f"{head}/"
        return {k[len(prefix):]: v for k, v in summary.items() if k.startswith(prefix)}

    def derived(self, summary) -> dict[str, Any]:
        out, loss = {}, 0.0
        for head, task in self.tasks.items():
            part = self._head_summary(summary, head)
            out.update({f"{head}/{k}": v for k, v in task.derived(part).items()})
            if "loss" not in part:
                loss = None
            elif loss is not None:
                loss += self.weights[head] * part["loss"]
        if loss is not None:
            out["loss"] = loss
        return out

    def sample(self, run, params, print_fn):
        """Each head's own sample, with run.predict narrowed to that head's outputs."""
        out = {}
        for head, task in self.tasks.items():
            print_fn(f"\n=== head {head!r} ({task.name}) ===")
            out[head] = task.sample(_HeadRun(run, head, self.heads), params, print_fn)
        return out


class _HeadRun:
    """The run as one head's task sees it: predict returns that head's outputs."""

    def __init__(self, run, head: str, heads: list[str]):
        self._run, self._head, self._heads = run, head, heads

    def __getattr__(self, name):
        return getattr(self._run, name)

    def predict(self, params, batch):
        outputs, gathered = self._run.predict(params, batch)
        return _select(outputs, self._head, self._heads), gathered


TASKS.register(MultiTask.name, MultiTask)
