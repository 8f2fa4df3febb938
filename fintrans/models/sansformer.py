"""SANSformer (Kumar et al., 'Self-Supervised Forecasting in Electronic Health Records with Attention-Free
Models', 2108.13672): an attention-free, causal gMLP-like encoder of patient visit histories, pretrained
with Generative Summary Pretraining (GSP) and then fine-tuned for the downstream prediction.

Visit embedding: each visit's feature vector (multi-hot diagnosis/procedure codes plus scaled age and time
gap; `fintrans.data.builders.patient_visits`) goes through a linear map (= the sum of the embeddings of its
codes plus a projection of the numeric features).

Layer (block='authors', the default: the authors' SansformerLayer and the residual their model puts around it),
with h = `hidden_dim` (theirs: 2·embed_dim) and f = `mlp_dim` (theirs: 4·embed_dim):
    u = LN_{T,E}(x)                    a layer norm over visits and channels jointly, no affine
    z = GELU(GELU(W_in · LN_a(u)))     [L, 2h], split into res and gate (GELU twice, as their code: their
                                       W_in is Linear+GELU and the unit applies its activation again)
    gate = W_T · LN_b(gate) + b_T      causal token mixing: W_T [L, L] with its upper triangle masked (visit t
                                       mixes visits <= t only), initialised ~ 0 (U(+-eps), eps = 1e-3/L), b_T = 1
    s = LN_c(W_out · (res * gate))     the spatial gating unit's output, post-normed
    x = x + LN_d(s + FFN(s))           FFN: Linear(f), GELU, dropout, Linear, dropout
This is gMLP's spatial gating unit made causal, which the paper adapts to EHR sequences. block='gmlp' (an
option kept from before) is one pre-norm residual unit, x = x + Dropout(W_out · (res * gate)) with
gate = W_T · LN(gate) + b_T, res and gate from a single GELU, no FFN and no post-norms.

mode='gsp' (Generative Summary Pretraining): the head at every visit t gives the log Poisson rates of
the summary statistics of the year after visit t (`patient_visits.window_summaries`: the number of visits in
(day_t, day_t + 365], then the number of diagnosis codes of each chapter those visits carry), outputs
[B, L, num_summaries]; count_regression task (Poisson NLL). Causal mixing keeps output t from seeing later
visits. mode='regress' (fine-tuning, the paper's downstream task): the patient vector (readout='pool', the
authors': mean + GELU(max) over the visits; 'last': the last visit's vector) -> head (the authors' LayerNorm
then linear; block='gmlp': a final LayerNorm before the readout and a linear head) -> log rate [B] of the
number of visits in the next year; count_regression task. mode='classify' (an option kept from before): the
same patient vector -> logits [B, num_classes] of the count's three buckets. The modes
share every parameter but the one named HEAD, so fine-tuning starts from a GSP run with the trainer's warm start
(config.init_from = the GSP run's workdir, config.init_from_keep_fresh = HEAD;
experiments/configs/sansformer_visits.py's `pretrained=`).

Sources: the paper (GSP predicts summary statistics of a future window; the downstream task is the count of
visits in the next year) and the authors' public code (github.com/ykumards/sansformers: the MIMIC-IV
mortality model only; it has neither GSP nor the count regression). Differences from that code:
- Token mixing: theirs is a 200 x 200 weight sliced to the sequence (init eps = 1e-3 / 200); ours is
  seq_len x seq_len with eps = 1e-3 / seq_len.
- Visit embedding: theirs sums learned code embeddings (codes, procedures, drugs, service, admission type,
  insurance, marital status) plus sinusoidal encodings of the visit index and of the cumulative time (15-day
  units), layer-normed, then concatenates demographics; ours is a linear map of the multi-hot codes and the
  scaled age and log gap (= summed code embeddings plus a projection), no positional or time encoding.
- Padding: theirs pools (and layer-norms over visits) padded visits too; our histories have a fixed length, so
  there is none.
- GSP head (their code has no GSP): the same LayerNorm-then-linear head as the regression, at every visit.
- Dropout: their config uses 0.3 in the FFN; ours defaults to 0 (`dropout_rate`, which also drops the visit
  embeddings; the experiment config sets it).
- Their optimiser is RAdam (betas 0.9, 0.99) with a one-cycle schedule and gradient-value clipping; ours is
  the trainer's AdamW with warmup and cosine decay.
Differences from the paper: the GSP window (one year after each visit), the statistics (visit count and
diagnoses per chapter) and the Poisson loss are our reading of its description (its full text could not be
consulted here); the downstream loss is Poisson NLL (the authors' code ships Poisson and zero-inflated Poisson
losses), metrics MAE and MSE; data are synthetic (patient_visits), not the Finnish registry.
"""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from fintrans import axes
from fintrans.layers import MLP, Block, Dense, Dropout, LayerNorm, Stack, param_with_axes
from fintrans.models import register
from fintrans.models.config import ConfigError, ModelConfig, check_choice, check_positive, check_rate

