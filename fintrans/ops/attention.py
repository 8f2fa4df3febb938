"""The one entry point through which layers get attention.

`dot_product_attention` validates shapes, then tries implementations in order of preference for
the platform, falling through on NotImplementedError to 'xla', which always works. Kernels from
kernels_pallas register themselves here as they land.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

Array = jax.Array

# name -> function(q, k, v, *, bias, mask, causal, segment_ids, scale) -> out
_IMPLEMENTATIONS: dict[str, Callable[..., Array]] = {}
# platform -> names tried in order when implementation=None ('xla' is always appended).
_PREFERENCE: dict[str, tuple[str, ...]] = {"cpu": (), "gpu": (), "tpu": ()}


def register(name: str, fn: Callable[..., Array], platforms: tuple[str, ...] = ()) -> None:
    """Adds an implementation, preferred over those registered before it on `platforms`."""
    _IMPLEMENTATIONS[name] = fn
    for p in platforms:
        _PREFERENCE[p] = (name,) + tuple(n for n in _PREFERENCE.get(p, ()) if n != name)


def implementations() -> tuple[str, ...]:
    return tuple(_IMPLEMENTATIONS)


def _check_shapes(q, k, v, bias, mask, segment_ids):
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


def _xla_attention(q, k, v, *, bias=None, mask=None, causal=False, segment_ids=None, scale=None):
    """Dense attention in XLA: float32 logits and softmax, output in q's dtype."""
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
    probs = jax.nn.softmax(logits, axis=-1)
    if keep is not None:
        # A query that may see no key at all (a padding row) gets zeros, not a uniform average.
        probs = jnp.where(jnp.any(keep, axis=-1, keepdims=True), probs, 0.0)
    probs = probs.reshape(b, hkv, groups, lq, lk).astype(v.dtype)
    out = jnp.einsum("bhgqk,bkhd->bqhgd", probs, v, preferred_element_type=jnp.float32)
    return out.reshape(b, lq, hq, v.shape[-1]).astype(q.dtype)


register("xla", _xla_attention)


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
      implementation: None picks the best for the platform and falls through to 'xla' on
        NotImplementedError; a name forces that implementation.
    Returns:
      [batch, q_len, heads, v's head_dim] in q's dtype. Queries with no visible key give zeros.
    """
    _check_shapes(q, k, v, bias, mask, segment_ids)
    kwargs = dict(bias=bias, mask=mask, causal=causal, segment_ids=segment_ids, scale=scale)
    if implementation is not None:
        if implementation not in _IMPLEMENTATIONS:
            raise ValueError(f"unknown attention implementation {implementation!r}; "
                             f"choose from {sorted(_IMPLEMENTATIONS)} or None")
        return _IMPLEMENTATIONS[implementation](q, k, v, **kwargs)
    platform = jax.default_backend()
    for name in _PREFERENCE.get(platform, ()) + ("xla",):
        try:
            return _IMPLEMENTATIONS[name](q, k, v, **kwargs)
        except NotImplementedError:
            continue
    raise AssertionError("unreachable: xla attention always works")
