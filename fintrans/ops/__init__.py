"""Kernel-backed ops: the only place layers get attention from."""
from fintrans.ops.attention import dot_product_attention

__all__ = ["dot_product_attention"]
