"""Vanilla transformer-encoder forecaster: the Transformer baseline LTSF-Linear (Zeng et al., 2023)
compares against, made direct multi-step (non-autoregressive) and encoder-only.

    x [B, input_len, C] -> per-step Linear(C -> d) + sinusoidal positions -> dropout
      -> N transformer encoder blocks (post-LN by default, as Vaswani et al. and the
         Informer/Autoformer code LTSF-Linear benchmarks; bidirectional attention, no mask)
      -> final LayerNorm (as those encoders have)
      -> head -> ŷ [B, horizon, C]

Heads (`head`):
- 'flatten' (default): one linear map from the flattened encoder output [input_len·d] to
  [horizon·C]. Every output step sees every input step, the direct multi-step analogue of the
  decoder that the original baseline runs over the horizon; the map costs input_len·d·horizon·C
  weights.
- 'per_step': Linear(d -> C) at every input step, then Linear(input_len -> horizon) along time
  (shared over channels, as LTSF-Linear's linear layer); far fewer weights.

The original baseline's token embedding is a width-3 circular convolution with time-feature
embeddings, and it decodes with a label window; here the embedding is the per-step linear map the
brief asks for and there are no calendar features, so inputs are just the lookback window.
"""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from fintrans import axes
from fintrans.layers import NORM_POSITIONS, Dense, LayerNorm, Stack, TransformerBlock, sinusoidal_positions
from fintrans.layers.mlp import ACTIVATIONS
from fintrans.models import register
from fintrans.models.config import AttentionConfig, ConfigError, check_choice, check_positive, check_rate

HEADS = ("flatten", "per_step")


@dataclasses.dataclass(frozen=True)
class TransformerForecasterConfig(AttentionConfig):
    DATA_FIELDS = {"num_channels": "num_channels", "input_len": "input_len", "horizon": "horizon"}  # see ModelConfig
    input_len: int = 96
    horizon: int = 24
    num_channels: int = 1
    embed_dim: int = 64
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 256
    activation: str = "gelu"  # LTSF-Linear's run scripts use gelu for the transformer baselines
    norm_position: str = "post"
    norm_epsilon: float = 1e-5  # torch.nn.LayerNorm's default
    dropout_rate: float = 0.0
    head: str = "flatten"

    def validate(self):
        for name in ("input_len", "horizon", "num_channels", "embed_dim", "num_layers", "num_heads", "mlp_dim"):
            check_positive(name, getattr(self, name))
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("norm_position", self.norm_position, NORM_POSITIONS)
        check_choice("head", self.head, HEADS)
        check_rate("dropout_rate", self.dropout_rate)
        if not isinstance(self.norm_epsilon, (int, float)) or self.norm_epsilon <= 0:
            raise ConfigError(f"norm_epsilon={self.norm_epsilon!r} must be a positive float")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")


class TransformerForecaster(nn.Module):
    """batch {'inputs': float[B, input_len, C]} -> predictions float32[B, horizon, C]."""
    config: TransformerForecasterConfig

    @nn.compact
    def __call__(self, batch, *, train: bool = False) -> jax.Array:
        cfg = self.config
        series = batch["inputs"]
        expected = (cfg.input_len, cfg.num_channels)
        if series.ndim != 3 or tuple(series.shape[1:]) != expected:
            raise ValueError(f"transformer_forecaster: inputs must be [batch, input_len={cfg.input_len}, "
                             f"num_channels={cfg.num_channels}], got {tuple(series.shape)}")
        dtype, pdtype = cfg.compute_dtype, cfg.params_dtype
        deterministic = not train

        x = Dense(cfg.embed_dim, (axes.CHANNELS,), (axes.EMBED,), dtype=dtype, param_dtype=pdtype,
                  name="input_embed")(series.astype(dtype))
        x = x + jnp.asarray(sinusoidal_positions(cfg.input_len, cfg.embed_dim), dtype)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        block = functools.partial(
            TransformerBlock, num_heads=cfg.num_heads, head_dim=cfg.embed_dim // cfg.num_heads, mlp_dim=cfg.mlp_dim,
            norm="layernorm", norm_position=cfg.norm_position, norm_epsilon=cfg.norm_epsilon,
            activation=cfg.activation, use_bias=True, dropout_rate=cfg.dropout_rate,
            attention_impl=cfg.attention_impl, dtype=dtype, param_dtype=pdtype)
        x = Stack(block, cfg.num_layers, nest=False, name="blocks")(x, deterministic=deterministic)
        x = LayerNorm(epsilon=cfg.norm_epsilon, dtype=dtype, param_dtype=pdtype, name="final_norm")(x)

        if cfg.head == "flatten":
            y = Dense((cfg.horizon, cfg.num_channels), (axes.LENGTH, axes.EMBED), (axes.HORIZON, axes.CHANNELS),
                      dtype=dtype, param_dtype=pdtype, name="head")(x)
        else:
            y = Dense(cfg.num_channels, (axes.EMBED,), (axes.CHANNELS,), dtype=dtype, param_dtype=pdtype,
                      name="step_proj")(x)  # [B, input_len, C]
            y = Dense(cfg.horizon, (axes.LENGTH,), (axes.HORIZON,), dtype=dtype, param_dtype=pdtype,
                      name="time_proj")(jnp.swapaxes(y, 1, 2))
            y = jnp.swapaxes(y, 1, 2)
        y = nn.with_logical_constraint(y, (axes.ACT_BATCH, axes.ACT_LENGTH, None))
        return y.astype(jnp.float32)


register("transformer_forecaster", TransformerForecasterConfig, TransformerForecaster)
