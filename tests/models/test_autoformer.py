"""autoformer: Auto-Correlation against a direct O(L²) numpy correlation, top-k delay selection and
aggregation (training and inference variants) against numpy, decomposition, the seasonal/trend decoder
initialisation, sown delays, time features, and layer-level parity with transformers'
AutoformerAttention / AutoformerSeriesDecompositionLayer / AutoformerLayernorm.

Why layer-level parity only (transformers 5.24 in the `parity` extra): Hugging Face's
AutoformerModel is not the authors' network: its inputs are lagged subsequences with scaling and
static/time features through a Linear value embedding (the authors: a circular Conv1d token
embedding), and its encoder and decoder layers add LayerNorms and FFN biases the authors do not
have, so weights cannot be converted. Its AutoformerAttention, series decomposition and
AutoformerLayernorm are the authors' AutoCorrelationLayer, series_decomp and my_Layernorm, with two
departures that the comparisons avoid: (1) it tiles the per-sample delays and weights over the
flattened (batch·heads) axis head-major while the data is batch-major, so samples and delays
mismatch unless batch == 1 or heads == 1; (2) when queries are longer than keys it truncates the
queries before the FFT (the authors only zero-pad keys and values). Full-model parity with the
authors' code is in test_neuralforecast_parity.py (neuralforecast ships the authors' modules).
"""
from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.models.autoformer import modeling_autoformer as hf

from fintrans.layers import series_decomp
from fintrans.models import autoformer as af
from model_cases import BATCH, built, config_of, jit


# --- numpy oracles ---

def numpy_correlation(q, k):
    """R[b, τ, h, e] = Σ_t q[b, (t+τ) mod L, h, e] · k[b, t, h, e], the O(L²) way, float64."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    length = q.shape[1]
    return np.stack([(np.roll(q, -tau, axis=1) * k).sum(1) for tau in range(length)], axis=1)


def numpy_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def numpy_auto_correlation(q, k, v, factor, train):
    """The authors' two aggregation variants in numpy, on [B, L, H, E] (keys/values already length L)."""
    mean_corr = numpy_correlation(q, k).mean((2, 3))  # [B, L]
    top_k = int(factor * math.log(q.shape[1]))
    if train:
        index = np.argsort(-mean_corr.mean(0), kind="stable")[:top_k]
        delays = np.broadcast_to(index, (q.shape[0], top_k))
    else:
        delays = np.argsort(-mean_corr, axis=1, kind="stable")[:, :top_k]
    weights = numpy_softmax(np.take_along_axis(mean_corr, delays, axis=1))
    v = np.asarray(v, np.float64)
    out = np.stack([sum(weights[b, i] * np.roll(v[b], -delays[b, i], axis=0) for i in range(top_k))
                    for b in range(q.shape[0])])
    return out, delays, weights, mean_corr


@functools.lru_cache(maxsize=None)
def _auto_correlation_fn(factor, train):
    return jit(lambda q, k, v: af.auto_correlation(q, k, v, factor=factor, train=train))


def _qkv(rng, batch, length, heads=2, dim=3, kv_length=None):
    kv_length = length if kv_length is None else kv_length
    q = rng.normal(size=(batch, length, heads, dim)).astype(np.float32)
    k = rng.normal(size=(batch, kv_length, heads, dim)).astype(np.float32)
    v = rng.normal(size=(batch, kv_length, heads, dim)).astype(np.float32)
    return q, k, v


