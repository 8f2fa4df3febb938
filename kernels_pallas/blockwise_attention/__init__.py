"""Blockwise (flash-style) attention: exact softmax attention in O(length) memory.

    from kernels_pallas.blockwise_attention import blockwise_attention, explain
    out = blockwise_attention(q, k, v, causal=True)          # the fastest correct one here
    print(explain(q, k, v, causal=True))                     # which one that is, and why

Implementations (all differentiable, all checked against `reference`):
  reference          dense, float32 math; the test oracle (O(q_len * kv_len) memory)
  xla                blockwise online softmax in plain XLA, custom_vjp with recomputation; runs anywhere
  pallas_tpu         Pallas Mosaic TPU kernels (forward, dq, dk/dv)
  pallas_gpu         Pallas with the Triton lowering (forward, dq, dk/dv)
  pallas_mosaic_gpu  Pallas Mosaic GPU kernels for Hopper (warp-specialised forward, 5-matmul
                     backward; bf16/f16, head_dim 64 or 128)
  cudnn              jax.nn.dot_product_attention(implementation="cudnn"), for the inputs it
                     computes exactly with these conventions (cudnn.py)
`implementation=None` follows the dispatch table's measured order for this device, dtype,
head_dim and `bucket` (kernels_pallas/_dispatch.py), else the platform's PREFERENCE (GPU: cudnn,
pallas_mosaic_gpu, pallas_gpu, xla), falling through on NotImplementedError (an input a kernel
does not take) and past unavailable modules to `xla`; a named implementation is used as asked.
`interpret=True` runs a Pallas kernel in interpret mode on CPU (TPU interpret mode for
pallas_tpu, GPU interpret mode for pallas_mosaic_gpu), which is how the tests check the kernels' arithmetic without the hardware.
"""
from __future__ import annotations

from typing import Optional

import jax

from kernels_pallas import _dispatch
from kernels_pallas.blockwise_attention.common import BlockSizes, check_inputs

__all__ = ["blockwise_attention", "explain", "bucket", "BlockSizes", "IMPLEMENTATIONS", "PREFERENCE",
           "TABLE_OP"]

IMPLEMENTATIONS = _dispatch.check_names(__name__, ("reference", "xla", "pallas_tpu", "pallas_gpu",
                                                   "pallas_mosaic_gpu", "cudnn"))
PREFERENCE = dict(_dispatch.ATTENTION_PREFERENCE)
TABLE_OP = "blockwise_attention"  # this op's name in the dispatch table


def bucket(q_len: int, kv_len: int, causal: bool) -> str:
    """The dispatch table's shape bucket: the mask kind and both lengths rounded up to powers of
    two. Batch and heads are left out: they multiply every implementation's work alike (occupancy
    aside), and the benchmarks hold tokens fixed, so a bucket with them would miss other batches."""
    return f"{'causal' if causal else 'full'}/q{_dispatch.pow2_bucket(q_len)}/kv{_dispatch.pow2_bucket(kv_len)}"


def table_key(q, k, causal: bool) -> _dispatch.TableKey:
    return _dispatch.table_key(TABLE_OP, q.dtype, q.shape[-1], bucket(q.shape[1], k.shape[1], causal))


def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False,
                        segment_ids=None, sm_scale: Optional[float] = None,
                        block_sizes: Optional[BlockSizes] = None,
                        implementation: Optional[str] = None, interpret: bool = False) -> jax.Array:
    """softmax(q·kᵀ·sm_scale, masked)·v, computed block by block.

    Args:
      q: [batch, q_len, q_heads, head_dim]; k, v: [batch, kv_len, kv_heads, head_dim], with
        q_heads a multiple of kv_heads. Any lengths; head_dim up to 256; float32, bfloat16 or
        float16 (all three the same).
      causal: query i sees key j iff j <= i + kv_len - q_len (queries aligned to the end).
      segment_ids: None or (q_segment_ids [batch, q_len], kv_segment_ids [batch, kv_len]) of
        ints; a query sees only keys of its own segment (packed sequences).
      sm_scale: logit scale; defaults to head_dim ** -0.5.
      block_sizes: tile sizes (BlockSizes); None fields take the implementation's defaults.
      implementation: one of IMPLEMENTATIONS, or None for the fastest correct one (`explain`).
      interpret: run a Pallas implementation in interpret mode (CPU checking).
    Returns:
      [batch, q_len, q_heads, head_dim] in q's dtype; queries that see no key give zeros.
    """
    qs, ks, scale = check_inputs(q, k, v, segment_ids, sm_scale)
    if block_sizes is not None and not isinstance(block_sizes, BlockSizes):
        raise ValueError(f"block_sizes must be a BlockSizes or None; got {type(block_sizes).__name__}")
    kwargs = dict(causal=bool(causal), q_segment_ids=qs, kv_segment_ids=ks, sm_scale=scale,
                  block_sizes=block_sizes, interpret=interpret)
    return _dispatch.dispatch(__name__, IMPLEMENTATIONS, PREFERENCE, implementation, q, k, v,
                              table_key=table_key(q, k, bool(causal)), **kwargs)


def explain(q, k, v, **kwargs) -> _dispatch.Explanation:
    """Which implementation blockwise_attention(q, k, v, **kwargs) would run, and why (the table
    entry and its measured times, or the default order; each candidate skipped and its reason).
    Traced with jax.eval_shape: nothing runs, and q, k, v may be jax.ShapeDtypeStruct."""
    return _dispatch.explain(blockwise_attention, q, k, v, **kwargs)
