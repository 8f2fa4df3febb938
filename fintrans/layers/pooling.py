"""Sequence pooling for classification heads."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

POOLINGS = ("cls", "mean", "max")


def pool(x: jax.Array, kind: str, valid: Optional[jax.Array] = None) -> jax.Array:
    """[batch, length, features] -> [batch, features]. `valid` [batch, length] excludes padding."""
    if kind == "cls":
        return x[:, 0]
    if kind not in POOLINGS:
        raise ValueError(f"unknown pooling {kind!r}; choose from {POOLINGS}")
    if valid is None:
        valid = jnp.ones(x.shape[:2], bool)
    w = valid[..., None].astype(x.dtype)
    if kind == "mean":
        return (x * w).sum(1) / jnp.maximum(w.sum(1), 1)
    return jnp.where(valid[..., None], x, jnp.finfo(x.dtype).min).max(1)
