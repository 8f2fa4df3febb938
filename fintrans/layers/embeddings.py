"""Token, positional (learned, sinusoidal, rotary) and patch embeddings."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fintrans import axes
from fintrans.layers.dense import Dense, param_with_axes


class Embed(nn.Module):
    """Token ids -> vectors; `attend` gives logits against the same table (tied output)."""
    num_embeddings: int
    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    embedding_init: Any = nn.initializers.normal(stddev=0.02)

    def setup(self):
        self.embedding = param_with_axes(self, "embedding", self.embedding_init,
                                         (self.num_embeddings, self.features), (axes.VOCAB, axes.EMBED),
                                         self.param_dtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"{self.name}: token ids must be integers, got {ids.dtype}")
        # All-gather the vocab-split table first (as FSDP does for every weight): a gather from a
        # table split over vocab makes the partitioner replicate the result on every device instead.
        table = nn.with_logical_constraint(self.embedding, (None, axes.ACT_EMBED))
        out = jnp.take(table, ids, axis=0).astype(self.dtype)
        return nn.with_logical_constraint(out, (axes.ACT_BATCH,) + (None,) * (ids.ndim - 1) + (axes.ACT_EMBED,))

    def attend(self, x: jax.Array) -> jax.Array:
        return jnp.einsum("...d,vd->...v", x.astype(self.dtype), self.embedding.astype(self.dtype))


class LearnedPositions(nn.Module):
    """A learned [max_len, features] table, added to inputs by position."""
    max_len: int
    features: int
    param_dtype: Any = jnp.float32
    embedding_init: Any = nn.initializers.normal(stddev=0.02)

    @nn.compact
    def __call__(self, length: int, offset: int = 0) -> jax.Array:
        if offset + length > self.max_len:
            raise ValueError(f"{self.name}: sequence of length {offset + length} exceeds max_len={self.max_len}")
        table = param_with_axes(self, "embedding", self.embedding_init, (self.max_len, self.features),
                                (axes.LENGTH, axes.EMBED), self.param_dtype)
        return table[offset:offset + length]


def sinusoidal_positions(length: int, features: int, *, max_timescale: float = 10_000.0,
                         offset: int = 0) -> np.ndarray:
    """Vaswani et al. table: sin on even features, cos on odd ones, shape [length, features]."""
    pos = np.arange(offset, offset + length, dtype=np.float64)[:, None]
    div = np.exp(np.arange(0, features, 2, dtype=np.float64) * (-np.log(max_timescale) / features))
    table = np.zeros((length, features), np.float32)
    table[:, 0::2] = np.sin(pos * div)
    table[:, 1::2] = np.cos(pos * div)[:, : features // 2]
    return table


def apply_rotary(x: jax.Array, positions: jax.Array, *, base: float = 10_000.0) -> jax.Array:
    """RoPE (Su et al.), rotate-half form: x [batch, length, heads, head_dim], positions [batch, length]."""
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"rotary embeddings need an even head_dim, got {d}")
    inv_freq = 1.0 / (base ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [b, l, d/2]
    sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


class PatchEmbed2D(nn.Module):
    """Non-overlapping p×p patches of [batch, H, W, C] images -> [batch, (H/p)(W/p), features].

    Equivalent to a stride-p convolution with a p×p kernel; the kernel is stored flattened as
    [p·p·C, features] in (row, column, channel) order.
    """
    patch_size: int
    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        if images.ndim != 4:
            raise ValueError(f"{self.name}: expected images [batch, height, width, channels], got {images.shape}")
        b, h, w, c = images.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"{self.name}: image size {h}x{w} is not divisible by patch_size={p}")
        x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, (h // p) * (w // p), p * p * c)
        return Dense(self.features, (axes.CHANNELS,), (axes.EMBED,), dtype=self.dtype,
                     param_dtype=self.param_dtype, name="proj")(x)


class PatchEmbed1D(nn.Module):
    """Patches of a univariate series [batch, length] (length patch_len, step stride) -> [batch, n, features]."""
    patch_len: int
    stride: int
    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, series: jax.Array) -> jax.Array:
        length = series.shape[-1]
        if length < self.patch_len:
            raise ValueError(f"{self.name}: series length {length} is shorter than patch_len={self.patch_len}")
        n = (length - self.patch_len) // self.stride + 1
        idx = np.arange(n)[:, None] * self.stride + np.arange(self.patch_len)[None, :]
        patches = series[..., idx]  # [..., n, patch_len]
        return Dense(self.features, (axes.LENGTH,), (axes.EMBED,), dtype=self.dtype,
                     param_dtype=self.param_dtype, name="proj")(patches)
