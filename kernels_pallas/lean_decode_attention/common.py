"""The stream-K schedule every lean-decode implementation follows, its input checks, and the
log-sum-exp merge of partial results.

Work units. One query token per sequence attends to its KV cache. A *segment* is one (sequence,
kv head) pair, s = b * kv_heads + h; it owns ceil(lengths[b] / block_k) *units* (tiles of block_k
cached tokens; the query heads sharing kv head h are handled together). Only units holding valid
tokens exist: a ragged batch costs its total valid tokens, not batch x max_len.

Stream-K. The U units are laid end to end in segment order and cut into `num_programs` equal
contiguous ranges, program p taking [p*U//P, (p+1)*U//P). A range may start or end inside a
segment and may cover several segments. Program p runs an online softmax over its units and, for
every segment it touches, writes a partial (unnormalised output o, running max m, sum l) to slot
p + s. Slots are unique: as units advance, p and s never decrease, so distinct (p, s) pairs have
distinct sums; there are at most P + S of them. A second step merges each segment's slots,
    M = max_i m_i,  out = sum_i exp(m_i - M) o_i / sum_i exp(m_i - M) l_i,
and a segment with no units (length 0) gives zeros.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
MAX_HEAD_DIM = 256


def check_inputs(q, k_cache, v_cache, lengths, sm_scale):
    """Raises ValueError naming the problem; returns the logit scale."""
    if getattr(q, "ndim", None) != 3:
        raise ValueError(f"lean_decode_attention expects q as [batch, q_heads, head_dim]; got "
                         f"{getattr(q, 'shape', type(q))}")
    for name, x in (("k_cache", k_cache), ("v_cache", v_cache)):
        if getattr(x, "ndim", None) != 4:
            raise ValueError(f"{name} must be [batch, max_len, kv_heads, head_dim]; got "
                             f"{getattr(x, 'shape', type(x))}")
    b, hq, d = q.shape
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache{k_cache.shape} and v_cache{v_cache.shape} must have the same shape")
    if k_cache.shape[0] != b or k_cache.shape[3] != d:
        raise ValueError(f"q{q.shape} and the caches {k_cache.shape} must agree on batch and head_dim")
    hkv = k_cache.shape[2]
    if hkv == 0 or hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of key/value heads ({hkv})")
    if d > MAX_HEAD_DIM:
        raise ValueError(f"head_dim {d} is larger than the supported {MAX_HEAD_DIM}")
    if not (q.dtype == k_cache.dtype == v_cache.dtype):
        raise ValueError(f"q and the caches must share a dtype; got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    if q.dtype not in DTYPES:
        raise ValueError(f"dtype {q.dtype} is not supported; use one of {[str(t) for t in DTYPES]}")
    if getattr(lengths, "shape", None) != (b,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(f"lengths must be an int array [batch]={b,}; got "
                         f"{getattr(lengths, 'shape', type(lengths))} {getattr(lengths, 'dtype', '')}")
    return d ** -0.5 if sm_scale is None else float(sm_scale)


class Schedule(NamedTuple):
    """The stream-K partition for one call (all int32 device arrays; shapes static)."""
    seg_start: jax.Array      # [S + 1] first unit of each segment (exclusive cumsum); [-1] = U
    prog_start: jax.Array     # [P] first unit of each program
    prog_end: jax.Array       # [P] one past its last unit
    steps: jax.Array          # [] units of the busiest program: ceil(U / P)


def schedule(lengths, kv_heads: int, max_len: int, block_k: int, num_programs: int) -> Schedule:
    lengths = jnp.clip(lengths.astype(jnp.int32), 0, max_len)
    tiles = jnp.repeat((lengths + block_k - 1) // block_k, kv_heads)  # [S], segment-major order
    seg_start = jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(tiles, dtype=jnp.int32)])
    total = seg_start[-1]
    p = jnp.arange(num_programs + 1, dtype=jnp.int32)
    bounds = (p * total) // num_programs  # int32 is enough: units = tokens / block_k
    return Schedule(seg_start, bounds[:-1], bounds[1:], (total + num_programs - 1) // num_programs)


def locate(sched: Schedule, unit):
    """Unit index (any shape) -> (segment, tile within the segment)."""
    seg = jnp.searchsorted(sched.seg_start, unit, side="right").astype(jnp.int32) - 1
    seg = jnp.clip(seg, 0, sched.seg_start.shape[0] - 2)
    return seg, unit - sched.seg_start[seg]


def merge(o, m, l, slot_segment, num_segments: int):
    """Merges partial slots into per-segment outputs [S, group, head_dim] (float32).

    o [slots, group, head_dim] unnormalised; m, l [slots, group]; slot_segment [slots] (-1 for an
    unused slot). Empty segments (and rows with l == 0) give zeros.
    """
    used = slot_segment >= 0
    seg = jnp.where(used, slot_segment, num_segments)  # unused slots go to a dropped extra segment
    m = jnp.where(used[:, None], m, -jnp.inf)
    big_m = jax.ops.segment_max(m, seg, num_segments=num_segments + 1)[:num_segments]
    big_m = jnp.where(jnp.isfinite(big_m), big_m, 0.0)
    w = jnp.where(used[:, None], jnp.exp(m - big_m[jnp.minimum(seg, num_segments - 1)]), 0.0)
    num = jax.ops.segment_sum(o * w[..., None], seg, num_segments=num_segments + 1)[:num_segments]
    den = jax.ops.segment_sum(l * w, seg, num_segments=num_segments + 1)[:num_segments]
    return jnp.where(den[..., None] > 0, num / jnp.where(den > 0, den, 1.0)[..., None], 0.0)
