"""Dense attention: the oracle every other implementation is tested against.

Materializes the full [q_len, kv_len] score matrix, so memory is O(q_len * kv_len). Math runs in
float32, or in float64 when given float64 inputs (the tests do, under jax's x64 mode), so it can
serve as a high-precision oracle. Gradients come from jax autodiff.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def visible(q_len: int, kv_len: int, causal: bool, q_segment_ids=None, kv_segment_ids=None):
    """Boolean [batch|1, 1, q_len, kv_len]: True where query i may see key j."""
    keep = jnp.ones((1, 1, q_len, kv_len), bool)
    if causal:
        rows = jnp.arange(q_len)[:, None] + (kv_len - q_len)
        keep = keep & (jnp.arange(kv_len)[None, :] <= rows)[None, None]
    if q_segment_ids is not None:
        keep = keep & (q_segment_ids[:, :, None] == kv_segment_ids[:, None, :])[:, None]
    return keep


def attention(q, k, v, *, causal, q_segment_ids, kv_segment_ids, sm_scale, block_sizes=None,
              interpret=False):
    del block_sizes, interpret  # dense: no tiles, no kernel
    b, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    math = jnp.promote_types(q.dtype, jnp.float32)
    qg = q.astype(math).reshape(b, lq, hkv, hq // hkv, d)
    s = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k.astype(math)).reshape(b, hq, lq, lk) * sm_scale
    keep = visible(lq, lk, causal, q_segment_ids, kv_segment_ids)
    s = jnp.where(keep, s, -jnp.inf)
    row_max = jnp.max(s, axis=-1, keepdims=True)
    # Rows that see nothing: subtract 0 instead of -inf so exp gives 0, not NaN.
    p = jnp.exp(s - jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0)))
    denom = jnp.sum(p, axis=-1, keepdims=True)
    p = p / jnp.where(denom == 0, 1.0, denom)
    out = jnp.einsum("bhgqk,bkhd->bqhgd", p.reshape(b, hkv, hq // hkv, lq, lk), v.astype(math))
    return out.reshape(b, lq, hq, d).astype(q.dtype)
