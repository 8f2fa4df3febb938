"""Decoder-only language model: pre-LN transformer blocks, rotary positions, grouped-query heads,
tied or separate output embedding, and KV-cache generation (`generate`).

The blocks are one fintrans.layers.Stack in the model's own scope: parameters 'block_i/...', or with
`scan_layers=True` 'layers/...' with a leading layers dimension (nn.scan: compile time flat in
depth); `remat_policy` (fintrans.layers.REMAT_POLICIES) rematerialises each block in the backward pass."""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fintrans import axes
from fintrans.layers import REMAT_POLICIES, Dense, Embed, Stack, TransformerBlock, make_norm
from fintrans.layers.mlp import ACTIVATIONS
from fintrans.layers.norms import NORMS
from fintrans.models import register
from fintrans.models.config import AttentionConfig, ConfigError, check_choice, check_positive, check_rate


@dataclasses.dataclass(frozen=True)
class DecoderLMConfig(AttentionConfig):
    DATA_FIELDS = {"vocab_size": "vocab_size"}  # see ModelConfig
    vocab_size: int = 128
    max_len: int = 256  # longest sequence, and the KV cache length when decoding
    embed_dim: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: Optional[int] = None  # None: multi-head; fewer: grouped-query attention
    head_dim: Optional[int] = None  # None: embed_dim // num_heads
    mlp_dim: int = 512
    activation: str = "gelu"
    glu: bool = False
    norm: str = "rmsnorm"
    norm_epsilon: float = 1e-6
    use_bias: bool = False
    dropout_rate: float = 0.0
    tie_embeddings: bool = True
    decode: bool = False  # set by `generate`: blocks read and write a KV cache
    scan_layers: bool = False  # nn.scan over the blocks (parameters stacked on a 'layers' axis)
    remat_policy: str = "none"  # rematerialise each block in the backward pass: fintrans.layers.REMAT_POLICIES

    def validate(self):
        for name in ("vocab_size", "max_len", "embed_dim", "num_layers", "num_heads", "mlp_dim"):
            check_positive(name, getattr(self, name))
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("norm", self.norm, NORMS)
        check_rate("dropout_rate", self.dropout_rate)
        check_choice("scan_layers", self.scan_layers, (False, True))
        check_choice("remat_policy", self.remat_policy, REMAT_POLICIES.names())
        if self.num_kv_heads is not None and (self.num_kv_heads <= 0 or self.num_heads % self.num_kv_heads):
            raise ConfigError(f"num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads}")
        if self.head_dim is None and self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}; "
                              "set head_dim explicitly")
        if self.resolved_head_dim % 2:
            raise ConfigError(f"head_dim={self.resolved_head_dim} must be even for rotary positions")

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.embed_dim // self.num_heads


class DecoderLM(nn.Module):
    """batch {'inputs': int[batch, length]} (optional 'positions', 'segment_ids') -> logits [batch, length, vocab]."""
    config: DecoderLMConfig

    @nn.compact
    def __call__(self, batch, *, train: bool = False) -> jax.Array:
        cfg = self.config
        tokens = batch["inputs"]
        if tokens.ndim != 2:
            raise ValueError(f"decoder_lm: inputs must be [batch, length] token ids, got shape {tokens.shape}")
        if tokens.shape[1] > cfg.max_len:
            raise ValueError(f"decoder_lm: sequence length {tokens.shape[1]} exceeds max_len={cfg.max_len}")
        dtype, pdtype = cfg.compute_dtype, cfg.params_dtype
        embed = Embed(cfg.vocab_size, cfg.embed_dim, dtype=dtype, param_dtype=pdtype, name="token_embed")
        x = embed(tokens)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=not train)
        block = functools.partial(
            TransformerBlock, num_heads=cfg.num_heads, head_dim=cfg.resolved_head_dim, mlp_dim=cfg.mlp_dim,
            num_kv_heads=cfg.num_kv_heads, norm=cfg.norm, norm_position="pre", norm_epsilon=cfg.norm_epsilon,
            activation=cfg.activation, glu=cfg.glu, use_bias=cfg.use_bias, rotary=True,
            dropout_rate=cfg.dropout_rate, attention_impl=cfg.attention_impl, decode=cfg.decode,
            dtype=dtype, param_dtype=pdtype)
        blocks = Stack(block, cfg.num_layers, mode="scan" if cfg.scan_layers else "unrolled",
                       remat_policy=cfg.remat_policy, nest=False, name="blocks")
        x = blocks(x, causal=True, segment_ids=batch.get("segment_ids"), positions=batch.get("positions"),
                   deterministic=not train)
        x = make_norm(cfg.norm, epsilon=cfg.norm_epsilon, dtype=dtype, param_dtype=pdtype, name="final_norm")(x)
        if cfg.tie_embeddings:
            logits = embed.attend(x)
        else:
            logits = Dense(cfg.vocab_size, (axes.EMBED,), (axes.VOCAB,), use_bias=False, dtype=dtype,
                           param_dtype=pdtype, name="lm_head")(x)
        logits = nn.with_logical_constraint(logits, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_VOCAB))
        return logits.astype(jnp.float32)


