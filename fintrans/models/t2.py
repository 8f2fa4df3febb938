"""t2: time-series transformer for photometric classification (Allam & McEwen, arXiv 2105.06178).

    x [B, T, C] (steps x passbands/channels) -> Conv1D embedding to d_model (ReLU; the authors'
      ConvEmbedding is kernel_size=1, i.e. a per-step projection) -> + sinusoidal positions
      -> N post-LN transformer blocks (ReLU FFN, LayerNorm eps 1e-6, dropout on each sublayer's
         output before its residual add; none inside the FFN)
      -> global average pooling over the VALID steps -> dropout -> Dense(num_classes) -> logits

Follows `tallamjr/astronet` `astronet/t2/model.py` / `transformer.py` / `attention.py` (Keras): the
block is `att -> dropout1 -> LN(x + .)`, `Dense(ff_dim, relu) -> Dense(d) -> dropout2 -> LN(x + .)`,
attention without dropout on its probabilities, scaled by 1/sqrt(head_dim), all projections biased.

Differences from astronet (and the paper), each deliberate:
  - Logits are returned; the softmax lives in the loss.
  - `mlp_dropout_rate` (default 0.0, astronet's behaviour): dropout on the FFN's hidden activations,
    which astronet does not have (an earlier version here applied `dropout_rate` there).
  - One `dropout_rate` drives the blocks' two dropouts and the one after pooling. astronet fixes the
    blocks' rate at 0.1 (TransformerBlock's `rate`) and tunes only the pooled dropout (`droprate`,
    0.1 in its UEA runs); with the default 0.1 both agree.
  - Masks: astronet takes fixed-length series with no mask; here padded steps (batch['mask']) are
    zeroed, never attended to and left out of the average (see below). Unpadded batches compute what
    astronet computes.
  - `conv_kernel_size` (default 1 = astronet's ConvEmbedding) may widen the embedding convolution.
  - Initialisers: Keras' defaults are glorot_uniform kernels; here fintrans' Dense/Conv1D defaults
    (lecun_normal kernels, zero biases). The optimiser and schedule are the trainer's (the config's),
    not astronet's optuna-tuned Adam runs.
  - The paper's redshift/auxiliary-feature inputs (astronet's `num_aux_feats`, `add_aux_feats_to`)
    are not implemented; the model takes the series only.

Masks. `batch['mask']` bool[B, T] (optional; all steps valid without it) marks the real steps of a
zero-padded batch. Padded steps are zeroed before the embedding, masked out as attention keys and
left out of the average, so their values never change the logits; with conv_kernel_size > 1 the
convolution sees zeros past a series' end (as an unpadded series of that length with 'SAME' zero
padding would).

Class-activation maps (the paper's interpretability tool, `astronet/t2/cams.py`): with h_t the
last block's output at step t and (W, b) the classifier,

    cam[b, t, k] = h_t · W[:, k]          (0 at padded steps)

and because pooling is a mean over the n valid steps and the classifier is linear,

    logits[b, k] = sum_t cam[b, t, k] / n_b + b_k        (exactly, outside dropout).

Get them with `model.apply(params, batch, method='class_activation_maps')` -> (logits, cam), or
from the 'intermediates' collection: `model.apply(params, batch, mutable=['intermediates'])` sows
`cam` there on every call (not during init).
"""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from fintrans import axes
from fintrans.layers import Conv1D, Dense, Stack, TransformerBlock, check_series_batch, pool, sinusoidal_positions
from fintrans.layers.mlp import ACTIVATIONS
from fintrans.models import register
from fintrans.models.config import AttentionConfig, ConfigError, check_choice, check_positive, check_rate


