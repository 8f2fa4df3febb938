"""Transformer encoder with multi-feature Time2Vec for financial prediction (Bui, Chien, Kovács and Bognár,
2025, arXiv 2504.13801; docs/papers.md). No code was released; this follows the paper's
description (Time2Vec in place of positional encoding -> encoder -> pooling -> price regression) and, where
it leaves details open, the widely used Keras Time2Vec stock transformer (our reading, not the authors').

    x [B, L, C]  (the target stock and its most correlated peers as channels; see
                  fintrans.data.feature_selection and the `stocks` dataset's min_corr_pct)
      -> multi-feature Time2Vec, per channel c and step t, k = time2vec_dim components:
             t2v(τ)[0] = ω₀ τ + φ₀              (linear: non-periodic trend)
             t2v(τ)[i] = sin(ωᵢ τ + φᵢ), i ≥ 1  (periodic)
      -> concat([x, t2v]) [B, L, C·(1+k)]  -- in place of positional encoding; nothing else tells the
         encoder where a step sits
      -> (optional Linear to embed_dim) -> N transformer encoder blocks (post-LN, as the Keras encoder)
      -> head -> ŷ [B, horizon, C]

What τ is (`time2vec_input`):
- 'value' (default; as the Keras Time2Vector layer of stock transformers): τ is the feature's value
  x[t, c], and ω, φ are learned per (step, channel, component). The per-step ω, φ are what carry
  position: with them tied across steps the model is blind to order (tests check this).
- 'time': Kazemi et al.'s original Time2Vec of the step index, τ = t / input_len, with ω, φ per
  (channel, component): a learned multi-frequency time encoding for every feature.

`subtract_last` (default False; not in the paper): NLinear's normalisation, the model sees x - x[last step]
per channel and adds x[last step] back to its forecast, so it predicts changes from the last price rather
than price levels that drift outside the training range.

`position_encoding` (default 'time2vec', the paper's): the baselines the paper compares against replace
Time2Vec with a positional encoding. 'sinusoidal' (Vaswani et al.'s fixed table) or 'learned' (a trained
[input_len, width] table, normal(0.02) init): x -> Linear to width -> + positions -> the same encoder and head,
width = embed_dim or C·(1+k), so the encoder is as wide as with Time2Vec. No Time2Vec parameters then.

Heads (`head`): 'pool' (default; the paper's "pooling -> price regression"): mean over steps ->
dropout -> Dense(head_hidden, relu) -> dropout -> Dense(horizon·C). 'flatten': one linear map from
the flattened encoder output, as transformer_forecaster's default head.
"""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from fintrans import axes
from fintrans.layers import NORM_POSITIONS, Dense, LearnedPositions, Stack, TransformerBlock, param_with_axes
from fintrans.layers.embeddings import sinusoidal_positions
from fintrans.layers.mlp import ACTIVATIONS
from fintrans.models import register
from fintrans.models.config import AttentionConfig, ConfigError, check_choice, check_positive, check_rate

HEADS = ("pool", "flatten")
TIME2VEC_INPUTS = ("value", "time")
POSITION_ENCODINGS = ("time2vec", "sinusoidal", "learned")


def time2vec(tau: jax.Array, omega: jax.Array, phi: jax.Array) -> jax.Array:
    """Time2Vec of τ [...] with ω, φ [..., k] (broadcast against τ[..., None]) -> [..., k]:
    component 0 is ω₀τ + φ₀, components 1..k-1 are sin(ωᵢτ + φᵢ)."""
    z = tau[..., None] * omega + phi
    return jnp.concatenate([z[..., :1], jnp.sin(z[..., 1:])], axis=-1)


@dataclasses.dataclass(frozen=True)
class Time2VecEncoderConfig(AttentionConfig):
    DATA_FIELDS = {"num_channels": "num_channels", "input_len": "input_len", "horizon": "horizon"}  # see ModelConfig
    input_len: int = 96
    horizon: int = 24
    num_channels: int = 1
    time2vec_dim: int = 8  # k: one linear + k-1 periodic components per channel
    time2vec_input: str = "value"
    position_encoding: str = "time2vec"  # 'sinusoidal' | 'learned': the paper's baselines (module docstring)
    embed_dim: int = 0  # 0: the encoder works on the C·(1+k) concatenated features directly
    num_layers: int = 2
    num_heads: int = 4
    head_dim: int = 16
    mlp_dim: int = 128
    activation: str = "relu"  # the Keras encoder's Conv1D feed-forward uses relu
    norm_position: str = "post"
    norm_epsilon: float = 1e-6  # Keras LayerNormalization(epsilon=1e-6) in that encoder
    dropout_rate: float = 0.1
    head: str = "pool"
    head_hidden: int = 64
    subtract_last: bool = False

    def validate(self):
        for name in ("input_len", "horizon", "num_channels", "time2vec_dim", "num_layers", "num_heads", "head_dim",
                     "mlp_dim", "head_hidden"):
            check_positive(name, getattr(self, name))
        check_positive("embed_dim", self.embed_dim, allow_zero=True)
        check_choice("time2vec_input", self.time2vec_input, TIME2VEC_INPUTS)
        check_choice("position_encoding", self.position_encoding, POSITION_ENCODINGS)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("norm_position", self.norm_position, NORM_POSITIONS)
        check_choice("head", self.head, HEADS)
        check_rate("dropout_rate", self.dropout_rate)
        check_choice("subtract_last", self.subtract_last, (False, True))
        if not isinstance(self.norm_epsilon, (int, float)) or self.norm_epsilon <= 0:
            raise ConfigError(f"norm_epsilon={self.norm_epsilon!r} must be a positive float")

    @property
    def feature_dim(self) -> int:
        """Width of concat([x, t2v(x)]): C·(1+k)."""
        return self.num_channels * (1 + self.time2vec_dim)


