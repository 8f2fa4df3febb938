"""Shared linen building blocks. Models build from these; attention math lives in fintrans.ops."""
from fintrans.layers.attention import MultiHeadAttention, padding_mask
from fintrans.layers.blocks import NORM_POSITIONS, Block, DropPath, TransformerBlock
from fintrans.layers.conv import PADDINGS_1D, Conv1D, Conv2D
from fintrans.layers.dense import Dense, inject_dot_general, param_with_axes
from fintrans.layers.dropout import Dropout, per_shard_dropout
from fintrans.layers.embeddings import (Embed, LearnedPositions, PatchEmbed1D, PatchEmbed2D, apply_rotary,
                                        sinusoidal_positions)
from fintrans.layers.mixers import PoolingMixer, TokenMixingMLP
from fintrans.layers.mlp import ACTIVATIONS, MLP, activation
from fintrans.layers.norms import NORMS, BatchNorm, LayerNorm, RMSNorm, make_norm
from fintrans.layers.pooling import POOLINGS, pool
from fintrans.layers.series import SeriesDecomp, check_series_batch, moving_average, series_decomp
from fintrans.layers.stack import (REMAT_POLICIES, STACK_MODES, Stack, per_block_ndim, remat_policy, stack_params,
                                   unstack_params)

__all__ = [
    "ACTIVATIONS", "BatchNorm", "Block", "Conv1D", "Conv2D", "Dense", "DropPath", "Dropout", "Embed", "LayerNorm", "LearnedPositions", "MLP",
    "MultiHeadAttention", "NORMS", "NORM_POSITIONS", "PADDINGS_1D", "POOLINGS", "PatchEmbed1D", "PatchEmbed2D",
    "PoolingMixer", "REMAT_POLICIES", "RMSNorm", "STACK_MODES", "SeriesDecomp", "Stack", "TokenMixingMLP",
    "TransformerBlock", "activation", "apply_rotary", "check_series_batch", "inject_dot_general", "make_norm",
    "moving_average", "padding_mask", "param_with_axes", "per_block_ndim", "per_shard_dropout", "pool", "remat_policy", "series_decomp",
    "sinusoidal_positions", "stack_params", "unstack_params",
]