@dataclasses.dataclass(frozen=True)
class T2Config(AttentionConfig):
    DATA_FIELDS = {"num_classes": "num_classes", "num_channels": "num_channels"}  # see ModelConfig
    max_len: int = 100  # longest series (sinusoidal table length); batches may be shorter
    num_channels: int = 6
    num_classes: int = 4
    embed_dim: int = 32  # the authors' num_filters == embed_dim
    conv_kernel_size: int = 1  # astronet's ConvEmbedding: Conv1D(kernel_size=1, activation='relu')
    num_layers: int = 1
    num_heads: int = 4
    mlp_dim: int = 128  # ff_dim
    activation: str = "relu"
    norm_epsilon: float = 1e-6
    dropout_rate: float = 0.1  # on each block sublayer's output (astronet's rate=0.1) and after pooling
    mlp_dropout_rate: float = 0.0  # on the FFN's hidden activations; astronet has none there

    def validate(self):
        for name in ("max_len", "num_channels", "num_classes", "embed_dim", "conv_kernel_size", "num_layers",
                     "num_heads", "mlp_dim"):
            check_positive(name, getattr(self, name))
        check_choice("activation", self.activation, ACTIVATIONS)
        check_rate("dropout_rate", self.dropout_rate)
        check_rate("mlp_dropout_rate", self.mlp_dropout_rate)
        if not isinstance(self.norm_epsilon, (int, float)) or self.norm_epsilon <= 0:
            raise ConfigError(f"norm_epsilon={self.norm_epsilon!r} must be a positive float")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")


class T2(nn.Module):
    """batch {'inputs': float[B, T, C], 'mask'?: bool[B, T]} -> logits float32[B, num_classes]."""
    config: T2Config

    def setup(self):
        cfg = self.config
        dtype, pdtype = cfg.compute_dtype, cfg.params_dtype
        # astronet's ConvEmbedding: Conv1D over time, 'same' zero padding (kernel [k, C, d]).
        self.embed = Conv1D(cfg.embed_dim, cfg.conv_kernel_size, padding="same", dtype=dtype, param_dtype=pdtype)
        block = functools.partial(
            TransformerBlock, num_heads=cfg.num_heads, head_dim=cfg.embed_dim // cfg.num_heads, mlp_dim=cfg.mlp_dim,
            norm="layernorm", norm_position="post", norm_epsilon=cfg.norm_epsilon, activation=cfg.activation,
            use_bias=True, dropout_rate=cfg.dropout_rate, mlp_dropout_rate=cfg.mlp_dropout_rate,
            attention_impl=cfg.attention_impl, dtype=dtype, param_dtype=pdtype)
        self.blocks = Stack(block, cfg.num_layers, nest=False)
        self.pool_dropout = nn.Dropout(cfg.dropout_rate)
        self.head = Dense(cfg.num_classes, (axes.EMBED,), (axes.CLASSES,), dtype=dtype, param_dtype=pdtype)

    def features(self, batch, *, train: bool = False):
        """(last block's outputs h [B, T, d], valid [B, T])."""
        cfg = self.config
        x, valid = check_series_batch("t2", batch, cfg.max_len, cfg.num_channels)
        dtype = cfg.compute_dtype
        x = jnp.where(valid[..., None], x.astype(dtype), 0)
        h = nn.relu(self.embed(x))
        h = h + jnp.asarray(sinusoidal_positions(x.shape[1], cfg.embed_dim), dtype)
        key_mask = valid[:, None, None, :]  # [B, 1, 1, T]: padded steps are never attended to
        h = self.blocks(h, mask=key_mask, deterministic=not train)
        return h, valid

    def class_activation_maps(self, batch, *, train: bool = False):
        """(logits float32[B, K], cam float32[B, T, K]); cam[b, t, k] = h_t · W[:, k], 0 on padding."""
        h, valid = self.features(batch, train=train)
        pooled = pool(h, "mean", valid)
        pooled = self.pool_dropout(pooled, deterministic=not train)
        logits = self.head(pooled)
        logits = nn.with_logical_constraint(logits, (axes.ACT_BATCH, None))
        kernel = nn.unbox(self.head.variables["params"]["kernel"])
        cam = jnp.einsum("btd,dk->btk", h, jnp.asarray(kernel, h.dtype))
        cam = jnp.where(valid[..., None], cam, 0)
        return logits.astype(jnp.float32), cam.astype(jnp.float32)

    def __call__(self, batch, *, train: bool = False) -> jax.Array:
        logits, cam = self.class_activation_maps(batch, train=train)
        if not self.is_initializing():  # keep init's variables to parameters
            self.sow("intermediates", "cam", cam)
        return logits


register("t2", T2Config, T2)
