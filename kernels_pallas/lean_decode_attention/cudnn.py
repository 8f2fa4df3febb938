"""cuDNN's fused attention for decoding: one query token per sequence against the first lengths[b]
cached tokens, as `jax.nn.dot_product_attention(q[:, None], k_cache, v_cache,
key_value_seq_lengths=lengths, implementation="cudnn")`.

Exact with our conventions: the padding mask keeps keys j < lengths[b] and the single query sees
all of them (no causal alignment question with one token). Lengths are clipped to [0, max_len] as
every implementation does. A zero-length sequence has no key at all; what cuDNN returns for such a
row (its softmax over an empty set) is not ours to rely on, so those rows are set to zeros, the
package's convention. Refused with NotImplementedError, as in blockwise_attention.cudnn: float32,
head_dim not a multiple of 8 or above cuDNN's maximum, interpret=True; RuntimeError without a GPU.
`block_k` and `num_programs` shape the lean schedule, which cuDNN does not use.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels_pallas.blockwise_attention.cudnn import require_gpu, unsupported

__all__ = ["attention"]


def attention(q, k_cache, v_cache, lengths, *, sm_scale: float, block_k=None, num_programs=None,
              interpret: bool = False):
    """cuDNN decode attention; NotImplementedError for what it cannot take, RuntimeError without a GPU."""
    del block_k, num_programs  # the lean schedule's; cuDNN has its own
    why = unsupported(q.dtype, q.shape[-1], interpret)
    if why:
        raise NotImplementedError(f"cudnn: {why}")
    require_gpu()
    return _attention(q, k_cache, v_cache, lengths, sm_scale=sm_scale)


def _attention(q, k_cache, v_cache, lengths, *, sm_scale: float):
    """The call itself (the tests lower it for CUDA without a GPU)."""
    n = jnp.clip(lengths.astype(jnp.int32), 0, k_cache.shape[1])
    out = jax.nn.dot_product_attention(q[:, None], k_cache, v_cache, scale=sm_scale,
                                       key_value_seq_lengths=n, implementation="cudnn")[:, 0]
    return jnp.where((n > 0)[:, None, None], out, jnp.zeros((), out.dtype))
