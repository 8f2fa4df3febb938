"""Autoformer (Wu et al., NeurIPS 2021: 'Decomposition Transformers with Auto-Correlation for Long-Term
Series Forecasting'), as in the authors' thuml/Autoformer code (models/Autoformer.py,
layers/AutoCorrelation.py, layers/Autoformer_EncDec.py, layers/Embed.py).

    x [B, input_len, C] --series_decomp--> seasonal, trend
    decoder seasonal init = [seasonal[-label_len:], zeros(horizon)]
    decoder trend init    = [trend[-label_len:], mean_t(x) repeated horizon times]
    encoder: DataEmbedding_wo_pos(x) -> N x [AutoCorrelation -> +res -> decomp -> FFN -> +res -> decomp]
             -> my_Layernorm
    decoder: DataEmbedding_wo_pos(seasonal init) -> M x [self AutoCorrelation -> +res -> decomp (trend1)
             -> cross AutoCorrelation(encoder) -> +res -> decomp (trend2) -> FFN -> +res -> decomp (trend3)];
             trend += circular Conv1d_k3(trend1 + trend2 + trend3) per layer
             -> my_Layernorm -> Linear(d -> C) = seasonal part
    prediction = (seasonal part + accumulated trend)[-horizon:]

Auto-Correlation (per head): R(τ) = irfft(rfft(Q) · conj(rfft(K))) over time, i.e. the circular
correlation Σ_t Q[(t+τ) mod L]·K[t] summed over the head dimension; keys/values are zero-padded
or truncated to the query length L first. R is averaged over heads and channels, the top
k = int(factor · ln L) delays are kept, their correlations softmaxed, and the values rolled by
each delay are summed with those weights:
- `train=True`: the authors' training variant: the delays are the top-k of the batch-mean R,
  shared by the whole batch (each sample keeps its own weights); values are rolled by each delay.
- `train=False`: the inference variant: per-sample top-k delays, values gathered at (t + τ) mod L.
Each AutoCorrelation sows its delays [B, k], softmax weights [B, k] and head/channel-mean
correlation [B, L] into the 'intermediates' collection (`mutable=['intermediates']`) for plots.

Other details from the authors' code: FFNs are two bias-free kernel-size-1 convolutions
(= Dense without bias); the token embedding is a bias-free circular Conv1d of width 3 (kaiming
normal init) with an optional bias-free Linear of time features; no positional encoding; dropout
on the embedding, the correlation output and the FFN. The authors' AutoCorrelation also builds an
attention-dropout module that it never applies; so does this one (i.e. it has none).

Inert parameters of the authors' network are left out (their outputs are the same, which the
parity tests check with random values in them): a query-projection bias adds b·Σ_t K[t] to R(τ),
the same for every delay, which neither the top-k nor the softmax sees; so does a key-projection
bias, except when the keys are zero-padded (decoder cross-correlation with label_len + horizon >
input_len), the one case where it is kept; my_Layernorm's bias is removed again by its own mean
over time. Such parameters would only ever get rounding noise as gradients.

Optional time features: with `num_time_features > 0` the batch must hold
`time_features` float[B, input_len + horizon, num_time_features] (the lookback's and the horizon's
calendar features); the encoder uses the first input_len steps, the decoder the last
label_len + horizon.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from fintrans import axes
from fintrans.layers import Block, Conv1D, Dense, LayerNorm, SeriesDecomp, Stack, series_decomp
from fintrans.layers.mlp import activation as activation_fn
from fintrans.models import register
from fintrans.models.config import ConfigError, ModelConfig, check_choice, check_positive, check_rate

ACTIVATIONS = ("relu", "gelu")  # the authors' choice: F.relu if 'relu' else F.gelu


def top_k_delays(length: int, factor: float) -> int:
    """The number of delays kept for a query length: int(factor · ln length), as the authors."""
    return int(factor * math.log(length))


def correlation(q: jax.Array, k: jax.Array) -> jax.Array:
    """Circular cross-correlation over time, per head and channel, via FFT.

    q [B, L, H, E], k [B, L, H, E] -> R [B, L, H, E] with R[b, τ, h, e] = Σ_t q[b, (t+τ) mod L, h, e] · k[b, t, h, e].
    Computed in float32 (XLA's FFT has no bfloat16)."""
    length = q.shape[1]
    qf = jnp.fft.rfft(q.astype(jnp.float32), axis=1)
    kf = jnp.fft.rfft(k.astype(jnp.float32), axis=1)
    return jnp.fft.irfft(qf * jnp.conj(kf), n=length, axis=1)


def _resize(x: jax.Array, length: int) -> jax.Array:
    """Zero-pad or truncate axis 1 to `length` (keys and values to the query length)."""
    if x.shape[1] >= length:
        return x[:, :length]
    return jnp.concatenate([x, jnp.zeros((x.shape[0], length - x.shape[1]) + x.shape[2:], x.dtype)], axis=1)


def delay_sum(values: jax.Array, delays: jax.Array, weights: jax.Array) -> jax.Array:
    """out[b, t] = Σ_i weights[b, i] · values[b, (t + delays[b, i]) mod L]: the values rolled by each delay,
    weighted and summed (both variants' aggregation).

    Computed as one batched matmul with the circulant matrix of the scattered weights,
    C[b, t, s] = Σ_i weights[b, i] · [s ≡ t + delays[b, i] (mod L)], rather than k rolls or gathers:
    the same sum without gathering a [B, L, k, H, E] tensor (a CPU training step of the forecasting
    config at horizon 24 went from 199 to 159 ms). values [B, L, H, E], delays/weights [B, k] ->
    [B, L, H, E] float32."""
    length = values.shape[1]
    kernel = jnp.einsum("bk,bkl->bl", weights, jax.nn.one_hot(delays, length, dtype=jnp.float32))  # [B, L]
    shift = (jnp.arange(length)[None, :] - jnp.arange(length)[:, None]) % length  # [t, s] -> s - t mod L
    return jnp.einsum("bts,bshe->bthe", kernel[:, shift], values.astype(jnp.float32))


def aggregate_training(values: jax.Array, mean_corr: jax.Array, top_k: int):
    """Training variant: delays = top-k of the batch-mean correlation, shared across the batch.

    values [B, L, H, E], mean_corr [B, L] -> (aggregated values [B, L, H, E] float32, delays [B, k],
    softmax weights [B, k])."""
    _, index = jax.lax.top_k(mean_corr.mean(0), top_k)  # [k]
    weights = jax.nn.softmax(mean_corr[:, index], axis=-1)  # [B, k]: each sample's own correlations
    delays = jnp.broadcast_to(index, weights.shape)
    return delay_sum(values, delays, weights), delays, weights


def aggregate_inference(values: jax.Array, mean_corr: jax.Array, top_k: int):
    """Inference variant: per-sample top-k delays; values gathered at (t + delay) mod L.

    values [B, L, H, E], mean_corr [B, L] -> (aggregated values, delays [B, k], weights [B, k])."""
    corr, delays = jax.lax.top_k(mean_corr, top_k)  # [B, k] each
    weights = jax.nn.softmax(corr, axis=-1)
    return delay_sum(values, delays, weights), delays, weights


def auto_correlation(q: jax.Array, k: jax.Array, v: jax.Array, *, factor: float, train: bool):
    """The Auto-Correlation mechanism on projected heads.

    q [B, L, H, E], k and v [B, S, H, E] -> (out [B, L, H, E] float32, delays [B, k], weights [B, k],
    mean correlation [B, L]). Keys and values are zero-padded or truncated to L."""
    length = q.shape[1]
    top_k = top_k_delays(length, factor)
    if not 1 <= top_k <= length:
        raise ValueError(f"auto_correlation: int(factor={factor} * ln(length={length})) = {top_k} delays; "
                         f"need between 1 and {length}")
    k, v = _resize(k, length), _resize(v, length)
    mean_corr = correlation(q, k).mean(axis=(2, 3))  # [B, L]: averaged over heads and channels
    aggregate = aggregate_training if train else aggregate_inference
    out, delays, weights = aggregate(v, mean_corr, top_k)
    return out, delays, weights, mean_corr


class AutoCorrelationLayer(nn.Module):
    """Projections to heads, Auto-Correlation, projection back (the authors' AutoCorrelationLayer)."""
    num_heads: int
    factor: float
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: Optional[jax.Array] = None, *,
                 deterministic: bool = True) -> jax.Array:
        """Self-correlation without `context`; deterministic=False is the authors' training variant."""
        context = x if context is None else context
        train = not deterministic
        d = x.shape[-1]
        head_dim = d // self.num_heads
        proj = lambda name, bias: Dense((self.num_heads, head_dim), (axes.EMBED,), (axes.HEADS, axes.HEAD_DIM),
                                        use_bias=bias, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        # Biases that shift R(τ) equally at every delay are inert (see the module docstring).
        padded = context.shape[1] < x.shape[1]
        q, k, v = proj("query", False)(x), proj("key", padded)(context), proj("value", True)(context)
        out, delays, weights, mean_corr = auto_correlation(q, k, v, factor=self.factor, train=train)
        self.sow("intermediates", "delays", delays)
        self.sow("intermediates", "weights", weights)
        self.sow("intermediates", "correlation", mean_corr)
        return Dense(d, (axes.HEADS, axes.HEAD_DIM), (axes.EMBED,), dtype=self.dtype, param_dtype=self.param_dtype,
                     name="out")(out.astype(self.dtype))


# torch.nn.init.kaiming_normal_(mode='fan_in', nonlinearity='leaky_relu'): gain² = 2 / (1 + 0.01²).
_kaiming_leaky = nn.initializers.variance_scaling(2.0 / (1 + 0.01 ** 2), "fan_in", "normal")


class DataEmbedding(nn.Module):
    """The authors' DataEmbedding_wo_pos: token conv (+ time-feature Linear) -> dropout."""
    embed_dim: int
    dropout_rate: float
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, time_features, *, deterministic: bool):
        y = Conv1D(self.embed_dim, 3, padding="circular", use_bias=False, in_axis=axes.CHANNELS, out_axis=axes.EMBED,
                   kernel_init=_kaiming_leaky, dtype=self.dtype, param_dtype=self.param_dtype,
                   name="token")(x.astype(self.dtype))
        if time_features is not None:
            y = y + Dense(self.embed_dim, (None,), (axes.EMBED,), use_bias=False, dtype=self.dtype,
                          param_dtype=self.param_dtype, name="time")(time_features.astype(self.dtype))
        return nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)


