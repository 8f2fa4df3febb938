"""decoder_lm: causality, KV-cache decoding against full forward passes, greedy generation."""
from __future__ import annotations

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fintrans.layers import stack_params
from fintrans.models import decoder_lm
from model_cases import BATCH, built, config_of, jit

NAME = "decoder_lm"


def test_future_tokens_do_not_change_past_logits():
    b = built(NAME)
    tokens = np.array(b.batch["inputs"])
    logits = b.forward(b.params, {"inputs": tokens})
    t = 5
    changed = tokens.copy()
    changed[:, t:] = (changed[:, t:] + 1 + np.arange(changed.shape[1] - t)) % b.config.vocab_size
    logits2 = b.forward(b.params, {"inputs": changed})
    chex.assert_trees_all_close(logits2[:, :t], logits[:, :t], atol=1e-5)
    assert not np.allclose(logits2[:, t:], logits[:, t:], atol=1e-3)  # the changed tokens do matter


@functools.lru_cache(maxsize=None)
def _model(num_kv_heads):
    """The case's config with the given key/value heads: (config, params, jitted forward, jitted decode_step)."""
    if num_kv_heads == built(NAME).config.num_kv_heads:
        b = built(NAME)
        return b.config, b.params, b.forward, jit(functools.partial(decoder_lm.decode_step, b.config))
    cfg = config_of(NAME, num_kv_heads=num_kv_heads)
    model = decoder_lm.DecoderLM(cfg)
    tokens = jnp.zeros((BATCH, 12), jnp.int32)
    params = nn.unbox(jit(model.init)(jax.random.PRNGKey(0), {"inputs": tokens}))
    return cfg, params, jit(lambda p, x: model.apply(p, x)), jit(functools.partial(decoder_lm.decode_step, cfg))


@pytest.mark.parametrize("num_kv_heads", [2, None], ids=["grouped_query", "multi_head"])
def test_cached_decoding_matches_full_forward(num_kv_heads):
    cfg, params, forward, step = _model(num_kv_heads)
    assert cfg.num_kv_heads == num_kv_heads
    tokens = jnp.asarray(built(NAME).batch["inputs"])  # [3, 12]
    full = forward(params, {"inputs": tokens})
    cache = decoder_lm.init_cache(cfg, tokens.shape[0])
    prefill = 5
    logits, cache = step(params["params"], cache, tokens[:, :prefill])
    pieces = [logits]
    for t in range(prefill, tokens.shape[1]):
        logits, cache = step(params["params"], cache, tokens[:, t:t + 1])
        pieces.append(logits)
    chex.assert_trees_all_close(jnp.concatenate(pieces, axis=1), full, atol=2e-5, rtol=1e-5)


def test_greedy_generate_equals_argmax_of_full_forward_passes():
    b = built(NAME)
    cfg = b.config
    prompt = jnp.asarray(b.batch["inputs"][:, :4])
    num_new = 8  # prompt + new = 12: the case's length, so b.forward is reused
    generate = jit(decoder_lm.generate, static_argnums=(0, 3), static_argnames=("temperature", "top_k"))
    out = np.asarray(generate(cfg, b.params["params"], prompt, num_new, jax.random.PRNGKey(0), temperature=0.0))
    chex.assert_shape(out, (BATCH, 4 + num_new))
    np.testing.assert_array_equal(out[:, :4], prompt)

    # The model is causal, so positions after t cannot change the logits at t: pad with zeros.
    expected = np.zeros((BATCH, 4 + num_new), np.int32)
    expected[:, :4] = prompt
    for t in range(4, 4 + num_new):
        logits = b.forward(b.params, {"inputs": jnp.asarray(expected)})
        expected[:, t] = np.argmax(np.asarray(logits[:, t - 1]), axis=-1)
    np.testing.assert_array_equal(out, expected)


def test_scanned_model_generates_what_the_unrolled_one_does():
    """scan_layers=True with the same weights (stacked on the layers axis): same ragged greedy generation,
    the KV cache scanned along with the parameters."""
    b = built(NAME)
    cfg = config_of(NAME, scan_layers=True)
    params = {k: v for k, v in b.params["params"].items() if not k.startswith("block_")}
    params.update(stack_params([b.params["params"][f"block_{i}"] for i in range(cfg.num_layers)], "scan"))
    shapes = jax.eval_shape(lambda: decoder_lm.DecoderLM(cfg).init(jax.random.PRNGKey(0), b.batch))
    assert jax.tree.map(jnp.shape, nn.unbox(shapes)["params"]) == jax.tree.map(jnp.shape, params)
    generate = jit(decoder_lm.generate, static_argnums=(0, 3), static_argnames=("temperature",))
    prompt, lengths = jnp.asarray(b.batch["inputs"][:, :5]), jnp.array([5, 2, 4], jnp.int32)
    unrolled = generate(b.config, b.params["params"], prompt, 4, jax.random.PRNGKey(0), prompt_lengths=lengths,
                        temperature=0.0)
    scanned = generate(cfg, params, prompt, 4, jax.random.PRNGKey(0), prompt_lengths=lengths, temperature=0.0)
    np.testing.assert_array_equal(scanned, unrolled)
    assert decoder_lm.init_cache(cfg, 2)["layers"]["attention"]["cached_key"].shape[0] == cfg.num_layers


