"""Dense grouped attention: the oracle every other implementation is tested against.

One [group_size, group_size] score matrix per (group, head), float32 math (float64 for float64
inputs, as the tests use under jax's x64 mode). Gradients come from jax autodiff.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def attention(q, k, v, *, sm_scale, groups_per_block=None, interpret=False):
    del groups_per_block, interpret  # dense: no blocks, no kernel
    math = jnp.promote_types(q.dtype, jnp.float32)
    s = jnp.einsum("gqhd,gkhd->ghqk", q.astype(math), k.astype(math)) * sm_scale
    s = s - jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
    p = jnp.exp(s)
    p = p / jnp.sum(p, axis=-1, keepdims=True)
    out = jnp.einsum("ghqk,gkhd->gqhd", p, v.astype(math))
    return out.astype(q.dtype)
