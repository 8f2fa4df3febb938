"""LayerNorm and RMSNorm with logically-annotated scale and bias (never sharded)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fintrans import axes
from fintrans.layers.dense import param_with_axes


class LayerNorm(nn.Module):
    """(x - mean) / sqrt(var + eps) · scale + bias, statistics in float32."""
    epsilon: float = 1e-6
    use_bias: bool = True
    use_scale: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        xf = x.astype(jnp.float32)
        mean = xf.mean(-1, keepdims=True)
        var = jnp.square(xf - mean).mean(-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon)
        if self.use_scale:
            y = y * param_with_axes(self, "scale", nn.initializers.ones, (features,), (axes.NORM,), self.param_dtype)
        if self.use_bias:
            y = y + param_with_axes(self, "bias", nn.initializers.zeros, (features,), (axes.NORM,), self.param_dtype)
        return y.astype(self.dtype)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · scale, statistics in float32."""
    epsilon: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.square(xf).mean(-1, keepdims=True) + self.epsilon)
        scale = param_with_axes(self, "scale", nn.initializers.ones, (x.shape[-1],), (axes.NORM,), self.param_dtype)
        return (y * scale).astype(self.dtype)


NORMS = {"layernorm": LayerNorm, "rmsnorm": RMSNorm}


def make_norm(kind: str, *, epsilon: float, dtype, param_dtype, name: str | None = None) -> nn.Module:
    if kind not in NORMS:
        raise ValueError(f"unknown norm {kind!r}; choose from {sorted(NORMS)}")
    return NORMS[kind](epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, name=name)
