"""LMUFormer (Liu et al., ICLR'24): convolutional patch embedding -> blocks of [Legendre Memory Unit token
mixer + convolutional channel mixer] -> mean over time -> linear head. Trained in parallel, run as an RNN.

LMU memory (Voelker et al. 2019), order d = `memory_size`, window θ = `theta`, continuous system
    A_ij = (2i+1)/θ · (-1 if i < j else (-1)^(i-j+1)),   B_i = (2i+1)/θ · (-1)^i,
discretised with zero-order hold at dt = 1 (scipy's `cont2discrete(method='zoh')`, as in the authors'
`LMUFFTCell`):  Ā = expm(A),  B̄ = A⁻¹(Ā − I)B  (computed as one block matrix exponential).
Each block's cell (the authors' `LMUFFTCell`):
    u_t = f_u(W_u x_t)                       (a scalar per step)
    m_t = Ā m_{t-1} + B̄ u_t                  (recurrent form, `step`)
        = Σ_{j≤t} H[t-j] u_j,  H[t] = Āᵗ B̄    (parallel form: FFT convolution with the impulse response)
    h_t = f_h(W_h [m_t; x_t])
then a 1x1 projection and a norm, added to the residual stream; the channel mixer is the authors' ConvFFN
(1x1 conv, norm, GELU, dropout, 1x1 conv, norm, ReLU, dropout) added to the residual stream.
The patch embedding is the authors' `Tokenizer` (`num_embed_convs` k=3 convolutions, each ReLU then norm,
plus a k=3 'relative position' convolution added to the result).

spiking=True is the authors' `slmu_rnn_conv1d`: every activation is a LIF neuron (τ=2, threshold 1, hard
reset to 0 with the reset detached, as spikingjelly's LIFNode with `detach_reset=True`) run along the
sequence, with a sigmoid surrogate gradient (α=4, spikingjelly's default); the memory is 2·embed_dim wide
and passes through norm + LIF; the patch embedding is conv-norm-LIF layers (`Conv1d4EB`).

Deviations from the authors' code, so that one model both trains in parallel and streams exactly:
- Norms are LayerNorm over channels per step (BatchNorm statistics would mix batch and time and are hidden
  state in linen); in the spiking cell the 1-channel u has a learned scale and bias instead of a BatchNorm.
- Convolutions in the patch embedding are causal (left-padded by kernel-1) instead of centred, so the
  output at step t depends on inputs up to t only.
  Caveat: LayerNorm of a token whose activations are all ≈ 0 (e.g. the leading blank pixels of a digit,
  with the zero biases of a freshly initialised model) scales the FFT's float32 rounding noise (~1e-7) up
  by 1/sqrt(eps) per norm, so at such steps the parallel and streaming forms can differ; elsewhere they
  agree to ~1e-6 (tests/models/test_lmuformer.py).
Streaming: `init_state(batch_size)` and `step(state, x_t) -> (state, logits_t)` run one input step at a
time; logits_t is the head applied to the running mean of the features (the authors' 'all_seq' test mode).
`prefix_logits(batch)` computes the same [B, L, classes] in parallel, and the function
`stream(model, params, inputs)` scans `step` over the sequence.

Inputs (`sequence`): 'pixels' reads images [B, H, W, C] pixel by pixel (L = H·W steps of C values),
'rows' row by row (L = H steps of W·C values), 'series' takes [B, input_len, num_channels] as is.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from fintrans import axes
from fintrans.layers import Block, Conv1D, Dense, LayerNorm, Stack, param_with_axes
from fintrans.models import register
from fintrans.models.config import ConfigError, ModelConfig, check_choice, check_positive, check_rate

SEQUENCES = ("pixels", "rows", "series")
LIF_TAU, LIF_THRESHOLD, SURROGATE_ALPHA = 2.0, 1.0, 4.0


# --- LMU math (numpy float64, computed once per shape) -------------------------------------------
def legendre_continuous(order: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """The LMU's continuous (A [d, d], B [d, 1]) in closed form."""
    q = np.arange(order, dtype=np.float64)
    r = ((2 * q + 1) / theta)[:, None]
    i, j = np.meshgrid(q, q, indexing="ij")
    a = r * np.where(i < j, -1.0, (-1.0) ** (i - j + 1))
    b = r * ((-1.0) ** q)[:, None]
    return a, b


