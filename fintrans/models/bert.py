"""BERT sequence classifier, as FinAI-BERT (arXiv 2507.01991) fine-tunes it: bert-base with a
linear classifier on the pooled [CLS] vector.

Architecture (Devlin et al.; HF `BertForSequenceClassification` is the parity reference):
word + learned position + token-type embeddings -> LayerNorm (eps 1e-12) -> dropout -> N post-LN
blocks (attention and erf-GELU FFN, with biases) -> pooler tanh(W·h[CLS] + b) -> dropout -> linear.

bert-base is `BertClassifierConfig(vocab_size=30522, max_len=512, type_vocab_size=2, embed_dim=768,
num_layers=12, num_heads=12, mlp_dim=3072, dropout_rate=0.1)` (see `BERT_BASE`).

Dropout sits where BERT puts it (after the embedding LayerNorm, on the attention and FFN outputs
before each residual, before the classifier); BERT's extra dropout on attention probabilities
(attention_probs_dropout_prob) is not applied: fintrans.ops attention has no dropout.
Parameters use fintrans' layer initialisers (LeCun normal kernels), not BERT's N(0, 0.02);
`params_from_transformers` loads a Hugging Face BERT state dict.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fintrans import axes
from fintrans.layers import (REMAT_POLICIES, Dense, Embed, LayerNorm, LearnedPositions, Stack, TransformerBlock,
                             param_with_axes, stack_params)
from fintrans.layers.mlp import ACTIVATIONS
from fintrans.models import register
from fintrans.models.config import AttentionConfig, ConfigError, check_choice, check_positive, check_rate


@dataclasses.dataclass(frozen=True)
class BertClassifierConfig(AttentionConfig):
    DATA_FIELDS = {"vocab_size": "vocab_size", "num_classes": "num_classes"}  # see ModelConfig
    vocab_size: int = 1024
    max_len: int = 128  # learned position table (BERT: max_position_embeddings)
    type_vocab_size: int = 2  # segment (token type) embeddings
    embed_dim: int = 128
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 512
    num_classes: int = 2
    activation: str = "gelu"  # erf GELU, as BERT
    norm_epsilon: float = 1e-12
    dropout_rate: float = 0.1  # BERT's hidden_dropout_prob, also before the classifier
    scan_layers: bool = False  # nn.scan over the blocks (parameters 'blocks/layers', stacked)
    remat_policy: str = "none"  # fintrans.layers.REMAT_POLICIES

    def validate(self):
        for name in ("vocab_size", "max_len", "type_vocab_size", "embed_dim", "num_layers", "num_heads",
                     "mlp_dim", "num_classes"):
            check_positive(name, getattr(self, name))
        check_choice("activation", self.activation, ACTIVATIONS)
        check_rate("dropout_rate", self.dropout_rate)
        check_choice("scan_layers", self.scan_layers, (False, True))
        check_choice("remat_policy", self.remat_policy, REMAT_POLICIES.names())
        if not isinstance(self.norm_epsilon, (int, float)) or self.norm_epsilon <= 0:
            raise ConfigError(f"norm_epsilon={self.norm_epsilon!r} must be a positive float")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


BERT_BASE = dict(vocab_size=30522, max_len=512, type_vocab_size=2, embed_dim=768, num_layers=12, num_heads=12,
                 mlp_dim=3072, activation="gelu", norm_epsilon=1e-12, dropout_rate=0.1)


class BertClassifier(nn.Module):
    """batch {'inputs': int[B, L] (token 0 is [CLS]), 'mask': bool[B, L] (True = real token),
    optional 'token_type_ids': int[B, L]} -> logits float32[B, num_classes].

    Padding (mask False) is masked out of every key, so padded positions never change the outputs
    of real tokens.
    """
    config: BertClassifierConfig

    @nn.compact
    def __call__(self, batch, *, train: bool = False) -> jax.Array:
        cfg = self.config
        tokens, valid = batch["inputs"], batch["mask"]
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"bert_classifier: inputs must be int token ids of shape [batch, length], "
                             f"got {tokens.dtype}{list(tokens.shape)}")
        if valid.shape != tokens.shape:
            raise ValueError(f"bert_classifier: mask must have the inputs' shape {tuple(tokens.shape)} "
                             f"([batch, length]), got {tuple(valid.shape)}")
        if tokens.shape[1] > cfg.max_len:
            raise ValueError(f"bert_classifier: sequence length {tokens.shape[1]} exceeds max_len={cfg.max_len}")
        types = batch.get("token_type_ids")
        if types is None:
            types = jnp.zeros_like(tokens)
        elif types.shape != tokens.shape:
            raise ValueError(f"bert_classifier: token_type_ids must have the inputs' shape {tuple(tokens.shape)}, "
                             f"got {tuple(types.shape)}")
        valid = valid.astype(bool)
        dtype, pdtype = cfg.compute_dtype, cfg.params_dtype
        deterministic = not train

        x = Embed(cfg.vocab_size, cfg.embed_dim, dtype=dtype, param_dtype=pdtype, name="token_embed")(tokens)
        x = x + LearnedPositions(cfg.max_len, cfg.embed_dim, param_dtype=pdtype,
                                 name="position_embed")(tokens.shape[1]).astype(dtype)
        # A handful of rows: replicated rather than split over the vocab axis.
        type_table = param_with_axes(self, "token_type_embed", nn.initializers.normal(stddev=0.02),
                                     (cfg.type_vocab_size, cfg.embed_dim), (None, axes.EMBED), pdtype)
        x = x + jnp.take(type_table, types, axis=0).astype(dtype)
        x = LayerNorm(epsilon=cfg.norm_epsilon, dtype=dtype, param_dtype=pdtype, name="embed_norm")(x)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)

        key_mask = valid[:, None, None, :]  # [B, 1, 1, L]: every query sees the real tokens only
        block = functools.partial(
            TransformerBlock, num_heads=cfg.num_heads, head_dim=cfg.head_dim, mlp_dim=cfg.mlp_dim, norm="layernorm",
            norm_position="post", norm_epsilon=cfg.norm_epsilon, activation=cfg.activation, use_bias=True,
            dropout_rate=cfg.dropout_rate, mlp_dropout_rate=0.0, attention_impl=cfg.attention_impl,
            dtype=dtype, param_dtype=pdtype)
        x = Stack(block, cfg.num_layers, mode="scan" if cfg.scan_layers else "unrolled", remat_policy=cfg.remat_policy,
                  nest=False, name="blocks")(x, mask=key_mask, deterministic=deterministic)

        pooled = jnp.tanh(Dense(cfg.embed_dim, (axes.EMBED,), (axes.MLP,), dtype=dtype, param_dtype=pdtype,
                                name="pooler")(x[:, 0]))
        pooled = nn.Dropout(cfg.dropout_rate)(pooled, deterministic=deterministic)
        logits = Dense(cfg.num_classes, (axes.EMBED,), (axes.CLASSES,), dtype=dtype, param_dtype=pdtype,
                       name="classifier")(pooled)
        logits = nn.with_logical_constraint(logits, (axes.ACT_BATCH, None))
        return logits.astype(jnp.float32)


register("bert_classifier", BertClassifierConfig, BertClassifier)


def params_from_transformers(state_dict: Mapping[str, np.ndarray], config: BertClassifierConfig) -> dict:
    """Hugging Face `BertForSequenceClassification` weights (name -> array, e.g.
    `{k: v.numpy() for k, v in model.state_dict().items()}`) -> this model's (unboxed) 'params'."""
    sd = {k.removeprefix("bert."): np.asarray(v, np.float32) for k, v in state_dict.items()}
    h, hd, d = config.num_heads, config.head_dim, config.embed_dim

    def take(name):
        if name not in sd:
            raise KeyError(f"bert_classifier: state dict has no {name!r}")
        return sd[name]

    def dense(prefix, in_shape=None, out_shape=None):
        w = take(prefix + ".weight").T  # torch Linear stores [out, in]
        b = take(prefix + ".bias")
        return {"kernel": w.reshape((in_shape or w.shape[:1]) + (out_shape or w.shape[1:])),
                "bias": b.reshape(out_shape or b.shape)}

    norm = lambda prefix: {"scale": take(prefix + ".weight"), "bias": take(prefix + ".bias")}
    params = {
        "token_embed": {"embedding": take("embeddings.word_embeddings.weight")},
        "position_embed": {"embedding": take("embeddings.position_embeddings.weight")},
        "token_type_embed": take("embeddings.token_type_embeddings.weight"),
        "embed_norm": norm("embeddings.LayerNorm"),
        "pooler": dense("pooler.dense"),
        "classifier": dense("classifier"),
    }
    blocks = []
    for i in range(config.num_layers):
        p = f"encoder.layer.{i}."
        blocks.append({
            "attention": {
                "query": dense(p + "attention.self.query", (d,), (h, hd)),
                "key": dense(p + "attention.self.key", (d,), (h, hd)),
                "value": dense(p + "attention.self.value", (d,), (h, hd)),
                "out": dense(p + "attention.output.dense", (h, hd), (d,)),
            },
            "attention_norm": norm(p + "attention.output.LayerNorm"),
            "mlp": {"wi": dense(p + "intermediate.dense"), "wo": dense(p + "output.dense")},
            "mlp_norm": norm(p + "output.LayerNorm"),
        })
    params.update(stack_params(blocks, "scan" if config.scan_layers else "unrolled"))
    return jax.tree.map(jnp.asarray, params)
