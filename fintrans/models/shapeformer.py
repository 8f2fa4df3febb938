"""ShapeFormer: shapelet transformer for multivariate time-series classification (Le et al., KDD'24;
authors' code `xuanmay2701/shapeformer`, `Models/shapeformer.py`, `Models/Attention.py`, `main.py`).

Two branches over x [B, T, C] (zero-padded, `mask` [B, T] marks real steps), concatenated for the classifier:

Class-specific branch (one token per shapelet). Shapelets are discovered on the TRAINING split by
`fintrans.data.shapelets.discover` (perceptually important points + information gain) and enter the
model through the config: `shapelets` (the values, one tuple each, lengths may differ),
`shapelet_channels`, `shapelet_starts` and `shapelet_weights` (the discovery's information gains);
`Shapelets.as_config()` gives these fields. The shapelets and their weights are learnable, as in
the authors' code: each is the config's value plus a parameter offset initialised to zero. For shapelet s of
length L on channel c found at position start_s:
  - Shapelet filter: among the windows x[p:p+L, c] with start_s - window <= p <= start_s + window
    (and p + L <= the series' valid length), pick the best match by the complexity-invariant
    distance  mean_j (x[p+j, c] - s_j)^2 * min(max_ci, max(CI_x, CI_s) / min(CI_x, CI_s)),
    CI(z) = sqrt(sum diff(z)^2 + 1e-3). `window` is 50 as the authors' ShapeBlock (their discovery has a
    window of its own, per dataset: the data config's shapelets.window). The argmin is a hard selection.
  - Difference feature: Linear_1(best window) - Linear_2(s)  (two Linear(L -> d) per shapelet).
  - + learned embeddings of the shapelet's channel, start and end and one bias (the authors' one-hot vectors
    through three Linear layers).
  - One post-LN layer (ShapeFormerLayer) whose attention and FFN outputs are scaled per token by the
    learnable shapelet weights, initialised as the authors' main.py does: S * softmax(20 * gains)
    (`shapelet_weight_softmax`; None: the raw gains); the FIRST token is kept.
Generic branch: Conv over time (width 8, 'same', shared over channels) -> norm -> GELU -> Conv over all
  channels -> norm -> GELU -> [B, T, d]; learned positions U(-0.02, 0.02) are added, with dropout, to the
  attention's input only (the authors' `local_x + attention(Fix_Position(local_x))`; `position_in_residual`
  adds them to the residual stream too) -> one post-LN layer (padded steps masked as keys) -> mean over
  valid steps.
Attention in both branches (`attention="authors"`, ShapeFormerAttention): the authors' `Attention` module:
  q/k/v projections without biases, scores scaled by 1/sqrt(embedding size) rather than of the head size,
  heads concatenated and a LayerNorm instead of an output projection, no dropout. `attention="standard"` is
  ordinary multi-head attention (biases, 1/sqrt(head size), output projection with dropout).
Output: Linear([first shapelet token ; pooled generic features]) -> logits. `use_class_specific=False` /
`use_generic=False` drop a branch (ablations; default both, the authors'). With no shapelets the
class-specific branch is absent.

Padded steps are zeroed first, never attended to, never pooled and never inside a matched window
(unless the series is shorter than the shapelet: then the window at the clipped start is used,
its padding read as zeros), so their values never change the logits.

Remaining differences from the authors' code:
  - Generic branch norms: LayerNorm after each convolution by default; the authors use BatchNorm2d, which
    `generic_norm="batchnorm"` gives (running statistics in "batch_stats", the trainer's model state; its
    running variance is the biased batch variance, torch's the unbiased one). The default stays LayerNorm
    because every ShapeFormer result in experiments/results was computed with it.
  - Padding: the authors' series are fixed length (no mask); here padded steps are masked out of the
    generic attention and pooling and out of the shapelet windows.
  - Shapelet filter distance: the authors' model compares a plain sum of squared differences for the window's
    CI to a square root for the shapelet's (CI_x = sum diff^2 + 1e-3 but CI_s = sqrt(sum diff^2) + 1e-3),
    which we read as a slip; here both are sqrt(sum diff^2 + 1e-3), as in their discovery. Their search region
    is also clipped to [0, len_ts); ours to the valid length.
  - Initialisation: PyTorch's defaults (uniform fan-in for Linear/Conv weights and biases, incl. the
    position Linears) vs flax's (lecun normal weights, zero biases; position tables normal(0.02), bias 0).
  - Discovery (fintrans.data.shapelets): see that module; notably the authors keep non-overlapping
    shapelets per class and order each class's shapelets by start (so their first token is class 0's
    earliest shapelet, ours class 0's best), and they do not skip candidates longer than half the series.
  - Training (configs, not this module): the authors use RAdam, lr 0.05, weight decay 5e-4, batch 8, 200
    epochs, gradient-norm clip 4, and select the epoch by test accuracy; ours: AdamW with warmup/cosine and
    the final parameters, selected on nothing.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fintrans import axes
from fintrans.layers import (BatchNorm, Conv1D, Dense, Dropout, LayerNorm, MultiHeadAttention, check_series_batch,
                             param_with_axes, pool)
from fintrans.layers.mlp import ACTIVATIONS, activation as activation_fn
from fintrans.ops.attention import dot_product_attention
from fintrans.models import register
from fintrans.models.config import AttentionConfig, ConfigError, check_choice, check_positive, check_rate

CI_EPS = 1e-3
ATTENTIONS = ("authors", "standard")
GENERIC_NORMS = ("layernorm", "batchnorm")


@dataclasses.dataclass(frozen=True)
class ShapeFormerConfig(AttentionConfig):
    # See ModelConfig; the shapelets come from the dataset's fitted shapelets (data config `shapelets`).
    DATA_FIELDS = {"num_classes": "num_classes", "num_channels": "num_channels",
                   **{f: f"shapelets.{f}" for f in ("shapelets", "shapelet_channels", "shapelet_starts",
                                                     "shapelet_weights")}}
    max_len: int = 100
    num_channels: int = 6
    num_classes: int = 4
    shapelets: tuple = ()  # tuple of tuples of floats (values of each shapelet)
    shapelet_channels: tuple = ()  # int per shapelet
    shapelet_starts: tuple = ()  # int per shapelet: where discovery found it
    shapelet_weights: tuple = ()  # float per shapelet: information gain (initial token weight)
    window: int = 50  # search +- window steps around each shapelet's start (the authors' ShapeBlock: 50)
    max_ci: float = 3.0
    # Initial shapelet weights: num_shapelets * softmax(scale * gains), as the authors' main.py; None: the gains.
    shapelet_weight_softmax: Optional[float] = 20.0
    attention: str = "authors"  # "authors" (their Attention, both branches) | "standard" (multi-head, biases, out proj)
    position_in_residual: bool = False  # True: the generic branch's positions also join the residual stream
    shape_embed_dim: int = 32
    generic_embed_dim: int = 32
    conv_width: int = 8
    num_heads: int = 4
    mlp_dim: int = 64
    activation: str = "relu"
    norm_epsilon: float = 1e-5
    # The generic branch's norm after each convolution: "layernorm" (ours, what the results used) or
    # "batchnorm" (the authors' BatchNorm2d: statistics over batch, time (and channels) per feature, running
    # averages with torch's momentum 0.1 in the "batch_stats" collection; padded steps are left out).
    generic_norm: str = "layernorm"
    dropout_rate: float = 0.1
    use_class_specific: bool = True  # False: drop the shapelet branch (the generic branch alone)
    use_generic: bool = True  # False: drop the generic branch (the shapelet branch alone)

    def validate(self):
        for name in ("max_len", "num_channels", "num_classes", "shape_embed_dim", "generic_embed_dim", "conv_width",
                     "num_heads", "mlp_dim"):
            check_positive(name, getattr(self, name))
        check_positive("window", self.window, allow_zero=True)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("attention", self.attention, ATTENTIONS)
        check_choice("generic_norm", self.generic_norm, GENERIC_NORMS)
        sws = self.shapelet_weight_softmax
        if sws is not None and (isinstance(sws, bool) or not isinstance(sws, (int, float)) or sws <= 0):
            raise ConfigError(f"shapelet_weight_softmax={sws!r} must be None (the raw gains) or a positive float")
        if not (self.use_generic or self.use_class_specific):
            raise ConfigError("use_generic=False and use_class_specific=False leave no branch; keep at least one")
        check_rate("dropout_rate", self.dropout_rate)
        for name in ("norm_epsilon", "max_ci"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or v <= 0:
                raise ConfigError(f"{name}={v!r} must be a positive float")
        for name in ("shape_embed_dim", "generic_embed_dim"):
            if getattr(self, name) % self.num_heads:
                raise ConfigError(f"{name}={getattr(self, name)} is not divisible by num_heads={self.num_heads}")
        # ml_collections hands nested tuples back as lists: store tuples (the config stays hashable).
        shapelets = tuple(tuple(float(v) for v in s) for s in self.shapelets)
        object.__setattr__(self, "shapelets", shapelets)
        n = len(shapelets)
        for name in ("shapelet_channels", "shapelet_starts", "shapelet_weights"):
            vals = tuple(getattr(self, name))
            object.__setattr__(self, name, vals)
            if len(vals) != n:
                raise ConfigError(f"{name} has {len(vals)} entries for {n} shapelets; give one per shapelet")
        for i, s in enumerate(shapelets):
            if not 2 <= len(s) <= self.max_len:
                raise ConfigError(f"shapelets[{i}] has length {len(s)}; lengths must be in [2, max_len={self.max_len}]")
            c, st = self.shapelet_channels[i], self.shapelet_starts[i]
            if not isinstance(c, int) or not 0 <= c < self.num_channels:
                raise ConfigError(f"shapelet_channels[{i}]={c!r} must be a channel in [0, {self.num_channels})")
            if not isinstance(st, int) or not 0 <= st <= self.max_len - len(s):
                raise ConfigError(f"shapelet_starts[{i}]={st!r} must be in [0, max_len - length = "
                                  f"{self.max_len - len(s)}]")

    @property
    def num_shapelets(self) -> int:
        return len(self.shapelets)

    def shapelet_arrays(self):
        """(values float32 [S, Lmax] zero-padded, lengths int [S]) as numpy."""
        lengths = np.array([len(s) for s in self.shapelets], np.int32)
        values = np.zeros((len(lengths), int(lengths.max(initial=1))), np.float32)
        for i, s in enumerate(self.shapelets):
            values[i, :len(s)] = s
        return values, lengths


def shapelet_filter(x, valid_len, values, lengths, channels, starts, *, window: int, max_ci: float):
    """Best-matching windows and their distances.

    x [B, T, C] (padding zeroed), valid_len int[B], values [S, Lmax] (zero beyond lengths), lengths/
    channels/starts int[S] (numpy). Returns (windows [B, S, Lmax] zero beyond each length, dist [B, S],
    position int[B, S]).
    """
    b, t, _ = x.shape
    s_count, lmax = values.shape
    xs = jnp.take(x, jnp.asarray(channels), axis=2).transpose(0, 2, 1)  # [B, S, T]
    xs = jnp.pad(xs, ((0, 0), (0, 0), (0, lmax)))
    idx = np.arange(t)[:, None] + np.arange(lmax)[None, :]  # [T, Lmax]
    win = xs[:, :, idx]  # [B, S, T(p), Lmax]
    j_ok = jnp.asarray(np.arange(lmax)[None, :] < lengths[:, None])  # [S, Lmax]
    win = jnp.where(j_ok[None, :, None, :], win, 0)
    lens = jnp.asarray(lengths, x.dtype)
    sq = jnp.sum((win - values[None, :, None, :]) ** 2, axis=-1) / lens[None, :, None]  # [B, S, P]
    d_ok = jnp.asarray(np.arange(lmax - 1)[None, :] < (lengths[:, None] - 1))
    ci_w = jnp.sqrt(jnp.sum(jnp.where(d_ok[None, :, None, :], jnp.diff(win, axis=-1) ** 2, 0), -1) + CI_EPS)
    ci_s = jnp.sqrt(jnp.sum(jnp.where(d_ok, jnp.diff(values, axis=-1) ** 2, 0), -1) + CI_EPS)  # [S]
    ratio = jnp.minimum(jnp.maximum(ci_w, ci_s[None, :, None]) / jnp.minimum(ci_w, ci_s[None, :, None]), max_ci)
    dist = sq * ratio
    p = np.arange(t)
    in_range = (p[None, :] >= starts[:, None] - window) & (p[None, :] <= starts[:, None] + window)  # [S, P]
    fits = p[None, None, :] + lengths[None, :, None] <= valid_len[:, None, None]  # [B, S, P]
    ok = jnp.asarray(in_range)[None] & fits
    masked = jnp.where(ok, dist, jnp.inf)
    fallback = jnp.asarray(np.clip(starts, 0, None))  # series shorter than the shapelet: its clipped start
    fallback = jnp.minimum(fallback[None, :], jnp.maximum(valid_len[:, None] - lengths[None, :], 0))
    pos = jnp.where(ok.any(-1), jnp.argmin(masked, axis=-1), fallback)  # [B, S]
    best = jnp.take_along_axis(win, pos[:, :, None, None], axis=2)[:, :, 0]
    best_dist = jnp.take_along_axis(dist, pos[:, :, None], axis=2)[:, :, 0]
    return best, best_dist, pos


class ShapeFormerAttention(nn.Module):
    """The authors' `Models/Attention.py` `Attention`: query/key/value projections without biases, scores
    scaled by 1/sqrt(embedding size) (not the head size), softmax, heads concatenated and a LayerNorm in
    place of an output projection. (Their module holds a dropout it never applies.) `mask` (True =
    attend, broadcastable to [B, heads, T, T]) hides padded keys; the authors' series have no padding."""
    num_heads: int
    norm_epsilon: float = 1e-5
    attention_impl: Optional[str] = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, mask=None):
        d = x.shape[-1]
        proj = lambda name: Dense((self.num_heads, d // self.num_heads), (axes.EMBED,), (axes.HEADS, axes.HEAD_DIM),
                                  use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        q, k, v = proj("query")(x), proj("key")(x), proj("value")(x)
        out = dot_product_attention(q, k, v, mask=mask, scale=d ** -0.5, implementation=self.attention_impl)
        out = out.reshape(x.shape[:-1] + (d,))
        return LayerNorm(epsilon=self.norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype, name="out_norm")(out)


class ShapeFormerLayer(nn.Module):
    """One post-LN encoder layer as both of the authors' branches write it out:
        h = LN1((x + Attn(attn_in)) * w);  out = LN2(h + FFN(h)) * w
    attn_in is x, or (generic branch) x + positions; w the per-token shapelet weights [S] (None: 1).
    FFN = Linear -> act -> Dropout -> Linear -> Dropout."""
    config: ShapeFormerConfig
    dim: int

    @nn.compact
    def __call__(self, x, attn_in, *, mask=None, weights=None, deterministic: bool = True):
        cfg = self.config
        kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype)
        if cfg.attention == "authors":
            a = ShapeFormerAttention(cfg.num_heads, norm_epsilon=cfg.norm_epsilon, attention_impl=cfg.attention_impl,
                                     name="attention", **kw)(attn_in, mask=mask)
        else:
            a = MultiHeadAttention(num_heads=cfg.num_heads, head_dim=self.dim // cfg.num_heads, use_bias=True,
                                   dropout_rate=cfg.dropout_rate, attention_impl=cfg.attention_impl, name="attention",
                                   **kw)(attn_in, mask=mask, deterministic=deterministic)
        scale = (lambda y: y) if weights is None else (lambda y: y * weights[None, :, None].astype(y.dtype))
        h = LayerNorm(epsilon=cfg.norm_epsilon, name="attention_norm", **kw)(scale(x + a))
        f = Dense(cfg.mlp_dim, (axes.EMBED,), (axes.MLP,), name="mlp_in", **kw)(h)
        f = Dropout(cfg.dropout_rate)(activation_fn(cfg.activation)(f), deterministic=deterministic)
        f = Dense(self.dim, (axes.MLP,), (axes.EMBED,), name="mlp_out", **kw)(f)
        f = Dropout(cfg.dropout_rate)(f, deterministic=deterministic)
        return scale(LayerNorm(epsilon=cfg.norm_epsilon, name="mlp_norm", **kw)(h + f))


def initial_shapelet_weights(gains, softmax_scale: Optional[float]) -> np.ndarray:
    """The shapelet weights' initial values: S * softmax(scale * gains) (the authors' main.py), or the gains."""
    g = np.asarray(gains, np.float64)
    if softmax_scale is None or not g.size:
        return g.astype(np.float32)
    e = np.exp(softmax_scale * (g - g.max()))
    return (len(g) * e / e.sum()).astype(np.float32)


class ShapeFormer(nn.Module):
    """batch {'inputs': float[B, T, C], 'mask'?: bool[B, T]} -> logits float32[B, num_classes]."""
    config: ShapeFormerConfig

    @nn.compact
    def __call__(self, batch, *, train: bool = False) -> jax.Array:
        cfg = self.config
        x, valid = check_series_batch("shapeformer", batch, cfg.max_len, cfg.num_channels)
        dtype, pdtype = cfg.compute_dtype, cfg.params_dtype
        det = not train
        x = jnp.where(valid[..., None], x.astype(dtype), 0)
        features = []
        if cfg.use_class_specific and cfg.num_shapelets:
            features.append(self._class_specific(x, valid, det))
        if cfg.use_generic:
            features.append(self._generic(x, valid, det))
        if not features:  # shapelets are filled from the data after the config is parsed, so checked here
            raise ValueError("shapeformer: use_generic=False needs shapelets (the class-specific branch), and the "
                             "config has none")
        h = jnp.concatenate(features, axis=-1)
        logits = Dense(cfg.num_classes, (axes.EMBED,), (axes.CLASSES,), dtype=dtype, param_dtype=pdtype,
                       name="head")(h)
        return nn.with_logical_constraint(logits, (axes.ACT_BATCH, None)).astype(jnp.float32)

    def _generic(self, x, valid, det):
        cfg = self.config
        dtype, pdtype, d = cfg.compute_dtype, cfg.params_dtype, cfg.generic_embed_dim
        b, t, c = x.shape
        k = cfg.conv_width
        # Conv2d(1 -> d, kernel [1, k], 'same') over time, shared by the channels: [B, T, C, d]
        per_channel = jnp.swapaxes(x, 1, 2).reshape(b * c, t, 1)
        h = Conv1D(d, k, padding="same", in_axis=None, dtype=dtype, param_dtype=pdtype, name="time_conv")(per_channel)
        h = jnp.swapaxes(h.reshape(b, c, t, d), 1, 2)
        h = nn.gelu(self._generic_norm("time_norm", h, valid[:, :, None], det), approximate=False)
        # Conv2d(d -> d, kernel [C, 1], 'valid') across the channels: [B, T, d]
        h = Dense(d, (axes.CHANNELS, axes.EMBED), (axes.MLP,), dtype=dtype, param_dtype=pdtype,
                  name="channel_conv")(h)
        h = nn.gelu(self._generic_norm("channel_norm", h, valid, det), approximate=False)
        # The authors' LearnablePositionalEncoding: U(-0.02, 0.02), then dropout; its output is the attention's
        # input only, the residual stream stays the convolution features.
        pos = param_with_axes(self, "positions", nn.initializers.uniform(0.04), (cfg.max_len, d),
                              (axes.LENGTH, axes.EMBED), pdtype)
        with_pos = h + (pos[:t].astype(dtype) - 0.02)
        if cfg.position_in_residual:
            h = attn_in = with_pos
        else:
            attn_in = Dropout(cfg.dropout_rate)(with_pos, deterministic=det)
        h = ShapeFormerLayer(cfg, d, name="generic_block")(h, attn_in, mask=valid[:, None, None, :], deterministic=det)
        return pool(h, "mean", valid)

    def _generic_norm(self, name, h, valid, det):
        """config.generic_norm over the last axis of h; `valid` marks h's real entries (for BatchNorm)."""
        cfg = self.config
        kw = dict(epsilon=cfg.norm_epsilon, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, name=name)
        if cfg.generic_norm == "batchnorm":
            return BatchNorm(momentum=0.9, **kw)(h, train=not det, mask=valid)  # torch momentum 0.1
        return LayerNorm(**kw)(h)

    def _class_specific(self, x, valid, det):
        cfg = self.config
        dtype, pdtype, d = cfg.compute_dtype, cfg.params_dtype, cfg.shape_embed_dim
        init_values, lengths = cfg.shapelet_arrays()
        s_count, lmax = init_values.shape
        channels = np.asarray(cfg.shapelet_channels, np.int32)
        starts = np.asarray(cfg.shapelet_starts, np.int32)
        # Learnable shapelets = the config's values + a learned offset (zero at init): the same
        # parameterisation as learning the values themselves, with a random-init-free parameter.
        delta = param_with_axes(self, "shapelet_offsets", nn.initializers.zeros, (s_count, lmax),
                                (None, axes.LENGTH), pdtype)
        values = (jnp.asarray(init_values, dtype) + delta.astype(dtype)) * jnp.asarray(
            np.arange(lmax)[None] < lengths[:, None], dtype)
        best, _, _ = shapelet_filter(x, valid.sum(-1), values, lengths, channels, starts, window=cfg.window,
                                     max_ci=cfg.max_ci)
        # Per-shapelet Linear(L -> d) for the window and for the shapelet (weights beyond L unused: zero inputs).
        init = nn.initializers.lecun_normal()
        w_win = param_with_axes(self, "window_proj", init, (s_count, lmax, d), (None, axes.LENGTH, axes.EMBED), pdtype)
        w_sh = param_with_axes(self, "shapelet_proj", init, (s_count, lmax, d), (None, axes.LENGTH, axes.EMBED), pdtype)
        b_win = param_with_axes(self, "window_proj_bias", nn.initializers.zeros, (s_count, d), (None, axes.EMBED), pdtype)
        b_sh = param_with_axes(self, "shapelet_proj_bias", nn.initializers.zeros, (s_count, d), (None, axes.EMBED),
                               pdtype)
        tok = (jnp.einsum("bsl,sld->bsd", best, w_win.astype(dtype)) + b_win.astype(dtype)
               - (jnp.einsum("sl,sld->sd", values, w_sh.astype(dtype)) + b_sh.astype(dtype))[None])
        # Position embeddings of (channel, start, end): the authors' one-hot vectors through three Linear
        # layers = three table lookups plus (the sum of their biases) one shared bias.
        emb = lambda name, n: param_with_axes(self, name, nn.initializers.normal(0.02), (n, d),
                                              (None, axes.EMBED), pdtype).astype(dtype)
        pos_bias = param_with_axes(self, "position_bias", nn.initializers.zeros, (d,), (axes.EMBED,), pdtype)
        tok = tok + (emb("channel_embed", cfg.num_channels)[channels] + emb("start_embed", cfg.max_len)[starts]
                     + emb("end_embed", cfg.max_len + 1)[starts + lengths] + pos_bias.astype(dtype))[None]
        sw = jnp.asarray(initial_shapelet_weights(cfg.shapelet_weights, cfg.shapelet_weight_softmax), dtype) + \
            param_with_axes(self, "shapelet_weight_offsets", nn.initializers.zeros, (s_count,), (None,),
                            pdtype).astype(dtype)
        # Shapelet tokens attend to each other in full (no position enters the attention apart from the
        # embeddings above, added to the tokens themselves as the authors do); the FIRST token is kept.
        h = ShapeFormerLayer(cfg, d, name="shapelet_block")(tok, tok, weights=sw, deterministic=det)
        return h[:, 0]


register("shapeformer", ShapeFormerConfig, ShapeFormer)