class SeasonalLayerNorm(nn.Module):
    """The authors' my_Layernorm: LayerNorm over features, minus its mean over time."""
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        # no bias: the mean over time would remove it again
        y = LayerNorm(epsilon=1e-5, use_bias=False, dtype=jnp.float32, param_dtype=self.param_dtype, name="norm")(x)
        return (y - y.mean(axis=1, keepdims=True)).astype(self.dtype)


class FeedForward(nn.Module):
    """conv1 (k=1, no bias) -> activation -> dropout -> conv2 (k=1, no bias) -> dropout."""
    mlp_dim: int
    activation: str
    dropout_rate: float
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, deterministic: bool):
        drop = lambda y: nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
        h = Dense(self.mlp_dim, (axes.EMBED,), (axes.MLP,), use_bias=False, dtype=self.dtype,
                  param_dtype=self.param_dtype, name="wi")(x)
        h = nn.with_logical_constraint(h, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_MLP))
        h = drop(activation_fn(self.activation)(h))
        return drop(Dense(x.shape[-1], (axes.MLP,), (axes.EMBED,), use_bias=False, dtype=self.dtype,
                          param_dtype=self.param_dtype, name="wo")(h))


class DecoderLayer(nn.Module):
    """The authors' DecoderLayer on the carry (seasonal, accumulated trend):
    s = decomp(s + drop(SelfCorr(s))) -> trend1; s = decomp(s + drop(CrossCorr(s, context))) -> trend2;
    s = decomp(s + FFN(s)) -> trend3; trend += circular conv3(trend1 + trend2 + trend3)."""
    num_heads: int
    factor: float
    mlp_dim: int
    activation: str
    dropout_rate: float
    moving_avg: int
    num_channels: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, carry, *, context: jax.Array, deterministic: bool = True):
        s, trend = carry
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        drop = lambda y: nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
        decomp = lambda y: series_decomp(y, self.moving_avg)
        correlate = lambda name: AutoCorrelationLayer(self.num_heads, self.factor, name=name, **kw)
        s = nn.with_logical_constraint(s, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED))
        s, trend1 = decomp(s + drop(correlate("self_correlation")(s, deterministic=deterministic)))
        s, trend2 = decomp(s + drop(correlate("cross_correlation")(s, context, deterministic=deterministic)))
        s, trend3 = decomp(s + FeedForward(self.mlp_dim, self.activation, self.dropout_rate, name="ffn",
                                           **kw)(s, deterministic=deterministic))
        residual_trend = Conv1D(self.num_channels, 3, padding="circular", use_bias=False, in_axis=axes.EMBED,
                                out_axis=axes.CHANNELS, name="trend_projection", **kw)(trend1 + trend2 + trend3)
        return s, trend + residual_trend.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class AutoformerConfig(ModelConfig):
    DATA_FIELDS = {"num_channels": "num_channels", "input_len": "input_len", "horizon": "horizon"}  # see ModelConfig
    input_len: int = 96  # lookback (the authors' seq_len)
    label_len: int = 48  # the decoder's start window: the last label_len lookback steps
    horizon: int = 24  # pred_len
    num_channels: int = 1  # enc_in = dec_in = c_out
    embed_dim: int = 64  # d_model (512 in the paper)
    num_heads: int = 8
    encoder_layers: int = 2  # e_layers
    decoder_layers: int = 1  # d_layers
    mlp_dim: int = 256  # d_ff (2048 in the paper)
    moving_avg: int = 25  # decomposition window; odd
    factor: float = 1.0  # c in k = int(c · ln L); the authors' default 1, their scripts 3
    activation: str = "gelu"
    dropout_rate: float = 0.05
    num_time_features: int = 0  # 0: no calendar features in the batch

    def validate(self):
        for name in ("input_len", "horizon", "num_channels", "embed_dim", "num_heads", "encoder_layers",
                     "decoder_layers", "mlp_dim", "moving_avg"):
            check_positive(name, getattr(self, name))
        check_positive("label_len", self.label_len, allow_zero=True)
        check_positive("num_time_features", self.num_time_features, allow_zero=True)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_rate("dropout_rate", self.dropout_rate)
        if self.moving_avg % 2 == 0:
            raise ConfigError(f"moving_avg={self.moving_avg} must be odd (the replicate-padded moving average "
                              "keeps the series length only for odd windows)")
        if self.label_len > self.input_len:
            raise ConfigError(f"label_len={self.label_len} must be <= input_len={self.input_len}: the decoder "
                              "starts from the last label_len lookback steps")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if isinstance(self.factor, bool) or not isinstance(self.factor, (int, float)) or self.factor <= 0:
            raise ConfigError(f"factor={self.factor!r} must be a positive number")
        for what, length in (("input_len", self.input_len), ("label_len + horizon", self.decoder_len)):
            k = top_k_delays(length, self.factor)
            if not 1 <= k <= length:
                raise ConfigError(f"factor={self.factor} keeps int(factor * ln({what}={length})) = {k} delays; "
                                  f"need between 1 and {length} (raise factor or the length)")

    @property
    def decoder_len(self) -> int:
        return self.label_len + self.horizon