def test_generate_rejects_too_long_requests():
    b = built(NAME)
    with pytest.raises(ValueError, match="max_len=16"):
        decoder_lm.generate(b.config, b.params["params"], jnp.zeros((1, 10), jnp.int32), 7, jax.random.PRNGKey(0))


def test_single_token_steps_use_the_lean_decode_op(monkeypatch):
    """A one-token step attends through fintrans.ops.decode_attention (lean stream-K decode, with
    per-sequence cached lengths); a multi-token chunk (the prompt) through dot_product_attention."""
    import fintrans.layers.attention as attention_layer
    calls = []
    real = attention_layer.decode_attention

    def spy(q, k, v, lengths, **kwargs):
        calls.append(np.asarray(lengths).tolist())
        return real(q, k, v, lengths, **kwargs)

    monkeypatch.setattr(attention_layer, "decode_attention", spy)
    b = built(NAME)
    tokens = jnp.asarray(b.batch["inputs"])
    cache = decoder_lm.init_cache(b.config, tokens.shape[0])
    _, cache = decoder_lm.decode_step(b.config, b.params["params"], cache, tokens[:, :3])
    assert calls == []
    decoder_lm.decode_step(b.config, b.params["params"], cache, tokens[:, 3:4])
    assert calls == [[4] * tokens.shape[0]] * b.config.num_layers

    # Per-sequence indices (as generate sets them after a ragged prefill) reach the op as lengths.
    ragged = decoder_lm.set_cache_index(cache, jnp.array([1, 3, 2], jnp.int32))
    calls.clear()
    decoder_lm.decode_step(b.config, b.params["params"], ragged, tokens[:, 3:4])
    assert calls == [[2, 4, 3]] * b.config.num_layers


def _greedy_by_full_forward(b, prompts, lengths, num_new):
    """Greedy continuations computed with full forward passes only (the oracle for generate): row
    i holds its prompt's first lengths[i] tokens, then num_new argmax tokens, then zeros."""
    width = b.batch["inputs"].shape[1]
    expected = np.zeros((len(lengths), width), np.int32)
    for i, n in enumerate(lengths):
        expected[i, :n] = prompts[i, :n]
    for t in range(num_new):
        logits = np.asarray(b.forward(b.params, {"inputs": jnp.asarray(expected)}))  # causal: later zeros don't matter
        for i, n in enumerate(lengths):
            expected[i, n + t] = np.argmax(logits[i, n + t - 1])
    return expected


def test_ragged_prompts_decode_like_each_prompt_alone():
    """A batch of prompts of different lengths (right-padded with junk) continues each prompt as
    if it were alone: per-sequence cache indices, and the lean decode op sees ragged lengths."""
    b = built(NAME)
    rng = np.random.default_rng(7)
    width, num_new = 6, 6  # 6 + 6 = 12, the case's length, so b.forward is reused
    lengths = np.array([6, 1, 3], np.int32)
    prompts = rng.integers(1, b.config.vocab_size, (BATCH, width)).astype(np.int32)  # junk past each length
    generate = jit(decoder_lm.generate, static_argnums=(0, 3), static_argnames=("temperature", "top_k"))
    out = np.asarray(generate(b.config, b.params["params"], jnp.asarray(prompts), num_new, jax.random.PRNGKey(0),
                              prompt_lengths=jnp.asarray(lengths), temperature=0.0))
    chex.assert_shape(out, (BATCH, width + num_new))
    np.testing.assert_array_equal(out, _greedy_by_full_forward(b, prompts, lengths, num_new))


def test_sampled_generation_keeps_prompts_and_respects_top_k():
    b = built(NAME)
    prompt = jnp.asarray(b.batch["inputs"][:, :4])
    lengths = jnp.array([4, 2, 3], jnp.int32)
    out = np.asarray(decoder_lm.generate(b.config, b.params["params"], prompt, 5, jax.random.PRNGKey(1),
                                         prompt_lengths=lengths, temperature=1.0, top_k=1, pad_id=-1))
    # top_k=1 samples the argmax: the same tokens as greedy decoding.
    greedy = np.asarray(decoder_lm.generate(b.config, b.params["params"], prompt, 5, jax.random.PRNGKey(2),
                                            prompt_lengths=lengths, temperature=0.0, pad_id=-1))
    np.testing.assert_array_equal(out, greedy)
    for i, n in enumerate(np.asarray(lengths)):
        np.testing.assert_array_equal(out[i, :n], np.asarray(prompt)[i, :n])
        assert np.all(out[i, n:n + 5] >= 0) and np.all(out[i, n + 5:] == -1)


@pytest.mark.parametrize("lengths, match", [([4, 0, 2], "within 1..4"), ([4, 5, 2], "within 1..4"),
                                            ([4, 2], r"int \[batch=3\]")])
def test_generate_rejects_bad_prompt_lengths(lengths, match):
    b = built(NAME)
    with pytest.raises(ValueError, match=match):
        decoder_lm.generate(b.config, b.params["params"], jnp.zeros((3, 4), jnp.int32), 2, jax.random.PRNGKey(0),
                            prompt_lengths=np.array(lengths, np.int32))
