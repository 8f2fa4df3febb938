"""itransformer: equivariance to permuting variates, invariance to per-series affine maps under
use_norm, per-series normalisation, and that attention mixes variates. Parity with neuralforecast's
iTransformer (the authors' modules) is in test_neuralforecast_parity.py."""
from __future__ import annotations

import functools

import chex
import numpy as np

from fintrans.models import itransformer
from model_cases import BATCH, built, config_of, jit


def _inputs(b, seed):
    return np.random.default_rng(seed).normal(size=b.batch["inputs"].shape).astype(np.float32)


def test_permuting_variates_permutes_the_forecast():
    b = built("itransformer")
    x = _inputs(b, 0)
    perm = np.array([2, 0, 1])
    out = np.asarray(b.forward(b.params, {"inputs": x}))
    permuted = np.asarray(b.forward(b.params, {"inputs": x[:, :, perm]}))
    np.testing.assert_allclose(permuted, out[:, :, perm], atol=1e-5)


def test_per_series_affine_maps_carry_through_with_use_norm():
    b = built("itransformer")
    assert b.config.use_norm
    x = _inputs(b, 1)
    rng = np.random.default_rng(2)
    scale = rng.uniform(0.5, 3.0, size=(1, 1, x.shape[2])).astype(np.float32)
    shift = rng.normal(scale=5.0, size=(1, 1, x.shape[2])).astype(np.float32)
    out = np.asarray(b.forward(b.params, {"inputs": x}), np.float64)
    moved = np.asarray(b.forward(b.params, {"inputs": x * scale + shift}), np.float64)
    # exact but for the 1e-5 inside the standard deviation's square root
    np.testing.assert_allclose(moved, out * scale + shift, atol=2e-4 * np.abs(scale).max(), rtol=1e-4)


@functools.lru_cache(maxsize=None)
def _no_norm():
    b = built("itransformer")
    model = itransformer.ITransformer(config_of("itransformer", use_norm=False))
    return jit(model.apply)


def test_without_use_norm_the_forecast_is_not_shift_equivariant():
    b = built("itransformer")
    x = _inputs(b, 3)
    f = _no_norm()
    out = np.asarray(f(b.params, {"inputs": x}))
    assert not np.allclose(np.asarray(f(b.params, {"inputs": x + 4.0})), out + 4.0, atol=1e-2)


def test_use_norm_normalises_each_series_over_the_lookback():
    """With use_norm the model sees (x - mean) / std per series: a model without it, applied to the
    normalised series, then de-normalised, gives the same forecast."""
    b = built("itransformer")
    x = _inputs(b, 4) * 3 + 7
    mean = x.mean(1, keepdims=True)
    std = np.sqrt(x.var(1, keepdims=True) + itransformer.NORM_EPSILON)
    inner = np.asarray(_no_norm()(b.params, {"inputs": (x - mean) / std}))
    np.testing.assert_allclose(b.forward(b.params, {"inputs": x}), inner * std + mean, atol=1e-4, rtol=1e-5)


def test_attention_mixes_variates_and_each_token_sees_its_whole_lookback():
    b = built("itransformer")
    x = _inputs(b, 5)
    out = np.asarray(b.forward(b.params, {"inputs": x}))
    x2 = x.copy()
    x2[:, 0, 0] += 2.0  # the first lookback step of variate 0 only
    out2 = np.asarray(b.forward(b.params, {"inputs": x2}))
    assert not np.allclose(out2[:, :, 0], out[:, :, 0], atol=1e-4)  # its own token sees the whole window
    assert not np.allclose(out2[:, :, 1:], out[:, :, 1:], atol=1e-5)  # other variates see it through attention
    chex.assert_shape(b.params["params"]["embed"]["kernel"], (b.config.input_len, b.config.embed_dim))
    chex.assert_shape(b.params["params"]["projector"]["kernel"], (b.config.embed_dim, b.config.horizon))
    assert out.shape == (BATCH, b.config.horizon, b.config.num_channels)