MODES = ("regress", "gsp", "classify")
BLOCKS = ("authors", "gmlp")
READOUTS = ("pool", "last")
HEAD = "head"  # the only parameters the GSP and fine-tuning models do not share


@dataclasses.dataclass(frozen=True)
class SANSformerConfig(ModelConfig):
    DATA_FIELDS = {"num_classes": "num_classes", "num_summaries": "num_summaries"}  # see ModelConfig
    seq_len: int = 16  # visits per history
    num_features: int = 34  # per-visit feature vector (patient_visits.NUM_FEATURES)
    num_classes: int = 3  # mode='classify'
    num_summaries: int = 7  # mode='gsp': summary statistics per visit (patient_visits.NUM_SUMMARIES)
    embed_dim: int = 64
    hidden_dim: int = 128  # width of res and gate in each block (the authors': 2 * embed_dim)
    mlp_dim: int = 256  # block='authors': the FFN's hidden width (the authors': 4 * embed_dim)
    num_layers: int = 2
    block: str = "authors"  # 'authors': their SansformerLayer; 'gmlp': one pre-norm residual gating unit
    mode: str = "regress"
    readout: str = "pool"  # regress/classify: 'pool' = mean + GELU(max) over visits (the authors'); 'last' visit
    norm_epsilon: float = 1e-5
    dropout_rate: float = 0.0

    def validate(self):
        for name in ("seq_len", "num_features", "num_classes", "num_summaries", "embed_dim", "hidden_dim",
                     "mlp_dim", "num_layers"):
            check_positive(name, getattr(self, name))
        check_choice("mode", self.mode, MODES)
        check_choice("block", self.block, BLOCKS)
        check_choice("readout", self.readout, READOUTS)
        check_rate("dropout_rate", self.dropout_rate)
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
    """The SANS token mixer: GELU(W_in·x) split into res and gate, gate <- causal token mixing of LN(gate),
    out = W_out·(res ⊙ gate); `double_gelu` applies the GELU twice, as the authors' code. The layer around it
    adds the norms, dropout and residual."""
    config: SANSformerConfig
    double_gelu: bool = False

    @nn.compact
    def __call__(self, z, *, deterministic: bool = True):
        cfg = self.config
        dt, pdt = cfg.compute_dtype, cfg.params_dtype
        z = jax.nn.gelu(Dense((2, cfg.hidden_dim), (axes.EMBED,), (None, axes.MLP), dtype=dt, param_dtype=pdt,
                              name="w_in")(z), approximate=False)
        if self.double_gelu:
            z = jax.nn.gelu(z, approximate=False)
        res, gate = z[..., 0, :], z[..., 1, :]
        gate = LayerNorm(cfg.norm_epsilon, dtype=dt, param_dtype=pdt, name="gate_norm")(gate)
        gate = CausalTokenMixing(cfg.seq_len, dt, pdt, name="token_mixing")(gate)
        y = nn.with_logical_constraint(res * gate, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_MLP))
        return Dense(cfg.embed_dim, (axes.MLP,), (axes.EMBED,), dtype=dt, param_dtype=pdt, name="w_out")(y)