class Autoformer(nn.Module):
    """batch {'inputs': float[B, input_len, C] (+ 'time_features' float[B, input_len + horizon, F] when
    num_time_features = F > 0)} -> predictions float32[B, horizon, C]."""
    config: AutoformerConfig

    @nn.compact
    def __call__(self, batch, *, train: bool = False) -> jax.Array:
        cfg = self.config
        x = batch["inputs"]
        if x.ndim != 3 or tuple(x.shape[1:]) != (cfg.input_len, cfg.num_channels):
            raise ValueError(f"autoformer: inputs must be [batch, input_len={cfg.input_len}, num_channels="
                             f"{cfg.num_channels}], got {tuple(x.shape)}")
        enc_marks, dec_marks = self._time_features(batch, x.shape[0])
        dtype, pdtype = cfg.compute_dtype, cfg.params_dtype
        deterministic = not train
        x = nn.with_logical_constraint(x.astype(jnp.float32), (axes.ACT_BATCH, axes.ACT_LENGTH, None))

        # Decomposition init of the decoder (float32, like the series).
        seasonal, trend = series_decomp(x, cfg.moving_avg)
        start = cfg.input_len - cfg.label_len
        mean = jnp.broadcast_to(x.mean(axis=1, keepdims=True), (x.shape[0], cfg.horizon, x.shape[2]))
        trend_init = jnp.concatenate([trend[:, start:], mean], axis=1)
        seasonal_init = jnp.concatenate([seasonal[:, start:], jnp.zeros_like(mean)], axis=1)

        kw = dict(dtype=dtype, param_dtype=pdtype)
        embed = lambda name: DataEmbedding(cfg.embed_dim, cfg.dropout_rate, name=name, **kw)

        # Encoder: blocks of x = decomp(x + dropout(AutoCorrelation(x))); x = decomp(x + FFN(x)).
        h = embed("encoder_embed")(x, enc_marks, deterministic=deterministic)
        encoder_block = functools.partial(
            Block, token_mixer=functools.partial(AutoCorrelationLayer, cfg.num_heads, cfg.factor, **kw),
            channel_mixer=functools.partial(FeedForward, cfg.mlp_dim, cfg.activation, cfg.dropout_rate, **kw),
            norm=functools.partial(SeriesDecomp, cfg.moving_avg), norm_position="post",
            token_dropout_rate=cfg.dropout_rate, token_mixer_name="correlation", channel_mixer_name="ffn", **kw)
        h = Stack(encoder_block, cfg.encoder_layers, name="encoder")(h, deterministic=deterministic)
        enc = SeasonalLayerNorm(name="encoder_norm", **kw)(h)

        # Decoder: layers carry (seasonal, accumulated trend) and read the encoder output.
        decoder_layer = functools.partial(
            DecoderLayer, cfg.num_heads, cfg.factor, cfg.mlp_dim, cfg.activation, cfg.dropout_rate, cfg.moving_avg,
            cfg.num_channels, **kw)
        s = embed("decoder_embed")(seasonal_init, dec_marks, deterministic=deterministic)
        s, trend_acc = Stack(decoder_layer, cfg.decoder_layers, name="decoder")(
            (s, trend_init), context=enc, deterministic=deterministic)
        s = SeasonalLayerNorm(name="decoder_norm", **kw)(s)
        seasonal_part = Dense(cfg.num_channels, (axes.EMBED,), (axes.CHANNELS,), name="projection", **kw)(s)
        y = (trend_acc + seasonal_part.astype(jnp.float32))[:, -cfg.horizon:]
        return nn.with_logical_constraint(y, (axes.ACT_BATCH, axes.ACT_LENGTH, None)).astype(jnp.float32)

    def _time_features(self, batch, batch_size):
        cfg = self.config
        marks = batch.get("time_features")
        if cfg.num_time_features == 0:
            if marks is not None:
                raise ValueError("autoformer: the batch has 'time_features' but num_time_features=0; set "
                                 "num_time_features to their count or drop them from the batch")
            return None, None
        expected = (batch_size, cfg.input_len + cfg.horizon, cfg.num_time_features)
        if marks is None or tuple(marks.shape) != expected:
            got = None if marks is None else tuple(marks.shape)
            raise ValueError(f"autoformer: time_features must be [batch, input_len + horizon = "
                             f"{cfg.input_len + cfg.horizon}, num_time_features={cfg.num_time_features}] = "
                             f"{expected}, got {got}")
        return marks[:, :cfg.input_len], marks[:, cfg.input_len - cfg.label_len:]


register("autoformer", AutoformerConfig, Autoformer)
