"""cuDNN's fused flash attention, `jax.nn.dot_product_attention(implementation="cudnn")`, behind this
package's signature, for exactly the inputs on which it computes what our conventions define.

Everything else raises NotImplementedError naming the reason, so implementation=None falls through
to the next candidate, and a named `cudnn` says why it cannot:
  - segment ids: cuDNN's packed layout takes per-segment offsets and lengths, not per-token ids
    (and a key-padding mask folded into ids is value-dependent);
  - causal with q_len != kv_len: jax's is_causal is aligned to the top left (query i sees keys
    j <= i), ours to the end (j <= i + kv_len - q_len); the two agree when the lengths are equal;
  - float32: cuDNN's flash attention takes bfloat16 and float16;
  - head_dim not a multiple of 8, or above cuDNN's maximum (128; 256 from Hopper on);
  - interpret=True: it is not a Pallas kernel, so there is nothing to interpret.
Without a GPU, or on a GPU that is not NVIDIA's, it raises RuntimeError / NotImplementedError
(dispatch only tries it on GPUs). Tile sizes (block_sizes) are the Pallas kernels'; cuDNN picks
its own. Differentiable: jax's cuDNN path has its own backward kernel (a custom VJP). With neither
segment ids nor end-aligned masks every query sees a key, so the zero-row convention never arises.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

__all__ = ["attention"]

DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def cuda_capability(device=None) -> Optional[tuple[int, int]]:
    """(major, minor) of an NVIDIA GPU, else None (a CPU, TPU or ROCm device)."""
    device = device or jax.devices()[0]
    if device.platform != "gpu":
        return None
    try:
        return tuple(int(x) for x in str(device.compute_capability).split(".")[:2])
    except (AttributeError, ValueError):  # ROCm reports a gfx name
        return None


def max_head_dim() -> int:
    """cuDNN's largest head_dim here: 256 from Hopper (sm90) on, else 128 (also off a GPU, as
    jax's own check assumes when it lowers without one)."""
    cc = cuda_capability()
    return 256 if cc is not None and cc >= (9, 0) else 128


def unsupported(dtype, head_dim: int, interpret: bool) -> Optional[str]:
    """Why cuDNN cannot take these inputs (shared with lean_decode_attention.cudnn), or None."""
    if interpret:
        return "interpret=True runs Pallas kernels; cuDNN is not one"
    if jnp.dtype(dtype) not in DTYPES:
        return f"cuDNN flash attention takes bfloat16 and float16, not {jnp.dtype(dtype).name}"
    limit = max_head_dim()
    if head_dim % 8 or head_dim > limit:
        return f"cuDNN takes head_dim a multiple of 8 up to {limit} on this device; got {head_dim}"
    return None


def require_gpu() -> None:
    backend = jax.default_backend()
    if backend != "gpu":
        raise RuntimeError(f"cudnn runs cuDNN's fused attention on an NVIDIA GPU, but jax's backend is "
                           f"{backend!r}; use implementation=None or 'xla' here")
    if cuda_capability() is None:
        raise NotImplementedError(f"cudnn needs an NVIDIA GPU; this one is {jax.devices()[0].device_kind!r}")


def attention(q, k, v, *, causal: bool, q_segment_ids, kv_segment_ids, sm_scale: float,
              block_sizes=None, interpret: bool = False):
    """cuDNN attention with this package's conventions; see the module docstring for what it
    refuses (NotImplementedError) and RuntimeError without a GPU."""
    del block_sizes  # the Pallas kernels' tiles; cuDNN chooses its own
    if q_segment_ids is not None or kv_segment_ids is not None:
        raise NotImplementedError("cudnn takes no segment ids (cuDNN packs sequences by offsets, not ids)")
    if causal and q.shape[1] != k.shape[1]:
        raise NotImplementedError(
            f"cudnn: jax's causal mask is aligned to the top left, ours to the end; they agree only "
            f"when q_len == kv_len (got {q.shape[1]} and {k.shape[1]})")
    why = unsupported(q.dtype, q.shape[-1], interpret)
    if why:
        raise NotImplementedError(f"cudnn: {why}")
    require_gpu()
    return _attention(q, k, v, causal=causal, sm_scale=sm_scale)


def _attention(q, k, v, *, causal: bool, sm_scale: float):
    """The call itself (the tests lower it for CUDA without a GPU)."""
    return jax.nn.dot_product_attention(q, k, v, scale=sm_scale, is_causal=causal, implementation="cudnn")
