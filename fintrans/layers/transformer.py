"""The transformer block every model shares: attention and MLP sublayers with residuals,
pre-LN (GPT-2/ViT/LLaMA) or post-LN (original Transformer/BERT)."""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from fintrans import axes
from fintrans.layers.attention import MultiHeadAttention
from fintrans.layers.mlp import MLP
from fintrans.layers.norms import make_norm

NORM_POSITIONS = ("pre", "post")


class TransformerBlock(nn.Module):
    num_heads: int
    head_dim: int
    mlp_dim: int
    num_kv_heads: Optional[int] = None
    norm: str = "layernorm"
    norm_position: str = "pre"
    norm_epsilon: float = 1e-6
    activation: str = "gelu"
    glu: bool = False
    use_bias: bool = True
    rotary: bool = False
    dropout_rate: float = 0.0
    mlp_dropout_rate: Optional[float] = None  # on the MLP's hidden activations; None: dropout_rate (BERT: 0)
    attention_impl: Optional[str] = None
    decode: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, mask=None, causal: bool = False, segment_ids=None,
                 positions=None, deterministic: bool = True) -> jax.Array:
        if self.norm_position not in NORM_POSITIONS:
            raise ValueError(f"unknown norm_position {self.norm_position!r}; choose from {NORM_POSITIONS}")
        act_spec = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED)
        x = nn.with_logical_constraint(x, act_spec)
        norm = lambda name: make_norm(self.norm, epsilon=self.norm_epsilon, dtype=self.dtype,
                                      param_dtype=self.param_dtype, name=name)
        attn = MultiHeadAttention(
            num_heads=self.num_heads, head_dim=self.head_dim, num_kv_heads=self.num_kv_heads,
            use_bias=self.use_bias, rotary=self.rotary, dropout_rate=self.dropout_rate,
            attention_impl=self.attention_impl, decode=self.decode, dtype=self.dtype,
            param_dtype=self.param_dtype, name="attention")
        mlp_dropout = self.dropout_rate if self.mlp_dropout_rate is None else self.mlp_dropout_rate
        mlp = MLP(self.mlp_dim, activation=self.activation, glu=self.glu, use_bias=self.use_bias,
                  dropout_rate=mlp_dropout, dtype=self.dtype, param_dtype=self.param_dtype, name="mlp")
        drop = lambda y: nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
        attend = lambda y: attn(y, mask=mask, causal=causal, segment_ids=segment_ids, positions=positions,
                                deterministic=deterministic)
        if self.norm_position == "pre":
            x = x + attend(norm("attention_norm")(x))
            x = x + drop(mlp(norm("mlp_norm")(x), deterministic=deterministic))
        else:
            x = norm("attention_norm")(x + attend(x))
            x = norm("mlp_norm")(x + drop(mlp(x, deterministic=deterministic)))
        return nn.with_logical_constraint(x, act_spec)
