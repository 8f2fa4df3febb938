"""iTransformer (Liu et al., ICLR 2024: 'iTransformer: Inverted Transformers Are Effective for Time
Series Forecasting'), as in the authors' thuml/iTransformer code (model/iTransformer.py).

    x [B, input_len, N]
      -> per-series normalisation (use_norm): x' = (x - mean_t) / sqrt(var_t + 1e-5)  (the mean detached)
      -> inverted embedding: each variate's whole lookback -> one token, Linear(input_len -> d) -> dropout
      -> L post-LN encoder blocks over the N variate tokens (full attention through fintrans.ops; the
         FFN is the authors' pair of kernel-size-1 convolutions with biases = Dense(d -> mlp -> d))
      -> final LayerNorm -> projector Linear(d -> horizon) per variate
      -> transpose to [B, horizon, N] -> de-normalise: ŷ · std + mean

Differences from the authors' code: their FullAttention applies dropout to the attention
probabilities; fintrans.ops has no attention-probability dropout, so dropout here acts on the
embedding, the attention output and the FFN (identical at evaluation). No time-feature tokens
(the authors append calendar marks as extra tokens when given; the forecasting batches here have none).
"""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from fintrans import axes
from fintrans.layers import Dense, LayerNorm, Stack, TransformerBlock
from fintrans.models import register
from fintrans.models.config import AttentionConfig, ConfigError, check_choice, check_positive, check_rate

ACTIVATIONS = ("relu", "gelu")
NORM_EPSILON = 1e-5  # the authors' series-normalisation epsilon (inside the square root)


@dataclasses.dataclass(frozen=True)
class ITransformerConfig(AttentionConfig):
    DATA_FIELDS = {"num_channels": "num_channels", "input_len": "input_len", "horizon": "horizon"}  # see ModelConfig
    input_len: int = 96  # lookback (seq_len)
    horizon: int = 24  # pred_len
    num_channels: int = 1  # variates (enc_in)
    embed_dim: int = 128  # d_model (512 in the paper)
    num_heads: int = 8
    num_layers: int = 2  # e_layers
    mlp_dim: int = 256  # d_ff
    activation: str = "gelu"
    dropout_rate: float = 0.1
    use_norm: bool = True  # per-series normalisation of the lookback, undone on the forecast
    norm_epsilon: float = 1e-5  # the encoder LayerNorms' (torch default)

    def validate(self):
        for name in ("input_len", "horizon", "num_channels", "embed_dim", "num_heads", "num_layers", "mlp_dim"):
            check_positive(name, getattr(self, name))
        check_choice("activation", self.activation, ACTIVATIONS)
        check_rate("dropout_rate", self.dropout_rate)
        if not isinstance(self.use_norm, bool):
            raise ConfigError(f"use_norm={self.use_norm!r} must be True or False")
        if isinstance(self.norm_epsilon, bool) or not isinstance(self.norm_epsilon, (int, float)) \
                or self.norm_epsilon <= 0:
            raise ConfigError(f"norm_epsilon={self.norm_epsilon!r} must be a positive float")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")


class ITransformer(nn.Module):
    """batch {'inputs': float[B, input_len, N]} -> predictions float32[B, horizon, N]."""
    config: ITransformerConfig

    @nn.compact
    def __call__(self, batch, *, train: bool = False) -> jax.Array:
        cfg = self.config
        x = batch["inputs"]
        if x.ndim != 3 or tuple(x.shape[1:]) != (cfg.input_len, cfg.num_channels):
            raise ValueError(f"itransformer: inputs must be [batch, input_len={cfg.input_len}, num_channels="
                             f"{cfg.num_channels}], got {tuple(x.shape)}")
        dtype, pdtype = cfg.compute_dtype, cfg.params_dtype
        deterministic = not train
        x = x.astype(jnp.float32)
        if cfg.use_norm:
            mean = jax.lax.stop_gradient(x.mean(axis=1, keepdims=True))  # the authors detach the mean only
            x = x - mean
            std = jnp.sqrt(jnp.var(x, axis=1, keepdims=True) + NORM_EPSILON)
            x = x / std

        tokens = jnp.swapaxes(x, 1, 2).astype(dtype)  # [B, N, input_len]: one token per variate
        tokens = nn.with_logical_constraint(tokens, (axes.ACT_BATCH, axes.ACT_LENGTH, None))
        h = Dense(cfg.embed_dim, (axes.LENGTH,), (axes.EMBED,), dtype=dtype, param_dtype=pdtype,
                  name="embed")(tokens)
        h = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        block = functools.partial(
            TransformerBlock, num_heads=cfg.num_heads, head_dim=cfg.embed_dim // cfg.num_heads, mlp_dim=cfg.mlp_dim,
            norm="layernorm", norm_position="post", norm_epsilon=cfg.norm_epsilon, activation=cfg.activation,
            use_bias=True, dropout_rate=cfg.dropout_rate, attention_impl=cfg.attention_impl, dtype=dtype,
            param_dtype=pdtype)
        h = Stack(block, cfg.num_layers, nest=False, name="blocks")(h, deterministic=deterministic)
        h = LayerNorm(epsilon=cfg.norm_epsilon, dtype=dtype, param_dtype=pdtype, name="final_norm")(h)
        y = Dense(cfg.horizon, (axes.EMBED,), (axes.HORIZON,), dtype=dtype, param_dtype=pdtype,
                  name="projector")(h)  # [B, N, horizon]
        y = jnp.swapaxes(y, 1, 2).astype(jnp.float32)
        if cfg.use_norm:
            y = y * std + mean
        return nn.with_logical_constraint(y, (axes.ACT_BATCH, axes.ACT_LENGTH, None))


register("itransformer", ITransformerConfig, ITransformer)
