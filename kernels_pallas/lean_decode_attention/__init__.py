"""Lean decode attention (LeanAttention, stream-K): one query token per sequence against its KV
cache, with the work split into equal shares of valid cache tiles over a fixed number of programs
(see common.py for the schedule and the log-sum-exp merge).

    from kernels_pallas.lean_decode_attention import lean_decode_attention, explain
    out = lean_decode_attention(q, k_cache, v_cache, lengths)     # q [batch, q_heads, head_dim]
    print(explain(q, k_cache, v_cache, lengths))                  # which implementation, and why

Implementations: `reference` (dense, the oracle), `xla` (the same schedule in plain XLA: programs
advance in lockstep, one tile each per step; runs anywhere), `pallas_gpu` (Triton: one program per
share, looping over its tiles), `pallas_tpu` (Mosaic: a (programs, ceil(units / programs)) grid
whose step count follows the lengths, driven by the scalar-prefetched schedule),
`pallas_mosaic_gpu` (Mosaic GPU, Hopper: a producer warpgroup's TMA ring feeding a wgmma consumer
per program, then a small merge kernel) and `cudnn` (jax.nn.dot_product_attention with
key_value_seq_lengths, cudnn.py).
`implementation=None` follows the dispatch table's measured order for this device, dtype,
head_dim and `bucket`, else the platform's PREFERENCE (GPU: cudnn, pallas_mosaic_gpu, pallas_gpu,
xla), falling through on NotImplementedError and past unavailable modules to `xla`.
Not differentiable: decoding needs no gradients.
"""
from __future__ import annotations

from typing import Optional

import jax

from kernels_pallas import _dispatch
from kernels_pallas.lean_decode_attention.common import check_inputs

__all__ = ["lean_decode_attention", "explain", "bucket", "IMPLEMENTATIONS", "PREFERENCE", "TABLE_OP",
           "default_num_programs"]

IMPLEMENTATIONS = _dispatch.check_names(__name__, ("reference", "xla", "pallas_gpu", "pallas_tpu",
                                                   "pallas_mosaic_gpu", "cudnn"))
PREFERENCE = dict(_dispatch.ATTENTION_PREFERENCE)
TABLE_OP = "lean_decode_attention"  # this op's name in the dispatch table


def bucket(batch: int, max_len: int) -> str:
    """The dispatch table's shape bucket: batch and cache length rounded up to powers of two. How
    ragged the lengths are is a value, unknown when the choice is made (at trace time)."""
    return f"b{_dispatch.pow2_bucket(batch)}/len{_dispatch.pow2_bucket(max_len)}"


def table_key(q, k_cache) -> _dispatch.TableKey:
    return _dispatch.table_key(TABLE_OP, q.dtype, q.shape[-1], bucket(q.shape[0], k_cache.shape[1]))


def default_num_programs(platform: Optional[str] = None) -> int:
    """A small multiple of the chip's parallel cores, independent of batch and length: two
    programs per SM on a GPU (its core_count), otherwise 8."""
    device = jax.devices(platform)[0] if platform else jax.devices()[0]
    cores = getattr(device, "core_count", None)
    return 2 * int(cores) if device.platform == "gpu" and cores else 8


def lean_decode_attention(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, lengths: jax.Array, *,
                          sm_scale: Optional[float] = None, block_k: Optional[int] = None,
                          num_programs: Optional[int] = None, implementation: Optional[str] = None,
                          interpret: bool = False) -> jax.Array:
    """softmax(q·kᵀ·sm_scale over the first lengths[b] cached tokens)·v, per sequence.

    Args:
      q: [batch, q_heads, head_dim], one token per sequence.
      k_cache, v_cache: [batch, max_len, kv_heads, head_dim]; q_heads a multiple of kv_heads.
      lengths: int [batch], valid tokens per sequence, 0..max_len (values outside are clipped;
        0 gives zeros).
      sm_scale: defaults to head_dim ** -0.5.
      block_k: cached tokens per work unit (None: the implementation's default).
      num_programs: programs sharing the work (None: `default_num_programs()`).
      implementation: one of IMPLEMENTATIONS or None (the fastest correct one, `explain`);
        interpret: Pallas interpret mode.
    Returns:
      [batch, q_heads, head_dim] in q's dtype.
    """
    scale = check_inputs(q, k_cache, v_cache, lengths, sm_scale)
    for name, value in (("block_k", block_k), ("num_programs", num_programs)):
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ValueError(f"{name} must be a positive int or None; got {value!r}")
    kwargs = dict(sm_scale=scale, block_k=block_k,
                  num_programs=num_programs or default_num_programs(), interpret=interpret)
    return _dispatch.dispatch(__name__, IMPLEMENTATIONS, PREFERENCE, implementation, q, k_cache, v_cache, lengths,
                              table_key=table_key(q, k_cache), **kwargs)


def explain(q, k_cache, v_cache, lengths, **kwargs) -> _dispatch.Explanation:
    """Which implementation lean_decode_attention(q, k_cache, v_cache, lengths, **kwargs) would
    run, and why; traced with jax.eval_shape (nothing runs; arrays may be ShapeDtypeStructs)."""
    return _dispatch.explain(lean_decode_attention, q, k_cache, v_cache, lengths, **kwargs)
