"""LTSF-Linear (Zeng et al., 'Are Transformers Effective for Time Series Forecasting?', AAAI 2023):
DLinear and NLinear, as in the authors' cure-lab/LTSF-Linear code.

Both map a lookback window [batch, input_len, channels] to [batch, horizon, channels] with linear
layers along the time axis (input_len -> horizon), one layer shared by all channels or, with
`individual=True`, one per channel.

- DLinear: trend = moving average of the series (window `kernel_size`, 25 in the paper, the series
  padded at both ends with (kernel_size-1)//2 copies of its first / last value, as the authors'
  `moving_avg`), seasonal = x - trend; ŷ = W_s·seasonal + W_t·trend.
- NLinear: ŷ = W·(x - x_L) + x_L, with x_L the last value of the window.

Weights and biases start as PyTorch's nn.Linear does (uniform in ±1/sqrt(input_len)), as the authors'.
"""
from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from fintrans import axes
from fintrans.layers import Dense, param_with_axes, series_decomp
from fintrans.models import register
from fintrans.models.config import ConfigError, ModelConfig, check_positive


def _torch_linear_init(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class TimeLinear(nn.Module):
    """[batch, input_len, channels] -> [batch, horizon, channels], linear along time; shared over
    channels, or one (input_len -> horizon) map per channel when `individual`."""
    horizon: int
    individual: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        _, length, channels = x.shape
        init = _torch_linear_init(length)
        x = x.astype(self.dtype)
        if not self.individual:
            y = Dense(self.horizon, (axes.LENGTH,), (axes.HORIZON,), kernel_init=init, bias_init=init,
                      dtype=self.dtype, param_dtype=self.param_dtype, name="linear")(jnp.swapaxes(x, 1, 2))
            return jnp.swapaxes(y, 1, 2)
        kernel = param_with_axes(self, "kernel", init, (channels, length, self.horizon),
                                 (axes.CHANNELS, axes.LENGTH, axes.HORIZON), self.param_dtype)
        bias = param_with_axes(self, "bias", init, (channels, self.horizon), (axes.CHANNELS, axes.HORIZON),
                               self.param_dtype)
        y = jnp.einsum("blc,clh->bhc", x, kernel.astype(self.dtype))
        return y + bias.T.astype(self.dtype)


@dataclasses.dataclass(frozen=True)
class NLinearConfig(ModelConfig):
    DATA_FIELDS = {"num_channels": "num_channels", "input_len": "input_len", "horizon": "horizon"}  # see ModelConfig
    input_len: int = 96  # lookback window (the authors' seq_len)
    horizon: int = 24  # forecast length (pred_len)
    num_channels: int = 1  # series per example (enc_in)
    individual: bool = False  # one linear map per channel

    def validate(self):
        for name in ("input_len", "horizon", "num_channels"):
            check_positive(name, getattr(self, name))
        if not isinstance(self.individual, bool):
            raise ConfigError(f"individual={self.individual!r} must be True or False")


@dataclasses.dataclass(frozen=True)
class DLinearConfig(NLinearConfig):
    kernel_size: int = 25  # moving-average window of the trend; odd

    def validate(self):
        super().validate()
        check_positive("kernel_size", self.kernel_size)
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size={self.kernel_size} must be odd (the replicate-padded moving "
                              "average keeps the series length only for odd windows)")


def _check_series(model: str, series: jax.Array, cfg: NLinearConfig) -> None:
    expected = (cfg.input_len, cfg.num_channels)
    if series.ndim != 3 or tuple(series.shape[1:]) != expected:
        raise ValueError(f"{model}: inputs must be [batch, input_len={cfg.input_len}, num_channels="
                         f"{cfg.num_channels}], got {tuple(series.shape)}")


class DLinear(nn.Module):
    """batch {'inputs': float[B, input_len, C]} -> predictions float32[B, horizon, C]."""
    config: DLinearConfig

    @nn.compact
    def __call__(self, batch, *, train: bool = False) -> jax.Array:
        cfg = self.config
        x = batch["inputs"]
        _check_series("dlinear", x, cfg)
        x = nn.with_logical_constraint(x.astype(cfg.compute_dtype), (axes.ACT_BATCH, axes.ACT_LENGTH, None))
        seasonal, trend = series_decomp(x, cfg.kernel_size)
        linear = lambda name: TimeLinear(cfg.horizon, cfg.individual, dtype=cfg.compute_dtype,
                                         param_dtype=cfg.params_dtype, name=name)
        y = linear("seasonal")(seasonal) + linear("trend")(trend)
        return nn.with_logical_constraint(y, (axes.ACT_BATCH, axes.ACT_LENGTH, None)).astype(jnp.float32)


class NLinear(nn.Module):
    """batch {'inputs': float[B, input_len, C]} -> predictions float32[B, horizon, C]."""
    config: NLinearConfig

    @nn.compact
    def __call__(self, batch, *, train: bool = False) -> jax.Array:
        cfg = self.config
        x = batch["inputs"]
        _check_series("nlinear", x, cfg)
        x = nn.with_logical_constraint(x.astype(cfg.compute_dtype), (axes.ACT_BATCH, axes.ACT_LENGTH, None))
        last = jax.lax.stop_gradient(x[:, -1:])  # the authors detach it
        y = TimeLinear(cfg.horizon, cfg.individual, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
                       name="linear")(x - last) + last
        return nn.with_logical_constraint(y, (axes.ACT_BATCH, axes.ACT_LENGTH, None)).astype(jnp.float32)


register("dlinear", DLinearConfig, DLinear)
register("nlinear", NLinearConfig, NLinear)