class AuthorsLayer(nn.Module):
    """block='authors': x + LN_d(s + FFN(s)), s = LN_c(SGU(LN_a(LN_{T,E}(x)))) (the module docstring)."""
    config: SANSformerConfig

    @nn.compact
    def __call__(self, x, *, deterministic: bool = True):
        cfg = self.config
        dt, pdt = cfg.compute_dtype, cfg.params_dtype
        norm = lambda name: LayerNorm(cfg.norm_epsilon, dtype=dt, param_dtype=pdt, name=name)
        # torch's F.layer_norm(x, [T, E]) before every layer: one no-affine norm over visits and channels jointly.
        joint = LayerNorm(cfg.norm_epsilon, use_bias=False, use_scale=False, dtype=dt)(x.reshape(x.shape[0], -1))
        u = norm("unit_norm")(joint.reshape(x.shape))
        s = norm("gating_norm")(CausalGatingUnit(cfg, double_gelu=True, name="gating")(u))
        y = MLP(cfg.mlp_dim, dropout_rate=cfg.dropout_rate, dtype=dt, param_dtype=pdt, name="mlp")(
            s, deterministic=deterministic)
        y = Dropout(cfg.dropout_rate, axes=(axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED))(
            y, deterministic=deterministic)
        return x + norm("out_norm")(s + y)


class Head(nn.Module):
    """block='authors': the authors' output head, LayerNorm then linear, on the patient vector (or, for GSP,
    on every visit's vector)."""
    features: int
    out_axis: str | None
    config: SANSformerConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        dt, pdt = cfg.compute_dtype, cfg.params_dtype
        x = LayerNorm(cfg.norm_epsilon, dtype=dt, param_dtype=pdt, name="norm")(x)
        return Dense(self.features, (axes.EMBED,), (self.out_axis,), dtype=dt, param_dtype=pdt, name="dense")(x)


class SANSformer(nn.Module):
    """batch {'inputs': float[B, seq_len, num_features]} -> log-rate float32[B] of the next-year visit count
    (mode='regress'), log-rates float32[B, seq_len, num_summaries] of each visit's future-window summaries
    (mode='gsp'), or logits float32[B, num_classes] (mode='classify')."""
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
        if cfg.block == "authors":
            x = Stack(functools.partial(AuthorsLayer, cfg), cfg.num_layers, name="blocks")(x, deterministic=not train)
            head = lambda features, out_axis: Head(features, out_axis, cfg, name=HEAD)
        else:  # pre-norm blocks with the gating unit as token mixer and no channel mixer
            block = functools.partial(Block, token_mixer=functools.partial(CausalGatingUnit, cfg), norm="layernorm",
                                      norm_epsilon=cfg.norm_epsilon, token_dropout_rate=cfg.dropout_rate,
                                      token_mixer_name="gating", dtype=dt, param_dtype=pdt)
            x = Stack(block, cfg.num_layers, name="blocks")(x, deterministic=not train)
            x = LayerNorm(cfg.norm_epsilon, dtype=dt, param_dtype=pdt, name="final_norm")(x)
            head = lambda features, out_axis: Dense(features, (axes.EMBED,), (out_axis,), dtype=dt, param_dtype=pdt,
                                                    name=HEAD)
        if cfg.mode == "gsp":  # log-rates of the summaries of the window after every visit (causal)
            return head(cfg.num_summaries, axes.CHANNELS)(x).astype(jnp.float32)
        if cfg.readout == "pool":  # the authors' patient vector: mean + GELU(max) over the visits
            patient = jnp.mean(x, axis=1) + jax.nn.gelu(jnp.max(x, axis=1), approximate=False)
        else:
            patient = x[:, -1]
        if cfg.mode == "regress":  # the log of the next-year visit count's Poisson rate
            out = head(1, None)(patient)[:, 0]
        else:
            out = head(cfg.num_classes, axes.CLASSES)(patient)
        return out.astype(jnp.float32)


register("sansformer", SANSformerConfig, SANSformer)