def init_cache(config: DecoderLMConfig, batch_size: int):
    """An empty KV cache for `batch_size` sequences of up to config.max_len tokens."""
    model = DecoderLM(config.replace(decode=True))
    dummy = {"inputs": jnp.zeros((batch_size, config.max_len), jnp.int32)}
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), dummy))["cache"]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def decode_step(config: DecoderLMConfig, params, cache, tokens):
    """Feeds `tokens` [batch, chunk] after what the cache holds; returns (logits [batch, chunk, vocab], cache)."""
    model = DecoderLM(config.replace(decode=True))
    logits, updates = model.apply({"params": params, "cache": cache}, {"inputs": tokens}, mutable=["cache"])
    return logits, updates["cache"]


def set_cache_index(cache, index: jax.Array):
    """The cache with every layer's per-sequence write index set to `index` [batch]."""
    def put(path, leaf):
        is_index = getattr(path[-1], "key", None) == "cache_index"
        return jnp.broadcast_to(index, leaf.shape).astype(leaf.dtype) if is_index else leaf
    return jax.tree_util.tree_map_with_path(put, cache)


def _check_prompt_lengths(prompt_lengths, batch: int, prompt_len: int) -> jax.Array:
    lengths = jnp.asarray(prompt_lengths)
    if lengths.shape != (batch,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(f"generate: prompt_lengths must be int [batch={batch}], "
                         f"got {lengths.dtype}{list(lengths.shape)}")
    try:
        values = np.asarray(lengths)
    except jax.errors.TracerArrayConversionError:  # traced under jit: values unknown until it runs
        values = None
    if values is not None:
        if values.min() < 1 or values.max() > prompt_len:
            raise ValueError(f"generate: prompt_lengths must be within 1..{prompt_len} (the prompt's width), "
                             f"got {values.tolist()}")
    return jnp.clip(lengths, 1, prompt_len).astype(jnp.int32)  # under jit, out-of-range values are clipped


def generate(config: DecoderLMConfig, params, prompt: jax.Array, num_tokens: int, rng: jax.Array, *,
             prompt_lengths: Optional[jax.Array] = None, temperature: float = 1.0,
             top_k: Optional[int] = None, pad_id: int = 0) -> jax.Array:
    """Samples `num_tokens` continuations of each prompt with the KV cache.

    Args:
      prompt: [batch, prompt_len] token ids. Prompts of different lengths are right-padded and
        their lengths given in `prompt_lengths` [batch] (default: all prompt_len); what the padding
        holds does not matter.
      temperature: 0 is greedy; top_k: sample among the k likeliest tokens only.
    Returns:
      [batch, prompt_len + num_tokens] token ids: row i holds its prompt's prompt_lengths[i] tokens,
      then its num_tokens new ones, then `pad_id`. Jit-compatible (num_tokens, temperature, top_k
      and pad_id static).
    """
    batch, prompt_len = prompt.shape
    if prompt_len < 1:
        raise ValueError("generate: the prompt needs at least one token")
    if not isinstance(num_tokens, int) or num_tokens < 0:
        raise ValueError(f"generate: num_tokens must be a non-negative int, got {num_tokens!r}")
    if prompt_len + num_tokens > config.max_len:
        raise ValueError(f"generate: prompt ({prompt_len}) + num_tokens ({num_tokens}) exceeds "
                         f"max_len={config.max_len}")
    lengths = (jnp.full((batch,), prompt_len, jnp.int32) if prompt_lengths is None
               else _check_prompt_lengths(prompt_lengths, batch, prompt_len))
    cache = init_cache(config, batch)
    logits, cache = decode_step(config, params, cache, prompt)
    # Each sequence continues after its own last prompt token, over the padding's cache entries.
    cache = set_cache_index(cache, lengths)
    last_logits = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]

    def sample(key, last_logits):
        if temperature == 0:
            return jnp.argmax(last_logits, axis=-1).astype(prompt.dtype)
        scaled = last_logits / temperature
        if top_k is not None:
            kth = jax.lax.top_k(scaled, top_k)[0][:, -1:]
            scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
        return jax.random.categorical(key, scaled, axis=-1).astype(prompt.dtype)

    def step(carry, key):
        cache, last_logits = carry
        token = sample(key, last_logits)
        logits, cache = decode_step(config, params, cache, token[:, None])
        return (cache, logits[:, -1]), token

    keys = jax.random.split(rng, num_tokens)
    _, new_tokens = jax.lax.scan(step, (cache, last_logits), keys)  # [num_tokens, batch]
    pos = jnp.arange(prompt_len + num_tokens)[None, :]
    start = lengths[:, None]
    from_prompt = jnp.take_along_axis(prompt, jnp.minimum(pos, prompt_len - 1), axis=1)
    from_new = (jnp.take_along_axis(new_tokens.T, jnp.clip(pos - start, 0, num_tokens - 1), axis=1)
                if num_tokens else from_prompt)
    return jnp.where(pos < start, from_prompt,
                     jnp.where(pos < start + num_tokens, from_new, jnp.asarray(pad_id, prompt.dtype)))


# Registered after generate so the lm task can sample through the registry (ModelSpec.generate).
register("decoder_lm", DecoderLMConfig, DecoderLM, generate=generate)
