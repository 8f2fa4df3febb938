"""Vision Transformer classifier (Dosovitskiy et al., 'An Image is Worth 16x16 Words').

p×p patches -> linear embedding (fintrans.layers.PatchEmbed2D, a stride-p convolution) -> prepend a
learned [CLS] token -> add learned positions -> dropout -> N pre-LN blocks (erf-GELU MLP) -> final
LayerNorm -> linear head on the [CLS] vector.

With pooling='mean' there is no [CLS] token and the head reads the mean of the patch tokens after
the final LayerNorm (the authors' 'gap' classifier in big_vision).
HF `ViTForImageClassification` is the parity reference; `params_from_transformers` loads its weights.
ViT-B/16 is `ViTConfig(image_size=224, patch_size=16, num_channels=3, embed_dim=768, num_layers=12,
num_heads=12, mlp_dim=3072)`.
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
from fintrans.layers import (REMAT_POLICIES, Dense, LayerNorm, LearnedPositions, PatchEmbed2D, Stack, TransformerBlock,
                             param_with_axes, stack_params)
from fintrans.layers.mlp import ACTIVATIONS
from fintrans.models import register
from fintrans.models.config import AttentionConfig, ConfigError, check_choice, check_positive, check_rate

POOLINGS = ("cls", "mean")


@dataclasses.dataclass(frozen=True)
class ViTConfig(AttentionConfig):
    DATA_FIELDS = {"num_classes": "num_classes", "num_channels": "num_channels", "image_size": "image_size"}
    image_size: int = 8  # square images [image_size, image_size, num_channels] (sklearn digits: 8x8x1)
    patch_size: int = 2
    num_channels: int = 1
    num_classes: int = 10
    embed_dim: int = 64
    num_layers: int = 4
    num_heads: int = 4
    mlp_dim: int = 256
    activation: str = "gelu"
    norm_epsilon: float = 1e-6
    dropout_rate: float = 0.0
    pooling: str = "cls"
    scan_layers: bool = False  # nn.scan over the blocks (parameters 'blocks/layers', stacked)
    remat_policy: str = "none"  # fintrans.layers.REMAT_POLICIES

    def validate(self):
        for name in ("image_size", "patch_size", "num_channels", "num_classes", "embed_dim", "num_layers",
                     "num_heads", "mlp_dim"):
            check_positive(name, getattr(self, name))
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("pooling", self.pooling, POOLINGS)
        check_rate("dropout_rate", self.dropout_rate)
        check_choice("scan_layers", self.scan_layers, (False, True))
        check_choice("remat_policy", self.remat_policy, REMAT_POLICIES.names())
        if not isinstance(self.norm_epsilon, (int, float)) or self.norm_epsilon <= 0:
            raise ConfigError(f"norm_epsilon={self.norm_epsilon!r} must be a positive float")
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        return self.num_patches + (self.pooling == "cls")


class ViT(nn.Module):
    """batch {'inputs': float[B, image_size, image_size, num_channels]} -> logits float32[B, num_classes]."""
    config: ViTConfig

    @nn.compact
    def __call__(self, batch, *, train: bool = False) -> jax.Array:
        cfg = self.config
        images = batch["inputs"]
        expected = (cfg.image_size, cfg.image_size, cfg.num_channels)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"vit: inputs must be images [batch, {', '.join(map(str, expected))}] "
                             f"(batch, height, width, channels), got {tuple(images.shape)}")
        dtype, pdtype = cfg.compute_dtype, cfg.params_dtype
        deterministic = not train

        x = PatchEmbed2D(cfg.patch_size, cfg.embed_dim, dtype=dtype, param_dtype=pdtype,
                         name="patch_embed")(images.astype(dtype))
        if cfg.pooling == "cls":
            cls = param_with_axes(self, "cls_token", nn.initializers.zeros, (cfg.embed_dim,), (axes.EMBED,), pdtype)
            cls = jnp.broadcast_to(cls.astype(dtype), (x.shape[0], 1, cfg.embed_dim))
            x = jnp.concatenate([cls, x], axis=1)
        x = x + LearnedPositions(cfg.num_tokens, cfg.embed_dim, param_dtype=pdtype,
                                 name="position_embed")(cfg.num_tokens).astype(dtype)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        block = functools.partial(
            TransformerBlock, num_heads=cfg.num_heads, head_dim=cfg.embed_dim // cfg.num_heads, mlp_dim=cfg.mlp_dim,
            norm="layernorm", norm_position="pre", norm_epsilon=cfg.norm_epsilon, activation=cfg.activation,
            use_bias=True, dropout_rate=cfg.dropout_rate, attention_impl=cfg.attention_impl, dtype=dtype,
            param_dtype=pdtype)
        x = Stack(block, cfg.num_layers, mode="scan" if cfg.scan_layers else "unrolled", remat_policy=cfg.remat_policy,
                  nest=False, name="blocks")(x, deterministic=deterministic)
        x = LayerNorm(epsilon=cfg.norm_epsilon, dtype=dtype, param_dtype=pdtype, name="final_norm")(x)
        pooled = x[:, 0] if cfg.pooling == "cls" else x.mean(axis=1)
        logits = Dense(cfg.num_classes, (axes.EMBED,), (axes.CLASSES,), dtype=dtype, param_dtype=pdtype,
                       name="head")(pooled)
        logits = nn.with_logical_constraint(logits, (axes.ACT_BATCH, None))
        return logits.astype(jnp.float32)


register("vit", ViTConfig, ViT)


def params_from_transformers(state_dict: Mapping[str, np.ndarray], config: ViTConfig) -> dict:
    """Hugging Face `ViTForImageClassification` weights (name -> array) -> this model's (unboxed) 'params'.

    Only pooling='cls' has an HF counterpart.
    """
    if config.pooling != "cls":
        raise ValueError("vit: Hugging Face ViT classifies from [CLS]; build the config with pooling='cls'")
    sd = {k.removeprefix("vit."): np.asarray(v, np.float32) for k, v in state_dict.items()}
    h, d = config.num_heads, config.embed_dim
    hd = d // h

    def prefix(*candidates):
        """The first of `candidates` (names without '.weight') that the state dict has."""
        for c in candidates:
            if c + ".weight" in sd:
                return c
        raise KeyError(f"vit: state dict has none of {[c + '.weight' for c in candidates]}")

    def dense(candidates, in_shape=None, out_shape=None):
        p = prefix(*candidates)
        w, b = sd[p + ".weight"].T, sd[p + ".bias"]  # torch Linear stores [out, in]
        return {"kernel": w.reshape((in_shape or w.shape[:1]) + (out_shape or w.shape[1:])),
                "bias": b.reshape(out_shape or b.shape)}

    def norm(*candidates):
        p = prefix(*candidates)
        return {"scale": sd[p + ".weight"], "bias": sd[p + ".bias"]}

    def take(name):
        if name not in sd:
            raise KeyError(f"vit: state dict has no {name!r}")
        return sd[name]

    conv = take("embeddings.patch_embeddings.projection.weight")  # [D, C, p, p]
    params = {
        "patch_embed": {"proj": {"kernel": conv.transpose(2, 3, 1, 0).reshape(-1, d),  # (row, col, channel) order
                                 "bias": take("embeddings.patch_embeddings.projection.bias")}},
        "cls_token": take("embeddings.cls_token").reshape(d),
        "position_embed": {"embedding": take("embeddings.position_embeddings").reshape(-1, d)},
        "final_norm": norm("layernorm"),
        "head": dense(("classifier",)),
    }
    blocks = []
    for i in range(config.num_layers):
        # transformers 5 names (first) and 4.x names (second).
        new, old = f"layers.{i}.", f"encoder.layer.{i}."
        blocks.append({
            "attention": {
                "query": dense((new + "attention.q_proj", old + "attention.attention.query"), (d,), (h, hd)),
                "key": dense((new + "attention.k_proj", old + "attention.attention.key"), (d,), (h, hd)),
                "value": dense((new + "attention.v_proj", old + "attention.attention.value"), (d,), (h, hd)),
                "out": dense((new + "attention.o_proj", old + "attention.output.dense"), (h, hd), (d,)),
            },
            "attention_norm": norm(new + "layernorm_before", old + "layernorm_before"),
            "mlp": {"wi": dense((new + "mlp.fc1", old + "intermediate.dense")),
                    "wo": dense((new + "mlp.fc2", old + "output.dense"))},
            "mlp_norm": norm(new + "layernorm_after", old + "layernorm_after"),
        })
    params.update(stack_params(blocks, "scan" if config.scan_layers else "unrolled"))
    return jax.tree.map(jnp.asarray, params)