@pytest.mark.parametrize("length", [16, 21])
def test_fft_correlation_equals_direct_correlation(length):
    q, k, _ = _qkv(np.random.default_rng(length), 2, length)
    ours = jax.jit(af.correlation)(q, k)
    chex.assert_shape(ours, q.shape)
    np.testing.assert_allclose(ours, numpy_correlation(q, k), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("train", [True, False], ids=["training", "inference"])
def test_top_k_delays_weights_and_aggregation_match_numpy(train):
    factor = 2.0
    q, k, v = _qkv(np.random.default_rng(7), 3, 20)
    out, delays, weights, mean_corr = _auto_correlation_fn(factor, train)(q, k, v)
    ref_out, ref_delays, ref_weights, ref_corr = numpy_auto_correlation(q, k, v, factor, train)
    assert delays.shape == (3, int(factor * math.log(20))) == (3, 5)
    np.testing.assert_allclose(mean_corr, ref_corr, atol=2e-5)
    np.testing.assert_array_equal(delays, ref_delays)
    np.testing.assert_allclose(weights, ref_weights, atol=1e-5)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(out, ref_out, atol=2e-5)
    if train:  # shared delays across the batch, each sample its own weights
        assert (np.asarray(delays) == np.asarray(delays)[:1]).all()
    else:  # each sample's delays are its own top-k
        assert len({tuple(d) for d in np.asarray(delays)}) > 1


def test_keys_and_values_are_zero_padded_or_truncated_to_the_query_length():
    rng = np.random.default_rng(3)
    for kv_length in (12, 30):
        q, k, v = _qkv(rng, 2, 20, kv_length=kv_length)
        resize = lambda x: np.concatenate([x, np.zeros((2, 20 - kv_length, 2, 3), np.float32)], 1) \
            if kv_length < 20 else x[:, :20]
        out = _auto_correlation_fn(1.0, False)(q, k, v)[0]
        ref = numpy_auto_correlation(q, resize(k), resize(v), 1.0, False)[0]
        np.testing.assert_allclose(out, ref, atol=2e-5)


def test_training_and_inference_aggregation_agree_for_a_batch_of_one():
    q, k, v = _qkv(np.random.default_rng(11), 1, 24)
    train = _auto_correlation_fn(3.0, True)(q, k, v)
    infer = _auto_correlation_fn(3.0, False)(q, k, v)
    for a, b in zip(train, infer):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # ... and so does the whole model (without dropout).
    cfg = config_of("autoformer", dropout_rate=0.0)
    model = af.Autoformer(cfg)
    x = {"inputs": np.random.default_rng(2).normal(size=(1, cfg.input_len, cfg.num_channels)).astype(np.float32)}
    params = built("autoformer").params
    f = jit(lambda p, x, t: model.apply(p, x, train=t), static_argnums=2)
    np.testing.assert_allclose(f(params, x, True), f(params, x, False), atol=1e-5)


def test_decomposition_is_moving_average_plus_remainder():
    x = np.random.default_rng(4).normal(size=(2, 23, 5)).astype(np.float32)
    seasonal, trend = jax.jit(lambda x: series_decomp(x, 7))(x)
    pad = 3
    padded = np.concatenate([np.repeat(x[:, :1], pad, 1), x, np.repeat(x[:, -1:], pad, 1)], 1).astype(np.float64)
    ref_trend = np.lib.stride_tricks.sliding_window_view(padded, 7, axis=1).mean(-1)
    np.testing.assert_allclose(trend, ref_trend, atol=1e-6)
    # the remainder: x - trend (to an ulp or so: XLA may fuse the subtraction into the window sum)
    np.testing.assert_allclose(seasonal, x - np.asarray(trend), rtol=0, atol=3e-7)


def test_zero_output_layers_leave_the_mean_trend_initialisation():
    """With the decoder's trend projections and the seasonal projection zeroed, the forecast is the
    trend part of the decoder init over the horizon: the lookback mean of each channel."""
    b = built("autoformer")
    params = jax.tree_util.tree_map_with_path(
        lambda path, p: jnp.zeros_like(p) if ("projection" in jax.tree_util.keystr(path)) else p, b.params)
    x = np.asarray(b.batch["inputs"])
    out = b.forward(params, b.batch)
    np.testing.assert_allclose(out, np.broadcast_to(x.mean(1, keepdims=True), out.shape), atol=1e-6)
    assert not np.allclose(b.forward(b.params, b.batch), out, atol=1e-3)


def test_constant_series_is_finite_and_the_first_lookback_step_matters():
    """A constant series (all trend, zero seasonal) gives a finite forecast; the first lookback step,
    outside the label window, still reaches the forecast (through the encoder and the mean)."""
    b = built("autoformer")
    x = np.asarray(b.batch["inputs"]).copy()
    const = np.broadcast_to(np.array([2.0, -1.0], np.float32), x.shape).copy()
    out = np.asarray(b.forward(b.params, {"inputs": const}))
    assert np.isfinite(out).all()
    x2 = x.copy()
    x2[:, 0] += 1.0
    assert not np.allclose(b.forward(b.params, {"inputs": x2}), b.forward(b.params, b.batch), atol=1e-6)


def test_auto_correlation_delays_are_sown():
    b = built("autoformer")
    cfg = b.config
    _, state = jax.jit(lambda p, x: b.model.apply(p, x, mutable=["intermediates"]))(b.params, b.batch)
    inter = state["intermediates"]
    sown = {"encoder_0_correlation": (inter["encoder"]["block_0"]["correlation"], cfg.input_len),
            "decoder_0_self_correlation": (inter["decoder"]["block_0"]["self_correlation"], cfg.decoder_len),
            "decoder_0_cross_correlation": (inter["decoder"]["block_0"]["cross_correlation"], cfg.decoder_len)}
    for name, (layer, length) in sown.items():
        (delays,), (weights,), (corr,) = (layer[k] for k in ("delays", "weights", "correlation"))
        k = int(cfg.factor * math.log(length))
        chex.assert_shape([delays, weights], (BATCH, k))
        chex.assert_shape(corr, (BATCH, length))
        assert ((np.asarray(delays) >= 0) & (np.asarray(delays) < length)).all()
        np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, atol=1e-6)
        # the delays are the per-sample top-k of the sown correlation (inference variant)
        np.testing.assert_array_equal(np.sort(delays, -1), np.sort(np.argsort(-np.asarray(corr), -1)[:, :k], -1))