@functools.lru_cache(maxsize=None)
def lmu_discrete(order: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Zero-order-hold (Ā, B̄) at dt=1: expm([[A, B], [0, 0]]) = [[Ā, B̄], [0, I]]."""
    a, b = legendre_continuous(order, theta)
    block = np.zeros((order + 1, order + 1))
    block[:order, :order], block[:order, order:] = a, b
    e = scipy.linalg.expm(block)
    return e[:order, :order], e[:order, order:]


@functools.lru_cache(maxsize=None)
def lmu_impulse(order: int, theta: float, length: int) -> np.ndarray:
    """H [length, d] with H[t] = Āᵗ B̄ (float64)."""
    a_bar, b_bar = lmu_discrete(order, theta)
    out = np.empty((length, order))
    h = b_bar[:, 0]
    for t in range(length):
        out[t] = h
        h = a_bar @ h
    return out


def fft_causal_conv(u: jax.Array, impulse: np.ndarray) -> jax.Array:
    """m[b, t, :] = Σ_{j≤t} impulse[t-j, :] u[b, j] via zero-padded real FFTs; u [B, L] -> [B, L, d]."""
    length = u.shape[1]
    n = 2 * length
    fu = jnp.fft.rfft(u.astype(jnp.float32), n=n, axis=1)  # [B, L+1]
    fh = jnp.fft.rfft(jnp.asarray(impulse, jnp.float32), n=n, axis=0)  # [L+1, d]
    return jnp.fft.irfft(fu[:, :, None] * fh[None], n=n, axis=1)[:, :length]


# --- spiking neurons -----------------------------------------------------------------------------
def spike(v: jax.Array) -> jax.Array:
    """Heaviside(v - threshold) forward; gradient of sigmoid(α(v - threshold)) backward."""
    surrogate = jax.nn.sigmoid(SURROGATE_ALPHA * (v - LIF_THRESHOLD))
    hard = (v >= LIF_THRESHOLD).astype(v.dtype)
    return surrogate + jax.lax.stop_gradient(hard - surrogate)


def lif_step(v: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One LIF update (decay_input, v_reset=0, hard reset, detached): (membrane, input) -> (membrane, spikes)."""
    v = v + (x - v) / LIF_TAU
    s = spike(v)
    return v * (1.0 - jax.lax.stop_gradient(s)), s


def lif_sequence(x: jax.Array) -> jax.Array:
    """LIF neurons run along axis 1 of x [B, L, C] from rest."""
    def body(v, xt):
        return lif_step(v, xt)
    _, s = jax.lax.scan(body, jnp.zeros_like(x[:, 0]), jnp.swapaxes(x, 0, 1))
    return jnp.swapaxes(s, 0, 1)


# --- config --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LMUFormerConfig(ModelConfig):
    DATA_FIELDS = {f: f for f in ("num_classes", "num_channels", "image_size", "input_len")}  # see ModelConfig
    sequence: str = "pixels"  # how `inputs` become a sequence (module docstring)
    image_size: int = 8  # 'pixels'/'rows': square images [B, image_size, image_size, num_channels]
    num_channels: int = 1
    input_len: int = 64  # 'series' only: inputs [B, input_len, num_channels]
    num_classes: int = 10
    embed_dim: int = 64
    num_layers: int = 2
    num_embed_convs: int = 4  # convolutions in the patch embedding (the authors use 4)
    conv_kernel: int = 3
    memory_size: int = 0  # LMU order d; 0: embed_dim (2·embed_dim when spiking), as the authors
    theta: float = 0.0  # LMU window in steps; 0: the sequence length (the authors set θ = seq_len)
    mlp_ratio: int = 4
    spiking: bool = False
    norm_epsilon: float = 1e-5
    dropout_rate: float = 0.0

    def validate(self):
        check_choice("sequence", self.sequence, SEQUENCES)
        for name in ("image_size", "num_channels", "input_len", "num_classes", "embed_dim", "num_layers",
                     "num_embed_convs", "conv_kernel", "mlp_ratio"):
            check_positive(name, getattr(self, name))
        check_positive("memory_size", self.memory_size, allow_zero=True)
        if not isinstance(self.theta, (int, float)) or isinstance(self.theta, bool) or self.theta < 0:
            raise ConfigError(f"theta={self.theta!r} must be a non-negative number (0: the sequence length)")
        check_choice("spiking", self.spiking, (False, True))
        check_rate("dropout_rate", self.dropout_rate)
        if not isinstance(self.norm_epsilon, (int, float)) or self.norm_epsilon <= 0:
            raise ConfigError(f"norm_epsilon={self.norm_epsilon!r} must be a positive float")

    @property
    def seq_len(self) -> int:
        return {"pixels": self.image_size ** 2, "rows": self.image_size, "series": self.input_len}[self.sequence]

    @property
    def step_features(self) -> int:
        return self.image_size * self.num_channels if self.sequence == "rows" else self.num_channels

    @property
    def order(self) -> int:
        return self.memory_size or (2 * self.embed_dim if self.spiking else self.embed_dim)

    @property
    def window(self) -> float:
        return float(self.theta or self.seq_len)


# --- layers with a parallel call and a one-step call ---------------------------------------------
def act_state(kind: str, batch: int, width: int):
    """An activation's streaming state from rest: LIF membranes, or nothing."""
    return jnp.zeros((batch, width), jnp.float32) if kind == "lif" else ()


class Act(nn.Module):
    """ReLU/GELU, or (spiking) a layer of LIF neurons over time; streaming state: membranes."""
    kind: str  # 'relu' | 'gelu' | 'lif'

    def __call__(self, x):
        if self.kind == "lif":
            return lif_sequence(x.astype(jnp.float32)).astype(x.dtype)
        return jax.nn.relu(x) if self.kind == "relu" else jax.nn.gelu(x, approximate=False)

    def init_state(self, batch, width):
        return act_state(self.kind, batch, width)

    def step(self, state, x_t):
        if self.kind == "lif":
            v, s = lif_step(state, x_t.astype(jnp.float32))
            return v, s.astype(x_t.dtype)
        return state, self(x_t)


class Affine(nn.Module):
    """x·scale + bias per channel (the spiking cell's norm of its 1-channel input u)."""
    param_dtype: Any

    @nn.compact
    def __call__(self, x):
        f = x.shape[-1]
        scale = param_with_axes(self, "scale", nn.initializers.ones, (f,), (axes.NORM,), self.param_dtype)
        bias = param_with_axes(self, "bias", nn.initializers.zeros, (f,), (axes.NORM,), self.param_dtype)
        return x * scale.astype(x.dtype) + bias.astype(x.dtype)


class PatchEmbed(nn.Module):
    """The authors' Tokenizer (conv, ReLU, norm) x n + rpe conv; spiking: Conv1d4EB (conv, norm, LIF) x n
    + (rpe conv, norm, LIF). Convolutions causal."""
    config: LMUFormerConfig

    def setup(self):
        cfg = self.config
        dt, pdt = cfg.compute_dtype, cfg.params_dtype
        conv = lambda i, name: Conv1D(cfg.embed_dim, cfg.conv_kernel, padding="causal", use_bias=False,
                                      in_axis=axes.CHANNELS if i == 0 else None, dtype=dt, param_dtype=pdt, name=name)
        kind = "lif" if cfg.spiking else "relu"
        self.convs = [conv(i, f"conv_{i}") for i in range(cfg.num_embed_convs)]
        self.norms = [LayerNorm(cfg.norm_epsilon, dtype=dt, param_dtype=pdt, name=f"norm_{i}")
                      for i in range(cfg.num_embed_convs + cfg.spiking)]
        self.acts = [Act(kind, name=f"act_{i}") for i in range(cfg.num_embed_convs + cfg.spiking)]
        self.rpe = conv(1, "rpe_conv")

    def __call__(self, x):
        for i, conv in enumerate(self.convs):
            y = conv(x)
            x = self.acts[i](self.norms[i](y)) if self.config.spiking else self.norms[i](self.acts[i](y))
        r = self.rpe(x)
        if self.config.spiking:
            r = self.acts[-1](self.norms[-1](r))
        return x + r

    def init_state(self, batch):
        cfg = self.config
        return {"convs": [c.init_state(batch, cfg.step_features if i == 0 else cfg.embed_dim)
                          for i, c in enumerate(self.convs)],
                "acts": [a.init_state(batch, cfg.embed_dim) for a in self.acts],
                "rpe": self.rpe.init_state(batch, cfg.embed_dim)}

    def step(self, state, x):
        conv_states, act_states = list(state["convs"]), list(state["acts"])
        for i, conv in enumerate(self.convs):
            conv_states[i], y = conv.step(conv_states[i], x)
            if self.config.spiking:
                act_states[i], x = self.acts[i].step(act_states[i], self.norms[i](y))
            else:
                act_states[i], y = self.acts[i].step(act_states[i], y)
                x = self.norms[i](y)
        rpe_state, r = self.rpe.step(state["rpe"], x)
        if self.config.spiking:
            act_states[-1], r = self.acts[-1].step(act_states[-1], self.norms[-1](r))
        return {"convs": conv_states, "acts": act_states, "rpe": rpe_state}, x + r


class LMUMixer(nn.Module):
    """The LMU token mixer: cell (u, memory, h) -> 1x1 projection -> norm (-> LIF when spiking)."""
    config: LMUFormerConfig

    def setup(self):
        cfg = self.config
        dt, pdt = cfg.compute_dtype, cfg.params_dtype
        self.w_u = Dense(1, (axes.EMBED,), (None,), dtype=dt, param_dtype=pdt, name="w_u")
        self.w_h = Dense(cfg.embed_dim, (None,), (axes.EMBED,), dtype=dt, param_dtype=pdt, name="w_h")
        self.proj = Dense(cfg.embed_dim, (None,), (axes.EMBED,), dtype=dt, param_dtype=pdt, name="proj")
        self.proj_norm = LayerNorm(cfg.norm_epsilon, dtype=dt, param_dtype=pdt, name="proj_norm")
        if cfg.spiking:
            self.u_norm = Affine(pdt, name="u_norm")
            self.m_norm = LayerNorm(cfg.norm_epsilon, dtype=dt, param_dtype=pdt, name="m_norm")
            self.h_norm = LayerNorm(cfg.norm_epsilon, dtype=dt, param_dtype=pdt, name="h_norm")
        kind = "lif" if cfg.spiking else "relu"
        self.act_u, self.act_m, self.act_h, self.act_out = (Act(kind, name=n) for n in ("act_u", "act_m", "act_h",
                                                                                        "act_out"))

    def __call__(self, x, *, deterministic: bool = True):  # [B, L, D]; no dropout in the cell
        del deterministic
        cfg = self.config
        u = self.w_u(x)
        u = self.act_u(self.u_norm(u) if cfg.spiking else u)  # [B, L, 1]
        impulse = lmu_impulse(cfg.order, cfg.window, x.shape[1])
        m = fft_causal_conv(u[..., 0], impulse).astype(x.dtype)  # [B, L, d]
        if cfg.spiking:
            m = self.act_m(self.m_norm(m))
        h = self.w_h(jnp.concatenate([m, x], axis=-1))
        h = self.act_h(self.h_norm(h)) if cfg.spiking else self.act_h(h)
        y = self.proj_norm(self.proj(h))
        return self.act_out(y) if cfg.spiking else y

    @staticmethod
    def initial_state(cfg: LMUFormerConfig, batch: int) -> dict:
        kind = "lif" if cfg.spiking else "relu"
        return {"memory": jnp.zeros((batch, cfg.order), jnp.float32),
                **{n: act_state(kind, batch, w) for n, w in
                   (("act_u", 1), ("act_m", cfg.order), ("act_h", cfg.embed_dim), ("act_out", cfg.embed_dim))}}

    def step(self, state, x):  # x [B, D]
        cfg = self.config
        state = dict(state)
        u = self.w_u(x)
        state["act_u"], u = self.act_u.step(state["act_u"], self.u_norm(u) if cfg.spiking else u)
        a_bar, b_bar = lmu_discrete(cfg.order, cfg.window)
        memory = (state["memory"] @ jnp.asarray(a_bar.T, jnp.float32)
                  + u.astype(jnp.float32) @ jnp.asarray(b_bar.T, jnp.float32))
        state["memory"] = memory
        m = memory.astype(x.dtype)
        if cfg.spiking:
            state["act_m"], m = self.act_m.step(state["act_m"], self.m_norm(m))
        h = self.w_h(jnp.concatenate([m, x], axis=-1))
        state["act_h"], h = self.act_h.step(state["act_h"], self.h_norm(h) if cfg.spiking else h)
        y = self.proj_norm(self.proj(h))
        if cfg.spiking:
            state["act_out"], y = self.act_out.step(state["act_out"], y)
        return state, y


class ConvFFN(nn.Module):
    """The authors' ConvFFN: 1x1 conv, norm, GELU (LIF), dropout, 1x1 conv, norm, ReLU (LIF), dropout."""
    config: LMUFormerConfig

    def setup(self):
        cfg = self.config
        dt, pdt = cfg.compute_dtype, cfg.params_dtype
        self.fc1 = Dense(cfg.mlp_ratio * cfg.embed_dim, (axes.EMBED,), (axes.MLP,), dtype=dt, param_dtype=pdt,
                         name="fc1")
        self.fc2 = Dense(cfg.embed_dim, (axes.MLP,), (axes.EMBED,), dtype=dt, param_dtype=pdt, name="fc2")
        self.norm1 = LayerNorm(cfg.norm_epsilon, dtype=dt, param_dtype=pdt, name="norm1")
        self.norm2 = LayerNorm(cfg.norm_epsilon, dtype=dt, param_dtype=pdt, name="norm2")
        self.act1 = Act("lif" if cfg.spiking else "gelu", name="act1")
        self.act2 = Act("lif" if cfg.spiking else "relu", name="act2")
        self.drop = nn.Dropout(cfg.dropout_rate)

    def __call__(self, x, deterministic=True):
        h = self.drop(self.act1(self.norm1(self.fc1(x))), deterministic=deterministic)
        h = nn.with_logical_constraint(h, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_MLP))
        return self.drop(self.act2(self.norm2(self.fc2(h))), deterministic=deterministic)

    @staticmethod
    def initial_state(cfg: LMUFormerConfig, batch: int) -> dict:
        return {"act1": act_state("lif" if cfg.spiking else "gelu", batch, cfg.mlp_ratio * cfg.embed_dim),
                "act2": act_state("lif" if cfg.spiking else "relu", batch, cfg.embed_dim)}

    def step(self, state, x):
        s1, h = self.act1.step(state["act1"], self.norm1(self.fc1(x)))
        s2, y = self.act2.step(state["act2"], self.norm2(self.fc2(h)))
        return {"act1": s1, "act2": s2}, y


