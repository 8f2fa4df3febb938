"""Full-model parity of autoformer and itransformer with neuralforecast's Autoformer and iTransformer.

neuralforecast ships the authors' thuml code for both (AutoCorrelation, the Autoformer encoder and
decoder layers, my_Layernorm, DataEmbedding_wo_pos; iTransformer's inverted embedding, encoder and
projector), wrapped in its BaseModel. We build each with random weights, convert them into our
modules and compare forecasts, in inference mode and (Autoformer, dropout 0) in training mode,
whose delay selection differs.

Part of every `make test`: `make install-test` installs neuralforecast and the packages it adds
(pytorch-lightning, ray, optuna, ...) with --no-deps from requirements-neuralforecast.txt, so the
import below is required, not skipped.

neuralforecast's Autoformer is univariate (enc_in = c_out = 1); the multivariate comparison builds
the same authors' modules with C channels and runs the authors' Model.forward (as neuralforecast's
forward does). Its AutoCorrelation calls irfft without n=L, which is the authors' code only for even
lengths, so every length here is even.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import torch  # noqa: E402
from neuralforecast.common._modules import DataEmbedding, SeriesDecomp  # noqa: E402
from neuralforecast.models import Autoformer as NFAutoformer  # noqa: E402
from neuralforecast.models import iTransformer as NFiTransformer  # noqa: E402
from neuralforecast.models import autoformer as nfa  # noqa: E402

from fintrans.models import autoformer as af  # noqa: E402
from fintrans.models import itransformer as itr  # noqa: E402


def _t(x):
    return x.detach().numpy().astype(np.float32)


def _linear(lin):
    out = {"kernel": _t(lin.weight).T}
    if lin.bias is not None:
        out["bias"] = _t(lin.bias)
    return out


def _heads(lin, heads, bias=True):
    d_in, d_out = lin.weight.shape[1], lin.weight.shape[0]
    return {"kernel": _t(lin.weight).T.reshape(d_in, heads, d_out // heads),
            **({"bias": _t(lin.bias).reshape(heads, d_out // heads)} if bias else {})}


def _out(lin, heads):
    d_in, d_out = lin.weight.shape[1], lin.weight.shape[0]
    return {"kernel": _t(lin.weight).T.reshape(heads, d_in // heads, d_out), "bias": _t(lin.bias)}


def _conv1(conv):  # Conv1d kernel size 1 -> Dense kernel [in, out]
    return {"kernel": _t(conv.weight)[:, :, 0].T, **({"bias": _t(conv.bias)} if conv.bias is not None else {})}


def _conv3(conv):  # Conv1d(in, out, 3, circular, no bias) weight [out, in, 3] -> [3, in, out]
    return {"kernel": _t(conv.weight).transpose(2, 1, 0)}


def _layernorm(ln):
    return {"scale": _t(ln.weight), "bias": _t(ln.bias)}


def _randomise(module, seed):
    """Random weights everywhere (LayerNorms too, so their conversion is checked)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


# --- Autoformer ---

def _correlation_params(layer, heads, key_bias=False):
    """Ours has no query bias and a key bias only where keys are zero-padded (the others are inert:
    the torch modules keep random values in them, so the comparison checks that too)."""
    return {"query": _heads(layer.query_projection, heads, False),
            "key": _heads(layer.key_projection, heads, key_bias),
            "value": _heads(layer.value_projection, heads), "out": _out(layer.out_projection, heads)}


