"""vit: batch permutation, patch embedding as a convolution, mean pooling, parity with Hugging Face ViT.

The parity reference is transformers' ViTForImageClassification, not timm: timm needs
torchvision, which does not work with the CPU torch wheel the parity extra installs.
"""
from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from fintrans.layers import PatchEmbed2D
from fintrans.models import vit
from model_cases import BATCH, built, config_of, jit

NAME = "vit"


def test_permuting_the_batch_permutes_the_logits():
    b = built(NAME)
    perm = np.array([2, 0, 1])
    logits = b.forward(b.params, b.batch)
    permuted = b.forward(b.params, {"inputs": np.asarray(b.batch["inputs"])[perm]})
    chex.assert_trees_all_close(permuted, logits[perm], atol=1e-5)


@pytest.mark.parametrize("patch_size", [2, 4])
def test_patch_embed_is_a_strided_convolution(patch_size):
    images = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
    layer = PatchEmbed2D(patch_size, features=5)
    params = nn.unbox(jit(layer.init)(jax.random.PRNGKey(1), images))

    @jit
    def both(params, images):
        kernel = params["params"]["proj"]["kernel"].reshape(patch_size, patch_size, 3, 5)  # HWIO
        conv = jax.lax.conv_general_dilated(images, kernel, window_strides=(patch_size, patch_size),
                                            padding="VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            precision=jax.lax.Precision.HIGHEST)
        return layer.apply(params, images), conv + params["params"]["proj"]["bias"]

    ours, conv = both(params, images)
    n = 8 // patch_size
    chex.assert_shape(ours, (2, n * n, 5))
    chex.assert_trees_all_close(ours, conv.reshape(2, n * n, 5), atol=1e-5)  # patches in row-major order


def test_mean_pooling_has_no_cls_token_and_averages_patches():
    cfg = config_of(NAME, pooling="mean", num_layers=1)
    model = vit.ViT(cfg)
    images = np.asarray(built(NAME).batch["inputs"])
    params = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), {"inputs": images}))
    assert "cls_token" not in params["params"]
    assert params["params"]["position_embed"]["embedding"].shape == (cfg.num_patches, cfg.embed_dim)
    # Mean pooling treats patches as a set once positions are zero: shuffling patches keeps the logits.
    real = nn.unbox(jit(model.init)(jax.random.PRNGKey(0), {"inputs": images}))
    real["params"]["position_embed"]["embedding"] = jnp.zeros_like(real["params"]["position_embed"]["embedding"])
    p = cfg.patch_size
    blocks = images.reshape(BATCH, 8 // p, p, 8 // p, p, 1)
    swapped = blocks[:, ::-1, :, ::-1].reshape(images.shape)  # patch grid reversed, patches intact
    f = jit(lambda prm, x: model.apply(prm, {"inputs": x}))
    out = f(real, images)
    chex.assert_shape(out, (BATCH, cfg.num_classes))
    chex.assert_trees_all_close(f(real, swapped), out, atol=1e-5)


@pytest.mark.parametrize("patch_size", [2, 4])
def test_parity_with_transformers_vit(patch_size):
    """HF ViTForImageClassification (8x8x1 images) with random weights, converted, gives the same logits."""
    b = built(NAME)
    cfg = b.config if patch_size == b.config.patch_size else config_of(NAME, patch_size=patch_size)
    hf_cfg = transformers.ViTConfig(
        image_size=cfg.image_size, patch_size=patch_size, num_channels=cfg.num_channels, hidden_size=cfg.embed_dim,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, intermediate_size=cfg.mlp_dim,
        hidden_act="gelu", layer_norm_eps=cfg.norm_epsilon, num_labels=cfg.num_classes, qkv_bias=True)
    torch.manual_seed(patch_size)
    hf = transformers.ViTForImageClassification(hf_cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(1.0 + 0.2 * torch.randn_like(p) if "layernorm" in name and name.endswith("weight")
                    else 0.3 * torch.randn_like(p))
    state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    params = {"params": vit.params_from_transformers(state, cfg)}
    images = np.asarray(b.batch["inputs"])
    if cfg is b.config:
        chex.assert_trees_all_equal_shapes_and_dtypes(params, b.params)
        ours = b.forward(params, {"inputs": images})
    else:
        ours = jit(lambda prm, x: vit.ViT(cfg).apply(prm, {"inputs": x}))(params, images)
    with torch.no_grad():
        ref = hf(pixel_values=torch.tensor(images.transpose(0, 3, 1, 2))).logits.numpy()
    assert np.abs(ref).max() > 0.1
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-5, rtol=1e-5)