class LMUFormer(nn.Module):
    """batch {'inputs': images [B, S, S, C] or series [B, input_len, C]} -> logits float32[B, num_classes]."""
    config: LMUFormerConfig

    def setup(self):
        cfg = self.config
        self.embed = PatchEmbed(cfg, name="patch_embed")
        # Blocks x = x + LMU(x); x = x + ConvFFN(x) (no norm around them: each mixer ends in its own).
        block = functools.partial(Block, token_mixer=functools.partial(LMUMixer, cfg),
                                  channel_mixer=functools.partial(ConvFFN, cfg), norm=None, token_mixer_name="lmu",
                                  channel_mixer_name="ffn", dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype)
        self.blocks = Stack(block, cfg.num_layers, nest=False)
        self.head = Dense(cfg.num_classes, (axes.EMBED,), (axes.CLASSES,), dtype=cfg.compute_dtype,
                          param_dtype=cfg.params_dtype, name="head")

    def as_sequence(self, inputs) -> jax.Array:
        """`inputs` -> [B, seq_len, step_features] as `sequence` says; wrong shapes are named."""
        cfg = self.config
        if cfg.sequence == "series":
            expected = (cfg.input_len, cfg.num_channels)
            what = "series [batch, input_len, channels]"
        else:
            expected = (cfg.image_size, cfg.image_size, cfg.num_channels)
            what = "images [batch, height, width, channels]"
        if inputs.ndim != len(expected) + 1 or tuple(inputs.shape[1:]) != expected:
            raise ValueError(f"lmuformer: inputs must be {what} = [batch, {', '.join(map(str, expected))}] "
                             f"for sequence={cfg.sequence!r}, got {tuple(inputs.shape)}")
        return inputs.reshape(inputs.shape[0], cfg.seq_len, cfg.step_features).astype(cfg.compute_dtype)

    def features(self, batch, *, train: bool = False) -> jax.Array:
        """Per-step features [B, L, D], computed in parallel (FFT memory)."""
        x = self.embed(self.as_sequence(batch["inputs"]))
        return self.blocks(x, deterministic=not train)

    def __call__(self, batch, *, train: bool = False) -> jax.Array:
        logits = self.head(self.features(batch, train=train).mean(axis=1))
        return nn.with_logical_constraint(logits, (axes.ACT_BATCH, None)).astype(jnp.float32)

    def prefix_logits(self, batch) -> jax.Array:
        """[B, L, classes]: at step t, the head on the mean of features 0..t (parallel)."""
        x = self.features(batch)
        steps = jnp.arange(1, x.shape[1] + 1, dtype=jnp.float32)[None, :, None]
        return self.head(jnp.cumsum(x.astype(jnp.float32), axis=1) / steps).astype(jnp.float32)

    # --- streaming ---
    def init_state(self, batch_size: int) -> dict:
        cfg = self.config
        return {"embed": self.embed.init_state(batch_size),
                "blocks": {f"block_{i}": {"lmu": LMUMixer.initial_state(cfg, batch_size),
                                          "ffn": ConvFFN.initial_state(cfg, batch_size)}
                           for i in range(cfg.num_layers)},
                "sum": jnp.zeros((batch_size, cfg.embed_dim), jnp.float32),
                "count": jnp.zeros((), jnp.float32)}

    def step(self, state, x_t) -> tuple[dict, jax.Array]:
        """One input step x_t [B, step_features] -> (state, logits [B, classes] of the prefix so far)."""
        cfg = self.config
        if x_t.ndim != 2 or x_t.shape[1] != cfg.step_features:
            raise ValueError(f"lmuformer: a step takes [batch, {cfg.step_features}], got {tuple(x_t.shape)}")
        embed_state, x = self.embed.step(state["embed"], x_t.astype(cfg.compute_dtype))
        x, block_states = self.blocks(x, state=state["blocks"])
        total, count = state["sum"] + x.astype(jnp.float32), state["count"] + 1.0
        logits = self.head(total / count).astype(jnp.float32)
        return {"embed": embed_state, "blocks": block_states, "sum": total, "count": count}, logits


register("lmuformer", LMUFormerConfig, LMUFormer)


def stream(model: LMUFormer, params, inputs) -> jax.Array:
    """[B, L, classes]: `model.step` scanned over the sequence from `init_state` (the RNN form of
    `prefix_logits`); `params` as for apply ({'params': ...})."""
    seq = model.apply(params, inputs, method=LMUFormer.as_sequence)
    state = model.apply(params, seq.shape[0], method=LMUFormer.init_state)

    def body(state, x_t):
        return model.apply(params, state, x_t, method=LMUFormer.step)

    _, logits = jax.lax.scan(body, state, jnp.swapaxes(seq, 0, 1))
    return jnp.swapaxes(logits, 0, 1)
