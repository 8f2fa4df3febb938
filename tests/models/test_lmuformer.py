"""LMUFormer: the LMU's (Ā, B̄) against the closed form and scipy's ZOH, the FFT memory against the
recurrence, the parallel model against its step-by-step streaming form, causality, and the spiking variant."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.signal

from fintrans.models.lmuformer import (LMUFormer, LMUFormerConfig, fft_causal_conv, legendre_continuous,
                                       lmu_discrete, lmu_impulse, stream)
from model_cases import jit

TINY = dict(embed_dim=16, num_layers=2, num_embed_convs=2, memory_size=12, mlp_ratio=2)


def test_continuous_matrices_match_the_closed_form():
    rng = np.random.default_rng(0)
    order, theta = int(rng.integers(3, 9)), float(rng.uniform(5, 50))
    a, b = legendre_continuous(order, theta)
    for i in range(order):
        assert b[i, 0] == pytest.approx((2 * i + 1) * (-1) ** i / theta)
        for j in range(order):
            expected = (2 * i + 1) / theta * (-1.0 if i < j else (-1.0) ** (i - j + 1))
            assert a[i, j] == pytest.approx(expected)


@pytest.mark.parametrize("order,theta", [(4, 8.0), (12, 64.0), (7, 23.5)])
def test_discretisation_is_scipy_zero_order_hold(order, theta):
    a, b = legendre_continuous(order, theta)
    a_ref, b_ref, *_ = scipy.signal.cont2discrete((a, b, np.ones((1, order)), np.zeros((1,))), dt=1.0, method="zoh")
    a_bar, b_bar = lmu_discrete(order, theta)
    np.testing.assert_allclose(a_bar, a_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b_bar, b_ref, rtol=1e-10, atol=1e-12)
    # ZOH identities: Ā = expm(A), A·B̄ = (Ā − I)·B.
    np.testing.assert_allclose(a_bar, scipy.linalg.expm(a), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a @ b_bar, (a_bar - np.eye(order)) @ b, rtol=1e-8, atol=1e-10)


def test_fft_memory_is_the_recurrence():
    rng = np.random.default_rng(1)
    order, theta, length = 10, 20.0, 37
    u = rng.normal(size=(2, length))
    a_bar, b_bar = lmu_discrete(order, theta)
    m, expected = np.zeros((2, order)), np.zeros((2, length, order))
    for t in range(length):
        m = m @ a_bar.T + u[:, t:t + 1] @ b_bar.T
        expected[:, t] = m
    np.testing.assert_allclose(lmu_impulse(order, theta, 3), [b_bar[:, 0], a_bar @ b_bar[:, 0],
                                                               a_bar @ a_bar @ b_bar[:, 0]], rtol=1e-12)
    got = jax.jit(lambda u: fft_causal_conv(u, lmu_impulse(order, theta, length)))(u.astype(np.float32))
    np.testing.assert_allclose(got, expected, atol=2e-5 * np.abs(expected).max())


@functools.lru_cache(maxsize=None)
def _model(spiking: bool, sequence: str = "pixels"):
    cfg = LMUFormerConfig(sequence=sequence, spiking=spiking, **TINY)
    model = LMUFormer(cfg)
    x = np.zeros((3, 8, 8, 1), np.float32)
    params = jit(model.init)(jax.random.PRNGKey(0), {"inputs": x})
    prefix = jit(lambda p, x: model.apply(p, {"inputs": x}, method=LMUFormer.prefix_logits))
    streamed = jit(lambda p, x: stream(model, p, x))
    call = jit(lambda p, x: model.apply(p, {"inputs": x}))
    return model, nn.unbox(params), prefix, streamed, call


def _digits_like(rng, batch=3):
    # No all-zero steps: LayerNorm of a zero token amplifies the FFT's rounding noise (module docstring).
    return rng.uniform(0.05, 1.0, size=(batch, 8, 8, 1)).astype(np.float32)


@pytest.mark.parametrize("spiking", [False, True], ids=["ann", "spiking"])
def test_parallel_fft_mode_equals_recurrent_streaming(spiking):
    model, params, prefix, streamed, call = _model(spiking)
    for seed in (2, 3):
        x = _digits_like(np.random.default_rng(seed))
        par, rec = prefix(params, x), streamed(params, x)
        assert par.shape == rec.shape == (3, 64, 10)
        np.testing.assert_allclose(par, rec, atol=1e-4, rtol=1e-4)
        # The full-sequence classifier output is the last prefix's logits.
        np.testing.assert_allclose(call(params, x), par[:, -1], atol=1e-5, rtol=1e-5)
        assert not np.allclose(par[:, 0], par[:, -1], atol=1e-3)


def test_outputs_are_causal():
    model, params, prefix, _, _ = _model(False)
    rng = np.random.default_rng(4)
    x = _digits_like(rng)
    k = int(rng.integers(10, 50))
    y = x.reshape(3, 64, 1).copy()
    y[:, k:] = rng.uniform(size=y[:, k:].shape)
    a, b = prefix(params, x), prefix(params, y.reshape(3, 8, 8, 1))
    np.testing.assert_allclose(a[:, :k], b[:, :k], atol=1e-5)
    assert not np.allclose(a[:, k:], b[:, k:], atol=1e-3)


def test_spiking_activations_are_binary_and_have_surrogate_gradients():
    model, params, _, _, _ = _model(True)
    x = _digits_like(np.random.default_rng(5))
    _, inter = jit(lambda p, x: model.apply(p, {"inputs": x}, method=LMUFormer.features,
                                            capture_intermediates=lambda mdl, _: "act" in (mdl.name or "")))(params, x)
    spikes = [v for path, v in jax.tree_util.tree_leaves_with_path(inter) if "act" in jax.tree_util.keystr(path)]
    assert spikes and all(set(np.unique(np.asarray(s))) <= {0.0, 1.0} for s in spikes)
    assert any(np.asarray(s).any() for s in spikes)
    grads = jit(jax.grad(lambda p: jnp.mean(jnp.square(model.apply(p, {"inputs": x}) - 1.0))))(params)
    flat = jax.tree.leaves(grads)
    assert all(np.isfinite(g).all() for g in flat)
    assert np.abs(np.asarray(grads["params"]["patch_embed"]["conv_0"]["kernel"])).max() > 0


def test_rows_mode_reads_8_steps_of_8_pixels():
    cfg = LMUFormerConfig(sequence="rows", **TINY)
    model = LMUFormer(cfg)
    x = _digits_like(np.random.default_rng(6))
    params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), {"inputs": x}))
    seq = model.apply(params, x, method=LMUFormer.as_sequence)
    np.testing.assert_array_equal(seq, x.reshape(3, 8, 8))
    assert params["params"]["patch_embed"]["conv_0"]["kernel"].shape == (3, 8, 16)
    assert cfg.seq_len == 8 and cfg.window == 8.0
    with pytest.raises(ValueError, match=r"lmuformer: a step takes \[batch, 8\]"):
        model.apply(params, model.apply(params, 3, method=LMUFormer.init_state), np.zeros((3, 1), np.float32),
                    method=LMUFormer.step)