def _autoformer_params(enc_embedding, dec_embedding, encoder, decoder, heads, cross_padded=False):
    seasonal_norm = lambda n: {"scale": _t(n.layernorm.weight)}  # my_Layernorm's bias cancels
    p = {"encoder_embed": {"token": _conv3(enc_embedding.value_embedding.tokenConv)},
         "decoder_embed": {"token": _conv3(dec_embedding.value_embedding.tokenConv)},
         "encoder_norm": {"norm": seasonal_norm(encoder.norm)},
         "decoder_norm": {"norm": seasonal_norm(decoder.norm)},
         "projection": _linear(decoder.projection)}
    p["encoder"] = {f"block_{i}": {"correlation": _correlation_params(layer.attention, heads),
                                   "ffn": {"wi": _conv1(layer.conv1), "wo": _conv1(layer.conv2)}}
                    for i, layer in enumerate(encoder.attn_layers)}
    p["decoder"] = {f"block_{i}": {"self_correlation": _correlation_params(layer.self_attention, heads),
                                   "cross_correlation": _correlation_params(layer.cross_attention, heads, cross_padded),
                                   "ffn": {"wi": _conv1(layer.conv1), "wo": _conv1(layer.conv2)},
                                   "trend_projection": _conv3(layer.projection)}
                    for i, layer in enumerate(decoder.layers)}
    return {"params": jax.tree.map(jnp.asarray, p)}


AF = dict(input_len=24, label_len=12, horizon=8, embed_dim=16, num_heads=4, encoder_layers=2, decoder_layers=1,
          mlp_dim=32, moving_avg=5, factor=2.0, activation="gelu", dropout_rate=0.0)


