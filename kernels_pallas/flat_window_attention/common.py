"""What every flattened-window (FlatFormer) grouped-attention implementation shares: conventions
and input checks.

Conventions all implementations follow (so they agree with `reference.py`):
- q, k, v, out: [num_groups, group_size, heads, head_dim] (the [batch, length, heads, head_dim]
  layout with batch = groups); all three the same shape and dtype;
- full (non-causal) softmax attention within each group, nothing across groups; no masks: the
  grouping pads each sample's last group with copies of its own tokens (grouping.py), so every slot is real;
- softmax statistics and accumulation in float32 (float64 for float64 inputs in the reference);
  the output takes q's dtype;
- group_size 1..MAX_GROUP_SIZE and head_dim 1..MAX_HEAD_DIM: a group is small enough to sit whole
  in fast memory (a kernel needs no online softmax across key tiles).
"""
from __future__ import annotations

import jax.numpy as jnp

MAX_GROUP_SIZE = 1024
MAX_HEAD_DIM = 256
DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
# The reference (the test oracle) also takes float64 inputs under jax's x64 mode.
REFERENCE_DTYPES = DTYPES + (jnp.dtype(jnp.float64),)


def check_inputs(q, k, v, sm_scale, *, dtypes=REFERENCE_DTYPES) -> float:
    """Raises ValueError naming the problem; returns the logit scale (head_dim ** -0.5 if None)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if getattr(x, "ndim", None) != 4:
            raise ValueError(f"grouped_attention expects {name} as [num_groups, group_size, heads, "
                             f"head_dim]; got shape {getattr(x, 'shape', type(x))}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"q{q.shape}, k{k.shape} and v{v.shape} must have the same shape "
                         "[num_groups, group_size, heads, head_dim]")
    g, n, h, d = q.shape
    if n < 1 or n > MAX_GROUP_SIZE:
        raise ValueError(f"group_size (axis 1) must be in 1..{MAX_GROUP_SIZE}; got {n} in q{q.shape}")
    if d < 1 or d > MAX_HEAD_DIM:
        raise ValueError(f"head_dim (axis 3) must be in 1..{MAX_HEAD_DIM}; got {d} in q{q.shape}")
    if h < 1:
        raise ValueError(f"heads (axis 2) must be positive; got q{q.shape}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if jnp.dtype(q.dtype) not in dtypes:
        raise ValueError(f"dtype {q.dtype} is not supported; use one of {[str(t) for t in dtypes]}")
    if sm_scale is None:
        return float(d) ** -0.5
    try:
        scale = float(sm_scale)
    except (TypeError, ValueError):
        raise ValueError(f"sm_scale must be a Python number or None; got {sm_scale!r}") from None
    return scale


def check_groups_per_block(groups_per_block) -> None:
    if groups_per_block is not None and (isinstance(groups_per_block, bool)
                                         or not isinstance(groups_per_block, int)
                                         or groups_per_block <= 0):
        raise ValueError(f"groups_per_block must be a positive int or None; got {groups_per_block!r}")
