"""Kernel-backed ops: the only place layers get attention (and, later, other kernels) from.

Every op is a fintrans.ops.dispatch.Op in the `OPS` registry, with implementations named by one
scheme (dispatch.IMPLEMENTATION_NAMES) and one fall-through dispatch and per-shard wrapper.
`explain(op_name, *args, **kwargs)` says which implementation a call would run and why.
"""
from fintrans.ops.attention import ATTENTION, DECODE, decode_attention, dot_product_attention
from fintrans.ops.dispatch import IMPLEMENTATION_NAMES, OPS, Op, explain, per_shard
from fintrans.ops.flat_window import GROUPED, grouped_attention
from fintrans.ops.patterns import LOCAL, TOPK, AttentionPattern, local_attention, topk_attention

__all__ = ["ATTENTION", "DECODE", "GROUPED", "LOCAL", "TOPK", "OPS", "Op", "IMPLEMENTATION_NAMES",
           "AttentionPattern", "decode_attention", "dot_product_attention", "explain", "grouped_attention",
           "local_attention", "per_shard", "topk_attention"]
