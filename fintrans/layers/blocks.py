"""One residual block with pluggable token and channel mixers, and the transformer block built from it.

    pre-norm:  x = x + T(norm_t(x));   x = x + C(norm_c(x))
    post-norm: x = norm_t(x + T(x));   x = norm_c(x + C(x))

where each branch output passes, in order, residual dropout, layer scale (a learned per-channel γ)
and drop-path (stochastic depth) before it is added. A model author picks the mixers as module
factories (a Module class or a `functools.partial` of one), which the block calls with `name=`:

    Block(token_mixer=partial(MultiHeadAttention, num_heads=4, head_dim=16),
          channel_mixer=partial(MLP, hidden_dim=256), norm="layernorm", norm_position="pre")

Calling convention (the contract every mixer follows):
    token mixer:   mixer(x, deterministic=..., **kwargs)  kwargs: whatever the block was called with
                   besides `deterministic` (mask, causal, segment_ids, positions, ...)
    channel mixer: mixer(x, deterministic=...)
Streaming (recurrent mixers such as the LMU): `block(x_t, state={mixer name: state})` runs one step,
calling each mixer's `step(state, x_t) -> (state, y_t)`, and returns (x_t, new state); the model
builds the initial states (the mixers' own `initial_state`).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from fintrans import axes
from fintrans.layers.attention import MultiHeadAttention
from fintrans.layers.dense import param_with_axes
from fintrans.layers.mlp import MLP
from fintrans.layers.norms import make_norm
from fintrans.ops.patterns import AttentionPattern

NORM_POSITIONS = ("pre", "post")
ModuleFactory = Callable[..., nn.Module]


def check_rate(owner: str, name: str, rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{owner}: {name}={rate!r} must be in [0, 1]")


class DropPath(nn.Module):
    """Stochastic depth: per sample, the whole input is zeroed with probability `rate`, else scaled
    by 1/(1 - rate); identity when deterministic. Draws from the 'dropout' rng stream."""
    rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        check_rate("DropPath", "rate", self.rate)
        if deterministic or self.rate == 0.0:
            return x
        if self.rate == 1.0:
            return jnp.zeros_like(x)
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # one draw per sample
        kept = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
        return jnp.where(kept, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))


class Block(nn.Module):
    """A residual block: token-mixing sublayer, then (optionally) channel-mixing sublayer.

    Attributes:
      token_mixer: factory of the token-mixing module (attention, pooling, gated spatial unit, LMU, ...).
      channel_mixer: factory of the channel-mixing module (MLP/GLU, conv-MLP); None: no second sublayer.
      norm: a name in fintrans.layers.NORMS, a factory (called with name=) of any normalising module
        (e.g. a series decomposition), or None for no norm.
      norm_position: 'pre' (GPT-2/ViT/LLaMA) or 'post' (original Transformer/BERT).
      token_dropout_rate, channel_dropout_rate: dropout on each branch's output before the residual add.
      layer_scale_init: None for no layer scale; else each branch is multiplied by a learned
        per-channel γ initialised to this value (CaiT), parameter '<mixer name>_layer_scale'.
      drop_path_rate: stochastic depth on each branch (per sample).
      token_mixer_name, channel_mixer_name: the submodules' names; norms are '<mixer name>_norm'.
    """
    token_mixer: ModuleFactory
    channel_mixer: Optional[ModuleFactory] = None
    norm: Union[str, ModuleFactory, None] = "layernorm"
    norm_position: str = "pre"
    norm_epsilon: float = 1e-6
    token_dropout_rate: float = 0.0
    channel_dropout_rate: float = 0.0
    layer_scale_init: Optional[float] = None
    drop_path_rate: float = 0.0
    token_mixer_name: str = "token_mixer"
    channel_mixer_name: str = "channel_mixer"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool = True, state: Optional[dict] = None, **mixer_kwargs):
        """x [B, L, D] -> [B, L, D]; with `state`, one streaming step: x [B, D] -> (y [B, D], new state)."""
        if self.norm_position not in NORM_POSITIONS:
            raise ValueError(f"{self.name}: unknown norm_position {self.norm_position!r}; choose from {NORM_POSITIONS}")
        for name in ("token_dropout_rate", "channel_dropout_rate", "drop_path_rate"):
            check_rate(self.name, name, getattr(self, name))
        act_spec = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED) if x.ndim == 3 else None
        constrain = (lambda y: nn.with_logical_constraint(y, act_spec)) if act_spec else (lambda y: y)
        x = constrain(x)
        new_state = {}
        deterministic = deterministic or state is not None  # streaming is inference

        def mix(module, name, **kwargs):
            if state is None:
                return lambda y: module(y, deterministic=deterministic, **kwargs)

            def step(y):
                new_state[name], out = module.step(state[name], y)
                return out
            return step

        token = self.token_mixer(name=self.token_mixer_name)
        x = self._sublayer(x, mix(token, self.token_mixer_name, **mixer_kwargs), self.token_mixer_name,
                           self.token_dropout_rate, deterministic)
        if self.channel_mixer is not None:
            channel = self.channel_mixer(name=self.channel_mixer_name)
            x = self._sublayer(x, mix(channel, self.channel_mixer_name), self.channel_mixer_name,
                               self.channel_dropout_rate, deterministic)
        x = constrain(x)
        return x if state is None else (x, new_state)

    def _make_norm(self, name: str) -> Callable[[jax.Array], jax.Array]:
        if self.norm is None:
            return lambda y: y
        if isinstance(self.norm, str):
            return make_norm(self.norm, epsilon=self.norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype,
                             name=name)
        return self.norm(name=name)

    def _sublayer(self, x, mix, name: str, dropout_rate: float, deterministic: bool) -> jax.Array:
        norm = self._make_norm(f"{name}_norm")
        y = mix(norm(x) if self.norm_position == "pre" else x)
        if dropout_rate:  # only then: unused Dropout modules would shift the auto-names (and rngs) of later ones
            y = nn.Dropout(dropout_rate)(y, deterministic=deterministic)
        if self.layer_scale_init is not None:
            gamma = param_with_axes(self, f"{name}_layer_scale", nn.initializers.constant(self.layer_scale_init),
                                    (y.shape[-1],), (axes.NORM,), self.param_dtype)
            y = y * gamma.astype(y.dtype)
        y = DropPath(self.drop_path_rate, name=f"{name}_drop_path")(y, deterministic=deterministic)
        x = x + y
        return norm(x) if self.norm_position == "post" else x


def TransformerBlock(*, num_heads: int, head_dim: int, mlp_dim: int, num_kv_heads: Optional[int] = None,  # noqa: N802
                     norm: str = "layernorm", norm_position: str = "pre", norm_epsilon: float = 1e-6,
                     activation: str = "gelu", glu: bool = False, use_bias: bool = True, rotary: bool = False,
                     dropout_rate: float = 0.0, mlp_dropout_rate: Optional[float] = None,
                     attention_impl: Optional[str] = None, decode: bool = False,
                     pattern: Optional[AttentionPattern] = None, layer_scale_init: Optional[float] = None, drop_path_rate: float = 0.0,
                     dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, name: Optional[str] = None) -> Block:
    """The attention + MLP Block every transformer model shares (parameters 'attention', 'attention_norm',
    'mlp', 'mlp_norm'). `dropout_rate` acts on the attention output and the MLP output;
    `mlp_dropout_rate` on the MLP's hidden activations (None: dropout_rate; BERT: 0). `pattern`
    (default full) picks the attention op (fintrans.ops.patterns: local window, top-k, grouped).
    Use `functools.partial(TransformerBlock, ...)` as a Stack's block factory."""
    attention = functools.partial(
        MultiHeadAttention, num_heads=num_heads, head_dim=head_dim, num_kv_heads=num_kv_heads, use_bias=use_bias,
        rotary=rotary, dropout_rate=dropout_rate, attention_impl=attention_impl, decode=decode, dtype=dtype,
        param_dtype=param_dtype, **({} if pattern is None else {"pattern": pattern}))
    mlp = functools.partial(
        MLP, mlp_dim, activation=activation, glu=glu, use_bias=use_bias,
        dropout_rate=dropout_rate if mlp_dropout_rate is None else mlp_dropout_rate, dtype=dtype,
        param_dtype=param_dtype)
    return Block(token_mixer=attention, channel_mixer=mlp, norm=norm, norm_position=norm_position,
                 norm_epsilon=norm_epsilon, channel_dropout_rate=dropout_rate, layer_scale_init=layer_scale_init,
                 drop_path_rate=drop_path_rate, token_mixer_name="attention", channel_mixer_name="mlp", dtype=dtype,
                 param_dtype=param_dtype, name=name)
