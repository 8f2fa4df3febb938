"""Multi-head attention: self and cross, grouped-query heads, masks, rotary positions, KV cache,
and attention patterns (full, local window, top-k, FlatFormer's window groups).

The attention arithmetic itself is a fintrans.ops op chosen by the pattern (AttentionPattern.op);
this layer only projects, positions, caches and masks.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from fintrans import axes
from fintrans.layers.dense import Dense
from fintrans.layers.embeddings import apply_rotary
from fintrans.ops import flat_window
from fintrans.ops.attention import decode_attention, dot_product_attention
from fintrans.ops.patterns import AttentionPattern, local_attention, topk_attention


def padding_mask(q_valid: jax.Array, kv_valid: Optional[jax.Array] = None) -> jax.Array:
    """[batch, q_len] and [batch, kv_len] validity (True = real token) -> [batch, 1, q_len, kv_len]."""
    kv_valid = q_valid if kv_valid is None else kv_valid
    return (q_valid[:, None, :, None] & kv_valid[:, None, None, :]).astype(bool)


class MultiHeadAttention(nn.Module):
    """Projects to heads, attends through fintrans.ops, projects back.

    With `decode=True` keys and values are kept in the 'cache' collection: initialise with an
    input of the maximum length (which sizes the cache), then call with chunks of new tokens and
    `mutable=['cache']`; each query attends to everything cached so far and itself (causally).

    `pattern` picks which keys a query sees and so the op: full (`attention`; one-token decode
    steps use `decode_attention`), local (`local_attention`), topk (`topk_attention`) or grouped
    (`grouped_attention` within the window groups of the `groups` plan passed at call time).
    `attention_impl` names that op's implementation (None: the platform's best) and is used as
    named, decoding included.
    """
    num_heads: int
    head_dim: int
    num_kv_heads: Optional[int] = None  # None: as many as query heads (multi-head attention)
    out_features: Optional[int] = None
    use_bias: bool = True
    rotary: bool = False
    rotary_base: float = 10_000.0
    dropout_rate: float = 0.0  # applied to the output projection
    attention_impl: Optional[str] = None
    pattern: AttentionPattern = AttentionPattern()
    decode: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: Optional[jax.Array] = None, *,
                 mask: Optional[jax.Array] = None, bias: Optional[jax.Array] = None, causal: bool = False,
                 segment_ids=None, positions: Optional[jax.Array] = None,
                 qk_offset: Optional[jax.Array] = None, groups: Optional[flat_window.GroupPlan] = None,
                 deterministic: bool = True) -> jax.Array:
        """x: [batch, length, features]; context: the keys' and values' source (default x).

        qk_offset: added to the inputs of the query and key projections only (not the values'),
          e.g. a position encoding as FlatFormer adds it; broadcastable to x (and context).
        groups: the flat_window.GroupPlan the grouped pattern attends within (required by it).
        """
        kv_heads = self.num_kv_heads or self.num_heads
        if self.num_heads % kv_heads:
            raise ValueError(f"{self.name}: num_heads={self.num_heads} is not a multiple of num_kv_heads={kv_heads}")
        if self.decode and context is not None:
            raise ValueError(f"{self.name}: the KV cache is for self-attention; cross-attention keys are static")
        context = x if context is None else context
        self._check_pattern_inputs(mask, bias, causal, segment_ids, groups, context is x)
        q_in, k_in = x, context
        if qk_offset is not None:
            q_in, k_in = x + qk_offset.astype(x.dtype), context + qk_offset.astype(context.dtype)
        proj = lambda heads, in_axes, out_axes, name: Dense(
            (heads, self.head_dim), in_axes, out_axes, use_bias=self.use_bias, dtype=self.dtype,
            param_dtype=self.param_dtype, name=name)
        q = proj(self.num_heads, (axes.EMBED,), (axes.HEADS, axes.HEAD_DIM), "query")(q_in)
        k = proj(kv_heads, (axes.EMBED,), (axes.KV_HEADS, axes.HEAD_DIM), "key")(k_in)
        v = proj(kv_heads, (axes.EMBED,), (axes.KV_HEADS, axes.HEAD_DIM), "value")(context)
        q = nn.with_logical_constraint(q, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_HEADS, axes.ACT_HEAD_DIM))
        kv_spec = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_KV_HEADS, axes.ACT_HEAD_DIM)
        k, v = nn.with_logical_constraint(k, kv_spec), nn.with_logical_constraint(v, kv_spec)

        cache_lengths = None
        if self.decode:
            user_mask = mask
            q, k, v, mask, positions, cache_lengths = self._use_cache(q, k, v, mask, positions)
            causal, segment_ids = False, None  # the cache mask already encodes causality
            if q.shape[1] != 1 or user_mask is not None or bias is not None or self.pattern.kind != "full":
                cache_lengths = None  # only a lone new token without extra masks takes the lean path
        if self.rotary:
            b, lq = q.shape[:2]
            if positions is None:
                positions = jnp.broadcast_to(jnp.arange(lq), (b, lq))
            kv_positions = positions if k.shape[1] == lq else jnp.broadcast_to(jnp.arange(k.shape[1]), k.shape[:2])
            q = apply_rotary(q, positions, base=self.rotary_base)
            if not self.decode:  # cached keys were rotated when written
                k = apply_rotary(k, kv_positions, base=self.rotary_base)

        impl = self.attention_impl
        if cache_lengths is not None:
            # Generating: one token per sequence against the cache (lean stream-K decode attention).
            out = decode_attention(q[:, 0], k, v, cache_lengths, implementation=impl)[:, None]
        elif self.pattern.kind == "grouped":
            out = self._grouped(q, k, v, groups)
        elif self.pattern.kind == "local":
            if self.decode and mask is not None:  # the cache mask is per query: fold the band into it
                band = self._decode_band(positions, k.shape[1])
                out = dot_product_attention(q, k, v, mask=mask & band, implementation=impl)
            else:
                if causal:
                    raise ValueError(f"{self.name}: a local pattern is causal through its window "
                                     f"(left, 0), not causal=True")
                out = local_attention(q, k, v, window=self.pattern.window, mask=mask, segment_ids=segment_ids,
                                      implementation=impl)
        elif self.pattern.kind == "topk":
            out = topk_attention(q, k, v, top_k=self.pattern.top_k, bias=bias, mask=mask, causal=causal,
                                 segment_ids=segment_ids, implementation=impl)
        else:
            out = dot_product_attention(q, k, v, bias=bias, mask=mask, causal=causal, segment_ids=segment_ids,
                                        implementation=impl)
        out = Dense(self.out_features or x.shape[-1], (axes.HEADS, axes.HEAD_DIM), (axes.EMBED,),
                    use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype, name="out")(out)
        return nn.Dropout(self.dropout_rate)(out, deterministic=deterministic)

    def _check_pattern_inputs(self, mask, bias, causal, segment_ids, groups, self_attention) -> None:
        kind = self.pattern.kind
        if kind == "grouped":
            if groups is None:
                raise ValueError(f"{self.name}: the grouped pattern needs groups= (a flat_window.GroupPlan)")
            inputs = (("mask", mask), ("bias", bias), ("segment_ids", segment_ids), ("causal", causal),
                      ("decode", self.decode), ("context", not self_attention))
            given = [n for n, v in inputs if v is not None and v is not False]
            if given:
                raise ValueError(f"{self.name}: the grouped pattern is self-attention within whole groups; it takes "
                                 f"no mask, bias, segment ids, causality, cache or context (got {given})")
        elif groups is not None:
            raise ValueError(f"{self.name}: groups= is for the grouped pattern, not {kind!r}")
        if kind == "local" and bias is not None:
            raise ValueError(f"{self.name}: the local pattern takes no additive bias")
        if kind == "grouped" and self.rotary:
            raise ValueError(f"{self.name}: the grouped pattern takes no rotary positions (use qk_offset)")

    def _grouped(self, q, k, v, plan):
        """Attention within the plan's window groups: tokens are gathered into [groups, group_size,
        heads, head_dim], attend, and are scattered back."""
        b, n = q.shape[:2]
        spec = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_HEADS, axes.ACT_HEAD_DIM)  # groups as the batch
        q, k, v = (nn.with_logical_constraint(flat_window.group_tokens(t.reshape((b * n,) + t.shape[2:]), plan),
                                              spec) for t in (q, k, v))
        out = flat_window.grouped_attention(q, k, v, implementation=self.attention_impl)
        return flat_window.ungroup_tokens(out, plan).reshape((b, n) + out.shape[2:])

    def _decode_band(self, positions, max_len):
        """[batch, 1, chunk, max_len]: the cached keys inside each query's local window."""
        left, right = self.pattern.window
        j = jnp.arange(max_len)[None, None, :]
        return ((j >= positions[:, :, None] - left) & (j <= positions[:, :, None] + right))[:, None]

    def _use_cache(self, q, k, v, mask, positions):
        """Writes this chunk's keys/values at each sequence's cache index; returns the full cache to
        attend to, its mask and, for the lean decode path, each sequence's cached length (None
        while initialising).

        The index is per sequence, so a batch of prompts of different lengths decodes together:
        `generate` sets each index to its prompt's length after the prefill, and the next token
        overwrites whatever the padding left behind (queries never see keys past themselves).
        """
        initialising = not self.has_variable("cache", "cached_key")
        cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
        cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
        b, chunk = q.shape[:2]
        index = self.variable("cache", "cache_index", lambda: jnp.zeros((b,), jnp.int32))
        max_len = cached_k.value.shape[1]
        start = index.value  # [batch]
        query_pos = start[:, None] + jnp.arange(chunk)  # [batch, chunk]
        positions = query_pos if positions is None else positions
        if initialising:
            return q, k, v, mask, positions, None
        if chunk > max_len:
            raise ValueError(f"{self.name}: chunk of {chunk} tokens exceeds the cache length {max_len}")
        if self.rotary:
            k = apply_rotary(k, positions, base=self.rotary_base)
        # mode="drop": a write past max_len is dropped, never shifted onto earlier tokens.
        rows = jnp.arange(b)[:, None]
        cached_k.value = cached_k.value.at[rows, query_pos].set(k.astype(cached_k.value.dtype), mode="drop")
        cached_v.value = cached_v.value.at[rows, query_pos].set(v.astype(cached_v.value.dtype), mode="drop")
        index.value = start + chunk
        visible = (jnp.arange(max_len)[None, None, :] <= query_pos[:, :, None])[:, None]  # [b, 1, chunk, max_len]
        mask = visible if mask is None else visible & mask
        return q, cached_k.value, cached_v.value, mask, positions, start + chunk
