"""time2vec_encoder: the Time2Vec equation against numpy, its linear and periodic terms, that Time2Vec is
the encoder's only source of position, both heads and both kinds of τ."""
from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fintrans.models import time2vec_encoder as t2v
from fintrans.models.config import ConfigError
from model_cases import BATCH, built, config_of, jit

NAME = "time2vec_encoder"


def numpy_time2vec(tau, omega, phi):
    """Kazemi et al.'s t2v(τ)[i] = ω_i τ + φ_i (i = 0), sin(ω_i τ + φ_i) (i >= 1), in float64."""
    tau, omega, phi = (np.asarray(a, np.float64) for a in (tau, omega, phi))
    out = np.empty(np.broadcast_shapes(tau.shape + (1,), omega.shape))
    for i in range(omega.shape[-1]):
        z = omega[..., i] * tau + phi[..., i]
        out[..., i] = z if i == 0 else np.sin(z)
    return out


def test_time2vec_matches_numpy_linear_first_then_sines():
    rng = np.random.default_rng(0)
    tau = rng.normal(size=(2, 5, 3)) * 3
    omega, phi = rng.normal(size=(2, 5, 3, 4)), rng.normal(size=(2, 5, 3, 4))
    ours = np.asarray(jax.jit(t2v.time2vec)(*(jnp.asarray(a, jnp.float32) for a in (tau, omega, phi))))
    np.testing.assert_allclose(ours, numpy_time2vec(tau, omega, phi), atol=1e-5)
    # the linear term is affine in τ (unbounded); the periodic terms repeat with period 2π/ω and stay in [-1, 1]
    shifted = np.asarray(t2v.time2vec(jnp.asarray(tau + 2 * np.pi / omega[..., 2], jnp.float32),
                                      jnp.asarray(omega, jnp.float32), jnp.asarray(phi, jnp.float32)))
    np.testing.assert_allclose(shifted[..., 2], ours[..., 2], atol=1e-4)
    np.testing.assert_allclose(ours[..., 0], omega[..., 0] * tau + phi[..., 0], rtol=1e-5, atol=1e-5)
    assert np.all(np.abs(ours[..., 1:]) <= 1) and np.abs(ours[..., 0]).max() > 1


def test_model_time2vec_layer_uses_its_parameters_per_step_and_channel():
    b = built(NAME)
    p = b.params["params"]["time2vec"]
    cfg = b.config
    assert p["omega"].shape == p["phi"].shape == (cfg.input_len, cfg.num_channels, cfg.time2vec_dim)
    layer = t2v.MultiFeatureTime2Vec(cfg.input_len, cfg.num_channels, cfg.time2vec_dim)
    x = np.asarray(b.batch["inputs"])
    out = layer.apply({"params": p}, jnp.asarray(x))
    np.testing.assert_allclose(out, numpy_time2vec(x, p["omega"], p["phi"]), atol=1e-5)


def _tie_over_steps(params):
    """The Time2Vec parameters of step 0 copied to every step."""
    p = jax.tree.map(lambda a: a, params)
    for k in ("omega", "phi"):
        p["params"]["time2vec"][k] = jnp.broadcast_to(p["params"]["time2vec"][k][:1], p["params"]["time2vec"][k].shape)
    return p


def test_time2vec_is_the_only_positional_information():
    """With Time2Vec's per-step parameters tied, permuting the steps leaves the pooled forecast unchanged: the
    encoder adds no positional encoding of its own. Untied, the order matters."""
    b = built(NAME)
    cfg = b.config
    assert cfg.head == "pool" and cfg.time2vec_input == "value" and cfg.embed_dim == 0
    assert set(b.params["params"]) == {"time2vec", "block_0", "block_1", "head_hidden", "head"}
    # the encoder runs on concat([x, t2v]) directly: C·(1+k) wide
    assert b.params["params"]["block_0"]["attention_norm"]["scale"].shape == (cfg.feature_dim,)
    x = np.asarray(b.batch["inputs"])
    perm = np.random.default_rng(2).permutation(cfg.input_len)
    tied = _tie_over_steps(b.params)
    chex.assert_trees_all_close(b.forward(tied, {"inputs": x[:, perm]}), b.forward(tied, {"inputs": x}), atol=1e-5)
    assert not np.allclose(b.forward(b.params, {"inputs": x[:, perm]}), b.forward(b.params, {"inputs": x}),
                           atol=1e-4)


