"""What a task is: the batch it expects, its loss, and its metrics.

Metrics are returned as {name: (sum, count)} so that evaluation over many batches (with padded
rows marked invalid) averages exactly; `summarize` turns accumulated sums into means.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

Metrics = dict[str, tuple[jax.Array, jax.Array]]


class BatchError(ValueError):
    """A batch is missing a key or has the wrong rank or dtype for the task."""


def example_weights(batch: Mapping[str, Any], batch_size: int) -> jax.Array:
    """1.0 per real example, 0.0 for the padding rows of a final evaluation batch."""
    valid = batch.get("valid")
    return jnp.ones((batch_size,), jnp.float32) if valid is None else valid.astype(jnp.float32)


def weighted(values: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of values·weights, sum of weights) with weights broadcast over trailing dims."""
    w = jnp.broadcast_to(weights.reshape(weights.shape + (1,) * (values.ndim - weights.ndim)), values.shape)
    return (values * w).sum(), w.sum()


def check_keys(task: str, batch: Mapping[str, Any], spec: Mapping[str, tuple[int, str]]) -> None:
    """spec: key -> (rank, 'int' | 'float' | 'bool' | 'any')."""
    for key, (rank, kind) in spec.items():
        if key not in batch:
            raise BatchError(f"{task} batch has no {key!r}; it needs {sorted(spec)} (got {sorted(batch)})")
        x = batch[key]
        if np.ndim(x) != rank and rank >= 0:
            raise BatchError(f"{task} batch[{key!r}] must have rank {rank}, got shape {np.shape(x)}")
        dt = np.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype
        ok = {"int": jnp.issubdtype(dt, jnp.integer), "float": jnp.issubdtype(dt, jnp.floating),
              "bool": dt == bool, "any": True}[kind]
        if not ok:
            raise BatchError(f"{task} batch[{key!r}] must be {kind}, got {dt}")
    sizes = {k: np.shape(batch[k])[0] for k in batch}
    if len(set(sizes.values())) > 1:
        raise BatchError(f"{task} batch arrays disagree on the batch size: {sizes}")


def summarize(sums: Mapping[str, tuple[Any, Any]]) -> dict[str, float]:
    return {k: float(s) / max(float(c), 1e-12) for k, (s, c) in sums.items()}


def accumulate(total: Metrics | None, new: Metrics) -> Metrics:
    if total is None:
        return dict(new)
    return {k: (total[k][0] + s, total[k][1] + c) for k, (s, c) in new.items()}
