"""dlinear / nlinear: decomposition, moving average, shift equivariance, channel handling, and parity
with sktime's LTSF networks (PyPI; its code is the authors' cure-lab LTSF-Linear code)."""
from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from sktime.networks.ltsf.models.linear import LTSFDLinearNetwork, LTSFNLinearNetwork
from sktime.networks.ltsf.utils.extras import SeriesDecomposer

from fintrans.layers import series
from model_cases import BATCH, built, jit


def numpy_moving_average(x: np.ndarray, kernel_size: int) -> np.ndarray:
    """The authors' moving_avg in numpy: replicate (k-1)//2 end values, then AvgPool1d(k, stride 1)."""
    pad = (kernel_size - 1) // 2
    padded = np.concatenate([np.repeat(x[:, :1], pad, 1), x, np.repeat(x[:, -1:], pad, 1)], axis=1)
    windows = np.lib.stride_tricks.sliding_window_view(padded, kernel_size, axis=1)  # [B, L, C, k]
    return windows.mean(-1)


@pytest.mark.parametrize("kernel_size,length", [(25, 30), (25, 10), (5, 30), (1, 7)])
def test_moving_average_matches_replicate_padded_avg_pool(kernel_size, length):
    x = np.random.default_rng(0).normal(size=(2, length, 3)).astype(np.float32)
    ours = series.moving_average(jnp.asarray(x), kernel_size)
    chex.assert_shape(ours, x.shape)
    np.testing.assert_allclose(ours, numpy_moving_average(x.astype(np.float64), kernel_size), atol=1e-6)


def test_constant_series_is_all_trend():
    x = jnp.broadcast_to(jnp.array([1.5, -2.0, 7.0]), (2, 30, 3))
    seasonal, trend = series.series_decomp(x, 25)
    chex.assert_trees_all_close(trend, x, atol=1e-6)
    chex.assert_trees_all_close(seasonal, jnp.zeros_like(x), atol=1e-6)


def test_moving_average_rejects_even_windows():
    with pytest.raises(ValueError, match="kernel_size=4"):
        series.moving_average(jnp.zeros((1, 8, 1)), 4)


@pytest.mark.parametrize("name", ["nlinear", "dlinear"])
def test_channels_do_not_mix(name):
    b = built(name)
    x = np.array(b.batch["inputs"])
    out = b.forward(b.params, {"inputs": x})
    x2 = x.copy()
    x2[:, :, 0] += np.random.default_rng(5).normal(size=x2[:, :, 0].shape)
    out2 = b.forward(b.params, {"inputs": x2})
    chex.assert_trees_all_close(out2[:, :, 1:], out[:, :, 1:], atol=1e-6)
    assert not np.allclose(out2[:, :, 0], out[:, :, 0], atol=1e-4)


def test_nlinear_adding_a_constant_shifts_the_forecast():
    b = built("nlinear")
    x = np.asarray(b.batch["inputs"])
    c = np.array([3.0, -1.25], np.float32)  # a different constant per channel
    out = b.forward(b.params, {"inputs": x})
    chex.assert_trees_all_close(b.forward(b.params, {"inputs": x + c}), out + c, atol=1e-5)


def test_dlinear_is_affine_in_its_input():
    b = built("dlinear")
    rng = np.random.default_rng(3)
    x, y = (rng.normal(size=b.batch["inputs"].shape).astype(np.float32) for _ in range(2))
    f = lambda v: np.asarray(b.forward(b.params, {"inputs": v}), np.float64)
    zero = f(np.zeros_like(x))
    np.testing.assert_allclose(f(2 * x - y), 2 * f(x) - f(y), atol=1e-5)
    assert not np.allclose(f(x), zero)


@functools.lru_cache(maxsize=None)
def _jitted(name, individual):
    b = built(name)
    if b.config.individual == individual:
        return b.config, b.forward
    cfg = b.config.replace(individual=individual)
    model = type(b.model)(cfg)
    return cfg, jit(lambda p, x: model.apply(p, x))


def _linear_params(linear, individual):
    """A torch Linear (or a ModuleList of them, one per channel) -> TimeLinear params."""
    if individual:
        kernel = np.stack([m.weight.detach().numpy().T for m in linear])  # [C, L, H]
        bias = np.stack([m.bias.detach().numpy() for m in linear])  # [C, H]
        return {"kernel": kernel, "bias": bias}
    return {"linear": {"kernel": linear.weight.detach().numpy().T, "bias": linear.bias.detach().numpy()}}


@pytest.mark.parametrize("individual", [False, True], ids=["shared", "individual"])
@pytest.mark.parametrize("name", ["dlinear", "nlinear"])
def test_parity_with_sktime_ltsf_networks(name, individual):
    cfg, forward = _jitted(name, individual)
    assert name != "dlinear" or cfg.kernel_size == 25  # sktime fixes the authors' window of 25
    network_cls = LTSFDLinearNetwork if name == "dlinear" else LTSFNLinearNetwork
    torch.manual_seed(int(individual))
    net = network_cls(cfg.input_len, cfg.horizon, cfg.num_channels, individual)._build().eval()
    if name == "dlinear":
        params = {"seasonal": _linear_params(net.Linear_Seasonal, individual),
                  "trend": _linear_params(net.Linear_Trend, individual)}
    else:
        params = {"linear": _linear_params(net.Linear, individual)}
    params = {"params": jax.tree.map(jnp.asarray, params)}
    x = np.asarray(built(name).batch["inputs"]) * 3 + np.linspace(0, 5, cfg.input_len)[None, :, None]
    x = x.astype(np.float32)
    ours = np.asarray(forward(params, {"inputs": x}))
    with torch.no_grad():
        ref = net(torch.tensor(x)).numpy()
    chex.assert_shape(ours, (BATCH, cfg.horizon, cfg.num_channels))
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel_size", [5, 25])
def test_decomposition_parity_with_sktime(kernel_size):
    x = np.random.default_rng(1).normal(size=(2, 30, 3)).astype(np.float32)
    seasonal, trend = series.series_decomp(jnp.asarray(x), kernel_size)
    with torch.no_grad():
        ref_seasonal, ref_trend = SeriesDecomposer(kernel_size)._build()(torch.tensor(x))
    np.testing.assert_allclose(trend, ref_trend.numpy(), atol=1e-6)
    np.testing.assert_allclose(seasonal, ref_seasonal.numpy(), atol=1e-6)


def test_individual_with_equal_channel_weights_equals_shared():
    b = built("dlinear")  # shared
    cfg, forward = _jitted("dlinear", True)
    C = cfg.num_channels
    individual = {"params": {}}
    for part in ("seasonal", "trend"):
        lin = b.params["params"][part]["linear"]
        individual["params"][part] = {"kernel": jnp.broadcast_to(lin["kernel"], (C,) + lin["kernel"].shape),
                                      "bias": jnp.broadcast_to(lin["bias"], (C,) + lin["bias"].shape)}
    chex.assert_trees_all_close(forward(individual, b.batch), b.forward(b.params, b.batch), atol=1e-5)


def test_linear_layers_start_like_torch_linear():
    b = built("dlinear")
    bound = 1 / np.sqrt(b.config.input_len)
    for part in ("seasonal", "trend"):
        for leaf in jax.tree.leaves(b.params["params"][part]):
            assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > bound / 2
