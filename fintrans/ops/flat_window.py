"""Flattened-window attention ops (FlatFormer) for layers: window sorting, equal-size grouping
and the `grouped_attention` op, from kernels_pallas.flat_window_attention.

    order = window_order(coords, sample_ids, grid_shape=..., window_shape=..., axis="x", shift=False)
    plan = make_group_plan(order, sample_ids, num_samples=B, group_size=144)
    out = ungroup_tokens(grouped_attention(group_tokens(q, plan), group_tokens(k, plan),
                                           group_tokens(v, plan)), plan)

`grouped_attention(q, k, v, *, implementation=None)` attends within each group of
[num_groups, group_size, heads, head_dim]. Implementations (fintrans.ops.dispatch's naming):
  xla            plain XLA, custom_vjp; always works (last in every fallthrough)
  reference      dense float32 math with jax autodiff (the kernels' test oracle)
  pallas_gpu     the Pallas Triton kernel (preferred on GPU)
  pallas_tpu     the Pallas Mosaic kernel (preferred on TPU)
  xla_dense, xla_blockwise
                 the `attention` op's implementations with the groups as its batch (a cross-check)
Under a mesh the Pallas kernels run per shard of groups and heads (dispatch.per_shard).
"""
from __future__ import annotations

from typing import Callable, Optional

import jax

from fintrans import axes
from fintrans.ops import dispatch
from fintrans.ops.attention import ATTENTION
from fintrans.ops.dispatch import Op
from kernels_pallas import flat_window_attention as _kernel
from kernels_pallas.flat_window_attention import (GroupPlan, group_tokens, make_group_plan,
                                                  num_groups_for, ungroup_tokens, window_order,
                                                  window_sort_keys)

__all__ = ["grouped_attention", "implementations", "GROUPED", "GROUP_AXES", "window_order",
           "window_sort_keys", "make_group_plan", "GroupPlan", "group_tokens", "ungroup_tokens",
           "num_groups_for"]

Array = jax.Array
# [groups, group_size, heads, head_dim]: groups take the batch's place in the logical-axis rules.
GROUP_AXES = (axes.ACT_BATCH, None, axes.ACT_HEADS, None)


def _check(q, k, v, *, scale=None):
    _kernel.common.check_inputs(q, k, v, scale)


def _grouped(implementation: str, sharded: bool = False) -> Callable[..., Array]:
    def attend(q, k, v, *, scale=None):
        def kernel(q, k, v):
            return _kernel.grouped_attention(q, k, v, sm_scale=scale, implementation=implementation)
        if sharded:
            return dispatch.per_shard(kernel, (q, k, v), (GROUP_AXES,) * 3, GROUP_AXES)
        return kernel(q, k, v)
    return attend


def _over_groups(implementation: str) -> Callable[..., Array]:
    """The general attention op with the groups as its batch: the same arithmetic another way."""
    return lambda q, k, v, *, scale=None: ATTENTION(q, k, v, scale=scale, implementation=implementation)


GROUPED = Op("grouped_attention", check=_check,
             doc="softmax(q·kᵀ·scale)·v within each group of [groups, group_size, heads, head_dim]")
GROUPED.register("reference", _grouped("reference"))
GROUPED.register("xla", _grouped("xla"))
GROUPED.register("xla_dense", _over_groups("xla_dense"))
GROUPED.register("xla_blockwise", _over_groups("xla_blockwise"))
GROUPED.register("pallas_gpu", _grouped("pallas_gpu", sharded=True), platforms=("gpu",))
GROUPED.register("pallas_tpu", _grouped("pallas_tpu", sharded=True), platforms=("tpu",))


def implementations() -> tuple[str, ...]:
    return GROUPED.names()


def grouped_attention(q: Array, k: Array, v: Array, *, scale: Optional[float] = None,
                      implementation: Optional[str] = None) -> Array:
    """softmax(q·kᵀ·scale)·v within each group, for every head (no masks: groups hold only real
    tokens, see make_group_plan).

    Args:
      q, k, v: [num_groups, group_size, heads, head_dim], one shape and dtype.
      scale: defaults to head_dim ** -0.5.
      implementation: None (the platform's kernel, falling through to 'xla') or one of
        GROUPED.names().
    Returns:
      [num_groups, group_size, heads, head_dim] in q's dtype.
    """
    return GROUPED(q, k, v, scale=scale, implementation=implementation)
