"""SANSformer (Kumar et al., 'Self-Supervised Forecasting in Electronic Health Records with Attention-Free
Models', 2108.13672): an attention-free, causal gMLP-like encoder of patient visit histories, pretrained
with Generative Summary Pretraining (GSP) and then fine-tuned for the downstream prediction.

Visit embedding: each visit's feature vector (multi-hot diagnosis/procedure codes plus scaled age and time
gap; `fintrans.data.builders.patient_visits`) goes through a linear map (= the sum of the embeddings of its
codes plus a projection of the numeric features).
Block (pre-norm, residual), with h = `hidden_dim`:
    z = GELU(W_in · LN(x))            [L, 2h], split into res and gate (each [L, h])
    gate = W_T · LN(gate) + b_T        causal token mixing: W_T [L, L] with its upper triangle masked
                                       (visit t mixes visits ≤ t only), initialised ≈ 0 (U(±ε), ε = 1e-3/L)
                                       and b_T = 1, so a fresh block starts as a plain channel MLP
    x = x + Dropout(W_out · (res ⊙ gate))
This is gMLP's spatial gating unit made causal, which the paper adapts to EHR sequences.

mode='gsp' (pretraining): a linear head at every visit but the last predicts the next visit's feature
vector (the 'summary' of the future; targets from `patient_visits` with gsp=1, forecasting task, MSE):
outputs [B, L-1, num_features]. mode='classify' (fine-tuning): final LN, the last visit's vector -> linear
head -> logits [B, num_classes] (classification task). The two modes share every parameter but the one
named HEAD, so fine-tuning starts from a GSP run with the trainer's warm start (config.init_from = the GSP
run's workdir, config.init_from_keep_fresh = HEAD; experiments/configs/sansformer_visits.py's `pretrained=`).
Our reading where the summary is ambiguous: the paper's GSP predicts summary statistics of a future
window; here the window is the next visit (its feature vector).
"""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from fintrans import axes
from fintrans.layers import Block, Dense, LayerNorm, Stack, param_with_axes
from fintrans.models import register
from fintrans.models.config import ConfigError, ModelConfig, check_choice, check_positive, check_rate

MODES = ("classify", "gsp")
HEAD = "head"  # the only parameters the GSP and fine-tuning models do not share


@dataclasses.dataclass(frozen=True)
class SANSformerConfig(ModelConfig):
    DATA_FIELDS = {"num_classes": "num_classes"}  # see ModelConfig
    seq_len: int = 16  # visits per history
    num_features: int = 34  # per-visit feature vector (patient_visits.NUM_FEATURES)
    num_classes: int = 3
    embed_dim: int = 64
    hidden_dim: int = 128  # width of res and gate in each block
    num_layers: int = 2
    mode: str = "classify"
    norm_epsilon: float = 1e-5
    dropout_rate: float = 0.0

    def validate(self):
        for name in ("seq_len", "num_features", "num_classes", "embed_dim", "hidden_dim", "num_layers"):
            check_positive(name, getattr(self, name))
        check_choice("mode", self.mode, MODES)
        check_rate("dropout_rate", self.dropout_rate)
        if self.mode == "gsp" and self.seq_len < 2:
            raise ConfigError(f"seq_len={self.seq_len} must be at least 2 for mode='gsp' (a next visit to predict)")
        if not isinstance(self.norm_epsilon, (int, float)) or self.norm_epsilon <= 0:
            raise ConfigError(f"norm_epsilon={self.norm_epsilon!r} must be a positive float")


class CausalTokenMixing(nn.Module):
    """y[t] = Σ_{s≤t} W[t, s] x[s] + b[t] over axis 1 of x [B, L, C]."""
    length: int
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x):
        eps = 1e-3 / self.length
        w = param_with_axes(self, "kernel", nn.initializers.uniform(2 * eps), (self.length, self.length),
                            (axes.HORIZON, axes.LENGTH), self.param_dtype)
        w = w - jnp.asarray(eps, w.dtype)  # U(-eps, eps)
        b = param_with_axes(self, "bias", nn.initializers.ones, (self.length,), (axes.HORIZON,), self.param_dtype)
        w = jnp.tril(w.astype(self.dtype))
        return jnp.einsum("ts,bsc->btc", w, x.astype(self.dtype)) + b.astype(self.dtype)[None, :, None]


class CausalGatingUnit(nn.Module):
    """The SANS block's token mixer: GELU(W_in·x) split into res and gate, gate <- causal token mixing of
    LN(gate), out = W_out·(res ⊙ gate). The block around it adds the pre-norm, dropout and residual."""
    config: SANSformerConfig

    @nn.compact
    def __call__(self, z, *, deterministic: bool = True):
        cfg = self.config
        dt, pdt = cfg.compute_dtype, cfg.params_dtype
        z = jax.nn.gelu(Dense((2, cfg.hidden_dim), (axes.EMBED,), (None, axes.MLP), dtype=dt, param_dtype=pdt,
                              name="w_in")(z), approximate=False)
        res, gate = z[..., 0, :], z[..., 1, :]
        gate = LayerNorm(cfg.norm_epsilon, dtype=dt, param_dtype=pdt, name="gate_norm")(gate)
        gate = CausalTokenMixing(cfg.seq_len, dt, pdt, name="token_mixing")(gate)
        y = nn.with_logical_constraint(res * gate, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_MLP))
        return Dense(cfg.embed_dim, (axes.MLP,), (axes.EMBED,), dtype=dt, param_dtype=pdt, name="w_out")(y)


class SANSformer(nn.Module):
    """batch {'inputs': float[B, seq_len, num_features]} -> logits float32[B, num_classes] (mode='classify')
    or next-visit predictions float32[B, seq_len - 1, num_features] (mode='gsp')."""
    config: SANSformerConfig

    @nn.compact
    def __call__(self, batch, *, train: bool = False) -> jax.Array:
        cfg = self.config
        x = batch["inputs"]
        expected = (cfg.seq_len, cfg.num_features)
        if x.ndim != 3 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"sansformer: inputs must be visit histories [batch, seq_len={cfg.seq_len}, "
                             f"num_features={cfg.num_features}], got {tuple(x.shape)}")
        dt, pdt = cfg.compute_dtype, cfg.params_dtype
        x = Dense(cfg.embed_dim, (axes.CHANNELS,), (axes.EMBED,), dtype=dt, param_dtype=pdt,
                  name="visit_embed")(x.astype(dt))
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=not train)
        # Pre-norm blocks with the gating unit as token mixer and no channel mixer.
        block = functools.partial(Block, token_mixer=functools.partial(CausalGatingUnit, cfg), norm="layernorm",
                                  norm_epsilon=cfg.norm_epsilon, token_dropout_rate=cfg.dropout_rate,
                                  token_mixer_name="gating", dtype=dt, param_dtype=pdt)
        x = Stack(block, cfg.num_layers, name="blocks")(x, deterministic=not train)
        x = LayerNorm(cfg.norm_epsilon, dtype=dt, param_dtype=pdt, name="final_norm")(x)
        if cfg.mode == "gsp":
            out = Dense(cfg.num_features, (axes.EMBED,), (axes.CHANNELS,), dtype=dt, param_dtype=pdt,
                        name=HEAD)(x[:, :-1])
        else:
            out = Dense(cfg.num_classes, (axes.EMBED,), (axes.CLASSES,), dtype=dt, param_dtype=pdt,
                        name=HEAD)(x[:, -1])
        return out.astype(jnp.float32)


register("sansformer", SANSformerConfig, SANSformer)