def _series(batch, length, channels, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(length)[None, :, None]
    x = np.sin(2 * np.pi * t / 6 + rng.uniform(0, 6, (batch, 1, channels))) + 0.3 * rng.normal(
        size=(batch, length, channels))
    return x.astype(np.float32)


@pytest.mark.parametrize("train", [False, True], ids=["inference", "training"])
def test_autoformer_parity_with_neuralforecast_univariate(train):
    cfg = af.AutoformerConfig(num_channels=1, **AF)
    torch.manual_seed(0)
    ref = NFAutoformer(h=cfg.horizon, input_size=cfg.input_len, decoder_input_size_multiplier=0.5,
                       hidden_size=cfg.embed_dim, dropout=0.0, factor=int(cfg.factor), n_head=cfg.num_heads,
                       conv_hidden_size=cfg.mlp_dim, activation="gelu", encoder_layers=cfg.encoder_layers,
                       decoder_layers=cfg.decoder_layers, MovingAvg_window=cfg.moving_avg)
    assert ref.label_len == cfg.label_len
    _randomise(ref, 1)
    ref.train(train)
    x = _series(4, cfg.input_len, 1, seed=2)
    with torch.no_grad():
        expected = ref({"insample_y": torch.tensor(x), "futr_exog": None}).numpy()
    params = _autoformer_params(ref.enc_embedding, ref.dec_embedding, ref.encoder, ref.decoder, cfg.num_heads)
    ours = jax.jit(lambda p, x: af.Autoformer(cfg).apply(p, {"inputs": x}, train=train))(params, x)
    np.testing.assert_allclose(ours, expected.reshape(ours.shape), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("label_len,horizon", [(12, 8), (8, 20)], ids=["cross_truncated", "cross_padded"])
def test_autoformer_parity_with_the_authors_modules_multivariate(label_len, horizon):
    cfg = af.AutoformerConfig(num_channels=3, **{**AF, "label_len": label_len, "horizon": horizon})
    padded = cfg.decoder_len > cfg.input_len
    H, d = cfg.num_heads, cfg.embed_dim
    correlation = lambda: nfa.AutoCorrelationLayer(nfa.AutoCorrelation(False, int(cfg.factor), attention_dropout=0.0),
                                                   d, H)
    torch.manual_seed(0)
    enc_embedding = DataEmbedding(cfg.num_channels, 0, d, pos_embedding=False, dropout=0.0)
    dec_embedding = DataEmbedding(cfg.num_channels, 0, d, pos_embedding=False, dropout=0.0)
    encoder = nfa.Encoder([nfa.EncoderLayer(correlation(), d, cfg.mlp_dim, cfg.moving_avg, 0.0, "gelu")
                           for _ in range(cfg.encoder_layers)], norm_layer=nfa.LayerNorm(d))
    decoder = nfa.Decoder([nfa.DecoderLayer(correlation(), correlation(), d, cfg.num_channels, cfg.mlp_dim,
                                            cfg.moving_avg, 0.0, "gelu") for _ in range(cfg.decoder_layers)],
                          norm_layer=nfa.LayerNorm(d), projection=torch.nn.Linear(d, cfg.num_channels))
    modules = torch.nn.ModuleList([enc_embedding, dec_embedding, encoder, decoder]).eval()
    _randomise(modules, 3)
    decomp = SeriesDecomp(cfg.moving_avg)
    x = _series(3, cfg.input_len, cfg.num_channels, seed=4) * 2 + 1

    with torch.no_grad():  # the authors' Model.forward
        xt = torch.tensor(x)
        mean = xt.mean(1, keepdim=True).repeat(1, cfg.horizon, 1)
        seasonal, trend = decomp(xt)
        trend_init = torch.cat([trend[:, -cfg.label_len:], mean], 1)
        seasonal_init = torch.cat([seasonal[:, -cfg.label_len:], torch.zeros_like(mean)], 1)
        enc_out, _ = encoder(enc_embedding(xt))
        seasonal_part, trend_part = decoder(dec_embedding(seasonal_init), enc_out, trend=trend_init)
        expected = (trend_part + seasonal_part)[:, -cfg.horizon:].numpy()

    params = _autoformer_params(enc_embedding, dec_embedding, encoder, decoder, H, cross_padded=padded)
    ours = jax.jit(lambda p, x: af.Autoformer(cfg).apply(p, {"inputs": x}))(params, x)
    np.testing.assert_allclose(ours, expected, atol=2e-4, rtol=1e-4)


# --- iTransformer ---

@pytest.mark.parametrize("use_norm", [True, False])
def test_itransformer_parity_with_neuralforecast(use_norm):
    cfg = itr.ITransformerConfig(input_len=24, horizon=8, num_channels=5, embed_dim=16, num_heads=4, num_layers=2,
                                 mlp_dim=32, activation="gelu", dropout_rate=0.0, use_norm=use_norm)
    torch.manual_seed(0)
    ref = NFiTransformer(h=cfg.horizon, input_size=cfg.input_len, n_series=cfg.num_channels,
                         hidden_size=cfg.embed_dim, n_heads=cfg.num_heads, e_layers=cfg.num_layers,
                         d_ff=cfg.mlp_dim, dropout=0.0, use_norm=use_norm)
    _randomise(ref, 5)
    ref.eval()
    x = _series(3, cfg.input_len, cfg.num_channels, seed=6) * 4 + 10
    with torch.no_grad():
        expected = ref({"insample_y": torch.tensor(x)}).numpy()

    H = cfg.num_heads
    p = {"embed": _linear(ref.enc_embedding.value_embedding), "final_norm": _layernorm(ref.encoder.norm),
         "projector": _linear(ref.projector)}
    for i, layer in enumerate(ref.encoder.attn_layers):
        a = layer.attention
        p[f"block_{i}"] = {
            "attention": {"query": _heads(a.query_projection, H), "key": _heads(a.key_projection, H),
                          "value": _heads(a.value_projection, H), "out": _out(a.out_projection, H)},
            "mlp": {"wi": _conv1(layer.conv1), "wo": _conv1(layer.conv2)},
            "attention_norm": _layernorm(layer.norm1), "mlp_norm": _layernorm(layer.norm2)}
    params = {"params": jax.tree.map(jnp.asarray, p)}
    ours = jax.jit(lambda p, x: itr.ITransformer(cfg).apply(p, {"inputs": x}))(params, x)
    assert ours.shape == expected.shape == (3, cfg.horizon, cfg.num_channels)
    np.testing.assert_allclose(ours, expected, atol=1e-4 * max(1.0, math.sqrt(np.abs(expected).max())), rtol=1e-4)
