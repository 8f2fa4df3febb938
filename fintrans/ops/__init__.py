"""Kernel-backed ops: the only place layers get attention from."""
from fintrans.ops.attention import decode_attention, dot_product_attention

__all__ = ["decode_attention", "dot_product_attention"]
