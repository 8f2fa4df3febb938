"""Flattened-window attention ops (FlatFormer) for layers: window sorting, equal-size grouping
and grouped multi-head attention, from kernels_pallas.flat_window_attention.

    order = window_order(coords, sample_ids, grid_shape=..., window_shape=..., axis="x", shift=False)
    plan = make_group_plan(order, sample_ids, num_samples=B, group_size=144)
    out = ungroup_tokens(grouped_attention(group_tokens(q, plan), group_tokens(k, plan),
                                           group_tokens(v, plan)), plan)

`grouped_attention(q, k, v, *, implementation=None)` attends within each group of
[num_groups, group_size, heads, head_dim]. Implementations (a model's `attention_impl`):
  xla         plain XLA, custom_vjp; always works (last in every fallthrough)
  reference   dense float32 math with jax autodiff (the kernels' test oracle)
  pallas_gpu  the Pallas Triton kernel (preferred on GPU)
  pallas_tpu  the Pallas Mosaic kernel (preferred on TPU)
`implementation=None` tries the platform's preferred kernels in order, falling through on
NotImplementedError to 'xla'; a named implementation is never silently replaced by another.
Under a mesh the Pallas kernels run inside shard_map over groups and heads (the specs the
logical-axis rules give activations, as fintrans.ops.attention does): XLA cannot split an opaque
kernel call and would otherwise gather every input onto every device.
"""
from __future__ import annotations

from typing import Optional

import jax

from fintrans.ops.attention import shard_specs
from kernels_pallas import flat_window_attention as _kernel
from kernels_pallas.flat_window_attention import (GroupPlan, group_tokens, make_group_plan,
                                                  num_groups_for, ungroup_tokens, window_order,
                                                  window_sort_keys)

__all__ = ["grouped_attention", "implementations", "IMPLEMENTATIONS", "PREFERENCE", "window_order",
           "window_sort_keys", "make_group_plan", "GroupPlan", "group_tokens", "ungroup_tokens",
           "num_groups_for"]

IMPLEMENTATIONS = _kernel.IMPLEMENTATIONS
PREFERENCE = _kernel.PREFERENCE
_PALLAS = ("pallas_gpu", "pallas_tpu")

Array = jax.Array


def implementations() -> tuple[str, ...]:
    return tuple(IMPLEMENTATIONS)


def _run(name: str, q, k, v, scale):
    def kernel(q, k, v):
        return _kernel.grouped_attention(q, k, v, sm_scale=scale, implementation=name)
    specs = shard_specs(q.shape, k.shape) if name in _PALLAS else None
    if specs is None:
        return kernel(q, k, v)
    spec = specs[0]  # q, k, v share one shape: groups (and heads when they split evenly)
    return jax.shard_map(kernel, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(q, k, v)


def grouped_attention(q: Array, k: Array, v: Array, *, scale: Optional[float] = None,
                      implementation: Optional[str] = None) -> Array:
    """softmax(q·kᵀ·scale)·v within each group, for every head (no masks: groups hold only real
    tokens, see make_group_plan).

    Args:
      q, k, v: [num_groups, group_size, heads, head_dim], one shape and dtype.
      scale: defaults to head_dim ** -0.5.
      implementation: None (the platform's preference, falling through to 'xla') or one of
        IMPLEMENTATIONS.
    Returns:
      [num_groups, group_size, heads, head_dim] in q's dtype.
    """
    _kernel.common.check_inputs(q, k, v, scale)  # shape errors before any fallthrough
    if implementation is not None:
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"unknown grouped attention implementation {implementation!r}; "
                             f"choose from {list(IMPLEMENTATIONS)} or None")
        return _run(implementation, q, k, v, scale)
    names = PREFERENCE.get(jax.default_backend(), ())
    for name in names + tuple(n for n in ("xla",) if n not in names):
        try:
            return _run(name, q, k, v, scale)
        except NotImplementedError:
            continue
    raise AssertionError("unreachable: xla grouped attention always works")
