"""Position-wise feed-forward blocks: plain FFN and gated (GLU) variants."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fintrans import axes
from fintrans.layers.dense import Dense
from fintrans.layers.dropout import Dropout

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # erf form, as BERT and timm ViT
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "sigmoid": jax.nn.sigmoid,
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class MLP(nn.Module):
    """wo(act(wi·x)), or with glu=True wo(act(wi_gate·x) ⊙ wi·x) (GLU/SwiGLU/GeGLU)."""
    hidden_dim: int
    out_dim: int | None = None
    activation: str = "gelu"
    glu: bool = False
    use_bias: bool = True
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        act = activation(self.activation)
        dense = lambda f, i, o, name: Dense(f, i, o, use_bias=self.use_bias, dtype=self.dtype,
                                            param_dtype=self.param_dtype, name=name)
        h = dense(self.hidden_dim, (axes.EMBED,), (axes.MLP,), "wi")(x)
        if self.glu:
            h = act(dense(self.hidden_dim, (axes.EMBED,), (axes.MLP,), "wi_gate")(x)) * h
        else:
            h = act(h)
        h = nn.with_logical_constraint(h, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_MLP))
        h = Dropout(self.dropout_rate, axes=(axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_MLP))(
            h, deterministic=deterministic)
        return dense(self.out_dim or x.shape[-1], (axes.MLP,), (axes.EMBED,), "wo")(h)