class MultiFeatureTime2Vec(nn.Module):
    """[B, L, C] -> [B, L, C, k]: one Time2Vec per channel (and per step when τ is the value)."""
    input_len: int
    num_channels: int
    dim: int
    tau: str = "value"  # what τ is: see time2vec_input
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.tau == "value":
            shape, names = (self.input_len, self.num_channels, self.dim), (axes.LENGTH, axes.CHANNELS, None)
            tau = x
        else:
            shape, names = (self.num_channels, self.dim), (axes.CHANNELS, None)
            tau = jnp.broadcast_to((jnp.arange(self.input_len, dtype=self.dtype) / self.input_len)[None, :, None],
                                   x.shape)
        init = nn.initializers.normal(stddev=1.0)  # as the Time2Vec authors' code (torch.randn)
        omega = param_with_axes(self, "omega", init, shape, names, self.param_dtype)
        phi = param_with_axes(self, "phi", init, shape, names, self.param_dtype)
        return time2vec(tau.astype(self.dtype), omega.astype(self.dtype), phi.astype(self.dtype))


class Time2VecEncoder(nn.Module):
    """batch {'inputs': float[B, input_len, C]} -> predictions float32[B, horizon, C]."""
    config: Time2VecEncoderConfig

    @nn.compact
    def __call__(self, batch, *, train: bool = False) -> jax.Array:
        cfg = self.config
        series = batch["inputs"]
        expected = (cfg.input_len, cfg.num_channels)
        if series.ndim != 3 or tuple(series.shape[1:]) != expected:
            raise ValueError(f"time2vec_encoder: inputs must be [batch, input_len={cfg.input_len}, "
                             f"num_channels={cfg.num_channels}], got {tuple(series.shape)}")
        dtype, pdtype = cfg.compute_dtype, cfg.params_dtype
        deterministic = not train
        x = series.astype(dtype)
        last = x[:, -1:] if cfg.subtract_last else None
        if last is not None:
            x = x - last
        if cfg.position_encoding == "time2vec":
            t2v = MultiFeatureTime2Vec(cfg.input_len, cfg.num_channels, cfg.time2vec_dim, cfg.time2vec_input,
                                       dtype=dtype, param_dtype=pdtype, name="time2vec")(x)
            h = jnp.concatenate([x, t2v.reshape(x.shape[:2] + (-1,))], axis=-1)  # [B, L, C·(1+k)]
            if cfg.embed_dim:
                h = Dense(cfg.embed_dim, (axes.CHANNELS,), (axes.EMBED,), dtype=dtype, param_dtype=pdtype,
                          name="input_embed")(h)
        else:  # the baselines: a projection to the same width plus a positional encoding
            width = cfg.embed_dim or cfg.feature_dim
            h = Dense(width, (axes.CHANNELS,), (axes.EMBED,), dtype=dtype, param_dtype=pdtype, name="input_embed")(x)
            if cfg.position_encoding == "sinusoidal":
                pos = jnp.asarray(sinusoidal_positions(cfg.input_len, width), dtype)
            else:
                pos = LearnedPositions(cfg.input_len, width, param_dtype=pdtype, name="positions")(cfg.input_len)
            h = h + pos.astype(dtype)[None]
        h = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        block = functools.partial(
            TransformerBlock, num_heads=cfg.num_heads, head_dim=cfg.head_dim, mlp_dim=cfg.mlp_dim, norm="layernorm",
            norm_position=cfg.norm_position, norm_epsilon=cfg.norm_epsilon, activation=cfg.activation,
            use_bias=True, dropout_rate=cfg.dropout_rate, attention_impl=cfg.attention_impl, dtype=dtype,
            param_dtype=pdtype)
        h = Stack(block, cfg.num_layers, nest=False, name="blocks")(h, deterministic=deterministic)

        if cfg.head == "flatten":
            y = Dense((cfg.horizon, cfg.num_channels), (axes.LENGTH, axes.EMBED), (axes.HORIZON, axes.CHANNELS),
                      dtype=dtype, param_dtype=pdtype, name="head")(h)
        else:
            pooled = nn.Dropout(cfg.dropout_rate)(h.mean(axis=1), deterministic=deterministic)
            hidden = nn.relu(Dense(cfg.head_hidden, (axes.EMBED,), (axes.MLP,), dtype=dtype, param_dtype=pdtype,
                                   name="head_hidden")(pooled))
            hidden = nn.Dropout(cfg.dropout_rate)(hidden, deterministic=deterministic)
            y = Dense((cfg.horizon, cfg.num_channels), (axes.MLP,), (axes.HORIZON, axes.CHANNELS), dtype=dtype,
                      param_dtype=pdtype, name="head")(hidden)
        if last is not None:
            y = y + last
        y = nn.with_logical_constraint(y, (axes.ACT_BATCH, axes.ACT_LENGTH, None))
        return y.astype(jnp.float32)


register("time2vec_encoder", Time2VecEncoderConfig, Time2VecEncoder)