def test_time_features_are_embedded_and_checked():
    cfg = config_of("autoformer", num_time_features=2)
    model = af.Autoformer(cfg)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, cfg.input_len, cfg.num_channels)).astype(np.float32)
    marks = rng.normal(size=(2, cfg.input_len + cfg.horizon, 2)).astype(np.float32)
    params = jit(model.init)(jax.random.PRNGKey(0), {"inputs": x, "time_features": marks})
    f = jit(model.apply)
    a = f(params, {"inputs": x, "time_features": marks})
    marks2 = marks.copy()
    marks2[:, -1] += 1.0  # a horizon step's calendar feature reaches the decoder
    assert not np.allclose(a, f(params, {"inputs": x, "time_features": marks2}), atol=1e-6)
    with pytest.raises(ValueError, match=r"autoformer: time_features .*\(2, 20, 2\).*None"):
        jax.eval_shape(model.apply, params, {"inputs": x})
    with pytest.raises(ValueError, match=r"\(2, 20, 2\).*\(2, 16, 2\)"):
        jax.eval_shape(model.apply, params, {"inputs": x, "time_features": marks[:, :16]})


# --- layer-level parity with transformers' Autoformer layers ---

def _hf_attention(embed_dim, heads, factor, seed):
    torch.manual_seed(seed)
    return hf.AutoformerAttention(embed_dim, heads, dropout=0.0, autocorrelation_factor=factor)


def _attention_params(m, heads):
    t = lambda w: w.detach().numpy()
    d = m.q_proj.weight.shape[1]
    proj = lambda lin, bias=True: {"kernel": t(lin.weight).T.reshape(d, heads, d // heads),
                                   **({"bias": t(lin.bias).reshape(heads, d // heads)} if bias else {})}
    # the query and (unpadded) key biases shift R(τ) equally at every delay: ours has none, so the
    # comparison, with torch's random biases in place, also checks that they are inert
    return {"params": {"query": proj(m.q_proj, False), "key": proj(m.k_proj, False), "value": proj(m.v_proj),
                       "out": {"kernel": t(m.out_proj.weight).T.reshape(heads, d // heads, d),
                               "bias": t(m.out_proj.bias)}}}


@functools.lru_cache(maxsize=None)
def _layer_fn(heads, factor, train):
    layer = af.AutoCorrelationLayer(heads, factor)
    return jit(lambda p, x, c: layer.apply(p, x, c, deterministic=not train))


@pytest.mark.parametrize("train", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("heads,batch", [(1, 3), (4, 1)])
@pytest.mark.parametrize("kv_length", [24, 31], ids=["self", "cross_truncated"])
def test_auto_correlation_layer_parity_with_transformers(heads, batch, kv_length, train):
    embed_dim, length, factor = 8, 24, 3
    m = _hf_attention(embed_dim, heads, factor, seed=heads + kv_length).train(train)
    rng = np.random.default_rng(heads * 100 + kv_length)
    x = rng.normal(size=(batch, length, embed_dim)).astype(np.float32)
    context = x if kv_length == length else rng.normal(size=(batch, kv_length, embed_dim)).astype(np.float32)
    with torch.no_grad():
        kv = None if kv_length == length else torch.tensor(context)
        ref = m(torch.tensor(x), key_value_states=kv)[0].numpy()
    ours = _layer_fn(heads, float(factor), train)(_attention_params(m, heads), x, context)
    np.testing.assert_allclose(ours, ref, atol=2e-5, rtol=1e-5)


def test_decomposition_and_seasonal_layernorm_parity_with_transformers():
    config = hf.AutoformerConfig(moving_average=7, d_model=6)
    x = np.random.default_rng(5).normal(size=(2, 19, 6)).astype(np.float32) * 3 + 1
    with torch.no_grad():
        ref_seasonal, ref_trend = hf.AutoformerSeriesDecompositionLayer(config)(torch.tensor(x))
        torch.manual_seed(0)
        norm = hf.AutoformerLayernorm(config)
        norm.layernorm.weight.normal_()
        norm.layernorm.bias.normal_()
        ref_norm = norm(torch.tensor(x)).numpy()
    seasonal, trend = series_decomp(jnp.asarray(x), 7)
    np.testing.assert_allclose(trend, ref_trend.numpy(), atol=1e-6)
    np.testing.assert_allclose(seasonal, ref_seasonal.numpy(), atol=1e-6)
    params = {"params": {"norm": {"scale": norm.layernorm.weight.detach().numpy()}}}  # its bias cancels
    ours = af.SeasonalLayerNorm().apply(params, jnp.asarray(x))
    np.testing.assert_allclose(ours, ref_norm, atol=1e-5)
