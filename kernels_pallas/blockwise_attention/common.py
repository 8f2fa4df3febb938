"""What every blockwise-attention implementation shares: block sizes, input checks, padding.

Conventions all implementations follow (so they agree with `reference.py`):
- layout [batch, length, heads, head_dim]; q_heads a multiple of kv_heads (GQA/MQA);
- causal masks are end-aligned: query i sees key j iff j <= i + (kv_len - q_len);
- with segment ids, query i sees key j only if q_segment_ids[i] == kv_segment_ids[j];
- a query that sees no key returns zeros and passes back zero gradients (never NaN);
- softmax statistics and accumulation in float32; the output takes q's dtype;
- any length: a kernel pads to its tiles and masks padded keys by position (col < kv_len).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

MAX_HEAD_DIM = 256
DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes along q_len and kv_len; None lets the implementation choose its tuned default.

    `*_bwd` apply to the backward pass (the dq and dk/dv kernels); they default to the forward's.
    """
    block_q: Optional[int] = None
    block_kv: Optional[int] = None
    block_q_bwd: Optional[int] = None
    block_kv_bwd: Optional[int] = None

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is not None and (not isinstance(v, int) or v <= 0):
                raise ValueError(f"BlockSizes.{f.name} must be a positive int or None; got {v!r}")

    def resolve(self, block_q: int, block_kv: int, q_len: int, kv_len: int,
                multiple: int = 1) -> "BlockSizes":
        """Fills unset sizes with the given defaults, never larger than the (rounded-up) lengths.

        `multiple` is the smallest tile the hardware accepts (8 sublanes on TPU, 16 for Triton
        dots); a length shorter than the default tile gets a tile of the length rounded up to it.
        """
        def fit(size, length):
            return min(size, round_up(length, multiple))
        bq = fit(self.block_q or block_q, q_len)
        bk = fit(self.block_kv or block_kv, kv_len)
        return BlockSizes(bq, bk, fit(self.block_q_bwd or bq, q_len),
                          fit(self.block_kv_bwd or bk, kv_len))


def round_up(x: int, m: int) -> int:
    """Smallest multiple of m that is >= x."""
    return -(-x // m) * m


def check_inputs(q, k, v, segment_ids, sm_scale):
    """Raises ValueError naming the problem; returns (q_segment_ids, kv_segment_ids, sm_scale)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if getattr(x, "ndim", None) != 4:
            raise ValueError(f"blockwise_attention expects {name} as [batch, length, heads, head_dim]; "
                             f"got shape {getattr(x, 'shape', type(x))}")
    b, lq, hq, d = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k{k.shape} and v{v.shape} must have the same shape")
    if k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"q{q.shape} and k{k.shape} must agree on batch and head_dim")
    if k.shape[2] == 0 or hq % k.shape[2]:
        raise ValueError(f"query heads ({hq}) must be a multiple of key/value heads ({k.shape[2]})")
    if d > MAX_HEAD_DIM:
        raise ValueError(f"head_dim {d} is larger than the supported {MAX_HEAD_DIM}")
    if lq == 0 or k.shape[1] == 0:
        raise ValueError(f"q_len and kv_len must be positive; got q{q.shape} k{k.shape}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in DTYPES:
        raise ValueError(f"dtype {q.dtype} is not supported; use one of {[str(t) for t in DTYPES]}")
    qs = ks = None
    if segment_ids is not None:
        if not (isinstance(segment_ids, (tuple, list)) and len(segment_ids) == 2):
            raise ValueError("segment_ids must be None or a pair (q_segment_ids [batch, q_len], "
                             "kv_segment_ids [batch, kv_len])")
        qs, ks = segment_ids
        if tuple(qs.shape) != (b, lq) or tuple(ks.shape) != (b, k.shape[1]):
            raise ValueError(f"segment_ids must be [batch, q_len]={b, lq} and [batch, kv_len]="
                             f"{b, k.shape[1]}; got {tuple(qs.shape)} and {tuple(ks.shape)}")
        if not (jnp.issubdtype(qs.dtype, jnp.integer) and jnp.issubdtype(ks.dtype, jnp.integer)):
            raise ValueError(f"segment_ids must be integers; got {qs.dtype} and {ks.dtype}")
        qs, ks = qs.astype(jnp.int32), ks.astype(jnp.int32)
    scale = d ** -0.5 if sm_scale is None else float(sm_scale)
    return qs, ks, scale


def pad_axis(x: jax.Array, axis: int, size: int, value=0) -> jax.Array:
    """Pads x at the end of `axis` up to `size` (no-op when already that long)."""
    extra = size - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)

