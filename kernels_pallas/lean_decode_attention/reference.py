"""Dense decode attention: the oracle. Reads the whole cache (batch x max_len) and masks positions
at or past each sequence's length; float32 math (float64 for float64 inputs, as in the tests)."""
from __future__ import annotations

import jax.numpy as jnp


def attention(q, k_cache, v_cache, lengths, *, sm_scale, block_k=None, num_programs=None,
              interpret=False):
    del block_k, num_programs, interpret  # dense: no tiles, no schedule
    b, hq, d = q.shape
    max_len, hkv = k_cache.shape[1], k_cache.shape[2]
    math = jnp.promote_types(q.dtype, jnp.float32)
    qg = q.astype(math).reshape(b, hkv, hq // hkv, d)
    s = jnp.einsum("bhgd,bkhd->bhgk", qg, k_cache.astype(math)) * sm_scale
    keep = (jnp.arange(max_len)[None, :] < lengths[:, None])[:, None, None, :]
    s = jnp.where(keep, s, -jnp.inf)
    row_max = jnp.max(s, axis=-1, keepdims=True)
    p = jnp.exp(s - jnp.where(jnp.isfinite(row_max), row_max, 0.0))
    denom = jnp.sum(p, axis=-1, keepdims=True)
    p = p / jnp.where(denom == 0, 1.0, denom)
    out = jnp.einsum("bhgk,bkhd->bhgd", p, v_cache.astype(math))
    return out.reshape(b, hq, d).astype(q.dtype)
