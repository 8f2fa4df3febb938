"""Attention patterns beyond full attention, and `AttentionPattern`, the spec MultiHeadAttention
takes to choose one.

    AttentionPattern()                         full attention: the `attention` op (and decode_attention)
    AttentionPattern("local", window=(w, 0))   each query sees keys in [i - w, i]: the causal sliding window
    AttentionPattern("local", window=(l, r))   keys in [i - l, i + r]: a local span
    AttentionPattern("topk", top_k=k)          each query keeps its k largest (visible) scores
    AttentionPattern("grouped")                FlatFormer's window groups (fintrans.ops.flat_window)

Ops (fintrans.ops.dispatch):
  local_attention  xla: query tiles of LOCAL_BLOCK attend to their gathered band of keys
                   (O(q_len * (block + window)) memory; a banded XLA version, not the blockwise
                   kernel's tile skipping); falls back to dense when the band covers every key or
                   the inputs need a per-query mask or segment ids. xla_dense: one masked score
                   matrix.
  topk_attention   xla: dense scores, then each row's top_k (ties with the k-th are all kept).
Query i sits at position i + kv_len - q_len (aligned to the end of the keys, as causal masks are).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp

from fintrans.ops.attention import _check_shapes, _dense_attention
from fintrans.ops.dispatch import Op

Array = jax.Array
LOCAL_BLOCK = 128  # queries per tile of the banded local attention

KINDS = ("full", "local", "topk", "grouped")
# pattern kind -> the op it runs (multi-token calls; one-token decoding of "full" uses decode_attention)
OP_OF_KIND = {"full": "attention", "local": "local_attention", "topk": "topk_attention",
              "grouped": "grouped_attention"}


@dataclasses.dataclass(frozen=True)
class AttentionPattern:
    """Which keys each query may attend to (see the module docstring)."""
    kind: str = "full"
    window: Optional[tuple[int, int]] = None  # local: (keys before, keys after) each query sees
    top_k: Optional[int] = None  # topk: scores kept per query

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"attention pattern {self.kind!r} is not one of {KINDS}")
        if self.kind == "local":
            w = self.window
            if (not isinstance(w, tuple) or len(w) != 2
                    or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in w)):
                raise ValueError(f"a local pattern needs window=(left, right), two non-negative ints; got {w!r}")
        elif self.window is not None:
            raise ValueError(f"window is for the local pattern, not {self.kind!r}")
        if self.kind == "topk":
            if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k <= 0:
                raise ValueError(f"a topk pattern needs top_k, a positive int; got {self.top_k!r}")
        elif self.top_k is not None:
            raise ValueError(f"top_k is for the topk pattern, not {self.kind!r}")

    @property
    def op(self) -> str:
        return OP_OF_KIND[self.kind]


def band_mask(q_len: int, kv_len: int, window: tuple[int, int]) -> Array:
    """Boolean [q_len, kv_len]: query i (at position i + kv_len - q_len) sees key j iff
    position - left <= j <= position + right."""
    left, right = window
    pos = jnp.arange(q_len)[:, None] + (kv_len - q_len)
    j = jnp.arange(kv_len)[None, :]
    return (j >= pos - left) & (j <= pos + right)


def _with_band(mask, q_len, kv_len, window):
    band = band_mask(q_len, kv_len, window)[None, None]
    return band if mask is None else band & mask.astype(bool)


def _local_dense(q, k, v, *, window, mask=None, segment_ids=None, scale=None):
    return _dense_attention(q, k, v, mask=_with_band(mask, q.shape[1], k.shape[1], window),
                            segment_ids=segment_ids, scale=scale)


def _local_banded(q, k, v, *, window, mask=None, segment_ids=None, scale=None, block=None):
    """Each tile of `block` queries attends to the block + left + right keys its band can reach,
    gathered from k and v; the band (and a key-padding mask) masks inside the tile."""
    if segment_ids is not None:
        raise NotImplementedError("banded local attention takes no segment ids")
    if mask is not None and (mask.shape[1] != 1 or mask.shape[2] != 1):
        raise NotImplementedError("banded local attention takes only key-padding masks [batch|1, 1, 1, kv_len]")
    b, lq, hq, d = q.shape
    lk = k.shape[1]
    left, right = window
    block = min(block or LOCAL_BLOCK, lq)
    width = block + left + right
    if width >= lk:
        raise NotImplementedError("the band covers every key: dense attention is no larger")
    n = math.ceil(lq / block)
    offset = lk - lq
    q_pos = jnp.arange(n * block).reshape(n, block) + offset  # [tiles, block]
    key_idx = (jnp.arange(n) * block + offset - left)[:, None] + jnp.arange(width)[None]  # [tiles, width]
    in_range = (key_idx >= 0) & (key_idx < lk)
    key_idx_c = jnp.clip(key_idx, 0, lk - 1)
    keep = (in_range[:, None, :] & (key_idx[:, None, :] >= q_pos[:, :, None] - left)
            & (key_idx[:, None, :] <= q_pos[:, :, None] + right))[None]  # [1, tiles, block, width]
    if mask is not None:
        kv_valid = jnp.broadcast_to(mask[:, 0, 0, :].astype(bool), (b, lk))
        keep = keep & kv_valid[:, key_idx_c][:, :, None, :]
    keep = jnp.broadcast_to(keep, (b, n, block, width)).reshape(b * n, 1, block, width)
    tiles = lambda x: x[:, key_idx_c].reshape((b * n, width) + x.shape[2:])
    qt = jnp.pad(q, ((0, 0), (0, n * block - lq), (0, 0), (0, 0))).reshape(b * n, block, hq, d)
    out = _dense_attention(qt, tiles(k), tiles(v), mask=keep, scale=scale)
    return out.reshape(b, n * block, hq, v.shape[-1])[:, :lq]


def _local_xla(q, k, v, **kwargs):
    try:
        return _local_banded(q, k, v, **kwargs)
    except NotImplementedError:
        return _local_dense(q, k, v, **kwargs)


def _check_local(q, k, v, *, window, mask=None, segment_ids=None, scale=None):
    _check_shapes(q, k, v, mask=mask, segment_ids=segment_ids)
    AttentionPattern("local", window=window)


def _check_topk(q, k, v, *, top_k, bias=None, mask=None, causal=False, segment_ids=None, scale=None):
    _check_shapes(q, k, v, bias=bias, mask=mask, segment_ids=segment_ids)
    AttentionPattern("topk", top_k=top_k)


LOCAL = Op("local_attention", check=_check_local,
           doc="attention in which query i sees keys [i - left, i + right] (sliding window / local span)")
LOCAL.register("xla_dense", _local_dense)
LOCAL.register("xla", _local_xla)

TOPK = Op("topk_attention", check=_check_topk, doc="attention over each query's top_k largest visible scores")
TOPK.register("xla", lambda q, k, v, *, top_k, **kwargs: _dense_attention(q, k, v, top_k=top_k, **kwargs))


def local_attention(q: Array, k: Array, v: Array, *, window: tuple[int, int], mask: Optional[Array] = None,
                    segment_ids=None, scale: Optional[float] = None,
                    implementation: Optional[str] = None) -> Array:
    """Sliding-window / local-span attention: query i sees keys j with i' - left <= j <= i' + right,
    i' = i + kv_len - q_len; window=(w, 0) is the causal sliding window. Layout, masks, segment ids
    and the zeros for a query that sees no key are dot_product_attention's."""
    return LOCAL(q, k, v, window=window, mask=mask, segment_ids=segment_ids, scale=scale,
                 implementation=implementation)


def topk_attention(q: Array, k: Array, v: Array, *, top_k: int, bias: Optional[Array] = None,
                   mask: Optional[Array] = None, causal: bool = False, segment_ids=None,
                   scale: Optional[float] = None, implementation: Optional[str] = None) -> Array:
    """Top-k sparse attention: each query's softmax runs over its top_k largest visible scores
    (after bias and masks; every score tied with the k-th is kept). Otherwise dot_product_attention."""
    return TOPK(q, k, v, top_k=top_k, bias=bias, mask=mask, causal=causal, segment_ids=segment_ids,
                scale=scale, implementation=implementation)
