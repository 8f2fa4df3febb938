"""bert_classifier: padding invariance, token types, bert-base size, parity with Hugging Face BERT."""
from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from fintrans.models import bert
from model_cases import BATCH, built, config_of, jit

NAME = "bert_classifier"


@functools.lru_cache(maxsize=None)
def _forward_any_shape():
    b = built(NAME)
    return jit(lambda p, x: b.model.apply(p, x))


def test_padding_tokens_do_not_change_logits():
    b = built(NAME)
    batch = {k: np.array(v) for k, v in b.batch.items()}
    assert not batch["mask"].all() and batch["mask"][:, 0].all()
    logits = b.forward(b.params, batch)

    # Different token ids and token types under the padding.
    changed = {k: v.copy() for k, v in batch.items()}
    pad = ~batch["mask"]
    changed["inputs"][pad] = (changed["inputs"][pad] + 7) % b.config.vocab_size
    changed["token_type_ids"][pad] = 1 - changed["token_type_ids"][pad]
    chex.assert_trees_all_close(b.forward(b.params, changed), logits, atol=1e-5)

    # Extra padding appended to every row.
    extra = 5
    longer = {
        "inputs": np.concatenate([batch["inputs"], np.full((BATCH, extra), 3, np.int32)], axis=1),
        "mask": np.concatenate([batch["mask"], np.zeros((BATCH, extra), bool)], axis=1),
        "token_type_ids": np.concatenate([batch["token_type_ids"], np.ones((BATCH, extra), np.int32)], axis=1),
    }
    chex.assert_trees_all_close(_forward_any_shape()(b.params, longer), logits, atol=1e-5)

    # A real token does matter (the two checks above are not vacuous).
    real = {k: v.copy() for k, v in batch.items()}
    real["inputs"][:, 1] = (real["inputs"][:, 1] + 1) % b.config.vocab_size
    assert not np.allclose(b.forward(b.params, real), logits, atol=1e-4)


def test_missing_token_type_ids_mean_segment_zero():
    b = built(NAME)
    batch = dict(b.batch, token_type_ids=np.zeros_like(b.batch["token_type_ids"]))
    without = {k: v for k, v in batch.items() if k != "token_type_ids"}
    f = _forward_any_shape()
    chex.assert_trees_all_close(f(b.params, without), b.forward(b.params, batch), atol=1e-6)


def test_config_expresses_bert_base_exactly():
    """bert-base from BERT_BASE has exactly as many parameters as HF's bert-base classifier."""
    cfg = bert.BertClassifierConfig(**bert.BERT_BASE, num_classes=2)
    assert (cfg.num_layers, cfg.embed_dim, cfg.num_heads, cfg.mlp_dim) == (12, 768, 12, 3072)
    batch = {"inputs": jax.ShapeDtypeStruct((1, 8), jnp.int32), "mask": jax.ShapeDtypeStruct((1, 8), bool)}
    shapes = jax.eval_shape(bert.BertClassifier(cfg).init, jax.random.PRNGKey(0), batch)
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    with torch.device("meta"):
        hf = transformers.BertForSequenceClassification(transformers.BertConfig(num_labels=2))
    assert hf.config.hidden_size == 768 and hf.config.layer_norm_eps == cfg.norm_epsilon
    assert ours == sum(p.numel() for p in hf.parameters())


def test_parity_with_transformers_bert():
    """HF BertForSequenceClassification with random weights, converted, gives the same logits."""
    b = built(NAME)
    cfg = b.config
    hf_cfg = transformers.BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.embed_dim, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.mlp_dim, max_position_embeddings=cfg.max_len,
        type_vocab_size=cfg.type_vocab_size, hidden_act="gelu", layer_norm_eps=cfg.norm_epsilon,
        num_labels=cfg.num_classes, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    torch.manual_seed(0)
    hf = transformers.BertForSequenceClassification(hf_cfg).eval()
    with torch.no_grad():  # weights far from init, so that every part shows in the logits
        for name, p in hf.named_parameters():
            p.copy_(1.0 + 0.2 * torch.randn_like(p) if "LayerNorm.weight" in name else 0.3 * torch.randn_like(p))
    state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    params = {"params": bert.params_from_transformers(state, cfg)}
    chex.assert_trees_all_equal_shapes_and_dtypes(params, b.params)

    batch = b.batch  # rows of different lengths, token types 0 and 1
    ours = np.asarray(b.forward(params, batch))
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(np.asarray(batch["inputs"]), dtype=torch.long),
                 attention_mask=torch.tensor(np.asarray(batch["mask"]), dtype=torch.long),
                 token_type_ids=torch.tensor(np.asarray(batch["token_type_ids"]), dtype=torch.long)).logits.numpy()
    assert np.abs(ref).max() > 0.1  # logits of a useful size
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=1e-5)

    # The converter fills a scanned model too (blocks stacked on the 'layers' axis), remat on.
    scan_cfg = config_of(NAME, scan_layers=True, remat_policy="full")
    scanned = bert.params_from_transformers(state, scan_cfg)
    assert scanned["layers"]["attention"]["query"]["kernel"].shape[0] == cfg.num_layers and "block_0" not in scanned
    ours_scanned = jit(lambda p, x: bert.BertClassifier(scan_cfg).apply(p, x))({"params": scanned}, batch)
    np.testing.assert_allclose(np.asarray(ours_scanned), ref, atol=1e-5, rtol=1e-5)
