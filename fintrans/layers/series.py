"""Time-series utilities shared by the forecasting and classification models: the replicate-padded
moving average and seasonal/trend decomposition (LTSF-Linear, Autoformer), and the input check of
padded, masked series batches (t2, ShapeFormer)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def moving_average(x: jax.Array, kernel_size: int) -> jax.Array:
    """Mean over a centred window of odd `kernel_size` along axis 1 of [batch, length, channels],
    the ends padded with copies of the first and last values (LTSF-Linear's and Autoformer's `moving_avg`)."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"moving_average: kernel_size={kernel_size} must be a positive odd integer")
    pad = (kernel_size - 1) // 2
    padded = jnp.concatenate([jnp.repeat(x[:, :1], pad, axis=1), x, jnp.repeat(x[:, -1:], pad, axis=1)], axis=1)
    # A concrete (numpy) zero lets jax see the windowed sum and differentiate it under jit.
    window_sum = jax.lax.reduce_window(padded, np.zeros((), padded.dtype), jax.lax.add, (1, kernel_size, 1),
                                       (1, 1, 1), "VALID")
    return window_sum / kernel_size


def series_decomp(x: jax.Array, kernel_size: int) -> tuple[jax.Array, jax.Array]:
    """(seasonal, trend) = (x - moving_average(x), moving_average(x))."""
    trend = moving_average(x, kernel_size)
    return x - trend, trend


class SeriesDecomp(nn.Module):
    """The seasonal part of series_decomp, as a module: usable as a Block's `norm` (Autoformer's
    decomposition after each residual add)."""
    kernel_size: int

    def __call__(self, x: jax.Array) -> jax.Array:
        return series_decomp(x, self.kernel_size)[0]


def check_series_batch(name: str, batch, max_len: int, num_channels: int):
    """(inputs, valid) of a batch of zero-padded series {'inputs': [B, T, C], 'mask'?: bool[B, T]}
    (mask absent: every step valid); clear errors for bad shapes."""
    x = batch["inputs"]
    if x.ndim != 3 or x.shape[2] != num_channels or not 1 <= x.shape[1] <= max_len:
        raise ValueError(f"{name}: inputs must be [batch, length <= max_len={max_len}, num_channels={num_channels}], "
                         f"got {tuple(x.shape)}")
    valid = batch.get("mask")
    if valid is None:
        valid = jnp.ones(x.shape[:2], bool)
    elif tuple(valid.shape) != tuple(x.shape[:2]):
        raise ValueError(f"{name}: mask must be [batch, length] = {tuple(x.shape[:2])}, got {tuple(valid.shape)}")
    return x, jnp.asarray(valid).astype(bool)
