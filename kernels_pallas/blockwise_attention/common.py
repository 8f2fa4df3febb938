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



def segment_tile_ranges(row_segment_ids: jax.Array, col_segment_ids: jax.Array, block_rows: int,
                        block_cols: int, num_row_tiles: Optional[int] = None,
                        num_col_tiles: Optional[int] = None) -> tuple[jax.Array, jax.Array]:
    """Per row tile, the column tiles [lo, hi) that can hold a visible (row, col) pair.

    A pair is visible only if its two segment ids are equal, so a column tile can matter to a row
    tile only where the tiles' [min, max] id intervals overlap; every tile outside [lo, hi) is
    skipped by the kernels. For packed sequences (ids sorted along the sequence) the bound is exact
    per tile, and a key-padding mask folded into the ids as an id no query has (say -1) makes the
    padded tail's tiles fall outside it, so a half-padded batch visits about half the tiles. Ids in
    any order give a looser but still safe bound. Called with (q, kv) ids it bounds the kv loop of
    each q tile (forward, dq); with (kv, q) ids the q loop of each kv tile (dk/dv).

    Args:
      row_segment_ids: int [batch, rows]; col_segment_ids: int [batch, cols].
      block_rows, block_cols: tile sizes; a partial last tile counts only its real entries.
      num_row_tiles, num_col_tiles: pad the result to this many tiles (kernels whose padded
        lengths hold more tiles); extra row tiles get an empty range, extra column tiles are
        never in one.
    Returns:
      (lo, hi), int32 [batch, num_row_tiles]; lo == hi where no column tile can matter.
    """
    def tile_bounds(ids, block, count):
        b, n = ids.shape
        tiles = -(-n // block)
        # Edge padding repeats the last real id, so a partial tile's bounds are its real entries'.
        padded = jnp.pad(ids.astype(jnp.int32), ((0, 0), (0, tiles * block - n)), mode="edge")
        padded = padded.reshape(b, tiles, block)
        lo, hi = jnp.min(padded, axis=2), jnp.max(padded, axis=2)
        count = tiles if count is None else count
        if count < tiles:
            raise ValueError(f"num tiles {count} is less than the {tiles} the ids need")
        return lo, hi, tiles, count

    r_min, r_max, r_tiles, r_count = tile_bounds(row_segment_ids, block_rows, num_row_tiles)
    c_min, c_max, c_tiles, _ = tile_bounds(col_segment_ids, block_cols, num_col_tiles)
    overlap = (c_min[:, None, :] <= r_max[:, :, None]) & (c_max[:, None, :] >= r_min[:, :, None])
    any_ = jnp.any(overlap, axis=2)
    col = jnp.arange(c_tiles, dtype=jnp.int32)
    lo = jnp.where(any_, jnp.min(jnp.where(overlap, col, c_tiles), axis=2), 0)
    hi = jnp.where(any_, jnp.max(jnp.where(overlap, col, -1), axis=2) + 1, 0)
    extra = r_count - r_tiles
    if extra:
        lo, hi = (jnp.pad(x, ((0, 0), (0, extra))) for x in (lo, hi))
    return lo.astype(jnp.int32), hi.astype(jnp.int32)