def test_time_input_flatten_head_projection_and_subtract_last():
    """time2vec_input='time': τ = t / input_len per channel (Kazemi's Time2Vec of the step index), so order
    matters even without per-step parameters; with the flatten head, an input projection, and
    subtract_last: adding a constant to a channel's window adds it to that channel's forecast."""
    cfg = config_of(NAME, time2vec_input="time", head="flatten", embed_dim=16, subtract_last=True)
    model = t2v.Time2VecEncoder(cfg)
    x = np.asarray(built(NAME).batch["inputs"])
    params = nn.unbox(jit(model.init)(jax.random.PRNGKey(0), {"inputs": x}))
    assert params["params"]["input_embed"]["kernel"].shape == (cfg.feature_dim, cfg.embed_dim)
    p = params["params"]["time2vec"]
    assert p["omega"].shape == p["phi"].shape == (cfg.num_channels, cfg.time2vec_dim)
    layer = t2v.MultiFeatureTime2Vec(cfg.input_len, cfg.num_channels, cfg.time2vec_dim, tau="time")
    out = np.asarray(layer.apply({"params": p}, jnp.asarray(x)))
    tau = np.broadcast_to((np.arange(cfg.input_len) / cfg.input_len)[None, :, None], x.shape)
    np.testing.assert_allclose(out, numpy_time2vec(tau, p["omega"], p["phi"]), atol=1e-5)
    apply = jit(model.apply)
    perm = np.random.default_rng(3).permutation(cfg.input_len)
    forecast = apply(params, {"inputs": x})
    chex.assert_shape(forecast, (BATCH, cfg.horizon, cfg.num_channels))
    assert not np.allclose(apply(params, {"inputs": x[:, perm]}), forecast, atol=1e-4)
    shift = np.array([3.0, -1.5], np.float32)
    chex.assert_trees_all_close(apply(params, {"inputs": x + shift}), forecast + shift, atol=1e-4)


def test_position_encoding_baselines_replace_time2vec():
    """position_encoding='learned'/'sinusoidal' (the paper's baselines): no Time2Vec, a projection to the same
    width plus a position table that is the only source of order (zeroed, permuting steps changes nothing);
    'learned' holding the sinusoidal table computes exactly what 'sinusoidal' does."""
    x = np.asarray(built(NAME).batch["inputs"])
    learned_cfg = config_of(NAME, position_encoding="learned")
    learned = t2v.Time2VecEncoder(learned_cfg)
    params = nn.unbox(jit(learned.init)(jax.random.PRNGKey(0), {"inputs": x}))
    p = params["params"]
    assert "time2vec" not in p
    assert p["input_embed"]["kernel"].shape == (learned_cfg.num_channels, learned_cfg.feature_dim)
    assert p["positions"]["embedding"].shape == (learned_cfg.input_len, learned_cfg.feature_dim)
    apply = jit(learned.apply)
    perm = np.random.default_rng(4).permutation(learned_cfg.input_len)
    assert not np.allclose(apply(params, {"inputs": x[:, perm]}), apply(params, {"inputs": x}), atol=1e-4)
    zeroed = jax.tree.map(lambda a: a, params)
    zeroed["params"]["positions"]["embedding"] = jnp.zeros_like(p["positions"]["embedding"])
    chex.assert_trees_all_close(apply(zeroed, {"inputs": x[:, perm]}), apply(zeroed, {"inputs": x}), atol=1e-5)

    sinusoidal = t2v.Time2VecEncoder(config_of(NAME, position_encoding="sinusoidal"))
    sin_params = {"params": {k: v for k, v in p.items() if k != "positions"}}
    pos, i = np.arange(learned_cfg.input_len)[:, None], np.arange(learned_cfg.feature_dim)[None]
    angle = pos / 10_000.0 ** ((i - i % 2) / learned_cfg.feature_dim)  # Vaswani et al.: sin even, cos odd
    table = np.where(i % 2 == 0, np.sin(angle), np.cos(angle))
    with_table = jax.tree.map(lambda a: a, params)
    with_table["params"]["positions"]["embedding"] = jnp.asarray(table, jnp.float32)
    chex.assert_trees_all_close(jit(sinusoidal.apply)(sin_params, {"inputs": x}), apply(with_table, {"inputs": x}),
                                atol=1e-5)
    with pytest.raises(ConfigError, match="position_encoding"):
        config_of(NAME, position_encoding="rotary")
