"""Flattened-window attention (FlatFormer): window sorting, equal-size grouping, and multi-head
attention within many small groups.

    from kernels_pallas.flat_window_attention import (window_order, make_group_plan, group_tokens,
                                                      ungroup_tokens, grouped_attention)
    order = window_order(coords, sample_ids, grid_shape=(nx, ny), window_shape=(13, 13), axis="x")
    plan = make_group_plan(order, sample_ids, num_samples=B, group_size=144)
    q = group_tokens(q_tokens, plan)                      # [N, heads, d] -> [groups, 144, heads, d]
    out = ungroup_tokens(grouped_attention(q, k, v), plan)

sorting.py holds the window keys (the authors' snake orders), grouping.py the plan and the
gathers, common.py the attention conventions and input checks.

grouped_attention implementations (all differentiable, all checked against `reference`):
  reference   dense, float32 math (float64 for float64 inputs); the test oracle; jax autodiff
  xla         plain XLA; runs anywhere
  pallas_gpu  Pallas with the Triton lowering, several groups per program
  pallas_tpu  Pallas Mosaic TPU, several groups per program
`implementation=None` tries the platform's kernel and falls through to `xla` when it raises
NotImplementedError; a named implementation is used as asked. `interpret=True` runs a Pallas
kernel in interpret mode on CPU.
"""
from __future__ import annotations

from typing import Optional

import jax

from kernels_pallas import _dispatch
from kernels_pallas.flat_window_attention.common import check_groups_per_block, check_inputs
from kernels_pallas.flat_window_attention.grouping import (GroupPlan, group_tokens, make_group_plan,
                                                           num_groups_for, ungroup_tokens)
from kernels_pallas.flat_window_attention.sorting import window_order, window_sort_keys

__all__ = ["grouped_attention", "window_order", "window_sort_keys", "make_group_plan", "GroupPlan",
           "group_tokens", "ungroup_tokens", "num_groups_for", "IMPLEMENTATIONS", "PREFERENCE"]

IMPLEMENTATIONS = _dispatch.check_names(__name__, ("reference", "xla", "pallas_gpu", "pallas_tpu"))
PREFERENCE = _dispatch.PREFERENCE


def grouped_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, sm_scale: Optional[float] = None,
                      implementation: Optional[str] = None, interpret: bool = False,
                      groups_per_block: Optional[int] = None) -> jax.Array:
    """softmax(q·kᵀ·sm_scale)·v within each group, for every head (no mask, no causality).

    Args:
      q, k, v: [num_groups, group_size, heads, head_dim], all the same shape and dtype (float32,
        bfloat16 or float16; the reference also takes float64); group_size up to
        common.MAX_GROUP_SIZE, head_dim up to common.MAX_HEAD_DIM.
      sm_scale: logit scale; defaults to head_dim ** -0.5.
      implementation: one of IMPLEMENTATIONS, or None for the platform's best.
      interpret: run a Pallas implementation in interpret mode (CPU checking).
      groups_per_block: groups per kernel program (Pallas); None lets the kernel choose.
    Returns:
      [num_groups, group_size, heads, head_dim] in q's dtype.
    """
    scale = check_inputs(q, k, v, sm_scale)
    check_groups_per_block(groups_per_block)
    kwargs = dict(sm_scale=scale, groups_per_block=groups_per_block, interpret=interpret)
    return _dispatch.dispatch(__name__, IMPLEMENTATIONS, PREFERENCE, implementation, q, k, v, **kwargs)
