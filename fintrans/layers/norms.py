"""LayerNorm, RMSNorm and BatchNorm with logically-annotated scale, bias and statistics (never sharded)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fintrans import axes
from fintrans.layers.dense import param_with_axes


def _scale_and_shift(module: nn.Module, y: jax.Array, features: int) -> jax.Array:
    """y · scale + bias with the module's optional, NORM-annotated (never sharded) parameters."""
    if module.use_scale:
        y = y * param_with_axes(module, "scale", nn.initializers.ones, (features,), (axes.NORM,), module.param_dtype)
    if module.use_bias:
        y = y + param_with_axes(module, "bias", nn.initializers.zeros, (features,), (axes.NORM,), module.param_dtype)
    return y


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
        return _scale_and_shift(self, y, features).astype(self.dtype)


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



class BatchNorm(nn.Module):
    """Batch normalisation over every axis but the last (features).

    `train=True` normalises with the batch's statistics (over the real entries when `mask` is given)
    and moves the running averages in the "batch_stats" collection towards them:
    avg <- momentum·avg + (1 - momentum)·batch value (variance: the biased batch variance, as flax
    and torch's normalisation do). `train=False` normalises with the running averages. The trainer
    keeps "batch_stats" in TrainState.model_state. Under jit with a batch sharded over a mesh the
    means are over the global batch (XLA inserts the all-reduce), so statistics never depend on the
    mesh.
    """
    momentum: float = 0.99
    epsilon: float = 1e-5
    use_bias: bool = True
    use_scale: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None) -> jax.Array:
        """x [..., features]; mask (optional) bool, broadcastable to x.shape[:-1], marks real entries."""
        features = x.shape[-1]
        running_mean = self.variable("batch_stats", "mean", nn.with_logical_partitioning(jnp.zeros, (axes.NORM,)),
                                     (features,), jnp.float32)
        running_var = self.variable("batch_stats", "var", nn.with_logical_partitioning(jnp.ones, (axes.NORM,)),
                                    (features,), jnp.float32)
        xf = x.astype(jnp.float32)
        if train:
            reduce = tuple(range(x.ndim - 1))
            if mask is None:
                mean = xf.mean(reduce)
                var = jnp.square(xf - mean).mean(reduce)
            else:
                w = jnp.broadcast_to(mask, x.shape[:-1]).astype(jnp.float32)[..., None]
                count = jnp.maximum(w.sum(reduce), 1.0)
                mean = (xf * w).sum(reduce) / count
                var = (jnp.square(xf - mean) * w).sum(reduce) / count
            if not self.is_initializing():
                running_mean.value = self.momentum * running_mean.value + (1.0 - self.momentum) * mean
                running_var.value = self.momentum * running_var.value + (1.0 - self.momentum) * var
        else:
            mean, var = running_mean.value, running_var.value
        y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon)
        return _scale_and_shift(self, y, features).astype(self.dtype)


NORMS = {"layernorm": LayerNorm, "rmsnorm": RMSNorm}


def make_norm(kind: str, *, epsilon: float, dtype, param_dtype, name: str | None = None) -> nn.Module:
    if kind not in NORMS:
        raise ValueError(f"unknown norm {kind!r}; choose from {sorted(NORMS)}")
    return NORMS[kind](epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, name=name)
