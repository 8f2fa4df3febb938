"""Token mixers beyond attention, for `Block(token_mixer=...)`: pooling (PoolFormer) and a token-mixing
MLP (MLP-Mixer). Like every token mixer they take (x, *, deterministic) with x [batch, tokens..., features]."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fintrans import axes
from fintrans.layers.dense import Dense
from fintrans.layers.mlp import activation


class PoolingMixer(nn.Module):
    """PoolFormer's token mixer: average over a pool_size window of neighbours (stride 1, the window
    clipped at the edges, i.e. padding not counted) minus the token itself. Pools over every axis
    between batch and features, so [B, L, D] sequences and [B, H, W, D] images alike. No parameters."""
    pool_size: int = 3

    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        del deterministic
        if self.pool_size < 1 or self.pool_size % 2 == 0:
            raise ValueError(f"{self.name}: pool_size={self.pool_size} must be a positive odd int (a centred window)")
        spatial = x.ndim - 2
        window = (1,) + (self.pool_size,) * spatial + (1,)
        pad = ((0, 0),) + ((self.pool_size // 2, self.pool_size // 2),) * spatial + ((0, 0),)
        ones = (1,) * x.ndim
        zero = np.zeros((), x.dtype)  # concrete, so jax can differentiate the windowed sum
        total = jax.lax.reduce_window(x, zero, jax.lax.add, window, ones, pad)
        count = jax.lax.reduce_window(jnp.ones((1,) + x.shape[1:-1] + (1,), x.dtype), zero, jax.lax.add, window,
                                      ones, pad)
        return total / count - x


class TokenMixingMLP(nn.Module):
    """MLP-Mixer's token mixer: an MLP along the token axis of [B, L, D], shared by the features
    (Dense(L -> hidden_dim), activation, Dense(hidden_dim -> L)). Fixed length L."""
    hidden_dim: int
    activation: str = "gelu"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        del deterministic
        if x.ndim != 3:
            raise ValueError(f"{self.name}: expected [batch, tokens, features], got shape {tuple(x.shape)}")
        dense = lambda f, i, o, name: Dense(f, (i,), (o,), dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        h = jnp.swapaxes(x, 1, 2)  # [B, D, L]
        h = activation(self.activation)(dense(self.hidden_dim, axes.LENGTH, axes.MLP, "token_wi")(h))
        h = dense(x.shape[1], axes.MLP, axes.LENGTH, "token_wo")(h)
        return jnp.swapaxes(h, 1, 2)
