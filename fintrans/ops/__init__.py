"""Kernel-backed ops: the only place layers get attention from."""
from fintrans.ops.attention import decode_attention, dot_product_attention
from fintrans.ops.flat_window import grouped_attention

__all__ = ["decode_attention", "dot_product_attention", "grouped_attention"]
