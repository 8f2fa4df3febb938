"""Shared linen building blocks. Models build from these; attention math lives in fintrans.ops."""
from fintrans.layers.attention import MultiHeadAttention, padding_mask
from fintrans.layers.dense import Dense, param_with_axes
from fintrans.layers.embeddings import (Embed, LearnedPositions, PatchEmbed1D, PatchEmbed2D, apply_rotary,
                                        sinusoidal_positions)
from fintrans.layers.mlp import ACTIVATIONS, MLP, activation
from fintrans.layers.norms import NORMS, LayerNorm, RMSNorm, make_norm
from fintrans.layers.pooling import POOLINGS, pool
from fintrans.layers.transformer import NORM_POSITIONS, TransformerBlock

__all__ = [
    "ACTIVATIONS", "Dense", "Embed", "LayerNorm", "LearnedPositions", "MLP", "MultiHeadAttention", "NORMS",
    "NORM_POSITIONS", "POOLINGS", "PatchEmbed1D", "PatchEmbed2D", "RMSNorm", "TransformerBlock", "activation",
    "apply_rotary", "make_norm", "padding_mask", "param_with_axes", "pool", "sinusoidal_positions",
]
