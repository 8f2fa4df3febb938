"""Attention ops for layers: `attention` (dense/blockwise, any mask) and `decode_attention` (one
new token per sequence against its KV cache).

`dot_product_attention` and `decode_attention` validate shapes, then dispatch through their Op
(fintrans.ops.dispatch): implementation=None follows the kernels' dispatch table for the call's
device, dtype, head_dim and shape bucket (kernels_pallas/_dispatch.py; the same table and buckets
as kernels_pallas.blockwise_attention and lean_decode_attention), else the platform's default
order (GPU: cudnn, pallas_mosaic_gpu, pallas_gpu, then xla), falling through on
NotImplementedError to 'xla'; a named implementation is used as asked, never replaced.
`fintrans.ops.explain("attention", q, k, v, causal=True)` says which and why.

attention implementations:
  xla                blockwise when the score matrix is large (>= BLOCKWISE_MIN_SCORES entries) and
                     the inputs allow it, dense otherwise; always works
  xla_dense          one [q_len, kv_len] score matrix per head: any bias or mask
  xla_blockwise      kernels_pallas.blockwise_attention's XLA online softmax: O(length) memory
  reference          kernels_pallas.blockwise_attention's dense float32 oracle (same inputs as blockwise)
  pallas_gpu         the Pallas Triton kernel (GPU)
  pallas_mosaic_gpu  the Pallas Mosaic GPU kernels (Hopper, bfloat16/float16, head_dim 64 or 128)
  cudnn              cuDNN's fused kernel (GPU): no segment ids or masks; causal only with
                     q_len == kv_len; bfloat16/float16
  pallas_tpu         the Pallas Mosaic kernel (preferred on TPU)
The kernel-backed ones run per shard under a mesh. The blockwise kernels take causal masks, segment
ids and key-padding masks ([batch|1, 1, 1, kv_len], folded into segment ids); an additive bias, a
per-query mask or values with their own head_dim raise NotImplementedError, which sends
implementation=None on to dense XLA.

decode_attention implementations: xla, reference, pallas_gpu, pallas_mosaic_gpu, cudnn, pallas_tpu
(kernels_pallas.lean_decode_attention: stream-K lean decode, or cuDNN with per-sequence key
lengths; run per (batch, heads) shard under a mesh) and xla_dense (masked dense attention over the
whole cache).
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from fintrans import axes
from fintrans.ops import dispatch
from fintrans.ops.dispatch import Op
from kernels_pallas import blockwise_attention as blockwise
from kernels_pallas import lean_decode_attention as lean

Array = jax.Array

# Logical axes of the [batch, length, heads, head_dim] layout that attention never mixes: a Pallas
# kernel runs per shard of these (dispatch.per_shard).
Q_AXES = (axes.ACT_BATCH, None, axes.ACT_HEADS, None)
KV_AXES = (axes.ACT_BATCH, None, axes.ACT_KV_HEADS, None)
SEGMENT_AXES = (axes.ACT_BATCH, None)


def _check_shapes(q, k, v, *, bias=None, mask=None, segment_ids=None, **_):
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            "attention expects [batch, length, heads, head_dim] arrays; got "
            f"q{q.shape} k{k.shape} v{v.shape}")
    b, _, hq, d = q.shape
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k{k.shape} and v{v.shape} must agree on batch, length and heads")
    if k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"q{q.shape} and k{k.shape} must agree on batch and head_dim")
    if hq % k.shape[2]:
        raise ValueError(f"query heads ({hq}) must be a multiple of key/value heads ({k.shape[2]})")
    for name, x in (("bias", bias), ("mask", mask)):
        if x is not None and x.ndim != 4:
            raise ValueError(f"{name} must be broadcastable to [batch, heads, q_len, kv_len]; got {x.shape}")
    if segment_ids is not None:
        qs, ks = segment_ids if isinstance(segment_ids, tuple) else (segment_ids, segment_ids)
        if qs.shape != q.shape[:2] or ks.shape != k.shape[:2]:
            raise ValueError(
                f"segment_ids must be [batch, length] for q{q.shape[:2]} and kv{k.shape[:2]}; "
                f"got {qs.shape} and {ks.shape}")


def combined_mask(q_len, kv_len, *, mask=None, causal=False, segment_ids=None):
    """Boolean [batch|1, heads|1, q_len, kv_len] mask (True = attend), or None when unmasked.

    Causal masks are aligned to the end: query i sees keys j <= i + kv_len - q_len, so a chunk
    of new queries attends to everything cached before it.
    """
    out = None
    if causal:
        qi = jnp.arange(q_len)[:, None] + (kv_len - q_len)
        out = (jnp.arange(kv_len)[None, :] <= qi)[None, None]
    if segment_ids is not None:
        qs, ks = segment_ids if isinstance(segment_ids, tuple) else (segment_ids, segment_ids)
        seg = (qs[:, :, None] == ks[:, None, :])[:, None]
        out = seg if out is None else out & seg
    if mask is not None:
        out = mask.astype(bool) if out is None else out & mask.astype(bool)
    return out


def _dense_attention(q, k, v, *, bias=None, mask=None, causal=False, segment_ids=None, scale=None,
                     top_k=None):
    """Dense attention in XLA: float32 logits and softmax, output in q's dtype.

    top_k: each query keeps only its top_k largest visible scores (every score tied with the k-th
    is kept); the top-k attention op's arithmetic.
    """
    b, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    groups = hq // hkv
    scale = d ** -0.5 if scale is None else scale
    qg = q.reshape(b, lq, hkv, groups, d)
    logits = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k, preferred_element_type=jnp.float32) * scale
    logits = logits.reshape(b, hq, lq, lk)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    keep = combined_mask(lq, lk, mask=mask, causal=causal, segment_ids=segment_ids)
    if keep is not None:
        logits = jnp.where(keep, logits, jnp.finfo(jnp.float32).min)
    if top_k is not None and top_k < lk:
        # The threshold only selects entries: no gradient flows through the choice.
        kth = jax.lax.stop_gradient(jax.lax.top_k(logits, top_k)[0][..., -1:])
        chosen = logits >= kth
        keep = chosen if keep is None else keep & chosen
        logits = jnp.where(chosen, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    if keep is not None:
        # A query that may see no key at all (a padding row) gets zeros, not a uniform average.
        probs = jnp.where(jnp.any(keep, axis=-1, keepdims=True), probs, 0.0)
    probs = probs.reshape(b, hkv, groups, lq, lk).astype(v.dtype)
    out = jnp.einsum("bhgqk,bkhd->bqhgd", probs, v, preferred_element_type=jnp.float32)
    return out.reshape(b, lq, hq, v.shape[-1]).astype(q.dtype)


def _blockwise(implementation: str, sharded: bool = False) -> Callable[..., Array]:
    """Adapts kernels_pallas.blockwise_attention to this module's signature.

    sharded: a Pallas kernel is an opaque custom call that XLA cannot split, so under a mesh it
    would gather every input onto every device; instead it runs under shard_map on each device's
    batch (and head) shard, which attention never mixes.
    """
    def attend(q, k, v, *, bias=None, mask=None, causal=False, segment_ids=None, scale=None):
        if bias is not None:
            raise NotImplementedError("blockwise attention takes no additive bias")
        if v.shape[-1] != q.shape[-1]:
            raise NotImplementedError("blockwise attention needs values with the queries' head_dim")
        if not (q.dtype == k.dtype == v.dtype) or q.dtype not in blockwise.common.DTYPES:
            raise NotImplementedError(f"blockwise attention takes one dtype of "
                                      f"{[str(t) for t in blockwise.common.DTYPES]}")
        if q.shape[-1] > blockwise.common.MAX_HEAD_DIM:
            raise NotImplementedError(f"blockwise attention takes head_dim <= {blockwise.common.MAX_HEAD_DIM}")
        pair = _segment_pair(q, k, mask, segment_ids)

        def kernel(q, k, v, pair):
            return blockwise.blockwise_attention(q, k, v, causal=causal, segment_ids=pair,
                                                 sm_scale=scale, implementation=implementation)
        if sharded:
            in_axes = (Q_AXES, KV_AXES, KV_AXES, (SEGMENT_AXES, SEGMENT_AXES))
            return dispatch.per_shard(kernel, (q, k, v, pair), in_axes, Q_AXES)
        return kernel(q, k, v, pair)
    return attend


def _segment_pair(q, k, mask, segment_ids):
    """(q_segments, kv_segments), with a key-padding mask folded in, or None when unmasked."""
    if segment_ids is not None and not isinstance(segment_ids, tuple):
        segment_ids = (segment_ids, segment_ids)
    if mask is None:
        return segment_ids
    if mask.shape[1] != 1 or mask.shape[2] != 1:
        raise NotImplementedError("blockwise attention takes only key-padding masks [batch|1, 1, 1, kv_len]")
    b, lq, lk = q.shape[0], q.shape[1], k.shape[1]
    kv_valid = jnp.broadcast_to(mask[:, 0, 0, :].astype(bool), (b, lk))
    if segment_ids is None:
        return jnp.zeros((b, lq), jnp.int32), jnp.where(kv_valid, 0, -1).astype(jnp.int32)
    qs, ks = (x.astype(jnp.int32) for x in segment_ids)
    # A masked key gets an id that no query has.
    return qs, jnp.where(kv_valid, ks, jnp.min(qs) - 1)


# Below this many score entries (q_len * kv_len) dense XLA is as fast and compiles faster.
BLOCKWISE_MIN_SCORES = 1024 * 1024


_xla_blockwise = _blockwise("xla")


def _xla_attention(q, k, v, **kwargs):
    """Blockwise for long sequences (O(length) memory; causal skips masked tiles), else dense."""
    if q.shape[1] * k.shape[1] >= BLOCKWISE_MIN_SCORES:
        try:
            return _xla_blockwise(q, k, v, **kwargs)
        except NotImplementedError:
            pass
    return _dense_attention(q, k, v, **kwargs)


def _attention_key(q, k, v, *, causal=False, **_):
    return blockwise.table_key(q, k, bool(causal))


ATTENTION = Op("attention", check=_check_shapes, table_key=_attention_key,
               doc="softmax(q·kᵀ·scale + bias, masked)·v on [batch, length, heads, head_dim]")
ATTENTION.register("xla_dense", _dense_attention)
ATTENTION.register("xla_blockwise", _xla_blockwise)
ATTENTION.register("reference", _blockwise("reference"))
ATTENTION.register("xla", _xla_attention)
# Registered slowest first: newest first is the GPU default order without a table entry.
ATTENTION.register("pallas_gpu", _blockwise("pallas_gpu", sharded=True), platforms=("gpu",))
ATTENTION.register("pallas_mosaic_gpu", _blockwise("pallas_mosaic_gpu", sharded=True), platforms=("gpu",))
ATTENTION.register("cudnn", _blockwise("cudnn", sharded=True), platforms=("gpu",))
ATTENTION.register("pallas_tpu", _blockwise("pallas_tpu", sharded=True), platforms=("tpu",))


def implementations() -> tuple[str, ...]:
    return ATTENTION.names()


def dot_product_attention(q: Array, k: Array, v: Array, *, bias: Optional[Array] = None,
                          mask: Optional[Array] = None, causal: bool = False,
                          segment_ids=None, scale: Optional[float] = None,
                          implementation: Optional[str] = None) -> Array:
    """softmax(q·kᵀ·scale + bias, masked) · v.

    Args:
      q: [batch, q_len, heads, head_dim]; k, v: [batch, kv_len, kv_heads, head_dim] where heads is
        a multiple of kv_heads (grouped-query attention).
      bias: additive, broadcastable to [batch, heads, q_len, kv_len].
      mask: boolean, broadcastable to [batch, heads, q_len, kv_len]; True means attend.
      causal: query i attends key j only if j <= i + kv_len - q_len.
      segment_ids: int [batch, length] (shared) or a (q_segments, kv_segments) pair; tokens attend
        only within their segment.
      scale: defaults to head_dim ** -0.5.
      implementation: None picks the fastest correct one here (the dispatch table, else the
        platform's default order) and falls through to 'xla' on NotImplementedError; a name forces
        that implementation.
    Returns:
      [batch, q_len, heads, v's head_dim] in q's dtype. Queries with no visible key give zeros.
    """
    return ATTENTION(q, k, v, bias=bias, mask=mask, causal=causal, segment_ids=segment_ids, scale=scale,
                     implementation=implementation)


def _dense_decode(q, k_cache, v_cache, lengths, *, scale=None):
    keep = (jnp.arange(k_cache.shape[1])[None, :] < lengths[:, None])[:, None, None, :]
    return _dense_attention(q[:, None], k_cache, v_cache, mask=keep, scale=scale)[:, 0]


def _lean(implementation: str) -> Callable[..., Array]:
    """kernels_pallas.lean_decode_attention's `implementation`, per (batch, heads) shard under a
    mesh: its schedule flattens work across sequences and heads, which XLA could not split (and a
    Pallas call not at all)."""
    def attend(q, k_cache, v_cache, lengths, *, scale=None):
        def kernel(q, k_cache, v_cache, lengths):
            return lean.lean_decode_attention(q, k_cache, v_cache, lengths, sm_scale=scale,
                                              implementation=implementation)
        q_axes = (axes.ACT_BATCH, axes.ACT_HEADS, None)  # q has no length axis
        return dispatch.per_shard(kernel, (q, k_cache, v_cache, lengths), (q_axes, KV_AXES, KV_AXES, (axes.ACT_BATCH,)),
                         q_axes)
    return attend


def _check_decode(q, k_cache, v_cache, lengths, *, scale=None):
    lean.common.check_inputs(q, k_cache, v_cache, lengths, scale)


def _decode_key(q, k_cache, v_cache, lengths, **_):
    return lean.table_key(q, k_cache)


DECODE = Op("decode_attention", check=_check_decode, table_key=_decode_key,
            doc="one query token per sequence against the first lengths[b] tokens of its KV cache")
DECODE.register("xla_dense", _dense_decode)
DECODE.register("reference", _lean("reference"))
DECODE.register("xla", _lean("xla"))
DECODE.register("pallas_gpu", _lean("pallas_gpu"), platforms=("gpu",))  # slowest first, as ATTENTION
DECODE.register("pallas_mosaic_gpu", _lean("pallas_mosaic_gpu"), platforms=("gpu",))
DECODE.register("cudnn", _lean("cudnn"), platforms=("gpu",))
DECODE.register("pallas_tpu", _lean("pallas_tpu"), platforms=("tpu",))


def decode_attention(q: Array, k_cache: Array, v_cache: Array, lengths: Array, *,
                     scale: Optional[float] = None, implementation: Optional[str] = None) -> Array:
    """One new token per sequence against its KV cache: the decode step of generation.

    Args:
      q: [batch, q_heads, head_dim]; k_cache, v_cache: [batch, max_len, kv_heads, head_dim].
      lengths: int [batch], the cached tokens each query sees (its own included).
      scale: defaults to head_dim ** -0.5.
      implementation: None (the fastest correct kernel here, falling through to 'xla') or one of
        DECODE.names(): the lean kernel package's xla/reference/pallas_*/cudnn, or xla_dense.
    Returns:
      [batch, q_heads, head_dim] in q's dtype.
    """
    return DECODE(q, k_cache, v_cache, lengths, scale=scale, implementation=implementation)
